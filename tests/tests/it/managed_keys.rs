//! Managed keys through the port: issued with `sluice admin`, kept in PostgreSQL (own database per
//! test), answered from each instance's cache; revocation, rotation with grace, expiry, reminders.
//! The single-instance rules are proven again with the keys in memory (no PostgreSQL), as the
//! embedded default keeps them.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::gateway::TestGateway;
use sluice_tests::openai::MockOpenAi;
use sluice_tests::postgres::TestDb;
use sluice_tests::webhook::WebhookReceiver;

use crate::{BIN, chat_body, client, gateway_with_chain};

/// A gateway with managed keys in `db` (in memory without one), its admin API on, and `extra` config.
async fn gateway(mock: &MockOpenAi, db: Option<&TestDb>, extra: &str) -> TestGateway {
    let state = db.map_or(String::new(), |db| format!("[state]\npostgres = \"{}\"\n", db.url()));
    let config = format!(
        "{state}[records]\nspool_dir = \"{{dir}}/spool\"\n\
         [admin]\nlisten = \"127.0.0.1:{{admin_port}}\"\ntoken = \"file:{{dir}}/admin.token\"\n{extra}"
    );
    gateway_with_chain(&[mock], &[(0, "ok")], &config).await
}

/// Runs `sluice admin ARGS` against `gw`'s admin API; returns the printed JSON.
fn admin(gw: &TestGateway, args: &str) -> Value {
    let out = Command::new(BIN)
        .arg("admin")
        .arg("--url")
        .arg(format!("http://127.0.0.1:{}", gw.admin_port))
        .arg("--token")
        .arg(format!("file:{}/admin.token", gw.dir().display()))
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(out.status.success(), "sluice admin {args}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Creates org `acme`, team `payments`, app `checkout`; returns a new key's JSON (secret included).
fn setup(gw: &TestGateway, key_args: &str) -> Value {
    admin(gw, "orgs create acme --name Acme");
    admin(gw, "teams create payments --org acme");
    admin(gw, "apps create checkout --team payments");
    admin(gw, &format!("keys create --app checkout {key_args}"))
}

async fn call(gw: &TestGateway, key: &str) -> reqwest::Response {
    client().post(gw.url("/v1/chat/completions")).bearer_auth(key).json(&chat_body("m")).send().await.unwrap()
}

#[tokio::test]
async fn a_key_issued_with_the_cli_works_and_is_listed_without_its_secret() {
    let (db, mock) = (TestDb::create().await, MockOpenAi::start().await);
    issue_use_and_list(gateway(&mock, Some(&db), "").await).await;
}

#[tokio::test]
async fn in_memory_a_key_issued_with_the_cli_works_and_is_listed_without_its_secret() {
    let mock = MockOpenAi::start().await;
    issue_use_and_list(gateway(&mock, None, "").await).await;
}

async fn issue_use_and_list(gw: TestGateway) {
    let issued = setup(&gw, "--name prod --user svc-checkout --models m --tags pci");
    let secret = issued["key"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(&format!("sk-sluice-{id}-")), "{secret}");
    assert_eq!((issued["team"].as_str(), issued["org"].as_str()), (Some("payments"), Some("acme")));
    let days = |v: &Value| {
        let d = v["expires_at"].as_str().unwrap();
        let (y, m, dd) = (d[0..4].parse().unwrap(), d[5..7].parse().unwrap(), d[8..10].parse().unwrap());
        sluice_core::calendar::days_from_civil(y, m, dd)
    };
    let today = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        / 86_400) as i64;
    assert_eq!(days(&issued) - today, 90, "keys expire after 90 days by default");

    let r = call(&gw, &secret).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let line = crate::access_line(&gw, "/v1/chat/completions").await;
    assert_eq!(
        (line["key_id"].as_str(), line["team"].as_str(), line["app"].as_str()),
        (Some(id.as_str()), Some("payments"), Some("checkout"))
    );
    let other_model = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(other_model.status(), 404, "the key may only use `m`");

    let listed = admin(&gw, "keys list --team payments");
    let text = listed.to_string();
    assert!(!text.contains(&secret[20..]), "a listing never shows a secret");
    assert!(listed["data"][0].get("key").is_none() && listed["data"][0].get("hash").is_none());
    assert_eq!(listed["data"][0]["user"], "svc-checkout");
    assert_eq!(listed["data"][0]["tags"], json!(["pci"]));
    assert_eq!(listed["data"][0]["status"], "active");
}

#[tokio::test]
async fn the_admin_cli_reports_errors_in_a_sentence() {
    let (db, mock) = (TestDb::create().await, MockOpenAi::start().await);
    let gw = gateway(&mock, Some(&db), "").await;
    admin(&gw, "orgs create acme");
    let out = Command::new(BIN)
        .args(["admin", "--url", &format!("http://127.0.0.1:{}", gw.admin_port)])
        .args([
            "--token",
            &format!("file:{}/admin.token", gw.dir().display()),
            "teams",
            "create",
            "x",
            "--org",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 404: Org `nope` does not exist."));
    let out = Command::new(BIN)
        .args(["admin", "--url", &format!("http://127.0.0.1:{}", gw.admin_port), "orgs", "list"])
        .env("SLUICE_ADMIN_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_another_instance_within_a_second() {
    let (db, mock) = (TestDb::create().await, MockOpenAi::start().await);
    let a = gateway(&mock, Some(&db), "").await;
    let b = gateway(&mock, Some(&db), "").await;
    let issued = setup(&a, "");
    let (secret, id) =
        (issued["key"].as_str().unwrap().to_owned(), issued["id"].as_str().unwrap().to_owned());
    for gw in [&a, &b] {
        let r = call(gw, &secret).await;
        assert_eq!(r.status(), 200, "a key issued on one instance works on every instance");
        r.bytes().await.unwrap();
    }
    let revoked = admin(&a, &format!("keys revoke {id}"));
    assert_eq!(revoked["status"], "revoked");
    let started = Instant::now();
    loop {
        let r = call(&b, &secret).await;
        if r.status() == 401 {
            let e = crate::openai_error(r, 401).await;
            assert!(e["message"].as_str().unwrap().contains("was revoked"), "{e}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "instance b still accepts the key after 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h: Value = client().get(b.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h["keys"], "ok");
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_its_grace_then_only_the_new_one_works() {
    let (db, mock) = (TestDb::create().await, MockOpenAi::start().await);
    rotate_with_grace(gateway(&mock, Some(&db), "").await).await;
}

#[tokio::test]
async fn in_memory_rotation_keeps_the_old_key_for_its_grace_then_only_the_new_one_works() {
    let mock = MockOpenAi::start().await;
    rotate_with_grace(gateway(&mock, None, "").await).await;
}

async fn rotate_with_grace(gw: TestGateway) {
    let old = setup(&gw, "--name prod");
    let old_secret = old["key"].as_str().unwrap().to_owned();
    // A grace long enough for a loaded CI machine to make both calls inside it.
    let rotated_at = Instant::now();
    let rotated = admin(&gw, &format!("keys rotate {} --grace 8s", old["id"].as_str().unwrap()));
    // The grace began between the two instants: both keys work until `rotated_at` + 8 s at least,
    // and the old one is gone by `answered_at` + 8 s at the latest.
    let answered_at = Instant::now();
    let new_secret = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    assert_eq!(rotated["name"], "prod", "the new key carries the old one's rights and name");
    assert_eq!(rotated["replaces"]["status"], "rotating");
    assert_eq!(rotated["replaces"]["replaced_by"], rotated["id"]);
    for key in [&old_secret, &new_secret] {
        let r = call(&gw, key).await;
        assert_eq!(r.status(), 200, "both keys work during the grace period");
        r.bytes().await.unwrap();
    }
    assert!(rotated_at.elapsed() < Duration::from_secs(8), "the calls above took the whole grace period");
    tokio::time::sleep(Duration::from_millis(8_100).saturating_sub(answered_at.elapsed())).await;
    let e = crate::openai_error(call(&gw, &old_secret).await, 401).await;
    assert!(e["message"].as_str().unwrap().contains("has expired"), "{e}");
    assert_eq!(call(&gw, &new_secret).await.status(), 200);
}

#[tokio::test]
async fn expiry_reminders_go_to_the_webhook_once_per_threshold_across_instances() {
    let (db, mock) = (TestDb::create().await, MockOpenAi::start().await);
    let hook = WebhookReceiver::start().await;
    let extra =
        format!("[keys]\nreminder_interval = \"100ms\"\n[notifications]\nwebhook = \"{}\"\n", hook.url());
    let a = gateway(&mock, Some(&db), &extra).await;
    let _b = gateway(&mock, Some(&db), &extra).await;
    reminders_once(&a, &hook).await;
}

#[tokio::test]
async fn in_memory_expiry_reminders_go_to_the_webhook_once_per_threshold() {
    let mock = MockOpenAi::start().await;
    let hook = WebhookReceiver::start().await;
    let extra =
        format!("[keys]\nreminder_interval = \"100ms\"\n[notifications]\nwebhook = \"{}\"\n", hook.url());
    reminders_once(&gateway(&mock, None, &extra).await, &hook).await;
}

async fn reminders_once(a: &TestGateway, hook: &WebhookReceiver) {
    let ten_days = setup(a, "--name ten --expires-in 10d");
    let two_days = admin(a, "keys create --app checkout --name two --expires-in 36h");
    let forever = admin(a, "keys create --app checkout --name forever --expires-in never");
    let later = admin(a, "keys create --app checkout --name later --expires-in 30d");
    let notices = hook.wait_for(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let notices_after = hook.received();
    assert_eq!(notices_after.len(), 2, "one reminder per key, from one instance: {notices_after:#?}");
    let by_key = |id: &Value| notices.iter().find(|n| n["details"]["key_id"] == *id).cloned().unwrap();
    let n = by_key(&ten_days["id"]);
    assert_eq!(
        (n["event"].as_str(), n["details"]["reminder"].as_i64(), n["details"]["days_left"].as_i64()),
        (Some("key.expiring"), Some(14), Some(10))
    );
    assert!(n["text"].as_str().unwrap().contains("expires in 10 days"), "{n}");
    let n = by_key(&two_days["id"]);
    assert_eq!(n["details"]["reminder"], 7, "36 hours left: the 7-day reminder (the 14-day one is moot)");
    assert!(forever["expires_at"].is_null());
    for quiet in [&forever, &later] {
        assert!(notices.iter().all(|n| n["details"]["key_id"] != quiet["id"]), "no reminder for {quiet}");
    }
}

#[tokio::test]
async fn the_embedded_default_issues_and_revokes_keys_in_memory_with_its_demo_admin_token() {
    let gw = TestGateway::start_default(BIN).await;
    let run = |args: &str| {
        let out = Command::new(BIN)
            .arg("admin")
            .args(args.split_whitespace())
            .env("SLUICE_ADMIN_URL", format!("http://127.0.0.1:{}", gw.admin_port))
            .env("SLUICE_ADMIN_TOKEN", "sluice-admin-demo")
            .output()
            .unwrap();
        assert!(out.status.success(), "sluice admin {args}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    run("orgs create acme");
    run("teams create payments --org acme");
    run("apps create checkout --team payments");
    let issued = run("keys create --app checkout --models gpt-4o-mini");
    let secret = issued["key"].as_str().unwrap().to_owned();
    let chat = |key: String| {
        let url = gw.url("/v1/chat/completions");
        async move {
            client()
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = chat(secret.clone()).await;
    assert_eq!(r.status(), 200, "a key issued on the embedded default works at once");
    r.bytes().await.unwrap();
    assert_eq!(run("teams list")["data"][0]["org"], "acme");
    run(&format!("keys revoke {}", issued["id"].as_str().unwrap()));
    let e = crate::openai_error(chat(secret).await, 401).await;
    assert!(e["message"].as_str().unwrap().contains("was revoked"), "{e}");
    let wrong = client()
        .get(format!("http://127.0.0.1:{}/admin/keys", gw.admin_port))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "the demo token is still a token");
}
