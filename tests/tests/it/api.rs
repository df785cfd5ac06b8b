//! The OpenAI-compatible inbound API: what an application team's SDK sees.

use serde_json::{Value, json};
use sluice_tests::gateway::{PROVIDER_KEY, TestGateway};
use sluice_tests::openai::MockOpenAi;

use crate::{BIN, KEY, chat_body, client, config, gateway_with_chain, openai_error, post};

#[tokio::test]
async fn chat_completion_passes_every_field_and_swaps_the_gateway_key_for_the_provider_key() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "gpt-upstream")], "").await;
    let body = json!({
        "model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"}, "n": 1, "stop": ["x"],
        "logprobs": false, "seed": 7, "temperature": 0.5, "x_unknown_vendor_field": {"keep": [1, 2]}
    });
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-sluice-target"], "p0/gpt-upstream");
    assert_eq!(h["x-sluice-attempts"], "1");
    assert!(h["x-request-id"].to_str().unwrap().starts_with("req_"));
    assert!(h["server-timing"].to_str().unwrap().starts_with("gateway;dur="));
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["usage"]["total_tokens"], 18);

    let seen = &mock.requests()[0];
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {PROVIDER_KEY}").as_str()));
    assert!(!seen.headers.iter().any(|(_, v)| v.contains(KEY)), "the gateway key must never go upstream");
    let sent = seen.json();
    assert_eq!(sent["model"], "gpt-upstream");
    for field in [
        "tools",
        "tool_choice",
        "response_format",
        "n",
        "stop",
        "logprobs",
        "seed",
        "temperature",
        "messages",
    ] {
        assert_eq!(sent[field], body[field], "field {field} must pass unchanged");
    }
    assert_eq!(sent["x_unknown_vendor_field"], json!({"keep": [1, 2]}));
}

#[tokio::test]
async fn keys_are_accepted_from_bearer_x_api_key_and_api_key_headers() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let url = gw.url("/v1/chat/completions");
    for header in ["x-api-key", "api-key"] {
        let r = client().post(&url).header(header, KEY).json(&chat_body("m")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{header}");
    }
    let r = client()
        .post(&url)
        .header("authorization", format!("bearer {KEY}"))
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = mock.requests();
    assert!(seen.iter().all(|r| r.header("x-api-key").is_none() && r.header("api-key").is_none()));
}

#[tokio::test]
async fn missing_or_unknown_keys_get_openai_shaped_401s_before_the_body_is_read() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let url = gw.url("/v1/chat/completions");
    let e = openai_error(client().post(&url).body("not even json").send().await.unwrap(), 401).await;
    assert!(e["message"].as_str().unwrap().contains("API key"));
    let r = client()
        .post(&url)
        .bearer_auth("sk-sluice-wrong-0000000000")
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    let e = openai_error(r, 401).await;
    assert_eq!(e["code"], "invalid_api_key");
    assert!(!e["message"].as_str().unwrap().contains("sk-sluice-wrong-0000000000"));
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn bad_requests_say_which_field_is_wrong() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let url = gw.url("/v1/chat/completions");
    let r = client().post(&url).bearer_auth(KEY).body("{\"model\": ").send().await.unwrap();
    assert_eq!(openai_error(r, 400).await["code"], "invalid_json");
    let e = openai_error(post(&gw, "/v1/chat/completions", &json!({"model": "m"})).await, 400).await;
    assert_eq!(e["param"], "messages");
    let e = openai_error(
        post(
            &gw,
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(e["param"], "max_tokens");
    assert_eq!(e["code"], "invalid_type");
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn unknown_models_routes_and_methods_are_404_and_405() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let e = openai_error(post(&gw, "/v1/chat/completions", &chat_body("no-such-model")).await, 404).await;
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");
    let e = openai_error(post(&gw, "/v1/assistants", &json!({})).await, 404).await;
    assert!(e["message"].as_str().unwrap().contains("/v1/assistants"));
    let r = client().get(gw.url("/v1/chat/completions")).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    openai_error(r, 405).await;
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn bodies_above_the_limit_are_413() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "[server]\nmax_body_bytes = 4096\n").await;
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let e = openai_error(post(&gw, "/v1/chat/completions", &big).await, 413).await;
    assert!(e["message"].as_str().unwrap().contains("4096"));
    assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("m")).await.status(), 200);
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn a_provider_4xx_is_the_clients_answer_not_a_reason_to_fall_over() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let gw = gateway_with_chain(&[&a, &b], &[(0, "bad-request"), (1, "ok")], "").await;
    let e = openai_error(post(&gw, "/v1/chat/completions", &chat_body("m")).await, 400).await;
    assert_eq!(e["message"], "Invalid value for 'temperature'.");
    assert_eq!((a.hits(), b.hits()), (1, 0));
}

#[tokio::test]
async fn completions_and_embeddings_reach_the_provider_in_openai_shape() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let r =
        post(&gw, "/v1/embeddings", &json!({"model": "m", "input": ["a", "b"], "encoding_format": "float"}))
            .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let r = post(&gw, "/v1/completions", &json!({"model": "m", "prompt": "Say hi"})).await;
    assert_eq!(r.status(), 200);
    let paths: Vec<String> = mock.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/embeddings", "/v1/completions"]);
    assert_eq!(mock.requests()[0].json()["encoding_format"], "float");
}

#[tokio::test]
async fn models_lists_only_the_aliases_the_key_may_use() {
    let mock = MockOpenAi::start().await;
    let extra = String::from(
        "[models.m]\ntargets = [{ provider = \"p0\", model = \"ok\" }]\n\
         [models.secret]\ntargets = [{ provider = \"p0\", model = \"ok\" }]\n\
         [[keys.key]]\nid = \"narrow\"\ndemo_key = \"sk-sluice-narrow-key-1\"\norg = \"o\"\nteam = \"t\"\napp = \"b\"\nmodels = [\"m\"]\n",
    );
    let gw = TestGateway::start(BIN, &config(&[mock.url()], &extra)).await;
    let ids = |v: Value| -> Vec<String> {
        v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
    };
    let all: Value =
        client().get(gw.url("/v1/models")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    assert_eq!(all["object"], "list");
    assert_eq!(ids(all), ["m", "secret"]);
    let narrow =
        client().get(gw.url("/v1/models")).bearer_auth("sk-sluice-narrow-key-1").send().await.unwrap();
    assert_eq!(ids(narrow.json().await.unwrap()), ["m"]);
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-sluice-narrow-key-1")
        .json(&chat_body("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(r, 404).await["code"], "model_not_found");
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn the_embedded_default_answers_the_readme_example_with_the_mock_provider() {
    let gw = TestGateway::start_default(BIN).await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-sluice-demo")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().contains("Say hello"));
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn large_bodies_of_1_and_10_mib_reach_the_provider_whole_even_after_a_fallback() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let gw = gateway_with_chain(&[&a, &b], &[(0, "fail-500"), (1, "ok")], "").await;
    for size in [1 << 20, 10 << 20] {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "y".repeat(size)}]});
        let r = post(&gw, "/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 200, "{size} bytes");
        assert_eq!(r.headers()["x-sluice-attempts"], "2");
    }
    let first = a.requests();
    let second = b.requests();
    assert_eq!((first.len(), second.len()), (2, 2));
    for (i, size) in [1 << 20, 10 << 20].into_iter().enumerate() {
        assert_eq!(first[i].json()["messages"][0]["content"].as_str().unwrap().len(), size);
        assert_eq!(second[i].json()["messages"][0]["content"].as_str().unwrap().len(), size);
    }
}

#[tokio::test]
async fn an_unchanged_body_reaches_the_provider_as_the_clients_own_bytes() {
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "m")], "").await;
    let send = |body: &'static str| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Odd spacing, escapes, key order and number spelling: nothing the gateway had to change, so
    // the provider gets exactly these bytes.
    let odd = "{ \"z_vendor\" : 1.50,\n  \"model\":\"m\", \"messages\" : [ {\"role\":\"user\",\
               \"content\":\"caf\\u00e9 \\ud83d\\ude00 \\\"quoted\\\"\"} ], \"a\": [ ] }";
    let resp = send(odd).await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.requests()[0].body, odd.as_bytes(), "the client's bytes, untouched");

    // A repeated key: the gateway reads the last value, so the provider must get that one alone,
    // never bytes in which a parser that keeps the first value would find another text.
    let repeated =
        r#"{"model":"m","messages":[{"role":"user","content":"first text","content":"second text"}]}"#;
    let resp = send(repeated).await.expect("request");
    assert_eq!(resp.status(), 200);
    let seen = &mock.requests()[1];
    let text = String::from_utf8(seen.body.to_vec()).unwrap();
    assert!(!text.contains("first text"), "the shadowed value went upstream: {text}");
    assert_eq!(seen.json()["messages"][0]["content"], "second text");
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream`: its head and its body.
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .expect("a content-length");
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection closed inside a body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
            return (head, body);
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_kept_alive_connection_serves_request_after_request() {
    use tokio::io::AsyncWriteExt;
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let body = chat_body("m").to_string();
    for i in 0..5 {
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\nauthorization: Bearer {KEY}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nx-request-id: keep-{i}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let (head, answer) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert!(head.to_ascii_lowercase().contains(&format!("x-request-id: keep-{i}")), "{head}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["object"], "chat.completion");
    }
    // An error answer keeps the connection too: the next request on it is served.
    let request = format!("GET /v1/nothing HTTP/1.1\r\nhost: sluice\r\nauthorization: Bearer {KEY}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, answer) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["error"]["type"], "invalid_request_error");
    let request = format!("GET /v1/models HTTP/1.1\r\nhost: sluice\r\nauthorization: Bearer {KEY}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(mock.hits(), 5);
}

#[tokio::test]
async fn a_request_that_is_not_http_gets_an_openai_shaped_400_a_closed_connection_an_access_line_and_a_count()
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockOpenAi::start().await;
    let gw = gateway_with_chain(&[&mock], &[(0, "ok")], "").await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nno colon in this header line\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/json"), "{head}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["code"], "malformed_http");
    assert!(error["error"]["message"].as_str().unwrap().contains("not valid HTTP"));
    let request_id = lower
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("the 400 names its request id: {head}"))
        .trim()
        .to_owned();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "the connection must close after the 400");
    // A platform engineer sees it: one access line under the id the client got, and a count in
    // /metrics; no upstream was asked.
    let lines = crate::access_lines_matching(&gw, 1, |l| l["request_id"] == request_id.as_str()).await;
    assert_eq!(lines.len(), 1, "one access line for {request_id}");
    assert_eq!(lines[0]["status"], 400);
    assert!(lines[0]["error"].as_str().unwrap().contains("not valid HTTP"), "{}", lines[0]);
    assert!(lines[0]["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{}", lines[0]);
    let metrics = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let counted = "sluice_requests_total{endpoint=\"malformed\",model=\"\",status=\"400\",target=\"none\"} 1";
    assert!(metrics.contains(counted), "missing `{counted}` in:\n{metrics}");
    assert_eq!(mock.hits(), 0);
    // The gateway goes on serving.
    let r = post(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(mock.hits(), 1);
}
