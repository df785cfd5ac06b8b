//! Secrets from Vault through the port, against a fake that follows Vault's KV v2 and AppRole HTTP
//! API: a provider key read at start and refreshed while the gateway runs, AppRole login (again
//! when the token is refused), clear start-up errors, and no value ever in logs or /metrics.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::gateway::TestGateway;
use sluice_tests::openai::MockOpenAi;
use sluice_tests::vault::FakeVault;

use crate::{BIN, KEY, chat_body, client, post};

const TOKEN: &str = "hvs.test-token-0001";

/// A config whose only provider takes its key from `vault:secret/sluice/openai#api_key`.
fn config(mock: &MockOpenAi, vault: &FakeVault, auth: &str) -> String {
    format!(
        "[[keys.key]]\nid = \"test\"\ndemo_key = \"{KEY}\"\norg = \"o\"\nteam = \"t\"\napp = \"a\"\n\
         [vault]\naddress = \"{}\"\n{auth}\nrefresh = \"200ms\"\n\
         [providers.p0]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"vault:secret/sluice/openai#api_key\"\n\
         health_check = {{ enabled = false }}\n\
         [models.m]\ntargets = [{{ provider = \"p0\", model = \"ok\" }}]\n",
        vault.url(),
        mock.url()
    )
}

/// Sends requests until the provider receives `key` (up to 5 s).
async fn until_upstream_sees(gw: &TestGateway, mock: &MockOpenAi, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(post(gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
        let seen = mock.requests().last().and_then(|r| r.header("authorization").map(str::to_owned));
        if seen.as_deref() == Some(&format!("Bearer {key}")) {
            return;
        }
        assert!(Instant::now() < deadline, "the provider still gets {seen:?}, not {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_provider_key_comes_from_vault_and_follows_its_rotation_without_a_restart() {
    let (mock, vault) = (MockOpenAi::start().await, FakeVault::start().await);
    vault.add_token(TOKEN);
    vault.put("secret/sluice/openai", json!({"api_key": "sk-vault-first-0001", "org": "x"}));
    let text = config(&mock, &vault, "token = \"file:{dir}/vault.token\"");
    // Debug logging: not even there does a value appear.
    let gw = TestGateway::start_with(BIN, &text, &[("vault.token", TOKEN)], &[("SLUICE_LOG", "debug")]).await;
    until_upstream_sees(&gw, &mock, "sk-vault-first-0001").await;
    let read = vault.requests().into_iter().find(|r| r.method == "GET").unwrap();
    assert_eq!(read.path, "/v1/secret/data/sluice/openai");
    assert_eq!(read.header("x-vault-token"), Some(TOKEN));

    vault.put("secret/sluice/openai", json!({"api_key": "sk-vault-second-0002"}));
    until_upstream_sees(&gw, &mock, "sk-vault-second-0002").await;

    let metrics = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let logs = format!(
        "{}{}{metrics}",
        std::fs::read_to_string(gw.dir().join("stderr.log")).unwrap_or_default(),
        std::fs::read_to_string(gw.dir().join("stdout.log")).unwrap_or_default()
    );
    for secret in ["sk-vault-first", "sk-vault-second", TOKEN] {
        assert!(!logs.contains(secret), "{secret} leaked into logs or /metrics");
    }
}

#[tokio::test]
async fn approle_logs_in_and_logs_in_again_when_vault_refuses_the_token() {
    let (mock, vault) = (MockOpenAi::start().await, FakeVault::start().await);
    vault.enable_approle("role-0001", "secret-id-0001");
    vault.put("secret/sluice/openai", json!({"api_key": "sk-approle-first"}));
    let auth = "approle = { role_id = \"file:{dir}/role_id\", secret_id = \"file:{dir}/secret_id\" }";
    let text = config(&mock, &vault, auth);
    let gw = TestGateway::start_with_files(
        BIN,
        &text,
        &[("role_id", "role-0001"), ("secret_id", "secret-id-0001")],
    )
    .await;
    until_upstream_sees(&gw, &mock, "sk-approle-first").await;
    assert_eq!(vault.logins(), 1, "one login serves every read while the token is good");
    let login = vault.requests().into_iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(login.path, "/v1/auth/approle/login");
    assert_eq!(login.json(), json!({"role_id": "role-0001", "secret_id": "secret-id-0001"}));

    // The token expires; the next refresh is refused, logs in again and reads the new key.
    vault.revoke_tokens();
    vault.put("secret/sluice/openai", json!({"api_key": "sk-approle-second"}));
    until_upstream_sees(&gw, &mock, "sk-approle-second").await;
    assert!(vault.logins() >= 2);
}

// Multi-threaded: `check-config` runs as a blocking child process while the fake Vault answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_cannot_be_read_stops_the_start_with_a_sentence_and_no_value() {
    let (mock, vault) = (MockOpenAi::start().await, FakeVault::start().await);
    vault.add_token(TOKEN);
    vault.put("secret/sluice/openai", json!({"other": "sk-not-this-one"}));
    let dir = std::env::temp_dir().join(format!("sluice-vault-{}", sluice_tests::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |auth: &str, reference: &str| {
        let text = config(&mock, &vault, auth)
            .replace("{dir}", &dir.display().to_string())
            .replace("vault:secret/sluice/openai#api_key", reference)
            + sluice_tests::gateway::TEST_PRICING;
        let path = dir.join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN).arg("check-config").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    std::fs::write(dir.join("good.token"), TOKEN).unwrap();
    std::fs::write(dir.join("bad.token"), "hvs.wrong-token").unwrap();
    let good = "token = \"file:{dir}/good.token\"";

    let e = check("token = \"file:{dir}/bad.token\"", "vault:secret/sluice/openai#api_key");
    assert!(e.contains("providers.p0.api_key: vault:secret/sluice/openai#api_key: permission denied"), "{e}");
    assert!(!e.contains("hvs.wrong-token"), "{e}");
    let e = check(good, "vault:secret/sluice/missing#api_key");
    assert!(e.contains("no secret at secret/sluice/missing"), "{e}");
    let e = check(good, "vault:secret/sluice/openai#api_key");
    assert!(e.contains("the secret has no field `api_key`") && !e.contains("sk-not-this-one"), "{e}");
    let e = check(good, "vault:secret#api_key");
    assert!(e.contains("expected vault:MOUNT/PATH#FIELD"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

// Multi-threaded: `sluice admin reload` blocks the test's thread while the fake Vault answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_vault_again_now_from_the_admin_api_and_on_sighup() {
    let (mock, vault) = (MockOpenAi::start().await, FakeVault::start().await);
    vault.add_token(TOKEN);
    vault.put("secret/sluice/openai", json!({"api_key": "sk-reload-one"}));
    // No periodic refresh within the test: only a reload can bring a new key.
    let text = config(&mock, &vault, "token = \"file:{dir}/vault.token\"")
        .replace("refresh = \"200ms\"", "refresh = \"1h\"")
        + "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"file:{dir}/admin.token\"\n";
    let gw = TestGateway::start_with_files(BIN, &text, &[("vault.token", TOKEN)]).await;
    until_upstream_sees(&gw, &mock, "sk-reload-one").await;
    vault.put("secret/sluice/openai", json!({"api_key": "sk-reload-two"}));
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    let seen = mock.requests().last().and_then(|r| r.header("authorization").map(str::to_owned));
    assert_eq!(seen.as_deref(), Some("Bearer sk-reload-one"), "nothing reads Vault again by itself yet");

    let out = Command::new(BIN)
        .args(["admin", "--url", &format!("http://127.0.0.1:{}", gw.admin_port)])
        .args(["--token", &format!("file:{}/admin.token", gw.dir().display()), "reload"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((answer["vault"]["read"].as_u64(), answer["vault"]["changed"].as_u64()), (Some(1), Some(1)));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("sk-reload"), "no value in the answer");
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    let seen = mock.requests().last().and_then(|r| r.header("authorization").map(str::to_owned));
    assert_eq!(seen.as_deref(), Some("Bearer sk-reload-two"));

    // SIGHUP does the same, and the gateway serves on (SIGHUP's default would end it).
    vault.put("secret/sluice/openai", json!({"api_key": "sk-reload-three"}));
    gw.signal(libc::SIGHUP);
    until_upstream_sees(&gw, &mock, "sk-reload-three").await;
}
