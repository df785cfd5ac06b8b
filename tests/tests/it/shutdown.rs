//! Signals: SIGTERM drains in-flight streams, then exits; SIGINT exits at once.

use std::time::Duration;

use serde_json::json;
use sluice_tests::openai::MockOpenAi;

use crate::{gateway_with_chain, post};

#[tokio::test]
async fn sigterm_lets_a_stream_in_flight_finish_then_exits() {
    let mock = MockOpenAi::start().await;
    let mut gw = gateway_with_chain(&[&mock], &[(0, "paced")], "[server]\nshutdown_grace = \"10s\"\n").await;
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    gw.signal(libc::SIGTERM);
    let text = resp.text().await.expect("the stream completes");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let took = gw.wait_exit(Duration::from_secs(8)).await.expect("exits after draining");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let log = gw.access_log();
    assert_eq!(
        log.lines().filter(|l| l.contains("/v1/chat/completions")).count(),
        1,
        "access log flushed at exit: {log}"
    );
}

#[tokio::test]
async fn sigterm_on_an_idle_gateway_and_sigint_exit_quickly() {
    let mock = MockOpenAi::start().await;
    let mut gw = gateway_with_chain(&[&mock], &[(0, "ok")], "[server]\nshutdown_grace = \"30s\"\n").await;
    gw.signal(libc::SIGTERM);
    assert!(
        gw.wait_exit(Duration::from_secs(5)).await.is_some(),
        "an idle gateway does not wait out its grace"
    );
    let mut gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    gw.signal(libc::SIGINT);
    let exited = gw.wait_exit(Duration::from_secs(3)).await;
    assert!(exited.is_some(), "SIGINT stops at once; stderr: {}\nthreads: {}", gw.stderr(), gw.threads());
}
