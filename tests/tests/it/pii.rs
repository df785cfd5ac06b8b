//! Plugin `pii` through the port: blocked kinds never reach a provider, redacted ones reach it as
//! tokens, on every endpoint that carries text.

use serde_json::json;
use sluice_tests::gateway::TestGateway;
use sluice_tests::openai::MockOpenAi;

use crate::{gateway_with_chain, openai_error, post};

#[tokio::test]
async fn a_card_number_is_blocked_before_any_provider_sees_it() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "charge 4111 1111 1111 1111 please"}]}]});
    let e = openai_error(post(&gw, "/v1/chat/completions", &body).await, 400).await;
    assert_eq!(e["code"], "pii_blocked");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("card") && !msg.contains("1111"), "the kind, never the value: {msg}");
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn emails_and_phones_reach_the_provider_as_tokens_on_every_text_field() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "Reply to jane@example.com"},
        {"role": "user", "content": "Call me at +14155552671 or mail jane@example.com"},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"owner\": \"bob@example.org\"}"}]});
    let r = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-pii-redacted"], "email, phone");
    let sent = mock.requests().last().unwrap().json();
    let texts: Vec<&str> =
        sent["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["Reply to [EMAIL_1]", "Call me at [PHONE_1] or mail [EMAIL_1]", "{\"owner\": \"[EMAIL_2]\"}"]
    );
    assert!(!sent.to_string().contains("example.com"));

    let r = post(&gw, "/v1/embeddings", &json!({"model": "m", "input": ["mail jane@example.com"]})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(mock.requests().last().unwrap().json()["input"][0], "mail [EMAIL_1]");
    let r = post(&gw, "/v1/completions", &json!({"model": "m", "prompt": "key AKIAIOSFODNN7EXAMPLE"})).await;
    assert_eq!(openai_error(r, 400).await["code"], "pii_blocked");
}

#[tokio::test]
async fn a_teams_own_actions_replace_the_defaults() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(
        &[&mock],
        &[(0, "ok")],
        "[pii]\nteams.t = { email = \"off\", ssn = \"redact\" }\n",
    )
    .await;
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "jane@example.com 123-45-6789"}]});
    assert_eq!(post(&gw, "/v1/chat/completions", &body).await.status(), 200);
    assert_eq!(mock.requests().last().unwrap().json()["messages"][0]["content"], "jane@example.com [SSN_1]");
}

#[tokio::test]
async fn a_scanner_failure_refuses_the_request_and_nothing_is_forwarded() {
    let mock = MockOpenAi::start().await;
    let models = "[models.m]\ntargets = [{ provider = \"p0\", model = \"ok\" }]\n";
    let config = crate::config(&[mock.url()], models);
    // Debug builds (the tests') let a scan fail on demand; release builds have no such switch.
    let gw = TestGateway::start_with_env(crate::BIN, &config, &[("SLUICE_FAULTS", "pii_scan")]).await;
    let clean = json!({"model": "m", "messages": [{"role": "user", "content": "nothing personal here"}]});
    let r = post(&gw, "/v1/chat/completions", &clean).await;
    assert_eq!(r.headers()["content-type"], "application/json");
    let e = openai_error(r, 500).await;
    assert_eq!(e["code"], "pii_scan_failed");
    assert!(e["message"].as_str().unwrap().contains("was not sent"), "{e}");
    let embed = json!({"model": "m", "input": ["also clean"]});
    assert_eq!(openai_error(post(&gw, "/v1/embeddings", &embed).await, 500).await["code"], "pii_scan_failed");
    assert_eq!(mock.hits(), 0, "an unscanned text never reaches a provider");
    let line = crate::access_line(&gw, "/v1/chat/completions").await;
    assert_eq!(line["status"], 500);
    let log = std::fs::read_to_string(gw.dir().join("stderr.log")).unwrap();
    assert!(log.contains("the scanner failed on request") && log.contains("refusing it"), "{log}");
}

/// The text of an SSE body's content deltas, in order.
fn streamed_text(sse: &str) -> String {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn answers_are_scanned_and_a_value_split_across_stream_chunks_is_still_caught() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "leak")], "[pii]\nresponses = true\n").await;
    let expected = "Contact [EMAIL_1] or use card [CARD_1], thanks.";
    let r = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], expected);

    // Streamed 4 bytes a chunk: every value arrives split, and none of it goes out.
    let stream = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let sse = post(&gw, "/v1/chat/completions", &stream).await.text().await.unwrap();
    for raw in ["jane", "example.com", "4111", "1111"] {
        assert!(!sse.contains(raw), "`{raw}` reached the client: {sse}");
    }
    assert_eq!(streamed_text(&sse), expected);
    assert!(sse.ends_with("data: [DONE]\n\n"), "{sse}");
    // A hold-back just longer than the longest value: the answer still streams out piece by piece
    // as it comes, and a value is released only once it is whole and replaced.
    let tight =
        gateway_with_chain(&[&mock], &[(0, "leak")], "[pii]\nresponses = true\nresponse_holdback = 24\n")
            .await;
    let sse = post(&tight, "/v1/chat/completions", &stream).await.text().await.unwrap();
    for raw in ["jane", "example.com", "4111", "1111"] {
        assert!(!sse.contains(raw), "`{raw}` reached the client: {sse}");
    }
    assert_eq!(streamed_text(&sse), expected);
    let nonempty = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()))
        .count();
    assert!(nonempty >= 5, "the answer went out in {nonempty} pieces, not streamed: {sse}");

    // Off by default: the same answer passes as the provider wrote it.
    let plain = gateway_with_chain(&[&mock], &[(0, "leak")], "").await;
    let sse = post(&plain, "/v1/chat/completions", &stream).await.text().await.unwrap();
    assert_eq!(streamed_text(&sse), sluice_tests::openai::LEAK);
}

#[tokio::test]
async fn an_answer_that_cannot_be_scanned_is_withheld() {
    let mock = MockOpenAi::start().await;
    let models = "[models.m]\ntargets = [{ provider = \"p0\", model = \"leak\" }]\n[pii]\nresponses = true\n";
    let config = crate::config(&[mock.url()], models);
    let gw = TestGateway::start_with_env(crate::BIN, &config, &[("SLUICE_FAULTS", "pii_answer_scan")]).await;
    let whole = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let e = openai_error(post(&gw, "/v1/chat/completions", &whole).await, 500).await;
    assert_eq!(e["code"], "pii_scan_failed");
    let stream = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let sse = post(&gw, "/v1/chat/completions", &stream).await.text().await.unwrap();
    assert!(!sse.contains("jane") && !sse.contains("4111"), "{sse}");
    assert!(sse.contains("stream_interrupted") && sse.contains("could not check"), "{sse}");
}

#[tokio::test]
async fn an_anthropic_client_gets_the_checked_answer_too() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "leak")], "[pii]\nresponses = true\n").await;
    let body = json!({"model": "m", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let sse = crate::client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", crate::KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for raw in ["jane", "example.com", "4111"] {
        assert!(!sse.contains(raw), "`{raw}` reached the client: {sse}");
    }
    let text: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["type"] == "content_block_delta")
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Contact [EMAIL_1] or use card [CARD_1], thanks.", "{sse}");
}
