//! Fallback chains, retries and circuit breakers: counted on the mocks, not assumed.

use std::time::Duration;

use serde_json::Value;
use sluice_tests::gateway::TestGateway;
use sluice_tests::openai::{MockOpenAi, refused_url};

use crate::{BIN, chat_body, config, gateway_with_chain, openai_error, post};

#[tokio::test]
async fn a_500_falls_over_to_the_next_target() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let gw = gateway_with_chain(&[&a, &b], &[(0, "fail-500"), (1, "ok")], "").await;
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-target"], "p1/ok");
    assert_eq!(r.headers()["x-sluice-attempts"], "2");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn a_refused_connection_falls_over_to_the_next_target() {
    let b = MockOpenAi::start().await;
    let gw = TestGateway::start(
        BIN,
        &config(
            &[refused_url(), b.url()],
            "[models.m]\ntargets = [{ provider = \"p0\", model = \"ok\" }, { provider = \"p1\", model = \"ok\" }]\n",
        ),
    )
    .await;
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-target"], "p1/ok");
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn no_first_byte_within_the_deadline_falls_over() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let gw = gateway_with_chain(&[&a, &b], &[(0, "slow"), (1, "ok")], "").await;
    let started = std::time::Instant::now();
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-target"], "p1/ok");
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "the 1 s first-byte deadline cut the slow target"
    );
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn a_429_with_retry_after_takes_the_target_out_of_rotation_for_that_long() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let gw = gateway_with_chain(&[&a, &b], &[(0, "rate-429"), (1, "ok")], "").await;
    for _ in 0..3 {
        let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-sluice-target"], "p1/ok");
    }
    assert_eq!(a.hits(), 1, "after its 429 (Retry-After: 2) the first target is skipped");
    assert_eq!(b.hits(), 3);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(a.hits(), 2, "back in rotation once Retry-After has passed");
}

#[tokio::test]
async fn the_circuit_opens_after_three_failures_then_one_probe_closes_it() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.force(Some("fail-500"));
    let gw = gateway_with_chain(&[&a, &b], &[(0, "ok"), (1, "ok")], "[routing]\ncooldown = \"1s\"\n").await;
    for _ in 0..6 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    }
    assert_eq!(a.hits(), 3, "three failures open the circuit; later requests skip the target");
    assert_eq!(b.hits(), 6);
    let health: Value = crate::client().get(gw.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    let circuit = |h: &Value, name: &str| {
        h["targets"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()["circuit"].clone()
    };
    assert_eq!(circuit(&health, "p0/ok"), "open");

    a.force(None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.headers()["x-sluice-target"], "p0/ok", "the half-open probe goes to the recovered target");
    assert_eq!(a.hits(), 4);
    let health: Value = crate::client().get(gw.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(circuit(&health, "p0/ok"), "closed");
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn when_every_target_fails_the_error_names_what_was_tried() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let gw = gateway_with_chain(&[&a, &b], &[(0, "fail-500"), (1, "fail-500")], "").await;
    let e = openai_error(post(&gw, "/v1/chat/completions", &chat_body("m")).await, 502).await;
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("p0/fail-500") && msg.contains("p1/fail-500") && msg.contains("HTTP 500"), "{msg}");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn when_every_target_times_out_the_answer_is_504() {
    let a = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&a], &[(0, "slow")], "").await;
    let e = openai_error(post(&gw, "/v1/chat/completions", &chat_body("m")).await, 504).await;
    assert!(e["message"].as_str().unwrap().contains("no first byte"));
}

#[tokio::test]
async fn when_only_rate_limited_targets_remain_the_answer_is_503_with_retry_after() {
    let a = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&a], &[(0, "rate-429")], "").await;
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.headers()["retry-after"], "2");
    openai_error(r, 503).await;
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert!(r.headers().contains_key("retry-after"));
    let e = openai_error(r, 503).await;
    assert!(e["message"].as_str().unwrap().contains("rate limited"));
    assert_eq!(a.hits(), 1, "the cooling target was not asked again");
}

#[tokio::test]
async fn attempts_are_bounded_by_max_attempts() {
    let (a, b, c) = (MockOpenAi::start().await, MockOpenAi::start().await, MockOpenAi::start().await);
    let gw = TestGateway::start(
        BIN,
        &config(
            &[a.url(), b.url(), c.url()],
            "[routing]\nmax_attempts = 2\n[models.m]\ntargets = [{ provider = \"p0\", model = \"fail-500\" }, \
             { provider = \"p1\", model = \"fail-500\" }, { provider = \"p2\", model = \"ok\" }]\n",
        ),
    )
    .await;
    openai_error(post(&gw, "/v1/chat/completions", &chat_body("m")).await, 502).await;
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 0));
}

#[tokio::test]
async fn weights_spread_traffic_inside_a_rank() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let gw = TestGateway::start(
        BIN,
        &config(
            &[a.url(), b.url()],
            "[models.m]\ntargets = [[{ provider = \"p0\", model = \"ok\", weight = 3 }, { provider = \"p1\", model = \"ok\", weight = 1 }]]\n",
        ),
    )
    .await;
    for _ in 0..200 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    }
    assert_eq!(a.hits() + b.hits(), 200);
    assert!((120..=180).contains(&a.hits()), "weight 3:1 gave {} : {}", a.hits(), b.hits());
}
