//! `POST /v1/messages`: Anthropic SDK clients, pointed at Sluice with a gateway key.

use serde_json::{Value, json};
use sluice_tests::anthropic::MockAnthropic;
use sluice_tests::gateway::PROVIDER_KEY;

use crate::{KEY, client};

async fn gateway(claude: &MockAnthropic, model: &str) -> sluice_tests::gateway::TestGateway {
    let table = format!("kind = \"anthropic\"\nbase_url = \"{}\"\n", claude.url());
    crate::subject_gateway(&table, model, None).await
}

fn message(stream: bool) -> Value {
    json!({"model": "m", "max_tokens": 64, "stream": stream, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]})
}

async fn send(gw: &sluice_tests::gateway::TestGateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_anthropic_target_is_passed_through_with_the_providers_key() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-x").await;
    let r = send(&gw, &message(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-target"], "subject/claude-x");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "Hello from Claude.");
    assert_eq!(v["stop_reason"], "end_turn");
    let seen = &claude.requests()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(PROVIDER_KEY));
    let sent = seen.json();
    assert_eq!(sent["model"], "claude-x");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 64);
    let line = crate::access_line(&gw, "/v1/messages").await;
    assert_eq!(line["prompt_tokens"], 25);
    assert_eq!(line["completion_tokens"], 9);
    assert_eq!(line["usage_estimated"], false);
}

#[tokio::test]
async fn an_anthropic_stream_is_passed_through_event_for_event() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-x").await;
    let r = send(&gw, &message(true)).await;
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"), "{text}");
    let line = crate::access_line(&gw, "/v1/messages").await;
    assert_eq!(line["prompt_tokens"], 25);
    assert_eq!(line["completion_tokens"], 9);
}

#[tokio::test]
async fn errors_on_the_messages_endpoint_are_anthropic_shaped() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-x").await;
    let r = client().post(gw.url("/v1/messages")).json(&message(false)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");

    let mut no_max = message(false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let r = send(&gw, &no_max).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["message"], "max_tokens: Field required");

    let gw = gateway(&claude, "claude-bad").await;
    let r = send(&gw, &message(false)).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["message"], "messages: roles must alternate",
        "the provider's own error, untouched"
    );
}
