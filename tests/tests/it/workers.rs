//! Worker threads: one Pingora service per thread, each with its own listening socket.

use std::time::Duration;

use sluice_tests::openai::MockOpenAi;

use crate::{BIN, KEY, chat_body, gateway_with_chain};

#[tokio::test]
async fn every_worker_takes_connections_and_the_gateway_stops_cleanly() {
    let mock = MockOpenAi::start().await;
    let mut gw = gateway_with_chain(&[&mock], &[(0, "ok")], "[server]\nthreads = 3\n").await;
    // Worker threads are named after their service: `sluice-0`, `sluice-1`, ...
    let workers = |gw: &sluice_tests::gateway::TestGateway| {
        let mut w = gw.thread_wakeups("sluice-");
        w.retain(|name, _| name["sluice-".len()..].parse::<usize>().is_ok());
        w
    };
    let before = workers(&gw);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        ["sluice-0", "sluice-1", "sluice-2"],
        "one thread per worker"
    );
    // A new connection per request: the kernel spreads them over the workers' sockets.
    for _ in 0..60 {
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let resp =
            client.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&chat_body("m")).send().await;
        assert_eq!(resp.expect("request").status(), 200);
    }
    let after = workers(&gw);
    for (name, n) in &after {
        assert!(*n > before[name], "{name} served no connection: {before:?} -> {after:?}");
    }
    assert_eq!(mock.hits(), 60);
    // Upstream connections are pooled per worker and reused: one each at most for requests that
    // come one at a time (an idle connection watched from another thread is often still locked
    // when it is wanted again, and a new one gets opened instead).
    assert!(mock.connections() <= 3, "{} upstream connections for 60 requests", mock.connections());
    assert!(!gw.stderr().contains("failed to acquire reusable stream"), "{}", gw.stderr());
    // Each worker owns its socket: nothing is closed twice on the way out (a debug build aborts).
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit_status(Duration::from_secs(8)).await.expect("exits");
    assert!(status.success(), "{status:?}; stderr: {}", gw.stderr());
    assert_eq!(gw.access_log().lines().filter(|l| l.contains("/v1/chat/completions")).count(), 60);
}

#[tokio::test]
async fn a_port_another_process_holds_fails_the_start_with_a_clear_error() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let admin = sluice_tests::gateway::free_port();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["--listen", &addr.to_string(), "--admin-listen", &format!("127.0.0.1:{admin}")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("server.listen: cannot listen on {addr}")), "{err}");
    drop(held);
}

/// Timeouts of a second or more run on Tokio's timers: Pingora's timer thread (awake 100 times a
/// second for the life of the process once started) never starts, and an idle worker wakes only
/// for the timer it keeps a second ahead (engine/gateway/src/server.rs, `keep_a_timer_ahead`).
#[tokio::test]
async fn timeouts_start_no_timer_thread_and_an_idle_worker_wakes_about_once_a_second() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    for stream in [false, true, false] {
        let mut body = chat_body("m");
        body["stream"] = stream.into();
        let resp = crate::post(&gw, "/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 200);
        assert!(!resp.text().await.unwrap().is_empty());
    }
    assert_eq!(mock.hits(), 3);
    assert!(gw.thread_wakeups("Timer").is_empty(), "threads: {}", gw.threads());
    let before = gw.thread_wakeups("sluice-");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = gw.thread_wakeups("sluice-");
    assert!(!after.is_empty());
    for (name, n) in &after {
        let woke = n - before.get(name).copied().unwrap_or(0);
        // About three in three seconds; Pingora's timer thread alone would wake 300 times.
        assert!(woke <= 12, "{name} woke {woke} times in 3 s while idle");
    }
    assert!(gw.thread_wakeups("Timer").is_empty(), "threads: {}", gw.threads());
}
