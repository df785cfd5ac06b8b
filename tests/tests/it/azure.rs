//! Azure OpenAI: deployment URLs, `api-version`, the `api-key` header — same OpenAI wire format.

use serde_json::{Value, json};
use sluice_tests::gateway::{PROVIDER_KEY, TestGateway};
use sluice_tests::openai::MockOpenAi;

use crate::{BIN, KEY, chat_body, post};

fn azure_config(url: &str, probe: bool) -> String {
    let base = url.trim_end_matches("/v1");
    format!(
        "[[keys.key]]\nid = \"test\"\ndemo_key = \"{KEY}\"\norg = \"o\"\nteam = \"t\"\napp = \"a\"\n\
         [providers.azure]\nkind = \"azure_openai\"\nbase_url = \"{base}\"\napi_key = \"file:{{dir}}/provider.key\"\n\
         api_version = \"2024-10-21\"\ndeployments = {{ \"gpt-4o\" = \"prod-gpt4o\" }}\n\
         health_check = {{ enabled = {probe}, interval = \"200ms\" }}\n\
         [models.m]\ntargets = [{{ provider = \"azure\", model = \"gpt-4o\" }}]\n\
         [models.e]\ntargets = [{{ provider = \"azure\", model = \"text-embedding-3-small\" }}]\n"
    )
}

#[tokio::test]
async fn azure_chat_goes_to_the_deployment_url_with_the_api_key_header() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(BIN, &azure_config(&mock.url(), false)).await;
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-target"], "azure/gpt-4o");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    let stream = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let text = post(&gw, "/v1/chat/completions", &stream).await.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(!text.contains("\"choices\":[]"), "usage chunk hidden from a client that did not ask");
    for seen in mock.requests() {
        assert_eq!(seen.path, "/openai/deployments/prod-gpt4o/chat/completions");
        assert_eq!(seen.query, "api-version=2024-10-21");
        assert_eq!(seen.header("api-key"), Some(PROVIDER_KEY));
        assert_eq!(seen.header("authorization"), None);
    }
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn azure_embeddings_use_the_model_name_when_no_deployment_is_mapped() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(BIN, &azure_config(&mock.url(), false)).await;
    let r = post(&gw, "/v1/embeddings", &json!({"model": "e", "input": "hello"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(mock.requests()[0].path, "/openai/deployments/text-embedding-3-small/embeddings");
}

#[tokio::test]
async fn azure_is_probed_on_its_models_endpoint_with_its_key() {
    let mock = MockOpenAi::start().await;
    let _gw = TestGateway::start(BIN, &azure_config(&mock.url(), true)).await;
    // The first probe goes out at start; a loaded machine may take a while to get there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while mock.last_probe().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let probe = mock.last_probe().expect("probed within 5 s");
    assert_eq!(probe.path, "/openai/models");
    assert_eq!(probe.query, "api-version=2024-10-21");
    assert_eq!(probe.header("api-key"), Some(PROVIDER_KEY));
}
