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
//! | `claude-long`       | HTTP 400 `prompt is too long` (context length exceeded)             |
//! | `claude-cut`        | streams `message_start` and one delta, then drops the connection   |
//! | `claude-stream-error` | streams one delta, then an `error` event (overloaded), then ends |
//!
//! A request without `x-api-key`, `anthropic-version` or `max_tokens` gets Anthropic's own 401/400.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::Response;
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

use crate::server::{Body, MockServer, Recorded, event_stream};

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
}

pub struct MockAnthropic {
    pub addr: std::net::SocketAddr,
    state: Arc<State>,
    _server: MockServer,
}

impl MockAnthropic {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let server = MockServer::start(state.clone(), handle).await;
        Self { addr: server.addr, state, _server: server }
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

fn json_response(status: u16, v: Value) -> Response<Body> {
    crate::server::json(status, &v)
}

fn error(status: u16, kind: &str, message: &str) -> Response<Body> {
    json_response(status, json!({"type": "error", "error": {"type": kind, "message": message}}))
}

fn sse(name: &str, data: Value) -> Result<Frame<Bytes>, std::io::Error> {
    Ok(Frame::data(Bytes::from(format!("event: {name}\ndata: {data}\n\n"))))
}

async fn handle(state: Arc<State>, req: hyper::Request<Incoming>) -> Response<Body> {
    let seen = Recorded::read(req).await;
    if seen.method == "GET" && seen.path == "/v1/models" {
        if seen.header("x-api-key").is_none() || seen.header("anthropic-version").is_none() {
            return error(401, "authentication_error", "x-api-key header is required");
        }
        return json_response(200, json!({"data": [{"type": "model", "id": "claude-x"}], "has_more": false}));
    }
    state.requests.lock().expect("requests").push(seen.clone());
    let has = |name: &str| seen.header(name).is_some();
    let (path, body) = (seen.path.clone(), seen.body.clone());
    if path != "/v1/messages" {
        return error(404, "not_found_error", "Not found");
    }
    if !has("x-api-key") {
        return error(401, "authentication_error", "x-api-key header is required");
    }
    if !has("anthropic-version") {
        return error(400, "invalid_request_error", "anthropic-version: header is required");
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if request.get("max_tokens").and_then(Value::as_u64).is_none() {
        return error(400, "invalid_request_error", "max_tokens: Field required");
    }
    let model = request["model"].as_str().unwrap_or("").to_owned();
    match model.as_str() {
        "claude-overloaded" => return error(529, "overloaded_error", "Overloaded"),
        "claude-bad" => return error(400, "invalid_request_error", "messages: roles must alternate"),
        "claude-long" => {
            return error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum");
        }
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
        return json_response(
            200,
            json!({"id": "msg_01", "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage}),
        );
    }
    let (tx, response) = event_stream();
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
    response
}
