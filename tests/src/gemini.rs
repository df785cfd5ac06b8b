//! A mock Gemini API (`generateContent`, `streamGenerateContent?alt=sse`): real paths, headers,
//! bodies and SSE chunks (CRLF-separated, as Google sends them); behaviour chosen by the model name
//! in the URL.
//!
//! | model name       | behaviour                                                     |
//! |------------------|---------------------------------------------------------------|
//! | anything else    | a text answer (whole, or in three chunks)                     |
//! | `gemini-tools`   | two `functionCall` parts                                      |
//! | `gemini-busy`    | HTTP 503 `UNAVAILABLE`                                        |
//! | `gemini-bad`     | HTTP 400 `INVALID_ARGUMENT`                                   |
//! | `gemini-cut`     | one chunk without a finish reason, then the stream ends       |
//!
//! `:batchEmbedContents` answers one vector per request, `outputDimensionality` long (default 4).
//!
//! A request without `x-goog-api-key` gets Google's 403.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::openai::Recorded;

pub struct MockGemini {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockGemini {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockGemini {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let r = r.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(r.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, requests, task }
    }

    /// Base URL as a provider's `base_url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1beta", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests").clone()
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn respond(status: u16, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed())
        .expect("response")
}

fn error(status: u16, code: &str, message: &str) -> Response<Body> {
    respond(
        status,
        "application/json",
        json!({"error": {"code": status, "message": message, "status": code}}).to_string(),
    )
}

async fn handle(
    requests: Arc<Mutex<Vec<Recorded>>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> =
        req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if !headers.iter().any(|(k, _)| k == "x-goog-api-key") {
        return Ok(error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."));
    }
    if method == "GET" && path == "/v1beta/models" {
        return Ok(respond(
            200,
            "application/json",
            json!({"models": [{"name": "models/gemini-x"}]}).to_string(),
        ));
    }
    requests.lock().expect("requests").push(Recorded { method, path: path.clone(), query, headers, body });
    let Some(rest) = path.strip_prefix("/v1beta/models/") else {
        return Ok(error(404, "NOT_FOUND", "not found"));
    };
    if let Some((_, "batchEmbedContents")) = rest.split_once(':') {
        let request: Value =
            serde_json::from_slice(&requests.lock().expect("requests").last().expect("recorded").body)
                .unwrap_or(Value::Null);
        let embeddings: Vec<Value> = request["requests"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let dims = r["outputDimensionality"].as_u64().unwrap_or(4);
                json!({"values": (0..dims).map(|d| (i as f64) + (d as f64) / 4.0).collect::<Vec<_>>()})
            })
            .collect();
        return Ok(respond(200, "application/json", json!({"embeddings": embeddings}).to_string()));
    }
    let (model, stream) = match rest.split_once(':') {
        Some((m, "generateContent")) => (m.to_owned(), false),
        Some((m, "streamGenerateContent")) => (m.to_owned(), true),
        _ => return Ok(error(404, "NOT_FOUND", "unknown method")),
    };
    match model.as_str() {
        "gemini-busy" => {
            return Ok(error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."));
        }
        "gemini-bad" => return Ok(error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")),
        _ => {}
    }
    let usage = json!({"promptTokenCount": 11, "candidatesTokenCount": 6, "totalTokenCount": 17});
    let tools = model == "gemini-tools";
    let parts = if tools {
        json!([{"functionCall": {"name": "weather", "args": {"city": "Rome"}}},
               {"functionCall": {"name": "time", "args": {"tz": "CET"}}}])
    } else {
        json!([{"text": "Ciao from Gemini."}])
    };
    if !stream {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP",
            "index": 0}], "usageMetadata": usage, "modelVersion": model, "responseId": "resp-1"});
        return Ok(respond(200, "application/json", answer.to_string()));
    }
    let chunk = |parts: Value, finish: Option<&str>, usage: Option<&Value>| {
        let mut c = json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
            "modelVersion": model, "responseId": "resp-1"});
        if let Some(f) = finish {
            c["candidates"][0]["finishReason"] = json!(f);
        }
        if let Some(u) = usage {
            c["usageMetadata"] = u.clone();
        }
        format!("data: {c}\r\n\r\n")
    };
    let body = if tools {
        chunk(parts, Some("STOP"), Some(&usage))
    } else if model == "gemini-cut" {
        chunk(json!([{"text": "Ciao"}]), None, None)
    } else {
        chunk(json!([{"text": "Ciao"}]), None, None)
            + &chunk(json!([{"text": " from"}]), None, None)
            + &chunk(json!([{"text": " Gemini."}]), Some("STOP"), Some(&usage))
    };
    Ok(respond(200, "text/event-stream", body))
}
