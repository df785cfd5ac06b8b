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
//! | `gemini-max`     | a text answer cut by `MAX_TOKENS`                             |
//!
//! `:batchEmbedContents` answers one vector per request, `outputDimensionality` long (default 4).
//!
//! A request without `x-goog-api-key` gets Google's 403.

use std::sync::{Arc, Mutex};

use hyper::Response;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::server::{Body, MockServer, Recorded, full as respond};

type Requests = Mutex<Vec<Recorded>>;

pub struct MockGemini {
    pub addr: std::net::SocketAddr,
    requests: Arc<Requests>,
    _server: MockServer,
}

impl MockGemini {
    pub async fn start() -> Self {
        let requests = Arc::new(Requests::default());
        let server = MockServer::start(requests.clone(), handle).await;
        Self { addr: server.addr, requests, _server: server }
    }

    /// Base URL as a provider's `base_url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1beta", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests").clone()
    }
}

fn error(status: u16, code: &str, message: &str) -> Response<Body> {
    crate::server::json(status, &json!({"error": {"code": status, "message": message, "status": code}}))
}

async fn handle(requests: Arc<Requests>, req: hyper::Request<Incoming>) -> Response<Body> {
    let seen = Recorded::read(req).await;
    if seen.header("x-goog-api-key").is_none() {
        return error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.");
    }
    if seen.method == "GET" && seen.path == "/v1beta/models" {
        return respond(
            200,
            "application/json",
            json!({"models": [{"name": "models/gemini-x"}]}).to_string(),
        );
    }
    let path = seen.path.clone();
    requests.lock().expect("requests").push(seen);
    let Some(rest) = path.strip_prefix("/v1beta/models/") else {
        return error(404, "NOT_FOUND", "not found");
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
        return respond(200, "application/json", json!({"embeddings": embeddings}).to_string());
    }
    let (model, stream) = match rest.split_once(':') {
        Some((m, "generateContent")) => (m.to_owned(), false),
        Some((m, "streamGenerateContent")) => (m.to_owned(), true),
        _ => return error(404, "NOT_FOUND", "unknown method"),
    };
    match model.as_str() {
        "gemini-busy" => {
            return error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.");
        }
        "gemini-bad" => return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."),
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
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": if model == "gemini-max" { "MAX_TOKENS" } else { "STOP" },
            "index": 0}], "usageMetadata": usage, "modelVersion": model, "responseId": "resp-1"});
        return respond(200, "application/json", answer.to_string());
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
            + &chunk(
                json!([{"text": " Gemini."}]),
                Some(if model == "gemini-max" { "MAX_TOKENS" } else { "STOP" }),
                Some(&usage),
            )
    };
    respond(200, "text/event-stream", body)
}
