//! Money and records through the port: prices, the cost of each request, the ledger in PostgreSQL
//! (own database per test), the spool while PostgreSQL is down, and `/admin/spend`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::gateway::{ADMIN_TOKEN, TestGateway};
use sluice_tests::openai::MockOpenAi;
use sluice_tests::postgres::{TestDb, Throwaway};

use crate::{BIN, KEY, chat_body, client, config, gateway_with_chain, openai_error, post};

/// $2.50 per million prompt tokens, $10.00 per million completion tokens for the mock's model `ok`.
const PRICING: &str = "[pricing.models.ok]\ninput = \"2.50\"\noutput = \"10.00\"\n";
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"file:{dir}/admin.token\"\n";

async fn spend(gw: &TestGateway, query: &str) -> reqwest::Response {
    client()
        .get(format!("http://127.0.0.1:{}/admin/spend?{query}", gw.admin_port))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn each_request_is_priced_from_the_table_and_shows_in_logs_metrics_and_spend() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &format!("{PRICING}{ADMIN}")).await;
    for _ in 0..2 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    }
    // The mock reports 11 prompt and 7 completion tokens: 11 × 2.50 + 7 × 10.00 = 97.5 micro-dollars
    // per request, rounded up to 98.
    let lines = crate::access_lines_matching(&gw, 2, |l| l["path"] == "/v1/chat/completions").await;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["cost_usd"], "0.000098");
    let metrics = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("sluice_cost_microdollars_total{model=\"m\",team=\"t\"} 196"),
        "{}",
        metrics.lines().filter(|l| l.contains("cost")).collect::<Vec<_>>().join("\n")
    );
    let v: Value = spend(&gw, "group_by=team&period=month").await.json().await.unwrap();
    assert_eq!(v["data"][0]["team"], "t");
    assert_eq!(v["data"][0]["requests"], 2);
    assert_eq!(v["data"][0]["prompt_tokens"], 22);
    assert_eq!(v["data"][0]["cost_micros"], 196);
    assert_eq!(v["total_cost_usd"], "0.000196");
}

#[tokio::test]
async fn the_admin_api_wants_its_token_and_names_bad_parameters() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], ADMIN).await;
    let url = format!("http://127.0.0.1:{}/admin/spend", gw.admin_port);
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(openai_error(r, 401).await["code"], "invalid_admin_token");
    let r = client().get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 401, "a gateway key is not the admin token");
    let e = openai_error(spend(&gw, "group_by=colour").await, 400).await;
    assert!(e["message"].as_str().unwrap().starts_with("group_by"), "{e}");
    let r = client().get(gw.url("/admin/spend")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 404, "the admin API is not on the public port");
}

/// Waits until the ledger table holds `n` rows (the writer is asynchronous by design).
async fn wait_for_rows(db: &tokio_postgres::Client, n: i64, limit: Duration) -> i64 {
    let deadline = Instant::now() + limit;
    loop {
        let count: i64 = match db.query_one("SELECT count(*) FROM cost_records", &[]).await {
            Ok(row) => row.get(0),
            Err(_) => 0, // the table is created by the gateway's first connection
        };
        if count >= n || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_request_success_failure_and_stream_lands_in_a_day_partition_of_postgres() {
    let db = TestDb::create().await;
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(
        &[&mock],
        &[(0, "ok")],
        &format!(
            "{PRICING}{ADMIN}[state]\npostgres = \"{}\"\n[records]\nspool_dir = \"{{dir}}/spool\"\n",
            db.url()
        ),
    )
    .await;
    let ok = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(ok.status(), 200);
    let ok_id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    let stream = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let stream_id = stream.headers()["x-request-id"].to_str().unwrap().to_owned();
    stream.text().await.unwrap();
    let unknown = post(&gw, "/v1/chat/completions", &chat_body("nope")).await;
    let unknown_id = unknown.headers()["x-request-id"].to_str().unwrap().to_owned();
    openai_error(unknown, 404).await;
    let anonymous = client().post(gw.url("/v1/chat/completions")).json(&chat_body("m")).send().await.unwrap();
    let anonymous_id = anonymous.headers()["x-request-id"].to_str().unwrap().to_owned();
    openai_error(anonymous, 401).await;

    let pg = db.client().await;
    assert_eq!(wait_for_rows(&pg, 4, Duration::from_secs(10)).await, 4);
    let row = |id: String| {
        let pg = &pg;
        async move {
            pg.query_one(
                "SELECT team, app, key_id, model, status, prompt_tokens, completion_tokens, cost_micros, \
                 stream, error, target, tableoid::regclass::text FROM cost_records WHERE request_id = $1",
                &[&id],
            )
            .await
            .unwrap()
        }
    };
    let r = row(ok_id).await;
    assert_eq!(r.get::<_, Option<String>>(0).as_deref(), Some("t"));
    assert_eq!(r.get::<_, Option<String>>(2).as_deref(), Some("test"));
    assert_eq!(r.get::<_, i16>(4), 200);
    assert_eq!((r.get::<_, i64>(5), r.get::<_, i64>(6), r.get::<_, i64>(7)), (11, 7, 98));
    assert_eq!(r.get::<_, Option<String>>(10).as_deref(), Some("p0/ok"));
    let today = {
        let days =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86_400;
        sluice_core::calendar::date(days as i64).replace('-', "")
    };
    assert_eq!(r.get::<_, String>(11), format!("cost_records_{today}"), "rows go to the day's partition");
    let r = row(stream_id).await;
    assert!(r.get::<_, bool>(8));
    assert_eq!(r.get::<_, i64>(7), 98, "a stream is priced from its usage chunk");
    let r = row(unknown_id).await;
    assert_eq!(
        (r.get::<_, i16>(4), r.get::<_, Option<String>>(9).as_deref()),
        (404, Some("model_not_found"))
    );
    assert_eq!(r.get::<_, i64>(7), 0);
    let r = row(anonymous_id).await;
    assert_eq!((r.get::<_, i16>(4), r.get::<_, Option<String>>(0)), (401, None));

    let v: Value = spend(&gw, "group_by=model").await.json().await.unwrap();
    let m = v["data"].as_array().unwrap().iter().find(|r| r["model"] == "m").cloned().unwrap();
    assert_eq!((m["requests"].clone(), m["cost_micros"].clone()), (json!(2), json!(196)), "{v}");
}

/// Sends `n` requests from 4 workers; returns the request ids the client saw answered.
async fn load(gw: &TestGateway, n: usize) -> Vec<String> {
    load_at(gw.url("/v1/chat/completions"), n).await
}

async fn load_at(url: String, n: usize) -> Vec<String> {
    let mut workers = Vec::new();
    for w in 0..4 {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut ids = Vec::new();
            for i in (w..n).step_by(4) {
                let body =
                    json!({"model": "m", "messages": [{"role": "user", "content": format!("request {i}")}]});
                let r = c.post(&url).bearer_auth(KEY).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                ids.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
                r.bytes().await.unwrap();
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for w in workers {
        ids.extend(w.await.unwrap());
    }
    ids
}

async fn health(gw: &TestGateway) -> Value {
    client().get(gw.url("/health")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_record_is_lost_when_postgres_goes_down_and_sluice_restarts() {
    let pg = std::sync::Arc::new(Throwaway::start());
    let mock = MockOpenAi::start().await;
    let extra = format!(
        "[state]\npostgres = \"{}\"\n[records]\nspool_dir = \"{{dir}}/spool\"\nretry_interval = \"200ms\"\nbatch = 50\n\
         [models.m]\ntargets = [{{ provider = \"p0\", model = \"ok\" }}]\n",
        pg.url("postgres")
    );
    let mut gw = TestGateway::start(BIN, &config(&[mock.url()], &extra)).await;
    let mut sent = load(&gw, 150).await;

    // PostgreSQL goes down under load: the gateway keeps answering and spools.
    let during = tokio::spawn(load_at(gw.url("/v1/chat/completions"), 300));
    tokio::time::sleep(Duration::from_millis(150)).await;
    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.stop()
    })
    .await
    .unwrap();
    sent.extend(during.await.unwrap());
    sent.extend(load(&gw, 50).await);
    let h = health(&gw).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["postgres"].as_str().unwrap().starts_with("unreachable"), "{h}");
    let m = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let spooled = m
        .lines()
        .find_map(|l| l.strip_prefix("sluice_records_total{outcome=\"spooled\"} "))
        .map_or(0, |n| n.parse::<u64>().unwrap());
    assert!(spooled > 0, "records went to the spool during the outage");

    // Sluice restarts while PostgreSQL is still down: what it held goes to the spool, and the new
    // process finds it there.
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(15)).await.is_some(), "the gateway exits on SIGTERM");
    gw.restart(BIN).await;
    sent.extend(load(&gw, 100).await);

    pg.resume();
    let db = sluice_tests::postgres::connect(&pg.url("postgres")).await;
    let count = wait_for_rows(&db, sent.len() as i64, Duration::from_secs(30)).await;
    assert_eq!(count, sent.len() as i64, "one record per request; stderr:\n{}", gw.stderr());
    let distinct: i64 =
        db.query_one("SELECT count(DISTINCT request_id) FROM cost_records", &[]).await.unwrap().get(0);
    assert_eq!(distinct, sent.len() as i64, "no request recorded twice");
    let rows = db.query("SELECT request_id FROM cost_records", &[]).await.unwrap();
    let recorded: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    for id in &sent {
        assert!(recorded.contains(id), "request {id} has no record");
    }
    // The spool is empty once replayed, and /health is back to ok.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = health(&gw).await;
        let spool_files: Vec<_> = std::fs::read_dir(gw.dir().join("spool"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("records.spool"))
            .collect();
        if h["postgres"] == "ok" && spool_files.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "spool not drained: {h} {spool_files:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        m.contains("sluice_records_total{outcome=\"replayed\"}"),
        "the restarted gateway replayed the spool"
    );
    assert!(!m.contains("outcome=\"lost\""), "nothing was lost");
}
