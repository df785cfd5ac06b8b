//! Gemini behind the OpenAI API: `generateContent` and its SSE stream, translated both ways.

use serde_json::{Value, json};
use sluice_tests::gateway::{PROVIDER_KEY, TestGateway};
use sluice_tests::gemini::MockGemini;
use sluice_tests::openai::MockOpenAi;

use crate::sse_events as events;
use crate::{openai_error, post};

async fn gateway(mock: &MockGemini, model: &str, backup: Option<&MockOpenAi>) -> TestGateway {
    let table = format!("kind = \"gemini\"\nbase_url = \"{}\"\n", mock.url());
    crate::subject_gateway(&table, model, backup).await
}

#[tokio::test]
async fn a_chat_goes_to_generate_content_and_comes_back_openai_shaped() {
    let gemini = MockGemini::start().await;
    let gw = gateway(&gemini, "gemini-x", None).await;
    let body = json!({"model": "m", "messages": [{"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Ciao"}], "max_tokens": 40, "response_format": {"type": "json_object"}});
    let r = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Ciao from Gemini.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 17);
    let seen = &gemini.requests()[0];
    assert_eq!(seen.path, "/v1beta/models/gemini-x:generateContent");
    assert_eq!(seen.header("x-goog-api-key"), Some(PROVIDER_KEY));
    assert_eq!(seen.header("authorization"), None);
    let sent = seen.json();
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "Be kind.");
    assert_eq!(sent["contents"], json!([{"role": "user", "parts": [{"text": "Ciao"}]}]));
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 40);
    assert_eq!(sent["generationConfig"]["responseMimeType"], "application/json");
}

#[tokio::test]
async fn a_gemini_stream_becomes_openai_chunks_ending_with_done() {
    let gemini = MockGemini::start().await;
    let gw = gateway(&gemini, "gemini-x", None).await;
    let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Ciao"}]});
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let evs = events(&text);
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = evs.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "Ciao from Gemini.");
    assert_eq!(evs[evs.len() - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(evs.last().unwrap()["usage"]["completion_tokens"], 6);
    let seen = &gemini.requests()[0];
    assert_eq!(seen.path, "/v1beta/models/gemini-x:streamGenerateContent");
    assert_eq!(seen.query, "alt=sse");
}

#[tokio::test]
async fn gemini_function_calls_become_openai_tool_calls() {
    let gemini = MockGemini::start().await;
    let gw = gateway(&gemini, "gemini-tools", None).await;
    let tools = json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}},
                       {"type": "function", "function": {"name": "time", "parameters": {"type": "object"}}}]);
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "Weather and time?"}], "tools": tools});
    let v: Value = post(&gw, "/v1/chat/completions", &body).await.json().await.unwrap();
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["function"]["name"], "time");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Weather?"}], "tools": tools});
    let evs = events(&post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap());
    let starts: Vec<u64> = evs
        .iter()
        .flat_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array().cloned().unwrap_or_default())
        .filter(|c| c.get("id").is_some())
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(starts, [0, 1], "each function call starts once, in order");
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(gemini.requests()[0].json()["tools"][0]["functionDeclarations"][1]["name"], "time");
}

#[tokio::test]
async fn an_unavailable_gemini_falls_over_and_a_bad_request_is_an_openai_400() {
    let (gemini, openai) = (MockGemini::start().await, MockOpenAi::start().await);
    let gw = gateway(&gemini, "gemini-busy", Some(&openai)).await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-target"], "backup/gpt-fallback");

    let gw = gateway(&gemini, "gemini-bad", None).await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    let e = openai_error(r, 400).await;
    assert_eq!(e["message"], "Invalid JSON payload received.");
    assert_eq!(e["type"], "invalid_request_error");
}

#[tokio::test]
async fn a_gemini_stream_ending_without_a_finish_reason_is_reported_as_interrupted() {
    let gemini = MockGemini::start().await;
    let gw = gateway(&gemini, "gemini-cut", None).await;
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let evs = events(&post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap());
    assert_eq!(evs[1]["choices"][0]["delta"]["content"], "Ciao");
    assert_eq!(evs.last().unwrap()["error"]["code"], "stream_interrupted");
}

#[tokio::test]
async fn embeddings_go_through_batch_embed_contents_as_floats_or_base64() {
    let gemini = MockGemini::start().await;
    let gw = gateway(&gemini, "text-embedding-004", None).await;
    let r = post(&gw, "/v1/embeddings", &json!({"model": "m", "input": ["a", "b"], "dimensions": 2})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][1]["embedding"], json!([1.0, 1.25]));
    assert_eq!(v["data"][1]["index"], 1);
    let seen = &gemini.requests()[0];
    assert_eq!(seen.path, "/v1beta/models/text-embedding-004:batchEmbedContents");
    assert_eq!(seen.json()["requests"][0]["outputDimensionality"], 2);

    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "m", "input": "a", "encoding_format": "base64", "dimensions": 2}),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    // [0.0, 0.25] as little-endian f32.
    assert_eq!(v["data"][0]["embedding"], "AAAAAAAAgD4=");
    let lines = crate::access_lines_matching(&gw, 2, |l| l["path"] == "/v1/embeddings").await;
    assert_eq!(lines.len(), 2);
    assert!(
        lines.iter().all(|l| l["usage_estimated"] == true),
        "Gemini reports no usage: ours is an estimate"
    );
}
