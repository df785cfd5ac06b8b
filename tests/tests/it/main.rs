//! Sluice's integration tests: the real binary on a real port, mock providers on theirs.
//! One file per feature; every test owns its gateway and mocks, so they run in parallel.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed step must stop the test loudly"
)]

mod anthropic;
mod api;
mod audit;
mod azure;
mod budgets;
mod config;
mod conformance;
mod fallback;
mod gemini;
mod ledger;
mod limits;
mod managed_keys;
mod messages;
mod observability;
mod pii;
mod residency;
mod shutdown;
mod streaming;
mod tls;
mod vault;
mod workers;

use serde_json::{Value, json};
use sluice_tests::gateway::TestGateway;
use sluice_tests::openai::MockOpenAi;

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice-under-test");
pub const KEY: &str = "sk-sluice-test-key-0001";

/// A config with the test key, a provider per mock (`p0`, `p1`, ...), and `extra` appended.
pub fn config(providers: &[String], extra: &str) -> String {
    let mut c = format!(
        "[[keys.key]]\nid = \"test\"\ndemo_key = \"{KEY}\"\norg = \"o\"\nteam = \"t\"\napp = \"a\"\n\n"
    );
    for (i, url) in providers.iter().enumerate() {
        c.push_str(&format!(
            "[providers.p{i}]\nkind = \"openai\"\nbase_url = \"{url}\"\napi_key = \"file:{{dir}}/provider.key\"\n\
             first_byte_timeout = \"1s\"\nidle_timeout = \"2s\"\nhealth_check = {{ enabled = false }}\n\n"
        ));
    }
    c.push_str(extra);
    c
}

/// A gateway whose alias `m` goes through `chain` (pairs of provider index and upstream model), in order.
pub async fn gateway_with_chain(mocks: &[&MockOpenAi], chain: &[(usize, &str)], extra: &str) -> TestGateway {
    let urls: Vec<String> = mocks.iter().map(|m| m.url()).collect();
    let targets: Vec<String> =
        chain.iter().map(|(p, model)| format!("{{ provider = \"p{p}\", model = \"{model}\" }}")).collect();
    let models = format!("[models.m]\ntargets = [{}]\n{extra}", targets.join(", "));
    TestGateway::start(BIN, &config(&urls, &models)).await
}

/// A Redis key prefix no other test (or run) shares.
pub fn redis_prefix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("sluice-test-{}-{nanos}:", std::process::id())
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().expect("client")
}

pub async fn post(gw: &TestGateway, path: &str, body: &Value) -> reqwest::Response {
    client().post(gw.url(path)).bearer_auth(KEY).json(body).send().await.expect("request")
}

pub fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hello there"}]})
}

/// Asserts OpenAI's error shape and returns the `error` object.
pub async fn openai_error(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let v: Value = resp.json().await.expect("json error body");
    let e = v["error"].clone();
    for field in ["message", "type", "param", "code"] {
        assert!(e.get(field).is_some(), "error lacks `{field}`: {v}");
    }
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    e
}

/// The JSON payloads of an SSE body, `[DONE]` left out.
pub fn sse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("each event is JSON"))
        .collect()
}

/// A gateway whose alias `m` goes to `model` on the provider `[providers.subject]` described by
/// `table` (kind, base_url, ...), then, when given, to an OpenAI `backup`.
pub async fn subject_gateway(table: &str, model: &str, backup: Option<&MockOpenAi>) -> TestGateway {
    let mut text = format!(
        "[[keys.key]]\nid = \"test\"\ndemo_key = \"{KEY}\"\norg = \"o\"\nteam = \"t\"\napp = \"a\"\n\
         [providers.subject]\n{table}\napi_key = \"file:{{dir}}/provider.key\"\nhealth_check = {{ enabled = false }}\n"
    );
    let mut targets = format!("{{ provider = \"subject\", model = \"{model}\" }}");
    if let Some(openai) = backup {
        text.push_str(&format!(
            "[providers.backup]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"file:{{dir}}/provider.key\"\n\
             health_check = {{ enabled = false }}\n",
            openai.url()
        ));
        targets.push_str(", { provider = \"backup\", model = \"gpt-fallback\" }");
    }
    text.push_str(&format!("[models.m]\ntargets = [{targets}]\n"));
    TestGateway::start(BIN, &text).await
}

/// The access-log lines as JSON.
pub fn access_lines(gw: &TestGateway) -> Vec<Value> {
    gw.access_log().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Waits (up to 5 s) until `count` access-log lines match `pred`: the line is written when the
/// gateway finishes the request, which can be just after the client saw the last byte.
pub async fn access_lines_matching(
    gw: &TestGateway,
    count: usize,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let lines: Vec<Value> = access_lines(gw).into_iter().filter(|l| pred(l)).collect();
        if lines.len() >= count || std::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The access-log line of the one request to `path`.
pub async fn access_line(gw: &TestGateway, path: &str) -> Value {
    let lines = access_lines_matching(gw, 1, |l| l["path"] == path).await;
    assert_eq!(lines.len(), 1, "one access-log line for {path}");
    lines[0].clone()
}
