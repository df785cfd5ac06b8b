//! What platform engineers watch: /health, /metrics, request ids, Server-Timing, the access log.

use serde_json::Value;
use sluice_tests::gateway::TestGateway;
use sluice_tests::openai::{MockOpenAi, refused_url};

use crate::{BIN, KEY, access_lines_matching, chat_body, client, config, gateway_with_chain, post};

#[tokio::test]
async fn health_reports_probes_per_endpoint_and_goes_down_when_a_model_has_no_usable_target() {
    let mock = MockOpenAi::start().await;
    let text = config(&[], "")
        + &format!(
            "[providers.live]\nkind = \"openai_compatible\"\nbase_url = \"{}\"\nhealth_check = {{ interval = \"200ms\" }}\n\
             [providers.dead]\nkind = \"openai_compatible\"\nbase_url = \"{}\"\nhealth_check = {{ interval = \"200ms\" }}\n\
             [models.good]\ntargets = [{{ provider = \"live\", model = \"ok\" }}]\n\
             [models.bad]\ntargets = [{{ provider = \"dead\", model = \"ok\" }}]\n",
            mock.url(),
            refused_url()
        );
    let gw = TestGateway::start(BIN, &text).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let r = client().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["status"], "down");
    let target =
        |name: &str| h["targets"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap().clone();
    let live = target("live/ok");
    assert_eq!(live["endpoints"][0]["healthy"], true);
    assert_eq!(live["endpoints"][0]["last_probe"]["ok"], true);
    assert!(live["endpoints"][0]["last_probe"]["latency_ms"].as_f64().is_some());
    let dead = target("dead/ok");
    assert_eq!(dead["endpoints"][0]["healthy"], false);
    assert_eq!(dead["endpoints"][0]["last_probe"]["ok"], false);
    assert!(mock.probes() >= 2, "the live endpoint is probed periodically");
    assert_eq!(mock.requests()[..].len(), 0);
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("good")).await.status(), 200);
    let r = post(&gw, "/v1/chat/completions", &chat_body("bad")).await;
    assert_eq!(r.status(), 503, "no healthy endpoint: unavailable");
}

#[tokio::test]
async fn metrics_count_requests_tokens_attempts_and_gateway_overhead() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let gw = gateway_with_chain(&[&a, &b], &[(0, "fail-500"), (1, "ok")], "").await;
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    // Metrics are recorded when the request ends, which can be just after the client saw its answer.
    let mut text = String::new();
    for _ in 0..50 {
        text = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if text.contains("sluice_retries_total{model=\"m\"}") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for needle in [
        "sluice_requests_total{endpoint=\"/v1/chat/completions\",model=\"m\",status=\"200\",target=\"p1/ok\"} 1",
        "sluice_tokens_total{kind=\"prompt\",model=\"m\",target=\"p1/ok\"} 11",
        "sluice_tokens_total{kind=\"completion\",model=\"m\",target=\"p1/ok\"} 7",
        "sluice_upstream_attempts_total{outcome=\"bad_status\",target=\"p0/fail-500\"} 1",
        "sluice_upstream_attempts_total{outcome=\"ok\",target=\"p1/ok\"} 1",
        "sluice_retries_total{model=\"m\"} 1",
        "sluice_gateway_overhead_seconds_count 1",
        "sluice_upstream_ttfb_seconds_count{target=\"p1/ok\"} 1",
        "sluice_circuit_state{target=\"p0/fail-500\"} 0",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

/// A model name a client sends that is no configured alias is answered 404 and counted under
/// `model="unknown"`: names never become series of their own, so /metrics stays bounded whatever
/// clients send (the access log keeps the name as sent).
#[tokio::test]
async fn metrics_count_unknown_models_under_one_label_and_never_under_the_names_sent() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    for name in ["no-such-model-7f3a", "no-such-model-c41e", "no-such-model-7f3a"] {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body(name)).await.status(), 404);
    }
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    let needles = [
        "sluice_requests_total{endpoint=\"/v1/chat/completions\",model=\"unknown\",status=\"404\",target=\"none\"} 3",
        "sluice_requests_total{endpoint=\"/v1/chat/completions\",model=\"m\",status=\"200\",target=\"p0/ok\"} 1",
        "sluice_request_duration_seconds_count{endpoint=\"/v1/chat/completions\",model=\"unknown\"} 3",
    ];
    let mut text = String::new();
    for _ in 0..50 {
        text = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if needles.iter().all(|n| text.contains(n)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for needle in needles {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    assert!(!text.contains("no-such-model"), "a name sent became a label:\n{text}");
    let lines = access_lines_matching(&gw, 1, |l| l["model"] == "no-such-model-c41e").await;
    assert_eq!(lines.len(), 1, "the access log keeps the name as sent");
    assert_eq!(lines[0]["status"], 404);
}

#[tokio::test]
async fn every_response_carries_the_request_id_and_server_timing_and_one_access_line() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-request-id", "trace-abc-123")
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc-123");
    let timing = r.headers()["server-timing"].to_str().unwrap().to_owned();
    assert!(timing.contains("gateway;dur=") && timing.contains("upstream;dur="), "{timing}");
    // Milliseconds with three decimals: `gateway;dur=0.042, upstream;dur=1.305`.
    for metric in timing.split(", ") {
        let ms = metric.split_once(";dur=").map_or("", |(_, ms)| ms);
        let (whole, fraction) = ms.split_once('.').unwrap_or_default();
        assert!(
            whole.parse::<u64>().is_ok() && fraction.len() == 3 && fraction.parse::<u16>().is_ok(),
            "{timing}"
        );
    }
    assert!(r.headers()["x-sluice-overhead-us"].to_str().unwrap().parse::<u64>().is_ok());
    let r404 = client().get(gw.url("/nope")).send().await.unwrap();
    assert!(r404.headers().contains_key("x-request-id"));
    access_lines_matching(&gw, 1, |l| l["request_id"] == "trace-abc-123").await;
    // Past another flush interval, still exactly one line for the request.
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let mine = access_lines_matching(&gw, 1, |l| l["request_id"] == "trace-abc-123").await;
    assert_eq!(mine.len(), 1);
    let l = &mine[0];
    assert_eq!(l["status"], 200);
    assert_eq!(l["model"], "m");
    assert_eq!(l["target"], "p0/ok");
    assert_eq!(l["key_id"], "test");
    assert_eq!(l["team"], "t");
    assert!(l["overhead_us"].as_u64().is_some());
    let ts = l["ts"].as_str().unwrap();
    assert!(ts.len() == 24 && ts.starts_with("20") && &ts[10..11] == "T" && ts.ends_with('Z'), "{ts}");
    let client = l["client"].as_str().and_then(|c| c.parse::<std::net::SocketAddr>().ok());
    assert!(client.is_some_and(|c| c.ip() == std::net::Ipv4Addr::LOCALHOST && c.port() > 0), "{l}");
    // Dollars with six decimals, as in /admin/spend.
    let usd = l["cost_usd"].as_str().unwrap();
    let (whole, micros) = usd.split_once('.').unwrap();
    assert!(whole.parse::<u64>().is_ok() && micros.len() == 6 && micros.parse::<u64>().is_ok(), "{usd}");
    assert_eq!(mock.requests()[0].header("x-request-id"), Some("trace-abc-123"));
}
