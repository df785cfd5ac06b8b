//! Plugin `limits` through the port (in-memory store, the embedded default's).

use std::time::Duration;

use sluice_tests::gateway::TestGateway;
use sluice_tests::openai::MockOpenAi;

use crate::{chat_body, gateway_with_chain, openai_error, post};

#[tokio::test]
async fn the_team_rpm_limit_answers_429_with_retry_after_and_rate_limit_headers() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "[limits]\nteam = { rpm = 2 }\n").await;
    for remaining in ["1", "0"] {
        let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "2");
        assert_eq!(r.headers()["x-ratelimit-remaining-requests"], remaining);
        assert!(r.headers()["x-ratelimit-reset-requests"].to_str().unwrap().ends_with('s'));
        assert_eq!(r.headers()["x-ratelimit-remaining"], remaining);
    }
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    // One request refills every 30 s; the first was admitted a moment ago (longer on a loaded machine).
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((25..=30).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let e = openai_error(r, 429).await;
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(e["code"], "rate_limit_exceeded");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("team `t`") && msg.contains("limit 2"), "{msg}");
    assert_eq!(mock.hits(), 2, "the refused request never reached the provider");
}

#[tokio::test]
async fn token_reservations_are_corrected_to_real_usage_when_the_request_ends() {
    token_corrections("").await;
}

#[tokio::test]
async fn token_corrections_over_redis_ride_along_with_the_next_reservation() {
    token_corrections(&format!(
        "[state]\nredis = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{}\"\n",
        crate::redis_prefix()
    ))
    .await;
}

async fn token_corrections(state: &str) {
    let mock = MockOpenAi::start().await;
    // Each request reserves its prompt estimate + 60 = 63 tokens; the mock reports 18 used, and the
    // reservation is corrected to that: 18, 36, 54 used after three requests, so the fourth (54 + 63)
    // no longer fits. Without the correction the second (63 + 63) would already be refused.
    let gw = gateway_with_chain(
        &[&mock],
        &[(0, "ok")],
        &format!("{state}[limits]\ndefault_max_tokens = 60\napp = {{ tpm = 100 }}\n"),
    )
    .await;
    for i in 0..3 {
        let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(r.status(), 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = openai_error(post(&gw, "/v1/chat/completions", &chat_body("m")).await, 429).await;
    assert!(e["message"].as_str().unwrap().contains("TPM"), "{e}");
    assert_eq!(mock.hits(), 3);
}

/// Two gateway instances sharing the test Redis under a fresh key prefix, with `limits` as the
/// body of their `[limits]` table.
async fn two_instances(mock: &MockOpenAi, limits: &str) -> (TestGateway, TestGateway) {
    let state = format!("redis = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{}\"", crate::redis_prefix());
    two_instances_on(mock, &state, limits).await
}

/// Two gateways with `[state]` `state` and `[limits]` `limits`.
async fn two_instances_on(mock: &MockOpenAi, state: &str, limits: &str) -> (TestGateway, TestGateway) {
    let extra = format!("[state]\n{state}\n[limits]\n{limits}\n");
    // 300 requests at once on a loaded 2-core machine: the mock may take longer than the usual
    // 1 s first-byte deadline, and a 504 (then a retry) would blur the count of admitted requests.
    let models = format!("[models.m]\ntargets = [{{ provider = \"p0\", model = \"ok\" }}]\n{extra}");
    let text = crate::config(&[mock.url()], &models)
        .replace("first_byte_timeout = \"1s\"", "first_byte_timeout = \"20s\"");
    let a = TestGateway::start(crate::BIN, &text).await;
    let b = TestGateway::start(crate::BIN, &text).await;
    (a, b)
}

#[tokio::test]
async fn two_instances_sharing_redis_share_one_limit() {
    let mock = MockOpenAi::start().await;
    let (a, b) = two_instances(&mock, "team = { rpm = 5 }").await;
    let mut admitted = 0;
    for i in 0..8 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = post(gw, "/v1/chat/completions", &chat_body("m")).await;
        match r.status().as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(admitted, 5, "the team's 5 per minute hold across both instances");
    assert_eq!(mock.hits(), 5);
    let h = health(&a).await;
    assert_eq!(h["redis"], "ok");
}

#[tokio::test]
async fn with_redis_unreachable_each_instance_still_limits_and_health_says_so() {
    let mock = MockOpenAi::start().await;
    let dead = sluice_tests::openai::refused_url().replace("http://", "redis://").replace("/v1", "");
    let extra = format!("[state]\nredis = \"{dead}\"\n[limits]\napp = {{ rpm = 2 }}\n");
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status().as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429], "the in-process limiter took over");
    let h = health(&gw).await;
    assert_eq!(h["status"], "degraded");
    assert!(h["redis"].as_str().unwrap().starts_with("unreachable"));
}

/// A Redis that keeps its connections and answers nothing (a stopped process) costs a request the
/// reservation's deadline (250 ms), not a hang, and once three did, the next second's not even that:
/// the in-process limiter and spend counters answer, `/health` says so, and the shared limit is
/// used again once Redis answers. (Budgets read and add spend in Redis on every request here.)
#[tokio::test]
async fn a_hung_redis_costs_a_request_the_deadline_not_a_hang() {
    let redis = sluice_tests::redis_server::RedisServer::start();
    let mock = MockOpenAi::start().await;
    // One worker thread: its connection is surely made before Redis hangs (the requests of a
    // thread's first moments wait for its first connection, up to 3 s). No leases: every request
    // is to ask Redis, as the one right after it hangs must.
    let extra = format!(
        "[server]\nthreads = 1\n[state]\nredis = \"{}\"\n[limits]\napp = {{ rpm = 100 }}\nlease_percent = 0\n\
         [budgets]\nteam = {{ daily = \"10.00\" }}\nrefresh = \"0ms\"\n",
        redis.url()
    );
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    assert_eq!(health(&gw).await["redis"], "ok");

    redis.pause();
    let r = crate::client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(crate::KEY)
        .json(&chat_body("m"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("an answer while Redis hangs");
    assert_eq!(r.status(), 200, "the in-process limiter answered");
    assert!(r.headers().contains_key("x-ratelimit-remaining-requests"));
    let h = health(&gw).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["redis"], "unreachable: limits enforced per instance");
    // Each would wait out the deadline if the gateway kept asking the hung Redis (20 x 250 ms);
    // after three failures in a row it leaves Redis alone for a second.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2_500), "20 requests took {took:?} while Redis hung");

    redis.resume();
    until_redis_is_used(&gw).await;
}

/// A Redis that is down when the gateway starts and comes up later is used once it answers (its
/// first connection failed; it is tried again every second): the requests meanwhile are answered
/// by the in-process limiter, without waiting on Redis.
#[tokio::test]
async fn a_redis_that_comes_up_after_the_gateway_is_used_once_it_answers() {
    let port = sluice_tests::free_port();
    let mock = MockOpenAi::start().await;
    let extra = format!("[state]\nredis = \"redis://127.0.0.1:{port}\"\n[limits]\napp = {{ rpm = 100 }}\n");
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    // No request waits out the command deadline (250 ms) on a connection known to be down.
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1_250), "10 requests took {took:?} while Redis was down");
    assert_eq!(health(&gw).await["redis"], "unreachable: limits enforced per instance");

    let _redis = sluice_tests::redis_server::RedisServer::start_on(port);
    until_redis_is_used(&gw).await;
}

/// A reservation past its deadline may still run in Redis (a slow Redis answers late): the token
/// corrections that rode along with it are not sent again, and the request the in-process limiter
/// admitted instead is corrected there, not in Redis. Either sent to Redis (again) a refund would
/// return capacity Redis never gave back or never took, and let the org past its limit.
#[tokio::test]
async fn a_reservation_redis_ran_too_late_is_not_refunded_twice() {
    let redis = sluice_tests::redis_server::RedisServer::start();
    let mock = MockOpenAi::start().await;
    // Each request reserves 63 tokens and is corrected to the 18 the mock reports (a refund of 45),
    // as in `token_corrections`; one worker thread, so one connection.
    let extra = format!(
        "[server]\nthreads = 1\n[state]\nredis = \"{}\"\n[limits]\ndefault_max_tokens = 60\n\
         app = {{ tpm = 100 }}\n",
        redis.url()
    );
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    // 63 reserved in Redis; the refund of 45 waits for the next reservation (made by the time the
    // first request is logged, surely within 100 ms).
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Redis stops answering: the second reservation, carrying the refund, passes its deadline and
    // the in-process limiter admits the request; once Redis goes on, the script runs after all:
    // 63 - 45 + 63 = 81 in Redis, where the second request's refund never arrives.
    redis.pause();
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    redis.resume();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 81 + 63 > 100: refused, 19 left (20 once a second's refill — 100 a minute — is counted).
    // With the first refund sent again (99 - 63 = 36) or the second sent to Redis (81 - 45), the
    // third request would have been admitted.
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    let remaining = r.headers()["x-ratelimit-remaining-tokens"].to_str().unwrap().to_owned();
    let e = openai_error(r, 429).await;
    assert!(e["message"].as_str().unwrap().contains("TPM"), "{e}");
    assert!(["19", "20", "21"].contains(&remaining.as_str()), "{remaining} tokens left");
    assert_eq!(health(&gw).await["redis"], "ok", "Redis answered the third reservation");
    assert_eq!(mock.hits(), 2);
}

/// Each worker thread connects to Redis as it starts, so that no request waits for the connection.
#[tokio::test]
async fn each_worker_thread_connects_to_redis_as_it_starts() {
    let redis = sluice_tests::redis_server::RedisServer::start();
    let mock = MockOpenAi::start().await;
    let extra = format!(
        "[server]\nthreads = 2\n[state]\nredis = \"{}\"\n[limits]\napp = {{ rpm = 100 }}\n",
        redis.url()
    );
    let _gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while redis.clients() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} connections, expected one per worker",
            redis.clients()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(redis.clients(), 2, "one connection per worker thread, shared by the stores");
    assert_eq!(mock.hits(), 0, "no request was needed");
}

/// `/health` of `gw`.
async fn health(gw: &TestGateway) -> serde_json::Value {
    crate::client().get(gw.url("/health")).send().await.unwrap().json().await.unwrap()
}

/// Sends requests (each served) until `/health` says Redis is used again; fails after 10 s.
async fn until_redis_is_used(gw: &TestGateway) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(post(gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
        if health(gw).await["redis"] == "ok" {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "Redis answers, the gateway never used it again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What became of requests sent at once.
#[derive(Debug, Default)]
struct Fired {
    admitted: u64,
    /// Refused by the limit (429).
    limited: u64,
    /// Refused because the store failed (503, failing closed): on a loaded machine a Redis call can
    /// pass its 250 ms deadline — and may still take its charge in Redis when it runs late.
    failed: u64,
}

impl Fired {
    /// Whether the limit itself was reached: with no store failure, `admitted` reaches `at_least`;
    /// with some, the charges of the failed calls may have taken that room, and a request refused
    /// by the limit shows it was reached.
    fn reached(&self, at_least: u64) -> bool {
        if self.failed == 0 { self.admitted >= at_least } else { self.limited > 0 }
    }
}

/// Sends `n` requests at once, alternating between `a` and `b`. Anything but a 200, a 429 or a 503
/// (fail closed) fails the test.
async fn fire(a: &TestGateway, b: &TestGateway, n: usize, body: &serde_json::Value) -> Fired {
    let client = crate::client();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = if i % 2 == 0 { a.url("/v1/chat/completions") } else { b.url("/v1/chat/completions") };
            let (client, body) = (client.clone(), body.clone());
            tokio::spawn(async move {
                let r = client.post(url).bearer_auth(crate::KEY).json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                r.bytes().await.unwrap();
                status
            })
        })
        .collect();
    let mut fired = Fired::default();
    for t in tasks {
        let status = t.await.unwrap();
        assert!(matches!(status, 200 | 429 | 503), "unexpected status {status}");
        match status {
            200 => fired.admitted += 1,
            429 => fired.limited += 1,
            _ => fired.failed += 1,
        }
    }
    fired
}

#[tokio::test]
async fn concurrent_load_on_two_instances_never_overshoots_the_shared_limit() {
    let mock = MockOpenAi::start().await;
    // Fail closed: on a loaded machine a Redis call can pass its 250 ms timeout, and the local
    // fallback would then limit per instance; this test is about the shared limit, so such a
    // request is refused (503) instead of counted against a local bucket.
    let (a, b) = two_instances(&mock, "team = { rpm = 100 }\non_store_failure = \"closed\"").await;
    let started = std::time::Instant::now();
    let fired = fire(&a, &b, 300, &chat_body("m")).await;
    let admitted = fired.admitted;
    // What the bucket holds (100) plus what refilled while the test ran (100 per minute).
    let refilled = (started.elapsed().as_secs_f64() * 100.0 / 60.0).ceil() as u64;
    let bound = 100 + refilled;
    // Reachable, less what a lease may still hold when the burst ends (the default 1 % of 100:
    // one request per instance; given back once it expires).
    assert!(fired.reached(100 - 2), "{fired:?}: the limit itself must be reachable");
    assert!(admitted as f64 <= bound as f64 * 1.01, "admitted {admitted}, at most {bound} (+1 %)");
    assert_eq!(mock.hits() as u64, admitted);
}

#[tokio::test]
async fn tokens_over_two_instances_never_overshoot_the_shared_tpm() {
    let mock = MockOpenAi::start().await;
    // Each request reserves its prompt estimate + 20 and uses 18 (the mock's usage): reservations
    // bound the real use, and the correction hands back the difference.
    let (a, b) = two_instances(&mock, "team = { tpm = 1000 }\non_store_failure = \"closed\"").await;
    let started = std::time::Instant::now();
    let body = serde_json::json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "Hello there"}]});
    let fired = fire(&a, &b, 200, &body).await;
    let admitted = fired.admitted;
    let used = admitted * 18;
    let refilled = (started.elapsed().as_secs_f64() * 1000.0 / 60.0).ceil() as u64;
    let bound = 1000 + refilled;
    assert!(
        used as f64 <= bound as f64 * 1.01,
        "{admitted} requests used {used} tokens, at most {bound} (+1 %)"
    );
    assert!(fired.reached(1000 / 23), "{fired:?}: the limit itself must be reachable");
    assert_eq!(mock.hits() as u64, admitted);
}

#[tokio::test]
async fn queue_holds_requests_until_capacity_returns_within_its_bound() {
    let mock = MockOpenAi::start().await;
    // 60 per minute: a full minute's worth at once, then one more every second. Of 63 requests sent
    // together, 3 must wait (GCRA cannot admit the 63rd before 3 s), and all fit the 6 s bound.
    let limits = "[limits]\nteam = { rpm = 60 }\nburst = { team = \"queue\" }\nqueue_max_wait = \"6s\"\n";
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], limits).await;
    let started = std::time::Instant::now();
    let client = crate::client();
    let tasks: Vec<_> = (0..63)
        .map(|_| {
            let (client, url) = (client.clone(), gw.url("/v1/chat/completions"));
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(crate::KEY)
                    .json(&chat_body("m"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "queued requests are served, not refused");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(2_500),
        "the last ones waited: {:?}",
        started.elapsed()
    );
    assert_eq!(mock.hits(), 63);
}

#[tokio::test]
async fn a_queue_that_cannot_be_served_in_time_is_a_429() {
    let mock = MockOpenAi::start().await;
    let limits = "[limits]\napp = { rpm = 2 }\nburst = { app = \"queue\" }\nqueue_max_wait = \"1s\"\n";
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], limits).await;
    for _ in 0..2 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    }
    let started = std::time::Instant::now();
    openai_error(post(&gw, "/v1/chat/completions", &chat_body("m")).await, 429).await;
    assert!(started.elapsed() < Duration::from_millis(900), "a 30 s wait does not fit 1 s: refused at once");
}

#[tokio::test]
async fn borrow_lets_an_app_past_its_limit_while_its_team_has_room() {
    let mock = MockOpenAi::start().await;
    let limits = "[limits]\nteam = { rpm = 3 }\napp = { rpm = 1 }\nburst = { app = \"borrow\" }\n";
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], limits).await;
    for i in 0..3 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200, "request {i}");
    }
    let e = openai_error(post(&gw, "/v1/chat/completions", &chat_body("m")).await, 429).await;
    assert!(e["message"].as_str().unwrap().contains("team `t`"), "{e}");
    assert_eq!(mock.hits(), 3);
}

#[tokio::test]
async fn with_redis_unreachable_fail_closed_refuses_with_503() {
    let mock = MockOpenAi::start().await;
    let dead = sluice_tests::openai::refused_url().replace("http://", "redis://").replace("/v1", "");
    let extra = format!(
        "[state]\nredis = \"{dead}\"\n[limits]\napp = {{ rpm = 100 }}\non_store_failure = \"closed\"\n"
    );
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.headers()["retry-after"], "1");
    let e = openai_error(r, 503).await;
    assert!(e["message"].as_str().unwrap().contains("cannot be checked"), "{e}");
    assert_eq!(mock.hits(), 0, "nothing unchecked reached the provider");
}

#[tokio::test]
async fn observe_mode_reports_a_refusal_in_a_header_and_serves() {
    let mock = MockOpenAi::start().await;
    let gw =
        gateway_with_chain(&[&mock], &[(0, "ok")], "[limits]\nteam = { rpm = 1 }\nobserve = [\"t\"]\n").await;
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status(), 200, "observe mode never refuses");
    assert_eq!(r.headers()["x-sluice-ratelimit-observe"], "would refuse: team `t` RPM limit 1");
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn limits_and_budgets_work_on_a_redis_cluster_one_slot_per_request() {
    let cluster = sluice_tests::redis_cluster::RedisCluster::start();
    let mock = MockOpenAi::start().await;
    // Fail closed: a CROSSSLOT error would refuse requests instead of hiding behind the local limiter.
    let extra = format!(
        "[state]\nredis = \"{}\"\n[limits]\nteam = {{ rpm = 4 }}\napp = {{ tpm = 100000 }}\non_store_failure = \"closed\"\n\
         [budgets]\nteam = {{ daily = \"10.00\" }}\nrefresh = \"0ms\"\n",
        cluster.url()
    );
    let a = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let b = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = post(gw, "/v1/chat/completions", &chat_body("m")).await;
        statuses.push(r.status().as_u16());
        r.bytes().await.unwrap();
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429],
        "the team's 4 per minute hold across both instances"
    );
    let h = health(&a).await;
    assert_eq!(h["redis"], "ok", "no CROSSSLOT or other failure: {h}");
    assert!(a.stderr().is_empty() || !a.stderr().contains("CROSSSLOT"), "{}", a.stderr());
}

/// The Redis store itself: a correction with no reservation of its org to ride along with is sent
/// on its own once older than the fold window, and another instance then sees the refund.
#[tokio::test]
async fn a_correction_with_nothing_to_ride_along_is_sent_on_its_own() {
    use sluice::stores::redis::RedisLimits;
    use sluice_core::limits::{Adjustment, Charge, LimitStore};

    let prefix = crate::redis_prefix();
    let key = "{org:o}:app:a:tpm".to_owned();
    let period = Duration::from_secs(60);
    let charge = |cost| Charge { key: key.clone(), limit: 100, period, cost };
    let one = RedisLimits::new("redis://127.0.0.1:6379", &prefix, false, None).unwrap();
    let other = RedisLimits::new("redis://127.0.0.1:6379", &prefix, false, None).unwrap();

    let reserved = one.reserve(&[charge(60)]).await.unwrap();
    assert!(reserved[0].allowed);
    assert_eq!(reserved[0].remaining, 40);
    // 50 of the 60 tokens were not used: the refund waits for a reservation to ride along with...
    one.adjust(&[Adjustment { key: key.clone(), limit: 100, period, delta: -50, fallback: false }])
        .await
        .unwrap();
    assert_eq!(other.reserve(&[charge(0)]).await.unwrap()[0].remaining, 40, "not sent yet");
    // ...and, none coming, goes on its own once older than the fold window.
    tokio::time::sleep(Duration::from_millis(150)).await;
    one.adjust(&[]).await.unwrap();
    let seen = other.reserve(&[charge(1)]).await.unwrap();
    assert!((89..=90).contains(&seen[0].remaining), "100 - 10 used - 1: {:?}", seen[0]);

    // The org's buckets are one hash, a field per bucket holding its TAT (ms since the epoch).
    let stored = format!("{prefix}{{org:o}}");
    let redis_cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli").args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let tat: f64 = redis_cli(&["HGET", &stored, ":app:a:tpm"]).parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as f64;
    assert!(
        (5_000.0..=7_000.0).contains(&(tat - now)),
        "eleven tokens at 600 ms each: {} ms ahead",
        tat - now
    );
    let ttl: i64 = redis_cli(&["PTTL", &stored]).parse().unwrap();
    // The hash lives until its fullest bucket is full again, plus a second. A refund does not
    // shorten that (another bucket of the org may need it): the 60 tokens reserved first put the
    // TAT 36 s ahead.
    assert!(
        (tat - now) as i64 + 500 <= ttl && (35_000..=38_000).contains(&ttl),
        "the org's buckets live until the fullest is full again: {ttl} ms"
    );
    redis_cli(&["DEL", &stored]);
}

/// Leases: an instance reserves a slice of the shared limit ahead for its next requests of the same
/// caller and admits them without a round trip, and two instances together still never pass the
/// limit. Redis' own count of script calls shows the round trips saved.
#[tokio::test]
async fn leases_admit_most_requests_without_a_round_trip_and_never_pass_the_shared_limit() {
    let redis = sluice_tests::redis_server::RedisServer::start();
    let mock = MockOpenAi::start().await;
    // 5 % of 400 a minute: leases of up to 20 requests.
    let (a, b) = two_instances_on(
        &mock,
        &format!("redis = \"{}\"", redis.url()),
        "team = { rpm = 400 }\nlease_percent = 5\non_store_failure = \"closed\"",
    )
    .await;
    let calls = || {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "info", "commandstats"])
            .output()
            .expect("redis-cli info");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ["cmdstat_evalsha:calls=", "cmdstat_eval:calls="]
            .iter()
            .filter_map(|p| text.lines().find_map(|l| l.strip_prefix(p)))
            .map(|rest| rest.split(',').next().unwrap_or("0").parse::<u64>().unwrap_or(0))
            .sum::<u64>()
    };

    // One after another, half on each instance: far fewer script calls than requests, and the
    // remaining count each answer reports goes down with each request on each instance (but for
    // the bucket's refill, 400 a minute, that a new lease's reading may include).
    let before = calls();
    let mut last_remaining = [400, 400];
    for i in 0..100 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = post(gw, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(r.status(), 200);
        let remaining: u64 = r.headers()["x-ratelimit-remaining-requests"].to_str().unwrap().parse().unwrap();
        assert!(
            remaining <= last_remaining[i % 2] + 2,
            "remaining {remaining} after {}",
            last_remaining[i % 2]
        );
        last_remaining[i % 2] = remaining;
        r.bytes().await.unwrap();
    }
    for left in last_remaining {
        assert!(left <= 400 - 50 + 5, "each instance reports what the other admitted too: {left} left");
    }
    let round_trips = calls() - before;
    assert!(round_trips <= 30, "100 requests took {round_trips} script calls");
    assert!(round_trips >= 2, "each instance asked Redis at least once: {round_trips}");

    // Then at once, past the limit: what both admitted stays within the limit (plus its refill).
    let started = std::time::Instant::now();
    let fired = fire(&a, &b, 500, &chat_body("m")).await;
    let admitted = 100 + fired.admitted;
    let refilled = (started.elapsed().as_secs_f64() * 400.0 / 60.0).ceil() as u64 + 2;
    let bound = 400 + refilled;
    assert!(admitted as f64 <= bound as f64 * 1.01, "admitted {admitted}, at most {bound} (+1 %)");
    // Short of it by at most what the leases held when the burst ended (one per instance, at
    // most 20 requests each; they go back once they expire), and a unit of rounding each.
    assert!(fired.reached(400 - 100 - 2 * 20 - 2), "{fired:?}: the limit itself must be reachable");
    assert_eq!(mock.hits() as u64, admitted);
}

/// The Redis store itself with leases: the request that takes a lease reserves the next ones too,
/// those are admitted without Redis (another instance sees no change), a lease that ran out is
/// followed by a larger one, and what a lease did not use goes back once it expires.
#[tokio::test]
async fn a_lease_admits_without_redis_and_gives_back_what_it_did_not_use() {
    use sluice::stores::redis::RedisLimits;
    use sluice_core::limits::{Charge, LimitStore};

    let prefix = crate::redis_prefix();
    let key = "{org:o}:app:a:rpm".to_owned();
    let charge = |cost| Charge { key: key.clone(), limit: 6000, period: Duration::from_secs(60), cost };
    // 1 % of 6,000: leases of up to 60 requests, for 300 ms.
    let one = RedisLimits::new("redis://127.0.0.1:6379", &prefix, false, None)
        .unwrap()
        .with_leases(1.0, Duration::from_millis(300));
    let other = RedisLimits::new("redis://127.0.0.1:6379", &prefix, false, None).unwrap();
    // Redis' count, read through the store without leases; 100 a second refill, so allow a few.
    let in_redis = || async { other.reserve(&[charge(0)]).await.unwrap()[0].remaining };
    let near = |seen: u64, expected: u64| seen >= expected && seen <= expected + 5;

    // The first request takes a lease for one more: Redis holds 2, the caller is told 5,999.
    let first = one.reserve(&[charge(1)]).await.unwrap();
    assert!(first[0].allowed);
    assert_eq!(first[0].remaining, 5_999);
    let seen = in_redis().await;
    assert!(near(seen, 5_998), "the lease is taken in Redis: {seen}");
    // The second is admitted from the lease: nothing changes in Redis.
    let second = one.reserve(&[charge(1)]).await.unwrap();
    assert!(second[0].allowed);
    assert!(near(second[0].remaining, 5_998), "{:?}", second[0]);
    let seen = in_redis().await;
    assert!(near(seen, 5_998), "admitted without Redis: {seen}");
    // The lease is used up: the third takes a new one, for twice what the last one admitted (4).
    let third = one.reserve(&[charge(1)]).await.unwrap();
    assert!(near(third[0].remaining, 5_997), "{:?}", third[0]);
    let seen = in_redis().await;
    assert!(near(seen, 5_993), "the request and a lease of 4: {seen}");

    // Unused, the lease expires; the next reservation gives its 4 back and takes a lease of 2
    // (it admitted one request): Redis holds 3 + 3 = 6 of the first 10 charged in all.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let fourth = one.reserve(&[charge(1)]).await.unwrap();
    assert!(fourth[0].allowed);
    let seen = in_redis().await;
    assert!(near(seen, 5_994), "4 given back, 3 taken: {seen}");
    let stored = format!("{prefix}{{org:o}}");
    let _ = std::process::Command::new("redis-cli").args(["DEL", &stored]).output();
}
