use std::collections::HashMap;
use std::sync::Mutex;

use sluice_core::limits::{StoreError, gcra};

use super::*;
use crate::test_support::block_on;

/// A store with the memory store's semantics, kept here so the plugin is tested on its own.
#[derive(Default)]
struct TestStore(Mutex<HashMap<String, f64>>);

#[async_trait]
impl LimitStore for TestStore {
    async fn reserve(&self, charges: &[Charge]) -> Result<Vec<BucketState>, StoreError> {
        let mut tats = self.0.lock().unwrap();
        let decided: Vec<(f64, BucketState)> =
            charges.iter().map(|c| gcra(tats.get(&c.key).copied(), 0.0, c)).collect();
        if decided.iter().all(|(_, s)| s.allowed) {
            for (c, (t, _)) in charges.iter().zip(&decided) {
                tats.insert(c.key.clone(), *t);
            }
        }
        Ok(decided.into_iter().map(|(_, s)| s).collect())
    }

    async fn adjust(&self, _: &str, _: u64, _: Duration, _: i64) -> Result<(), StoreError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "test"
    }
}

fn ctx() -> RequestCtx {
    let mut c = RequestCtx::new("r".into());
    c.identity = Some(Identity {
        key_id: "k".into(),
        org: "acme".into(),
        team: "pay".into(),
        app: "checkout".into(),
        user: None,
        allowed_models: None,
        allowed_regions: None,
        tags: Vec::new(),
    });
    c
}

fn request(max_tokens: u64) -> Request {
    let body = format!(
        r#"{{"model":"m","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hello"}}]}}"#
    );
    Request::parse(Endpoint::ChatCompletions, &mut body.into_bytes()).unwrap()
}

#[test]
fn the_team_limit_refuses_with_a_429_naming_level_and_limit() {
    let config = LimitsConfig { team: Some(Rate { rpm: Some(2), tpm: None }), ..LimitsConfig::default() };
    let limits = Limits::new(config, Arc::new(TestStore::default()));
    for _ in 0..2 {
        assert!(block_on(limits.on_request(&mut ctx(), &mut request(10))).is_ok());
    }
    let mut c = ctx();
    let e = block_on(limits.on_request(&mut c, &mut request(10))).unwrap_err();
    assert_eq!(e.status(), 429);
    assert!(
        e.message.contains("team `pay`") && e.message.contains("RPM") && e.message.contains("limit 2"),
        "{}",
        e.message
    );
    assert_eq!(e.retry_after, Some(30));
    assert!(c.response_headers.contains(&("x-ratelimit-remaining-requests", "0".into())));
}

#[test]
fn tokens_reserve_the_prompt_estimate_plus_max_tokens() {
    let config = LimitsConfig { app: Some(Rate { rpm: None, tpm: Some(100) }), ..LimitsConfig::default() };
    let limits = Limits::new(config, Arc::new(TestStore::default()));
    let mut c = ctx();
    assert!(block_on(limits.on_request(&mut c, &mut request(90))).is_ok());
    assert!(
        c.response_headers.contains(&("x-ratelimit-remaining-tokens", "8".into())),
        "{:?}",
        c.response_headers
    );
    let e = block_on(limits.on_request(&mut ctx(), &mut request(90))).unwrap_err();
    assert!(e.message.contains("TPM") && e.message.contains("requested 92"), "{}", e.message);
}

#[test]
fn overrides_replace_the_level_default() {
    let mut config = LimitsConfig { team: Some(Rate { rpm: Some(1), tpm: None }), ..LimitsConfig::default() };
    config.overrides.insert("team:pay".into(), Rate { rpm: Some(5), tpm: None });
    let limits = Limits::new(config, Arc::new(TestStore::default()));
    for _ in 0..5 {
        assert!(block_on(limits.on_request(&mut ctx(), &mut request(1))).is_ok());
    }
    assert!(block_on(limits.on_request(&mut ctx(), &mut request(1))).is_err());
}
