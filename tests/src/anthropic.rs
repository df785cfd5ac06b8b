//! A mock Anthropic Messages API: real headers, bodies and SSE event sequences; behaviour chosen by
//! the model name.
//!
//! | model name          | behaviour                                                          |
//! |---------------------|--------------------------------------------------------------------|
//! | anything else       | a text answer (JSON, or the SSE event sequence when streaming)     |
//! | `claude-tools`      | two parallel `tool_use` blocks, arguments streamed in fragments    |
//! | `claude-max`        | stops with `max_tokens`                                            |
//! | `claude-overloaded` | HTTP 529 `overloaded_error`                                         |
//! | `claude-bad`        | HTTP 400 `invalid_request_error`                                    |
//! | `claude-cut`        | streams `message_start` and one delta, then drops the connection   |
//! | `claude-stream-error` | streams one delta, then an `error` event (overloaded), then ends |
//!
//! A request without `x-api-key`, `anthropic-version` or `max_tokens` gets Anthropic's own 401/400.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::openai::Recorded;

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
}

pub struct MockAnthropic {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockAnthropic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockAnthropic {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let state = Arc::new(State::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// Base URL as a provider's `base_url` (Anthropic's API lives under `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("requests").clone()
    }

    pub fn hits(&self) -> usize {
        self.requests().len()
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn json_response(status: u16, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", "req_mock")
        .body(Full::new(Bytes::from(v.to_string())).map_err(|never| match never {}).boxed())
        .expect("response")
}

fn error(status: u16, kind: &str, message: &str) -> Response<Body> {
    json_response(status, json!({"type": "error", "error": {"type": kind, "message": message}}))
}

fn sse(name: &str, data: Value) -> Result<Frame<Bytes>, std::io::Error> {
    Ok(Frame::data(Bytes::from(format!("event: {name}\ndata: {data}\n\n"))))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> =
        req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let has = |name: &str| headers.iter().any(|(k, _)| k == name);
    if method == "GET" && path == "/v1/models" {
        return Ok(json_response(
            200,
            json!({"data": [{"type": "model", "id": "claude-x"}], "has_more": false}),
        ));
    }
    state.requests.lock().expect("requests").push(Recorded {
        method,
        path: path.clone(),
        query,
        headers: headers.clone(),
        body: body.clone(),
    });
    if path != "/v1/messages" {
        return Ok(error(404, "not_found_error", "Not found"));
    }
    if !has("x-api-key") {
        return Ok(error(401, "authentication_error", "x-api-key header is required"));
    }
    if !has("anthropic-version") {
        return Ok(error(400, "invalid_request_error", "anthropic-version: header is required"));
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if request.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Ok(error(400, "invalid_request_error", "max_tokens: Field required"));
    }
    let model = request["model"].as_str().unwrap_or("").to_owned();
    match model.as_str() {
        "claude-overloaded" => return Ok(error(529, "overloaded_error", "Overloaded")),
        "claude-bad" => return Ok(error(400, "invalid_request_error", "messages: roles must alternate")),
        _ => {}
    }
    let usage = json!({"input_tokens": 21, "output_tokens": 9, "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0});
    let stop = match model.as_str() {
        "claude-tools" => "tool_use",
        "claude-max" => "max_tokens",
        _ => "end_turn",
    };
    if !request["stream"].as_bool().unwrap_or(false) {
        let content = if model == "claude-tools" {
            json!([{"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {"city": "Oslo"}},
                   {"type": "tool_use", "id": "toolu_b", "name": "time", "input": {"tz": "CET"}}])
        } else {
            json!([{"type": "text", "text": "Hello from Claude."}])
        };
        return Ok(json_response(
            200,
            json!({"id": "msg_01", "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage}),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
    tokio::spawn(async move {
        let _ = tx
            .send(sse("message_start", json!({"type": "message_start", "message": {"id": "msg_01", "type": "message",
                "role": "assistant", "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 21, "output_tokens": 1, "cache_read_input_tokens": 4,
                          "cache_creation_input_tokens": 0}}})))
            .await;
        let _ = tx.send(sse("ping", json!({"type": "ping"}))).await;
        if model == "claude-tools" {
            for (i, (id, name)) in [("toolu_a", "weather"), ("toolu_b", "time")].iter().enumerate() {
                let _ = tx
                    .send(sse(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": i,
                        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                    ))
                    .await;
            }
            for (i, fragment) in [(0, "{\"city\":"), (1, "{\"tz\":"), (0, "\"Oslo\"}"), (1, "\"CET\"}")] {
                let _ = tx
                    .send(sse(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": fragment}}),
                    ))
                    .await;
            }
            for i in 0..2 {
                let _ = tx
                    .send(sse("content_block_stop", json!({"type": "content_block_stop", "index": i})))
                    .await;
            }
        } else {
            let _ = tx
                .send(sse(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ))
                .await;
            for (n, piece) in ["Hello", " from", " Claude."].iter().enumerate() {
                if model == "claude-stream-error" && n == 1 {
                    let _ = tx
                        .send(sse(
                            "error",
                            json!({"type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                        ))
                        .await;
                    return;
                }
                if model == "claude-cut" && n == 1 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                    return;
                }
                let _ = tx
                    .send(sse(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": piece}}),
                    ))
                    .await;
            }
            let _ =
                tx.send(sse("content_block_stop", json!({"type": "content_block_stop", "index": 0}))).await;
        }
        let _ = tx
            .send(sse(
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 9}}),
            ))
            .await;
        let _ = tx.send(sse("message_stop", json!({"type": "message_stop"}))).await;
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response"))
}
