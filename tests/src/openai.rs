//! A mock OpenAI upstream: real wire format, behaviour chosen by the model name.
//!
//! | model name            | behaviour                                                       |
//! |-----------------------|-----------------------------------------------------------------|
//! | anything else         | a normal answer (JSON, or SSE when `stream: true`)              |
//! | `fail-500`            | 500 with an OpenAI error body                                   |
//! | `rate-429`            | 429 with `Retry-After: 2`                                       |
//! | `slow`                | waits 3 s before the response header                            |
//! | `cut`                 | streams two chunks, then drops the connection                   |
//! | `no-usage`            | never sends usage, even when asked                              |
//! | `paced`               | streams 20 chunks, 25 ms apart                                  |
//! | `bad-request`         | 400 with an OpenAI error body (the client's fault)              |
//! | `tools`               | two parallel tool calls (`weather`, `time`), streamed by index  |
//! | `max`                 | a normal answer cut by `max_tokens` (`finish_reason: length`)   |
//! | `leak`                | an answer with an email and a card number ([`LEAK`]), streamed  |
//! |                       | 4 bytes a chunk so each value is split across chunks            |

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::Response;
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

pub use crate::server::Recorded;

/// What model `leak` answers.
pub const LEAK: &str = "Contact jane.doe@example.com or use card 4111 1111 1111 1111, thanks.";
use crate::server::{Body, MockServer, event_stream, full};

#[derive(Default)]
struct State {
    /// Inference requests (everything but health probes).
    hits: AtomicUsize,
    probes: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    last_probe: Mutex<Option<Recorded>>,
    /// A behaviour forced on every request, overriding the model name.
    forced: Mutex<Option<String>>,
}

pub struct MockOpenAi {
    pub addr: std::net::SocketAddr,
    state: Arc<State>,
    server: MockServer,
}

impl MockOpenAi {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let server = MockServer::start(state.clone(), handle).await;
        Self { addr: server.addr, state, server }
    }

    /// Base URL as a provider's `base_url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Inference requests received (health probes excluded).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.connections()
    }

    pub fn probes(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }

    /// Forces one behaviour (a model name of the table above) on every request; `None` goes back
    /// to choosing by model name.
    pub fn force(&self, behaviour: Option<&str>) {
        *self.state.forced.lock().expect("forced") = behaviour.map(str::to_owned);
    }

    /// The last health probe received.
    pub fn last_probe(&self) -> Option<Recorded> {
        self.state.last_probe.lock().expect("probe").clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("requests").clone()
    }
}

/// An address where nothing listens: connections are refused.
pub fn refused_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}/v1")
}

async fn handle(state: Arc<State>, req: hyper::Request<Incoming>) -> Response<Body> {
    let seen = Recorded::read(req).await;
    if seen.method == "GET" && seen.path.ends_with("/models") {
        state.probes.fetch_add(1, Ordering::SeqCst);
        *state.last_probe.lock().expect("probe") = Some(seen);
        return json_response(200, json!({"object": "list", "data": [{"id": "mock", "object": "model"}]}));
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.requests.lock().expect("requests").push(seen.clone());
    let (path, body) = (seen.path, seen.body);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let forced = state.forced.lock().expect("forced").clone();
    let model = forced.unwrap_or_else(|| request["model"].as_str().unwrap_or("").to_owned());
    let stream = request["stream"].as_bool().unwrap_or(false);
    let with_usage =
        request["stream_options"]["include_usage"].as_bool().unwrap_or(false) && model != "no-usage";
    match model.as_str() {
        "fail-500" => {
            return error_response(
                500,
                "The server had an error while processing your request.",
                "server_error",
            );
        }
        "bad-request" => {
            return error_response(400, "Invalid value for 'temperature'.", "invalid_request_error");
        }
        "rate-429" => {
            let mut r = error_response(429, "Rate limit reached for requests", "rate_limit_exceeded");
            r.headers_mut().insert("retry-after", "2".parse().expect("header"));
            return r;
        }
        "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        _ => {}
    }
    if path.ends_with("/embeddings") {
        let n = request["input"].as_array().map_or(1, Vec::len);
        let data: Vec<Value> = (0..n)
            .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}))
            .collect();
        return json_response(
            200,
            json!({"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": 5, "total_tokens": 5}}),
        );
    }
    if model == "tools" {
        return tool_answer(&model, stream, with_usage);
    }
    let text = if model == "leak" {
        LEAK.to_owned()
    } else {
        format!("echo from {model} ({} bytes received)", body.len())
    };
    if !stream {
        let mut answer = json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": if model == "max" { "length" } else { "stop" }}]});
        if model != "no-usage" {
            answer["usage"] = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
        }
        return json_response(200, answer);
    }
    let pieces: Vec<String> = if model == "paced" {
        (0..20).map(|i| format!("w{i} ")).collect()
    } else if model == "leak" {
        text.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect()
    } else {
        text.split(' ').map(|w| format!("{w} ")).collect()
    };
    let (tx, response) = event_stream();
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            let mut v = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            if with_usage {
                v["usage"] = Value::Null;
            }
            Ok(Frame::data(Bytes::from(format!("data: {v}\n\n"))))
        };
        let _ = tx.send(chunk(json!({"role": "assistant", "content": ""}), Value::Null)).await;
        for (i, p) in pieces.iter().enumerate() {
            if model == "cut" && i == 2 {
                // Let what was sent reach the wire, then drop the connection mid-body.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                return;
            }
            if model == "paced" {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = tx.send(chunk(json!({"content": p}), Value::Null)).await;
        }
        let finish = if model == "max" { "length" } else { "stop" };
        let _ = tx.send(chunk(json!({}), json!(finish))).await;
        if with_usage {
            let v = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}});
            let _ = tx.send(Ok(Frame::data(Bytes::from(format!("data: {v}\n\n"))))).await;
        }
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))).await;
    });
    response
}

/// Two parallel tool calls, whole or streamed the way OpenAI streams them (id and name first, then
/// argument fragments, by index).
fn tool_answer(model: &str, stream: bool, with_usage: bool) -> Response<Body> {
    let calls = [("call_a", "weather", "{\"city\":\"Oslo\"}"), ("call_b", "time", "{\"tz\":\"CET\"}")];
    if !stream {
        let tool_calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
            .collect();
        return json_response(
            200,
            json!({"id": "chatcmpl-tools", "object": "chat.completion", "created": 1,
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": tool_calls}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        let v = json!({"id": "chatcmpl-tools", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {v}\n\n")
    };
    let mut body = chunk(json!({"role": "assistant", "content": null}), Value::Null);
    for (i, (id, name, _)) in calls.iter().enumerate() {
        body.push_str(&chunk(
            json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
    }
    for (i, (_, _, args)) in calls.iter().enumerate() {
        let (a, b) = args.split_at(args.len() / 2);
        for part in [a, b] {
            body.push_str(&chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                Value::Null,
            ));
        }
    }
    body.push_str(&chunk(json!({}), json!("tool_calls")));
    if with_usage {
        let v = json!({"id": "chatcmpl-tools", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}});
        body.push_str(&format!("data: {v}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    full(200, "text/event-stream", body)
}

fn json_response(status: u16, v: Value) -> Response<Body> {
    crate::server::json(status, &v)
}

fn error_response(status: u16, message: &str, code: &str) -> Response<Body> {
    let kind = if status == 429 {
        "requests"
    } else if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    json_response(status, json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}
