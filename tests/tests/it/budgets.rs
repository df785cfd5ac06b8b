//! Plugin `budgets` through the port: warnings at 80 % (header and one webhook notice), refusal at
//! 100 % in OpenAI's `insufficient_quota` shape, observe mode, and counters shared in Redis and
//! rebuilt from the PostgreSQL ledger after Redis loses them.

use std::time::Duration;

use serde_json::Value;
use sluice_tests::openai::MockOpenAi;
use sluice_tests::postgres::TestDb;
use sluice_tests::webhook::WebhookReceiver;

use crate::{chat_body, gateway_with_chain, openai_error, post};

/// Every request to the mock's `ok` model costs 98 micro-dollars (11 × 2.50 + 7 × 10.00, per million).
const PRICING: &str = "[pricing.models.ok]\ninput = \"2.50\"\noutput = \"10.00\"\n";

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_team_budget_warns_once_at_80_percent_then_refuses_with_insufficient_quota() {
    let mock = MockOpenAi::start().await;
    let hook = WebhookReceiver::start().await;
    let extra = format!(
        "{PRICING}[notifications]\nwebhook = \"{}\"\n[budgets]\nteam = {{ daily = \"0.000300\" }}\n",
        hook.url()
    );
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(r.status(), 200);
        remaining.push(header(&r, "x-sluice-budget-remaining-usd").unwrap());
        if remaining.len() == 4 {
            // 294 of 300 spent before this request: the warning shows.
            let warning = header(&r, "x-sluice-budget-warning").expect("warning header at 98 %");
            assert!(warning.contains("team `t` daily budget 98% used"), "{warning}");
        }
        r.bytes().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // spend is added when the request ends
    }
    assert_eq!(remaining, ["0.000300", "0.000202", "0.000104", "0.000006"]);
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    let retry_after: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after), "until UTC midnight: {retry_after}");
    let e = openai_error(r, 429).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("insufficient_quota"), Some("insufficient_quota"))
    );
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("team `t` daily budget") && msg.contains("$0.000392 of $0.000300"), "{msg}");
    assert_eq!(mock.hits(), 4, "the refused request never reached the provider");

    let notices = hook.wait_for(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let notices_after = hook.received();
    assert_eq!(notices_after.len(), 2, "one warning and one exhaustion notice, each once: {notices_after:?}");
    assert_eq!(notices[0]["event"], "budget.warning");
    assert!(
        notices[0]["text"].as_str().unwrap().contains("team `t` daily budget is 98% used"),
        "{}",
        notices[0]
    );
    assert_eq!(notices[0]["details"]["budget_usd"], "0.000300");
    assert_eq!(notices[1]["event"], "budget.exhausted");
    assert_eq!(notices[1]["details"]["spent_usd"], "0.000392");
}

#[tokio::test]
async fn observe_mode_reports_a_spent_budget_but_serves() {
    let mock = MockOpenAi::start().await;
    let extra = format!("{PRICING}[budgets]\nobserve = [\"t\"]\nteams.t = {{ daily = \"0.000050\" }}\n");
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    for _ in 0..2 {
        let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-sluice-budget-observe").as_deref(),
        Some("would refuse: team `t` daily budget spent")
    );
    assert_eq!(header(&r, "x-sluice-budget-remaining-usd").as_deref(), Some("0.000000"));
}

/// Deletes every Redis key under `prefix`: what a Redis restart without persistence does.
fn forget_redis(prefix: &str) {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "EVAL"])
        .arg("local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) n = n + 1 end return n")
        .args(["0", &format!("{prefix}*")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn budgets_are_shared_in_redis_and_rebuilt_from_the_ledger_after_redis_forgets() {
    let db = TestDb::create().await;
    let mock = MockOpenAi::start().await;
    let prefix = crate::redis_prefix();
    let extra = format!(
        "{PRICING}[state]\nredis = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\npostgres = \"{}\"\n\
         [records]\nspool_dir = \"{{dir}}/spool\"\n[budgets]\nteam = {{ monthly = \"0.000200\" }}\nrefresh = \"0ms\"\n",
        db.url()
    );
    // refresh = 0: every check reads Redis, so what one instance spends the other sees at once.
    let a = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let b = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    for gw in [&a, &b, &a] {
        let r = post(gw, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 294 spent across both instances: the other instance refuses too.
    let e = openai_error(post(&b, "/v1/chat/completions", &chat_body("m")).await, 429).await;
    assert_eq!(e["code"], "insufficient_quota");

    // Redis forgets everything; the ledger still knows. Wait until it holds the three priced records.
    let pg = db.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = pg.query_one("SELECT coalesce(sum(cost_micros), 0)::bigint FROM cost_records", &[]).await;
        if row.is_ok_and(|r| r.get::<_, i64>(0) == 294) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the ledger never held the spend");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    forget_redis(&prefix);
    let e = openai_error(post(&a, "/v1/chat/completions", &chat_body("m")).await, 429).await;
    assert!(
        e["message"].as_str().unwrap().contains("$0.000294 of $0.000200"),
        "rebuilt from the ledger: {e}"
    );
    let h: Value = crate::client().get(b.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h["redis"], "ok");
    assert_eq!(mock.hits(), 3);
}

#[tokio::test]
async fn spend_sent_once_per_refresh_window_reaches_the_other_instance() {
    let mock = MockOpenAi::start().await;
    let prefix = crate::redis_prefix();
    let extra = format!(
        "{PRICING}[state]\nredis = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n\
         [budgets]\nteam = {{ daily = \"0.000200\" }}\nrefresh = \"200ms\"\n"
    );
    let a = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let b = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    // b reads the (empty) counter first, so it holds a reading of its own.
    let r = client_for(&b).await;
    assert_eq!(r, 200);
    // a counts its own spend at once, sent or not: it refuses after two or three requests (two if
    // b's 98 reached Redis before a first read the counter).
    let mut served = 0;
    while client_for(&a).await == 200 {
        served += 1;
        assert!(served <= 3, "a kept serving past its budget");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served >= 2, "a served {served}");
    // b learns it once a has sent its spend and b's reading is older than the window.
    let started = std::time::Instant::now();
    loop {
        let r = post(&b, "/v1/chat/completions", &chat_body("m")).await;
        if r.status() == 429 {
            break;
        }
        r.bytes().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "b never saw a's spend");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client_for(gw: &sluice_tests::gateway::TestGateway) -> u16 {
    let r = post(gw, "/v1/chat/completions", &chat_body("m")).await;
    let status = r.status().as_u16();
    r.bytes().await.unwrap();
    status
}

/// A spend reading older than `refresh` (but younger than four windows) answers at once, and a
/// fresh one is read behind the request: a key used a few times a second does not wait on Redis.
/// Shown with a Redis that hangs: the request is answered from the stale reading before the read
/// behind it fails, which only then marks Redis unreachable.
#[tokio::test]
async fn a_stale_spend_reading_answers_at_once_and_is_read_again_behind_the_request() {
    let redis = sluice_tests::redis_server::RedisServer::start();
    let mock = MockOpenAi::start().await;
    let extra = format!(
        "{PRICING}[server]\nthreads = 1\n[state]\nredis = \"{}\"\n\
         [budgets]\nteam = {{ daily = \"1.00\" }}\nrefresh = \"300ms\"\n",
        redis.url()
    );
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let health = || async {
        let h: Value = crate::client().get(gw.url("/health")).send().await.unwrap().json().await.unwrap();
        h["redis"].as_str().unwrap_or_default().to_owned()
    };
    // Read from Redis, and the spend sent 300 ms later (its answer is the reading from then on).
    assert_eq!(client_for(&gw).await, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(health().await, "ok");

    // The reading is now 400 ms old: stale, still within four windows.
    redis.pause();
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status(), 200);
    let remaining = r.headers()["x-sluice-budget-remaining-usd"].to_str().unwrap().to_owned();
    r.bytes().await.unwrap();
    assert_eq!(health().await, "ok", "answered before the read behind it gave up on Redis");
    let cost: f64 = 1.0 - remaining.parse::<f64>().unwrap();
    assert!(cost > 0.0 && cost < 0.001, "the first request's spend is in the reading: {remaining}");
    // The read behind the request passes its deadline: Redis is marked unreachable.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while health().await == "ok" {
        assert!(std::time::Instant::now() < deadline, "the read behind the request never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.resume();
}
