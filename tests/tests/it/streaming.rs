//! SSE: forwarded as it arrives, usage always known, cut streams end cleanly.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice_tests::openai::MockOpenAi;

use crate::{access_line, gateway_with_chain, post};

fn stream_body(model: &str, include_usage: Option<bool>) -> Value {
    let mut b =
        json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Hello there"}]});
    if let Some(u) = include_usage {
        b["stream_options"] = json!({"include_usage": u});
    }
    b
}

/// The `data:` payloads of an SSE body.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
}

#[tokio::test]
async fn streams_are_forwarded_chunk_by_chunk_as_they_arrive() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "paced")], "").await;
    let started = Instant::now();
    let resp = post(&gw, "/v1/chat/completions", &stream_body("m", None)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let mut body = resp.bytes_stream();
    let mut first_at = None;
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        if first_at.is_none() && chunk.windows(5).any(|w| w == b"\"w0 \"") {
            first_at = Some(started.elapsed());
        }
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let total = started.elapsed();
    // 20 chunks 25 ms apart: the first word must arrive long before the stream ends.
    let first_at = first_at.expect("first word seen");
    assert!(total >= Duration::from_millis(450), "{total:?}");
    assert!(
        first_at + Duration::from_millis(250) < total,
        "first word at {first_at:?} of {total:?}: buffered?"
    );
    assert_eq!(events(&text).last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn usage_is_asked_for_and_hidden_from_clients_that_did_not_ask() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let text = post(&gw, "/v1/chat/completions", &stream_body("m", None)).await.text().await.unwrap();
    let evs = events(&text);
    assert_eq!(evs.last().unwrap(), "[DONE]");
    assert!(
        !evs.iter().any(|e| e.contains("\"choices\":[]")),
        "no usage chunk for a client that did not ask: {text}"
    );
    let sent = mock.requests()[0].json();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let line = access_line(&gw, "/v1/chat/completions").await;
    assert_eq!(line["prompt_tokens"], 11);
    assert_eq!(line["completion_tokens"], 7);
    assert_eq!(line["usage_estimated"], false);
}

#[tokio::test]
async fn clients_that_ask_for_usage_get_the_usage_chunk() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let text = post(&gw, "/v1/chat/completions", &stream_body("m", Some(true))).await.text().await.unwrap();
    let evs = events(&text);
    let usage: Value = serde_json::from_str(&evs[evs.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 18);
}

#[tokio::test]
async fn without_usage_from_the_upstream_it_is_estimated_and_marked_so() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "no-usage")], "").await;
    let text = post(&gw, "/v1/chat/completions", &stream_body("m", None)).await.text().await.unwrap();
    assert_eq!(events(&text).last().unwrap(), "[DONE]");
    let line = access_line(&gw, "/v1/chat/completions").await;
    assert_eq!(line["usage_estimated"], true);
    assert!(line["completion_tokens"].as_u64().unwrap() >= 5, "{line}");
    assert!(line["prompt_tokens"].as_u64().unwrap() >= 2, "{line}");
}

#[tokio::test]
async fn a_stream_cut_by_the_upstream_ends_with_an_error_event_and_a_clean_close() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "cut")], "").await;
    let resp = post(&gw, "/v1/chat/completions", &stream_body("m", None)).await;
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text()).await.expect("no hang");
    let text = text.map_err(|e| format!("{e:?}")).expect("clean close");
    let evs = events(&text);
    let last: Value = serde_json::from_str(evs.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted");
    assert_eq!(last["error"]["type"], "api_error");
    assert!(
        evs.iter().any(|e| e.contains("\"role\":\"assistant\"")),
        "what came before the cut was delivered"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_streams_all_complete() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let client = crate::client();
    let url = gw.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": format!("n{i}")}]});
                let r = client.post(url).bearer_auth(crate::KEY).json(&body).send().await.unwrap();
                let status = r.status();
                let text = r.text().await.unwrap();
                assert_eq!(status, 200, "{text}");
                text
            })
        })
        .collect();
    for t in tasks {
        let text = t.await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
    assert_eq!(mock.hits(), 200);
}
