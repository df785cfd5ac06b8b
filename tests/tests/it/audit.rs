//! The audit trail through the port: one hash-chained row per request (PII findings by kind, never
//! values) and per admin action; UPDATE refused by the table; an edit made behind the gateway's back
//! found by `sluice audit verify`.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_tests::openai::MockOpenAi;
use sluice_tests::postgres::TestDb;

use crate::{BIN, chat_body, gateway_with_chain, post};

/// POSTs `body` to the admin API; returns the status.
async fn admin_post(gw: &sluice_tests::gateway::TestGateway, path: &str, body: serde_json::Value) -> u16 {
    let url = format!("http://127.0.0.1:{}{path}", gw.admin_port);
    let r =
        crate::client().post(url).bearer_auth(sluice_tests::gateway::ADMIN_TOKEN).json(&body).send().await;
    r.unwrap().status().as_u16()
}

fn verify(db: &TestDb) -> (i32, String) {
    let out = Command::new(BIN).args(["audit", "verify", "--postgres", &db.url()]).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test]
async fn every_request_is_audited_in_a_hash_chain_that_detects_tampering() {
    let db = TestDb::create().await;
    let mock = MockOpenAi::start().await;
    let extra = format!(
        "[state]\npostgres = \"{}\"\n[records]\nspool_dir = \"{{dir}}/spool\"\n\
         [admin]\nlisten = \"127.0.0.1:{{admin_port}}\"\ntoken = \"file:{{dir}}/admin.token\"\n",
        db.url()
    );
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    let pii = json!({"model": "m", "messages": [{"role": "user", "content": "mail jane@example.com, ssn 123-45-6789"}]});
    assert_eq!(post(&gw, "/v1/chat/completions", &pii).await.status(), 400);
    let redacted = json!({"model": "m", "messages": [{"role": "user", "content": "mail jane@example.com"}]});
    assert_eq!(post(&gw, "/v1/chat/completions", &redacted).await.status(), 200);
    assert_eq!(admin_post(&gw, "/admin/orgs", json!({"id": "acme"})).await, 201);

    let pg = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = pg.query("SELECT action, status, pii, team, hash FROM audit_log ORDER BY seq", &[]).await;
        if let Ok(rows) = rows
            && rows.len() >= 4
        {
            break rows;
        }
        assert!(Instant::now() < deadline, "the audit rows never arrived; stderr:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let actions: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(actions.contains(&"admin.org.create".to_owned()), "{actions:?}");
    let pii_cells: Vec<(i32, String)> =
        rows.iter().filter(|r| r.get::<_, String>(0) == "request").map(|r| (r.get(1), r.get(2))).collect();
    assert!(pii_cells.contains(&(400, "email:1,ssn:1".to_owned())), "{pii_cells:?}");
    assert!(pii_cells.contains(&(200, "email:1".to_owned())), "{pii_cells:?}");
    let everything: String = rows.iter().map(|r| format!("{:?}", r)).collect();
    assert!(
        !everything.contains("jane@example.com") && !everything.contains("6789"),
        "no value is ever stored"
    );

    let (code, out) = verify(&db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 4 rows"), "{out}");

    // The table refuses changes, even from the gateway's own connection.
    let e = pg.execute("UPDATE audit_log SET status = 200 WHERE status = 400", &[]).await.unwrap_err();
    assert!(e.to_string().contains("append-only") || format!("{e:?}").contains("append-only"), "{e:?}");
    assert!(pg.execute("DELETE FROM audit_log", &[]).await.is_err());

    // A superuser who switches the trigger off and edits a row is found out.
    let partition: String =
        pg.query_one("SELECT tableoid::regclass::text FROM audit_log LIMIT 1", &[]).await.unwrap().get(0);
    pg.batch_execute(&format!(
        "ALTER TABLE {partition} DISABLE TRIGGER ALL; \
         UPDATE {partition} SET status = 200 WHERE status = 400; \
         ALTER TABLE {partition} ENABLE TRIGGER ALL;"
    ))
    .await
    .unwrap();
    let (code, out) = verify(&db);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN") && out.contains("does not match its hash"), "{out}");
}

#[tokio::test]
async fn audit_rows_carry_the_request_hash_and_on_request_the_redacted_content() {
    let db = TestDb::create().await;
    let mock = MockOpenAi::start().await;
    let extra = format!(
        "[state]\npostgres = \"{}\"\n[records]\nspool_dir = \"{{dir}}/spool\"\n[audit]\ncontent = true\n",
        db.url()
    );
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let send = |body: serde_json::Value| {
        let bytes = serde_json::to_vec(&body).unwrap();
        let hash: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        let request = crate::client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(crate::KEY)
            .header("content-type", "application/json")
            .body(bytes);
        async move { (request.send().await.unwrap().status().as_u16(), hash) }
    };
    let (status, redacted_hash) =
        send(json!({"model": "m", "messages": [{"role": "user", "content": "mail jane@example.com today"}]}))
            .await;
    assert_eq!(status, 200);
    let (status, blocked_hash) =
        send(json!({"model": "m", "messages": [{"role": "user", "content": "ssn 123-45-6789"}]})).await;
    assert_eq!(status, 400);

    let pg = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = pg
            .query(
                "SELECT status, request_hash, content FROM audit_log WHERE action = 'request' ORDER BY seq",
                &[],
            )
            .await
            .unwrap();
        if rows.len() >= 2 {
            break rows;
        }
        assert!(Instant::now() < deadline, "the audit rows never arrived; stderr:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = |status: i32| rows.iter().find(|r| r.get::<_, i32>(0) == status).unwrap();
    let (hash, content): (Option<String>, Option<String>) = (row(200).get(1), row(200).get(2));
    assert_eq!(hash.as_deref(), Some(redacted_hash.as_str()), "the SHA-256 of the bytes the client sent");
    let content = content.expect("content kept on request");
    assert!(content.contains("[EMAIL_1]") && !content.contains("jane@example.com"), "{content}");
    assert_eq!(mock.requests()[0].json()["messages"][0]["content"], "mail [EMAIL_1] today");
    let (hash, content): (Option<String>, Option<String>) = (row(400).get(1), row(400).get(2));
    assert_eq!(hash.as_deref(), Some(blocked_hash.as_str()));
    assert_eq!(content, None, "a blocked request's content is never kept");

    let (code, out) = verify(&db);
    assert_eq!(code, 0, "{out}");
    // The hash covers the new fields too: editing the kept content breaks the chain.
    let partition: String =
        pg.query_one("SELECT tableoid::regclass::text FROM audit_log LIMIT 1", &[]).await.unwrap().get(0);
    pg.batch_execute(&format!(
        "ALTER TABLE {partition} DISABLE TRIGGER ALL; \
         UPDATE {partition} SET content = replace(content, 'today', 'tomorrow') WHERE content IS NOT NULL; \
         ALTER TABLE {partition} ENABLE TRIGGER ALL;"
    ))
    .await
    .unwrap();
    let (code, out) = verify(&db);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not match its hash"), "{out}");
}

#[tokio::test]
async fn the_gateway_runs_as_a_role_that_can_only_add_to_the_ledger_and_the_audit_trail() {
    let db = TestDb::create().await;
    let role = format!("sluice_gw_{}", db.name);
    let sluice = |args: &[&str]| {
        let out = Command::new(BIN).args(args).args(["--postgres", &db.url()]).output().unwrap();
        assert!(out.status.success(), "sluice {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // The owner applies the schema and lets the gateway's own role in.
    sluice(&["db", "migrate"]);
    let owner = db.client().await;
    owner.batch_execute(&format!("CREATE ROLE {role} LOGIN")).await.unwrap();
    sluice(&["db", "grant", &role]);

    let as_role = db.url().replace("postgres@", &format!("{role}@"));
    let mock = MockOpenAi::start().await;
    let extra = format!(
        "[state]\npostgres = \"{as_role}\"\n[records]\nspool_dir = \"{{dir}}/spool\"\n\
         [admin]\nlisten = \"127.0.0.1:{{admin_port}}\"\ntoken = \"file:{{dir}}/admin.token\"\n"
    );
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    let pii = json!({"model": "m", "messages": [{"role": "user", "content": "ssn 123-45-6789"}]});
    assert_eq!(post(&gw, "/v1/chat/completions", &pii).await.status(), 400);
    let created = admin_post(&gw, "/admin/orgs", json!({"id": "acme"})).await;
    assert_eq!(created, 201, "the admin API writes keys' tables as the role");
    assert_eq!(admin_post(&gw, "/admin/reload", json!({})).await, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit: i64 = owner.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0);
        let costs: i64 = owner.query_one("SELECT count(*) FROM cost_records", &[]).await.unwrap().get(0);
        if audit >= 4 && costs >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records and audit rows never arrived ({costs}, {audit}): {}",
            std::fs::read_to_string(gw.dir().join("stderr.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let actions: Vec<String> =
        owner.query("SELECT action FROM audit_log", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(actions.contains(&"admin.config.reload".to_owned()), "a reload is audited: {actions:?}");
    let spool = gw.dir().join("spool");
    let spooled = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
    assert_eq!(spooled, 0, "nothing was refused and spooled");

    // What the role may not do, whatever the triggers say.
    let role_client = sluice_tests::postgres::connect(&as_role).await;
    for sql in [
        "UPDATE audit_log SET status = 200",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "UPDATE cost_records SET cost_micros = 0",
        "DELETE FROM cost_records",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "DROP TABLE audit_log",
    ] {
        let e = role_client.batch_execute(sql).await.unwrap_err();
        let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        assert!(
            message.starts_with("permission denied") || message.starts_with("must be owner"),
            "{sql}: {message}"
        );
    }
    let out = Command::new(BIN).args(["audit", "verify", "--postgres", &as_role]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    drop((gw, role_client, owner));
    drop(db);
    let _ = sluice_tests::postgres::connect(&format!("{}/postgres", sluice_tests::postgres::SHARED))
        .await
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await;
}

#[tokio::test]
async fn a_sealed_export_catches_rows_removed_from_the_end_of_a_day() {
    let db = TestDb::create().await;
    let mock = MockOpenAi::start().await;
    let extra = format!("[state]\npostgres = \"{}\"\n[records]\nspool_dir = \"{{dir}}/spool\"\n", db.url());
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    for _ in 0..3 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    }
    let pg = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get::<_, i64>(0) < 3 {
        assert!(Instant::now() < deadline, "the audit rows never arrived; stderr:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = gw.dir().join("sealed");
    let sluice = |args: &[&str]| {
        let out = Command::new(BIN).args(args).args(["--postgres", &db.url()]).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let dir_arg = dir.display().to_string();
    let (code, out) = sluice(&["audit", "export", "--dir", &dir_arg, "--day", "today"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sealed 3 rows"), "{out}");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let jsonl = files.iter().find(|f| f.ends_with("-00000003.jsonl")).expect("the JSONL file");
    let seal_name = files.iter().find(|f| f.ends_with("-00000003.seal.json")).expect("the seal");
    let body = std::fs::read(dir.join(jsonl)).unwrap();
    let lines: Vec<serde_json::Value> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"], "each line carries its link of the chain");
    let seal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(seal_name)).unwrap()).unwrap();
    let head: String =
        pg.query_one("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1", &[]).await.unwrap().get(0);
    assert_eq!((seal["rows"].as_i64(), seal["head"].as_str()), (Some(3), Some(head.as_str())));
    let digest: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(seal["jsonl_sha256"], digest);
    let (code, out) = sluice(&["audit", "export", "--dir", &dir_arg, "--day", "today"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to seal"), "an export is never written twice: {out}");
    let (code, out) = sluice(&["audit", "verify", "--sealed", &dir_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("and every sealed export"), "{out}");

    // A superuser removes the day's last row: the shorter chain is still a valid chain...
    let partition: String =
        pg.query_one("SELECT tableoid::regclass::text FROM audit_log LIMIT 1", &[]).await.unwrap().get(0);
    pg.batch_execute(&format!(
        "ALTER TABLE {partition} DISABLE TRIGGER ALL; DELETE FROM {partition} WHERE seq = 3; \
         ALTER TABLE {partition} ENABLE TRIGGER ALL;"
    ))
    .await
    .unwrap();
    let (code, out) = sluice(&["audit", "verify"]);
    assert_eq!(code, 0, "a chain alone cannot see a cut tail: {out}");
    // ...but not against its seal.
    let (code, out) = sluice(&["audit", "verify", "--sealed", &dir_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("row 3 was sealed but is gone"), "{out}");
}

/// A cost record as the gateway spools it.
fn spooled_record(n: u32) -> sluice_core::record::CostRecord {
    let ts_us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    sluice_core::record::CostRecord {
        id: format!("rec_replay_{n}"),
        request_id: format!("req_replay_{n}"),
        ts_us,
        org: Some("o".into()),
        team: Some("t".into()),
        app: Some("a".into()),
        key_id: Some("k".into()),
        user: None,
        endpoint: "/chat/completions".into(),
        model: Some("m".into()),
        provider: Some("p0".into()),
        target: Some("p0/ok".into()),
        upstream_model: Some("ok".into()),
        region: None,
        status: 200,
        error: None,
        prompt_tokens: 10,
        completion_tokens: 5,
        cached_tokens: 0,
        reasoning_tokens: 0,
        usage_estimated: false,
        cost: sluice_core::money::Micros(7),
        latency_us: 1_000,
        attempts: 1,
        stream: false,
        cache: "miss".into(),
        pii: Default::default(),
        request_sha256: None,
        content: None,
    }
}

/// Waits until the spool directory holds no spool file.
async fn wait_spool_drained(gw: &sluice_tests::gateway::TestGateway) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = std::fs::read_dir(gw.dir().join("spool"))
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("records.spool")))
            .unwrap_or(false);
        if !left {
            return;
        }
        assert!(Instant::now() < deadline, "the spool was never replayed; stderr:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_replayed_record_already_stored_gets_no_second_audit_row() {
    let db = TestDb::create().await;
    let mock = MockOpenAi::start().await;
    let extra = format!("[state]\npostgres = \"{}\"\n[records]\nspool_dir = \"{{dir}}/spool\"\n", db.url());
    let mut gw = gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    let file = gw.dir().join("spool/records.spool");
    let spool = |records: &[sluice_core::record::CostRecord]| {
        let lines: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        std::fs::write(&file, lines).unwrap();
    };
    let first: Vec<_> = (1..=3).map(spooled_record).collect();

    // A spool of three records, replayed at start.
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(15)).await.is_some());
    spool(&first);
    gw.restart(BIN).await;
    wait_spool_drained(&gw).await;

    // The same three again (as after a crash between PostgreSQL's commit and the spool's cleanup),
    // and one new record.
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(15)).await.is_some());
    let mut again = first.clone();
    again.push(spooled_record(4));
    spool(&again);
    gw.restart(BIN).await;
    wait_spool_drained(&gw).await;

    let pg = db.client().await;
    let count = |sql: &'static str| {
        let pg = &pg;
        async move { pg.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM cost_records").await, 4);
    assert_eq!(
        count("SELECT count(*) FROM audit_log").await,
        4,
        "one audit row per record, replays included"
    );
    assert_eq!(count("SELECT count(DISTINCT record_id) FROM audit_log").await, 4);
    let (code, out) = verify(&db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 4 rows"), "{out}");
}
