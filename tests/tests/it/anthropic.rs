//! Claude behind the OpenAI API: requests, answers, streams and errors translated, fallback across
//! providers answered in the client's format.

use serde_json::{Value, json};
use sluice_tests::anthropic::MockAnthropic;
use sluice_tests::gateway::{PROVIDER_KEY, TestGateway};
use sluice_tests::openai::MockOpenAi;

use crate::sse_events as events;
use crate::{openai_error, post};

/// Alias `m` → the Anthropic mock's `model`, then (when given) the OpenAI mock.
async fn gateway(mock: &MockAnthropic, model: &str, backup: Option<&MockOpenAi>) -> TestGateway {
    let table = format!("kind = \"anthropic\"\nbase_url = \"{}\"\ndefault_max_tokens = 512\n", mock.url());
    crate::subject_gateway(&table, model, backup).await
}

#[tokio::test]
async fn a_chat_is_translated_to_the_messages_api_and_back() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-x", None).await;
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hello"}], "temperature": 0.4, "stop": ["END"], "user": "u-7"});
    let r = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-target"], "subject/claude-x");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["id"], "chatcmpl-msg_01");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from Claude.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 25, "input plus cache-read tokens");
    assert_eq!(v["usage"]["completion_tokens"], 9);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);

    let seen = &claude.requests()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(PROVIDER_KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("authorization"), None);
    let sent = seen.json();
    assert_eq!(sent["model"], "claude-x");
    assert_eq!(sent["system"], "Answer briefly.");
    assert_eq!(sent["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]));
    assert_eq!(sent["max_tokens"], 512, "Anthropic requires max_tokens: the provider's default fills in");
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    assert_eq!(sent["metadata"]["user_id"], "u-7");
}

#[tokio::test]
async fn a_stream_is_translated_event_by_event_and_usage_follows_stream_options() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-x", None).await;
    let ask = |usage: bool| {
        json!({"model": "m", "stream": true, "stream_options": {"include_usage": usage},
            "messages": [{"role": "user", "content": "Hi"}]})
    };
    let r = post(&gw, "/v1/chat/completions", &ask(false)).await;
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let evs = events(&text);
    assert!(evs.iter().all(|e| e["object"] == "chat.completion.chunk" && e["id"] == "chatcmpl-msg_01"));
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = evs.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "Hello from Claude.");
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(evs.iter().all(|e| e.get("usage").is_none()), "no usage chunk unless asked");
    assert_eq!(claude.requests()[0].json()["stream"], true);

    let evs = events(&post(&gw, "/v1/chat/completions", &ask(true)).await.text().await.unwrap());
    let usage = evs.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 9);
    assert_eq!(usage["usage"]["prompt_tokens"], 25);
}

#[tokio::test]
async fn parallel_tool_calls_stream_with_their_indexes_and_arguments() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-tools", None).await;
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Weather and time?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}},
                  {"type": "function", "function": {"name": "time", "parameters": {"type": "object"}}}],
        "tool_choice": "required"});
    let evs = events(&post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap());
    let mut args = [String::new(), String::new()];
    let mut ids = [String::new(), String::new()];
    for e in &evs {
        for call in e["choices"][0]["delta"]["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let i = call["index"].as_u64().unwrap() as usize;
            if let Some(id) = call["id"].as_str() {
                ids[i] = id.to_owned();
                assert_eq!(call["type"], "function");
            }
            args[i].push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(ids, ["toolu_a", "toolu_b"]);
    assert_eq!(serde_json::from_str::<Value>(&args[0]).unwrap(), json!({"city": "Oslo"}));
    assert_eq!(serde_json::from_str::<Value>(&args[1]).unwrap(), json!({"tz": "CET"}));
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    let sent = claude.requests()[0].json();
    assert_eq!(sent["tools"][0]["input_schema"], json!({"type": "object"}));
    assert_eq!(sent["tool_choice"], json!({"type": "any"}));
}

#[tokio::test]
async fn tool_calls_and_results_round_trip_in_a_multi_turn_chat() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-tools", None).await;
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_a", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "toolu_a", "content": "-3 C"}]});
    let v: Value = post(&gw, "/v1/chat/completions", &body).await.json().await.unwrap();
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["function"]["name"], "weather");
    assert_eq!(
        serde_json::from_str::<Value>(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Oslo"})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let sent = claude.requests()[0].json();
    assert_eq!(
        sent["messages"][1]["content"][0],
        json!({"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {"city": "Oslo"}})
    );
    assert_eq!(
        sent["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_a", "content": "-3 C"})
    );
}

#[tokio::test]
async fn max_tokens_reached_is_finish_reason_length() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-max", None).await;
    let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]});
    let v: Value = post(&gw, "/v1/chat/completions", &body).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(claude.requests()[0].json()["max_tokens"], 5);
}

#[tokio::test]
async fn an_overloaded_claude_falls_over_to_openai_and_the_client_never_notices() {
    let (claude, openai) = (MockAnthropic::start().await, MockOpenAi::start().await);
    let gw = gateway(&claude, "claude-overloaded", Some(&openai)).await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-target"], "backup/gpt-fallback");
    assert_eq!(r.headers()["x-sluice-attempts"], "2");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!((claude.hits(), openai.hits()), (1, 1));
}

#[tokio::test]
async fn anthropic_errors_and_untranslatable_requests_are_openai_shaped_400s() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-bad", None).await;
    let hi = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
    let e = openai_error(post(&gw, "/v1/chat/completions", &hi).await, 400).await;
    assert_eq!(e["message"], "messages: roles must alternate");
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(claude.hits(), 1);

    let two = json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "Hi"}]});
    assert_eq!(openai_error(post(&gw, "/v1/chat/completions", &two).await, 400).await["param"], "n");
    let e = openai_error(post(&gw, "/v1/embeddings", &json!({"model": "m", "input": "x"})).await, 400).await;
    assert_eq!(e["code"], "unsupported_endpoint");
    assert_eq!(claude.hits(), 1, "nothing untranslatable reached the provider");
}

#[tokio::test]
async fn a_claude_stream_cut_mid_way_ends_with_an_openai_error_event() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-cut", None).await;
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    let evs = events(&text);
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(evs.last().unwrap()["error"]["code"], "stream_interrupted");
}

#[tokio::test]
async fn an_error_event_inside_a_claude_stream_reaches_the_client_once_in_openai_form() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-stream-error", None).await;
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    let evs = events(&text);
    let errors: Vec<&Value> = evs.iter().filter(|e| e.get("error").is_some()).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert_eq!(errors[0]["error"]["message"], "Overloaded");
    assert_eq!(evs.last().unwrap(), errors[0]);
}

#[tokio::test]
async fn a_prompt_too_long_for_claude_is_openais_context_length_exceeded() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-long", None).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
    let e = openai_error(post(&gw, "/v1/chat/completions", &body).await, 400).await;
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(e["type"], "invalid_request_error");
}

#[tokio::test]
async fn when_every_provider_is_overloaded_the_answer_is_503() {
    let claude = MockAnthropic::start().await;
    let gw = gateway(&claude, "claude-overloaded", None).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
    let r = post(&gw, "/v1/chat/completions", &body).await;
    assert!(r.headers().contains_key("retry-after"));
    let e = openai_error(r, 503).await;
    assert!(e["message"].as_str().unwrap().contains("HTTP 529"));
}
