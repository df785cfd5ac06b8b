//! `POST /v1/messages`: Anthropic SDK clients, pointed at Sluice with a gateway key.

use serde_json::{Value, json};
use sluice_tests::anthropic::MockAnthropic;
use sluice_tests::gateway::PROVIDER_KEY;
use sluice_tests::openai::MockOpenAi;

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

fn anthropic_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).expect("event line").to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).expect("data line");
            (name, serde_json::from_str(data).expect("JSON data"))
        })
        .collect()
}

async fn openai_gateway(openai: &MockOpenAi, model: &str) -> sluice_tests::gateway::TestGateway {
    let table = format!("kind = \"openai\"\nbase_url = \"{}\"\n", openai.url());
    crate::subject_gateway(&table, model, None).await
}

#[tokio::test]
async fn an_openai_target_answers_an_anthropic_client_in_anthropics_shape() {
    let openai = MockOpenAi::start().await;
    let gw = openai_gateway(&openai, "gpt-upstream").await;
    let r = send(&gw, &message(false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert!(v["content"][0]["text"].as_str().unwrap().starts_with("echo from gpt-upstream"));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 11);
    assert_eq!(v["usage"]["output_tokens"], 7);
    let sent = openai.requests()[0].json();
    assert_eq!(sent["model"], "gpt-upstream");
    assert_eq!(sent["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(sent["messages"][1]["content"][0]["text"], "Hello");
    assert_eq!(sent["max_tokens"], 64);
}

#[tokio::test]
async fn an_openai_stream_reaches_an_anthropic_client_as_anthropic_events() {
    let openai = MockOpenAi::start().await;
    let gw = openai_gateway(&openai, "gpt-upstream").await;
    let text = send(&gw, &message(true)).await.text().await.unwrap();
    let evs = anthropic_events(&text);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    let text: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert!(text.starts_with("echo from gpt-upstream"), "{text}");
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 7);
    assert_eq!(openai.requests()[0].json()["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn openai_tool_calls_become_anthropic_tool_use_blocks() {
    let openai = MockOpenAi::start().await;
    let gw = openai_gateway(&openai, "tools").await;
    let mut body = message(false);
    body["tools"] = json!([{"name": "weather", "input_schema": {"type": "object"}},
                           {"name": "time", "input_schema": {"type": "object"}}]);
    body["tool_choice"] = json!({"type": "any"});
    let v: Value = send(&gw, &body).await.json().await.unwrap();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"][0],
        json!({"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Oslo"}})
    );
    assert_eq!(v["content"][1]["name"], "time");
    let sent = openai.requests()[0].json();
    assert_eq!(sent["tools"][0]["function"]["name"], "weather");
    assert_eq!(sent["tool_choice"], "required");

    body["stream"] = json!(true);
    let evs = anthropic_events(&send(&gw, &body).await.text().await.unwrap());
    let starts: Vec<&Value> =
        evs.iter().filter(|(n, _)| n == "content_block_start").map(|(_, d)| &d["content_block"]).collect();
    assert_eq!(starts.iter().map(|b| b["name"].as_str().unwrap()).collect::<Vec<_>>(), ["weather", "time"]);
    let args: String = evs
        .iter()
        .filter(|(_, d)| d["index"] == 0 && d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"city": "Oslo"}));
}

#[tokio::test]
async fn an_overloaded_claude_falls_over_and_the_anthropic_client_still_gets_a_message() {
    let (claude, openai) = (MockAnthropic::start().await, MockOpenAi::start().await);
    let table = format!("kind = \"anthropic\"\nbase_url = \"{}\"\n", claude.url());
    let gw = crate::subject_gateway(&table, "claude-overloaded", Some(&openai)).await;
    let r = send(&gw, &message(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-target"], "backup/gpt-fallback");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!((claude.hits(), openai.hits()), (1, 1));
}

#[tokio::test]
async fn the_embedded_default_answers_the_anthropic_sdk_through_the_mock_provider() {
    let gw = sluice_tests::gateway::TestGateway::start_default(crate::BIN).await;
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "sk-sluice-demo")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi Claude"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["content"][0]["text"].as_str().unwrap().contains("Hi Claude"));
}
