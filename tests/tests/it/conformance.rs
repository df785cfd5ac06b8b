//! The same scenarios against every provider: whatever serves a model alias, the client sees
//! OpenAI's shapes — answers, streams, tool calls, multi-turn chats with images and tool results,
//! 4xx refusals, max-tokens stops, cut streams, JSON mode and embeddings (served, or refused with a
//! clear 400 where the provider has no such thing) — and a failing provider falls over.

use serde_json::{Value, json};
use sluice_tests::anthropic::MockAnthropic;
use sluice_tests::gateway::TestGateway;
use sluice_tests::gemini::MockGemini;
use sluice_tests::openai::MockOpenAi;

use crate::{BIN, KEY, post};

/// A provider under test: its mock (kept alive), its config table and the upstream model names
/// that make the mock answer, call tools, fail with a 5xx, refuse with a 4xx, stop at max tokens,
/// or cut its stream.
struct Subject {
    _mock: Box<dyn std::any::Any + Send>,
    provider: String,
    ok: &'static str,
    tools: &'static str,
    fail: &'static str,
    bad: &'static str,
    max: &'static str,
    cut: &'static str,
    /// The provider honours JSON response formats (else: a clear 400).
    json_mode: bool,
    /// The provider has an embeddings API (else: a clear 400).
    embeddings: bool,
}

const KEY_FILE: &str = "api_key = \"file:{dir}/provider.key\"\nhealth_check = { enabled = false }\n";

async fn openai() -> Subject {
    let m = MockOpenAi::start().await;
    let provider = format!("kind = \"openai\"\nbase_url = \"{}\"\n{KEY_FILE}", m.url());
    Subject {
        _mock: Box::new(m),
        provider,
        ok: "ok",
        tools: "tools",
        fail: "fail-500",
        bad: "bad-request",
        max: "max",
        cut: "cut",
        json_mode: true,
        embeddings: true,
    }
}

async fn azure() -> Subject {
    let m = MockOpenAi::start().await;
    let base = m.url().trim_end_matches("/v1").to_owned();
    let provider =
        format!("kind = \"azure_openai\"\nbase_url = \"{base}\"\napi_version = \"2024-10-21\"\n{KEY_FILE}");
    Subject {
        _mock: Box::new(m),
        provider,
        ok: "ok",
        tools: "tools",
        fail: "fail-500",
        bad: "bad-request",
        max: "max",
        cut: "cut",
        json_mode: true,
        embeddings: true,
    }
}

async fn anthropic() -> Subject {
    let m = MockAnthropic::start().await;
    let provider = format!("kind = \"anthropic\"\nbase_url = \"{}\"\n{KEY_FILE}", m.url());
    Subject {
        _mock: Box::new(m),
        provider,
        ok: "claude-x",
        tools: "claude-tools",
        fail: "claude-overloaded",
        bad: "claude-bad",
        max: "claude-max",
        cut: "claude-cut",
        json_mode: false,
        embeddings: false,
    }
}

async fn gemini() -> Subject {
    let m = MockGemini::start().await;
    let provider = format!("kind = \"gemini\"\nbase_url = \"{}\"\n{KEY_FILE}", m.url());
    Subject {
        _mock: Box::new(m),
        provider,
        ok: "gemini-x",
        tools: "gemini-tools",
        fail: "gemini-busy",
        bad: "gemini-bad",
        max: "gemini-max",
        cut: "gemini-cut",
        json_mode: true,
        embeddings: true,
    }
}

/// Aliases `ok`, `tools` and `fail` on the subject; `fail` falls over to an OpenAI backup.
async fn gateway(s: &Subject, backup: &MockOpenAi) -> TestGateway {
    let text = format!(
        "[[keys.key]]\nid = \"test\"\ndemo_key = \"{KEY}\"\norg = \"o\"\nteam = \"t\"\napp = \"a\"\n\
         [providers.subject]\n{}\n\
         [providers.backup]\nkind = \"openai\"\nbase_url = \"{}\"\n{KEY_FILE}\n\
         [models.ok]\ntargets = [{{ provider = \"subject\", model = \"{}\" }}]\n\
         [models.tools]\ntargets = [{{ provider = \"subject\", model = \"{}\" }}]\n\
         [models.fail]\ntargets = [{{ provider = \"subject\", model = \"{}\" }}, {{ provider = \"backup\", model = \"ok\" }}]\n\
         [models.bad]\ntargets = [{{ provider = \"subject\", model = \"{}\" }}, {{ provider = \"backup\", model = \"ok\" }}]\n\
         [models.max]\ntargets = [{{ provider = \"subject\", model = \"{}\" }}]\n\
         [models.cut]\ntargets = [{{ provider = \"subject\", model = \"{}\" }}]\n",
        s.provider,
        backup.url(),
        s.ok,
        s.tools,
        s.fail,
        s.bad,
        s.max,
        s.cut
    );
    TestGateway::start(BIN, &text).await
}

fn chat(model: &str, stream: bool, usage: bool) -> Value {
    let mut b = json!({"model": model, "messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"}]});
    if stream {
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": usage});
    }
    if model == "tools" {
        b["tools"] = json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}},
                            {"type": "function", "function": {"name": "time", "parameters": {"type": "object"}}}]);
    }
    b
}

fn events(text: &str) -> Vec<Value> {
    assert!(text.ends_with("data: [DONE]\n\n"), "a stream ends with [DONE]: {text}");
    crate::sse_events(text)
}

async fn plain_chat(s: Subject) {
    let backup = MockOpenAi::start().await;
    let gw = gateway(&s, &backup).await;
    let r = post(&gw, "/v1/chat/completions", &chat("ok", false, false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

async fn streaming(s: Subject) {
    let backup = MockOpenAi::start().await;
    let gw = gateway(&s, &backup).await;
    let evs =
        events(&post(&gw, "/v1/chat/completions", &chat("ok", true, false)).await.text().await.unwrap());
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(evs.iter().all(|e| e["object"] == "chat.completion.chunk"));
    let text: String = evs.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!text.is_empty());
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(!evs.iter().any(|e| e["choices"] == json!([])), "no usage chunk unless asked");

    let evs = events(&post(&gw, "/v1/chat/completions", &chat("ok", true, true)).await.text().await.unwrap());
    let usage = evs.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

async fn tool_calls(s: Subject) {
    let backup = MockOpenAi::start().await;
    let gw = gateway(&s, &backup).await;
    let v: Value =
        post(&gw, "/v1/chat/completions", &chat("tools", false, false)).await.json().await.unwrap();
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().expect("tool calls");
    let names: Vec<&str> = calls.iter().map(|c| c["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["weather", "time"]);
    for c in calls {
        assert_eq!(c["type"], "function");
        assert!(c["id"].as_str().is_some_and(|id| !id.is_empty()));
        let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args.is_object());
    }
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let evs =
        events(&post(&gw, "/v1/chat/completions", &chat("tools", true, false)).await.text().await.unwrap());
    let mut args = [String::new(), String::new()];
    let mut names = [String::new(), String::new()];
    for e in &evs {
        for c in e["choices"][0]["delta"]["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let i = c["index"].as_u64().unwrap() as usize;
            if let Some(n) = c["function"]["name"].as_str() {
                names[i] = n.to_owned();
            }
            args[i].push_str(c["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(names, ["weather", "time"]);
    for a in &args {
        assert!(serde_json::from_str::<Value>(a).unwrap().is_object(), "{a}");
    }
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}

async fn falls_over(s: Subject) {
    let backup = MockOpenAi::start().await;
    let gw = gateway(&s, &backup).await;
    let r = post(&gw, "/v1/chat/completions", &chat("fail", false, false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-target"], "backup/ok");
    assert_eq!(r.headers()["x-sluice-attempts"], "2");
    assert_eq!(backup.hits(), 1);
}

async fn multi_turn(s: Subject) {
    let backup = MockOpenAi::start().await;
    let gw = gateway(&s, &backup).await;
    let body = json!({"model": "ok", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
        {"role": "user", "content": "And tomorrow?"}],
        "stop": ["END"], "temperature": 0.2});
    let r = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

async fn refusals_and_limits(s: Subject) {
    let backup = MockOpenAi::start().await;
    let gw = gateway(&s, &backup).await;
    let e =
        crate::openai_error(post(&gw, "/v1/chat/completions", &chat("bad", false, false)).await, 400).await;
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(backup.hits(), 0, "a provider's 4xx is the client's answer, not a reason to fall over");
    let v: Value = post(&gw, "/v1/chat/completions", &chat("max", false, false)).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

async fn cut_stream(s: Subject) {
    let backup = MockOpenAi::start().await;
    let gw = gateway(&s, &backup).await;
    let text = post(&gw, "/v1/chat/completions", &chat("cut", true, false)).await.text().await.unwrap();
    let evs = crate::sse_events(&text);
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(evs.last().unwrap()["error"]["code"], "stream_interrupted", "{text}");
}

async fn json_mode_and_embeddings(s: Subject) {
    let backup = MockOpenAi::start().await;
    let gw = gateway(&s, &backup).await;
    let mut body = chat("ok", false, false);
    body["response_format"] = json!({"type": "json_object"});
    let r = post(&gw, "/v1/chat/completions", &body).await;
    if s.json_mode {
        assert_eq!(r.status(), 200);
    } else {
        assert_eq!(crate::openai_error(r, 400).await["param"], "response_format");
    }
    let r = post(&gw, "/v1/embeddings", &json!({"model": "ok", "input": ["a", "b"]})).await;
    if s.embeddings {
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert!(v["data"][1]["embedding"].as_array().is_some_and(|e| !e.is_empty()));
    } else {
        assert_eq!(crate::openai_error(r, 400).await["code"], "unsupported_endpoint");
    }
}

macro_rules! conformance {
    ($($provider:ident),* $(,)?) => {$(
        mod $provider {
            #[tokio::test]
            async fn a_plain_chat_answers_in_openai_shape() {
                super::plain_chat(super::$provider().await).await;
            }

            #[tokio::test]
            async fn a_stream_is_openai_chunks_with_usage_only_when_asked() {
                super::streaming(super::$provider().await).await;
            }

            #[tokio::test]
            async fn parallel_tool_calls_come_back_as_openai_tool_calls() {
                super::tool_calls(super::$provider().await).await;
            }

            #[tokio::test]
            async fn a_failing_provider_falls_over_to_the_next_target() {
                super::falls_over(super::$provider().await).await;
            }

            #[tokio::test]
            async fn a_multi_turn_chat_with_images_and_tool_results_is_answered() {
                super::multi_turn(super::$provider().await).await;
            }

            #[tokio::test]
            async fn a_provider_4xx_is_a_400_and_max_tokens_is_length() {
                super::refusals_and_limits(super::$provider().await).await;
            }

            #[tokio::test]
            async fn a_stream_cut_mid_way_ends_with_an_error_event() {
                super::cut_stream(super::$provider().await).await;
            }

            #[tokio::test]
            async fn json_mode_and_embeddings_are_served_or_clearly_refused() {
                super::json_mode_and_embeddings(super::$provider().await).await;
            }

            #[tokio::test]
            async fn the_provider_is_probed_on_its_models_endpoint_with_its_key() {
                super::probed(super::$provider().await).await;
            }
        }
    )*};
}

conformance!(openai, azure, anthropic, gemini);

/// Every kind of provider is probed on its own models endpoint with its own key header, and
/// `/health` shows the result per endpoint.
async fn probed(s: Subject) {
    let text = format!(
        "[providers.subject]\n{}\n[models.ok]\ntargets = [{{ provider = \"subject\", model = \"{}\" }}]\n",
        s.provider.replace("health_check = { enabled = false }", "health_check = { interval = \"200ms\" }"),
        s.ok
    );
    let gw = TestGateway::start(BIN, &text).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let h: Value = crate::client().get(gw.url("/health")).send().await.unwrap().json().await.unwrap();
    let endpoint = &h["targets"][0]["endpoints"][0];
    assert_eq!(endpoint["last_probe"]["ok"], true, "{h}");
    assert_eq!(endpoint["healthy"], true);
    assert_eq!(h["status"], "ok");
}
