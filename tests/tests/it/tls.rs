//! TLS: the gateway's own listener (TLS 1.3, h2 by ALPN), and TLS + h2 to an upstream with a
//! custom CA.

use std::sync::Arc;

use openssl::hash::MessageDigest;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use serde_json::json;
use sluice_tests::gateway::TestGateway;
use sluice_tests::openai::MockOpenAi;
use sluice_tests::tls::self_signed;

use crate::{BIN, KEY, access_lines_matching, chat_body, config, post};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A gateway with a TLS listener in front of the mock provider; returns it and its TLS port.
async fn tls_gateway(dir: &std::path::Path) -> (TestGateway, u16) {
    tls_gateway_with(dir, "").await
}

/// Like [`tls_gateway`], with more `[server.tls]` keys.
async fn tls_gateway_with(dir: &std::path::Path, tls_extra: &str) -> (TestGateway, u16) {
    let (cert, key) = self_signed(dir);
    let port = free_port();
    let text = config(&[], "")
        + &format!(
            "[server.tls]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\n{tls_extra}\n\
             [providers.mock]\nkind = \"mock\"\npacing = \"1ms\"\n\
             [models.m]\ntargets = [{{ provider = \"mock\", model = \"mock-m\" }}]\n",
            cert.display(),
            key.display()
        );
    (TestGateway::start(BIN, &text).await, port)
}

#[tokio::test]
async fn the_tls_listener_speaks_tls_1_3_and_h2() {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{}-a", std::process::id()));
    let (gw, port) = tls_gateway(&dir).await;
    let ca = pingora::tls::x509::X509::stack_from_pem(&std::fs::read(dir.join("cert.pem")).unwrap()).unwrap();
    let mut peer = HttpPeer::new(format!("127.0.0.1:{port}"), true, "localhost".into());
    peer.options.alpn = ALPN::H2H1;
    peer.options.ca = Some(Arc::new(ca.into_boxed_slice()));
    let connector = Connector::new(None);
    let (mut session, _) = connector.get_http_session(&peer).await.unwrap();
    let body = serde_json::to_vec(&chat_body("m")).unwrap();
    let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
    req.insert_header("host", "localhost").unwrap();
    req.insert_header("authorization", format!("Bearer {KEY}")).unwrap();
    req.insert_header("content-type", "application/json").unwrap();
    req.insert_header("content-length", body.len().to_string()).unwrap();
    session.write_request_header(Box::new(req)).await.unwrap();
    session.write_request_body(body.into(), true).await.unwrap();
    session.finish_request_body().await.unwrap();
    session.read_response_header().await.unwrap();
    let resp = session.response_header().unwrap();
    assert_eq!(resp.status.as_u16(), 200);
    assert_eq!(resp.version, http::Version::HTTP_2);
    let ssl = session.digest().unwrap().ssl_digest.clone().unwrap();
    assert_eq!(ssl.version, "TLSv1.3");
    let mut answer = Vec::new();
    while let Some(chunk) = session.read_response_body().await.unwrap() {
        answer.extend_from_slice(&chunk);
    }
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(v["object"], "chat.completion");
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn upstreams_over_tls_are_verified_with_a_custom_ca_and_use_h2() {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{}-b", std::process::id()));
    let (upstream, port) = tls_gateway(&dir).await;
    // The front gateway reaches the TLS gateway as an OpenAI-compatible provider.
    // One worker thread: connections are pooled per worker, so all requests share one.
    let text = config(&[], "[server]\nthreads = 1\n")
        + &format!(
            "[providers.tls]\nkind = \"openai_compatible\"\nbase_url = \"https://localhost:{port}/v1\"\n\
             api_key = \"file:{{dir}}/key\"\nca_file = \"{}\"\nhealth_check = {{ enabled = false }}\n\
             [models.front]\ntargets = [{{ provider = \"tls\", model = \"m\" }}]\n",
            dir.join("cert.pem").display()
        );
    let front = TestGateway::start_with_files(BIN, &text, &[("key", KEY)]).await;
    for _ in 0..3 {
        let r = post(&front, "/v1/chat/completions", &chat_body("front")).await;
        assert_eq!(r.status(), 200);
        let stream =
            json!({"model": "front", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let text = post(&front, "/v1/chat/completions", &stream).await.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
    let served = access_lines_matching(&upstream, 6, |l| l["path"] == "/v1/chat/completions").await;
    assert_eq!(served.len(), 6);
    assert!(served.iter().all(|l| l["http_version"] == "HTTP/2.0"), "{served:?}");
    let clients: std::collections::HashSet<_> = served.iter().map(|l| l["client"].clone()).collect();
    assert_eq!(clients.len(), 1, "one pooled h2 connection carries every request: {clients:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_upstream_certificate_from_an_unknown_ca_is_refused() {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{}-c", std::process::id()));
    let (_upstream, port) = tls_gateway(&dir).await;
    let text = config(&[], "")
        + &format!(
            "[providers.tls]\nkind = \"openai_compatible\"\nbase_url = \"https://localhost:{port}/v1\"\n\
             health_check = {{ enabled = false }}\n\
             [models.front]\ntargets = [{{ provider = \"tls\", model = \"m\" }}]\n"
        );
    let front = TestGateway::start(BIN, &text).await;
    let r = post(&front, "/v1/chat/completions", &chat_body("front")).await;
    assert_eq!(r.status(), 502);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_refused_endpoint_is_skipped_for_another_endpoint_of_the_same_provider() {
    let mock = MockOpenAi::start().await;
    let text = config(&[], "")
        + &format!(
            "[providers.multi]\nkind = \"openai_compatible\"\nbase_url = \"{}\"\nendpoints = [\"{}\"]\n\
             health_check = {{ enabled = false }}\n\
             [models.m]\ntargets = [{{ provider = \"multi\", model = \"ok\" }}]\n",
            sluice_tests::openai::refused_url(),
            mock.url()
        );
    let gw = TestGateway::start(BIN, &text).await;
    for _ in 0..4 {
        let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-sluice-attempts"], "1");
    }
    assert_eq!(mock.hits(), 4);
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let mock = MockOpenAi::start().await;
    let gw = crate::gateway_with_chain(&[&mock], &[(0, "ok")], "[server]\nthreads = 1\n").await;
    for _ in 0..10 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    }
    let stream = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..5 {
        post(&gw, "/v1/chat/completions", &stream).await.text().await.unwrap();
    }
    assert_eq!(mock.hits(), 15);
    assert_eq!(mock.connections(), 1, "sequential requests share one kept-alive connection");
}

/// A TLS handshake with the listener (no verification: these tests look at what it serves);
/// returns the protocol and the SHA-256 of the certificate presented.
fn handshake(port: u16, max: Option<SslVersion>) -> Result<(String, Vec<u8>), String> {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_max_proto_version(max).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let tls = b.build().connect("localhost", tcp).map_err(|e| e.to_string())?;
    let cert = tls.ssl().peer_certificate().unwrap().digest(MessageDigest::sha256()).unwrap().to_vec();
    Ok((tls.ssl().version_str().to_owned(), cert))
}

#[tokio::test]
async fn the_listener_refuses_tls_1_2_unless_configured_to_accept_it() {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{}-v12", std::process::id()));
    let (_strict, port) = tls_gateway(&dir.join("strict")).await;
    assert!(handshake(port, Some(SslVersion::TLS1_2)).is_err(), "TLS 1.2 is refused by default");
    assert_eq!(handshake(port, None).unwrap().0, "TLSv1.3");
    let (_lenient, port) = tls_gateway_with(&dir.join("lenient"), "min_version = \"1.2\"").await;
    assert_eq!(handshake(port, Some(SslVersion::TLS1_2)).unwrap().0, "TLSv1.2");
    assert_eq!(handshake(port, None).unwrap().0, "TLSv1.3");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{}-reload", std::process::id()));
    let (gw, port) = tls_gateway_with(&dir, "reload_interval = \"100ms\"").await;
    let (_, first) = handshake(port, None).unwrap();
    // A renewal writes a new pair over the old files (the certificate first: in between, the key
    // does not match and the old pair keeps serving).
    self_signed(&dir);
    let renewed = std::fs::read(dir.join("cert.pem")).unwrap();
    let renewed = X509::from_pem(&renewed).unwrap().digest(MessageDigest::sha256()).unwrap().to_vec();
    assert_ne!(first, renewed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while handshake(port, None).unwrap().1 != renewed {
        assert!(std::time::Instant::now() < deadline, "the renewed certificate is not served after 5 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A broken renewal is refused; the last good pair keeps serving and the log says why.
    std::fs::write(dir.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(handshake(port, None).unwrap().1, renewed);
    let r = crate::client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the gateway serves on");
    let log = std::fs::read_to_string(gw.dir().join("stderr.log")).unwrap();
    assert!(log.contains("the previous certificate keeps serving"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_ledger_reaches_postgres_over_tls_with_the_certificate_verified() {
    let (pg, ca) = tokio::task::spawn_blocking(sluice_tests::postgres::Throwaway::start_tls).await.unwrap();
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        ca.display()
    );
    let mock = MockOpenAi::start().await;
    let extra = format!("[state]\npostgres = \"{url}\"\n[records]\nspool_dir = \"{{dir}}/spool\"\n");
    let gw = crate::gateway_with_chain(&[&mock], &[(0, "ok")], &extra).await;
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    // The test's own connection is plain; the gateway's must all be TLS.
    let db = sluice_tests::postgres::connect(&pg.url("postgres")).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows = db.query("SELECT count(*) FROM cost_records", &[]).await;
        if rows.is_ok_and(|r| r[0].get::<_, i64>(0) == 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the record never reached PostgreSQL");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (tls, plain): (i64, i64) = {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE 'sluice%'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(tls >= 1 && plain == 0, "sluice's connections: {tls} over TLS, {plain} plain");

    // A certificate from a CA the URL does not trust is refused.
    let other = std::env::temp_dir().join(format!("sluice-tls-{}-otherca", std::process::id()));
    let (wrong_ca, _) = self_signed(&other);
    let wrong = url.replace(&ca.display().to_string(), &wrong_ca.display().to_string());
    let out = tokio::process::Command::new(BIN)
        .args(["audit", "verify", "--postgres", &wrong])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate verify failed"), "{err}");
    let _ = std::fs::remove_dir_all(other);
}

/// A Redis server of its own that speaks TLS only; killed when dropped.
struct TlsRedis(std::process::Child);

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn limits_reach_redis_over_tls_with_the_certificate_verified() {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{}-redis", std::process::id()));
    let (cert, key) = self_signed(&dir);
    let port = free_port();
    let _redis = TlsRedis(
        std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&cert)
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the TLS Redis did not come up");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mock = MockOpenAi::start().await;
    // Fail closed: were Redis not reached, requests would be refused (503), not limited locally.
    let limits = |ca: &std::path::Path| {
        format!(
            "[state]\nredis = \"rediss://localhost:{port}\"\nredis_ca_file = \"{}\"\nkey_prefix = \"{}\"\n\
             [limits]\nteam = {{ rpm = 2 }}\non_store_failure = \"closed\"\n",
            ca.display(),
            crate::redis_prefix()
        )
    };
    let gw = crate::gateway_with_chain(&[&mock], &[(0, "ok")], &limits(&cert)).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429], "the shared limit, kept in Redis over TLS");
    let h: serde_json::Value =
        crate::client().get(gw.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h["redis"], "ok");

    // A server certificate from a CA the gateway does not trust: no connection, so (closed) 503.
    let (other_ca, _) = self_signed(&dir.join("other"));
    let untrusting = crate::gateway_with_chain(&[&mock], &[(0, "ok")], &limits(&other_ca)).await;
    let r = post(&untrusting, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status(), 503);
    let _ = std::fs::remove_dir_all(dir);
}
