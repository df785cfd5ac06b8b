use super::*;
use crate::test_support::block_on;

fn keys() -> Keys {
    let config: KeysConfig = KeysConfig {
        key: vec![
            KeyConfig {
                id: "k1".into(),
                sha256: None,
                secret: None,
                demo_key: Some("sk-sluice-test-one".into()),
                org: "o".into(),
                team: "t".into(),
                app: "a".into(),
                user: None,
                models: Some(vec!["small".into()]),
                regions: None,
                tags: Vec::new(),
            },
            KeyConfig {
                id: "k2".into(),
                sha256: Some("8ad9f3a1bd0d1d6c0f6cf4b3b1b8bbd73e1d40a9dee3c07e1a04cd69e2a4d04b".into()),
                secret: None,
                demo_key: None,
                org: "o".into(),
                team: "t".into(),
                app: "b".into(),
                user: None,
                models: None,
                regions: None,
                tags: Vec::new(),
            },
        ],
        ..KeysConfig::default()
    };
    Keys::new(&config, None).unwrap()
}

fn chat(model: &str) -> Request {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"x"}}]}}"#);
    Request::parse(Endpoint::ChatCompletions, &mut body.into_bytes()).unwrap()
}

async fn run(credential: Option<&str>, model: &str) -> Result<RequestCtx, GatewayError> {
    let mut ctx = RequestCtx::new("r".into());
    ctx.credential = credential.map(str::to_owned);
    let keys = keys();
    keys.on_headers(&mut ctx).await?;
    keys.on_request(&mut ctx, &mut chat(model)).await.map(|_| ctx)
}

#[test]
fn known_key_resolves_to_its_identity() {
    let ctx = block_on(run(Some("sk-sluice-test-one"), "small")).unwrap();
    assert_eq!(ctx.identity.unwrap().key_id, "k1");
}

#[test]
fn missing_and_unknown_keys_are_401_and_never_echoed_whole() {
    let e = block_on(run(None, "small")).unwrap_err();
    assert_eq!(e.status(), 401);
    let e = block_on(run(Some("sk-sluice-wrong-key-123456"), "small")).unwrap_err();
    assert_eq!(e.status(), 401);
    assert_eq!(e.code, Some("invalid_api_key"));
    assert!(!e.message.contains("sk-sluice-wrong-key-123456"));
    assert!(e.message.contains("sk-slu***3456"));
}

#[test]
fn a_model_outside_the_keys_list_is_not_found() {
    let e = block_on(run(Some("sk-sluice-test-one"), "large")).unwrap_err();
    assert_eq!(e.status(), 404);
    assert_eq!(e.code, Some("model_not_found"));
}

#[test]
fn config_errors_name_the_entry() {
    let mut config = KeysConfig::default();
    config.key.push(KeyConfig {
        id: "bad".into(),
        sha256: Some("zz".into()),
        secret: None,
        demo_key: None,
        org: "o".into(),
        team: "t".into(),
        app: "a".into(),
        user: None,
        models: None,
        regions: None,
        tags: Vec::new(),
    });
    let e = Keys::new(&config, None).err().unwrap();
    assert!(e.starts_with("key[0].sha256"), "{e}");
}
