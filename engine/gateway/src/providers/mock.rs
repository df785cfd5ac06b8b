//! The built-in `mock` provider: deterministic OpenAI-shaped answers derived from the prompt.
//!
//! It needs no network and no key, so the embedded default configuration answers out of the box.
//! The answer echoes the last user message; streams release one word per chunk with the configured
//! pacing; usage is counted at about four characters per token and reported like a real provider.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};
use sluice_core::Usage;
use sluice_core::ctx::Endpoint;
use sluice_core::wire::Request;
use xxhash_rust::xxh3::xxh3_64;

use super::{ReplyBody, UpstreamReply};

#[derive(Debug, Clone)]
pub struct Mock {
    pub pacing: Duration,
}

impl Mock {
    pub fn reply(&self, request: &Request, upstream_model: &str) -> UpstreamReply {
        let seed = xxh3_64(&serde_json::to_vec(&*request.body).unwrap_or_default());
        let id = format!("{:016x}", seed);
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let prompt_tokens = request.estimated_prompt_tokens();
        match request.endpoint {
            Endpoint::Embeddings => json_reply(embeddings(request, upstream_model, seed, prompt_tokens)),
            Endpoint::ChatCompletions | Endpoint::Completions => {
                let (text, finish) = answer(request);
                let completion_tokens = Usage::estimate_tokens(text.chars().count());
                let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens});
                let chat = request.endpoint == Endpoint::ChatCompletions;
                if request.stream {
                    let chunks =
                        stream_chunks(&id, created, upstream_model, chat, &text, finish, usage, request);
                    UpstreamReply {
                        status: 200,
                        content_type: Some("text/event-stream".into()),
                        body: ReplyBody::Chunks { chunks, pacing: self.pacing, first: true },
                        translate: None,
                        usage_estimated: false,
                    }
                } else if chat {
                    json_reply(json!({"id": format!("chatcmpl-{id}"), "object": "chat.completion",
                        "created": created, "model": upstream_model, "system_fingerprint": "fp_sluice_mock",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                                     "logprobs": null, "finish_reason": finish}],
                        "usage": usage}))
                } else {
                    json_reply(json!({"id": format!("cmpl-{id}"), "object": "text_completion",
                        "created": created, "model": upstream_model,
                        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
                        "usage": usage}))
                }
            }
            // Messages requests reach the mock already translated to chat completions.
            Endpoint::Models | Endpoint::Messages => json_reply(json!({"object": "list", "data": []})),
        }
    }
}

/// The answer text and its finish reason, honouring `max_tokens` (one word ≈ one token here).
fn answer(request: &Request) -> (String, &'static str) {
    let said = last_user_text(request);
    let said: String = said.chars().take(200).collect();
    let text = format!("Hello from Sluice's mock provider. You said: \"{said}\"");
    match request.max_output_tokens {
        Some(max) if (max as usize) < text.split(' ').count() => {
            (text.split(' ').take(max as usize).collect::<Vec<_>>().join(" "), "length")
        }
        _ => (text, "stop"),
    }
}

fn last_user_text(request: &Request) -> String {
    if let Some(Value::Array(messages)) = request.body.get("messages") {
        for m in messages.iter().rev() {
            if m.get("role").and_then(Value::as_str) == Some("user") {
                return match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => String::new(),
                };
            }
        }
    }
    match request.body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

#[expect(clippy::too_many_arguments, reason = "one call site; the fields of one stream")]
fn stream_chunks(
    id: &str,
    created: u64,
    model: &str,
    chat: bool,
    text: &str,
    finish: &str,
    usage: Value,
    request: &Request,
) -> VecDeque<Bytes> {
    let (id, object) = if chat {
        (format!("chatcmpl-{id}"), "chat.completion.chunk")
    } else {
        (format!("cmpl-{id}"), "text_completion")
    };
    let with_usage = request
        .body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let event = |choice: Value, usage: Value| -> Bytes {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model,
            "system_fingerprint": "fp_sluice_mock", "choices": [choice]});
        if choice_is_null(&v) {
            v["choices"] = json!([]);
        }
        if with_usage {
            v["usage"] = usage;
        }
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut out = VecDeque::new();
    let words: Vec<&str> = text.split(' ').collect();
    if chat {
        out.push_back(event(
            json!({"index": 0, "delta": {"role": "assistant", "content": ""},
            "logprobs": null, "finish_reason": null}),
            Value::Null,
        ));
    }
    for (i, w) in words.iter().enumerate() {
        let piece = if i == 0 { (*w).to_owned() } else { format!(" {w}") };
        let choice = if chat {
            json!({"index": 0, "delta": {"content": piece}, "logprobs": null, "finish_reason": null})
        } else {
            json!({"index": 0, "text": piece, "logprobs": null, "finish_reason": null})
        };
        out.push_back(event(choice, Value::Null));
    }
    let last = if chat {
        json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish})
    } else {
        json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish})
    };
    out.push_back(event(last, Value::Null));
    if with_usage {
        out.push_back(event(Value::Null, usage));
    }
    out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn choice_is_null(v: &Value) -> bool {
    v["choices"].get(0).is_some_and(Value::is_null)
}

fn embeddings(request: &Request, model: &str, seed: u64, prompt_tokens: u64) -> Value {
    let inputs: Vec<Value> = match request.body.get("input") {
        Some(Value::Array(items)) => items.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    };
    let dims = request.body.get("dimensions").and_then(Value::as_u64).unwrap_or(16).clamp(1, 4096);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let h = xxh3_64(input.to_string().as_bytes()) ^ seed.rotate_left(7);
            let v: Vec<f64> = (0..dims)
                .map(|d| {
                    let x = xxh3_64(&(h.wrapping_add(d)).to_le_bytes());
                    (x % 20_001) as f64 / 10_000.0 - 1.0
                })
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})
}

fn json_reply(v: Value) -> UpstreamReply {
    let mut chunks = VecDeque::new();
    chunks.push_back(Bytes::from(v.to_string()));
    UpstreamReply {
        status: 200,
        content_type: Some("application/json".into()),
        body: ReplyBody::Chunks { chunks, pacing: Duration::ZERO, first: true },
        translate: None,
        usage_estimated: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &str, endpoint: Endpoint) -> Request {
        Request::parse(endpoint, &mut body.as_bytes().to_vec()).unwrap()
    }

    fn text_of(reply: UpstreamReply) -> String {
        let ReplyBody::Chunks { chunks, .. } = reply.body else { panic!("mock replies are chunks") };
        chunks.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
    }

    #[test]
    fn answers_are_deterministic_and_echo_the_prompt() {
        let r =
            req(r#"{"model":"m","messages":[{"role":"user","content":"ping"}]}"#, Endpoint::ChatCompletions);
        let m = Mock { pacing: Duration::ZERO };
        let a = text_of(m.reply(&r, "up"));
        let b = text_of(m.reply(&r, "up"));
        let (va, vb): (Value, Value) = (serde_json::from_str(&a).unwrap(), serde_json::from_str(&b).unwrap());
        assert_eq!(va["choices"][0]["message"]["content"], vb["choices"][0]["message"]["content"]);
        assert!(va["choices"][0]["message"]["content"].as_str().unwrap().contains("ping"));
        assert_eq!(va["model"], "up");
        assert!(va["usage"]["prompt_tokens"].as_u64().unwrap() >= 1);
    }

    #[test]
    fn streams_end_with_done_and_carry_usage_only_when_asked() {
        let m = Mock { pacing: Duration::ZERO };
        let r = req(
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a b"}]}"#,
            Endpoint::ChatCompletions,
        );
        let s = text_of(m.reply(&r, "up"));
        assert!(s.ends_with("data: [DONE]\n\n"));
        assert!(!s.contains("\"usage\""));
        let r = req(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"a b"}]}"#,
            Endpoint::ChatCompletions,
        );
        let s = text_of(m.reply(&r, "up"));
        assert!(s.contains("\"choices\":[]"));
        assert!(s.contains("\"completion_tokens\""));
    }

    #[test]
    fn max_tokens_cuts_the_answer_with_length() {
        let r = req(
            r#"{"model":"m","max_tokens":2,"messages":[{"role":"user","content":"x"}]}"#,
            Endpoint::ChatCompletions,
        );
        let v: Value =
            serde_json::from_str(&text_of(Mock { pacing: Duration::ZERO }.reply(&r, "up"))).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn embeddings_follow_dimensions() {
        let r = req(r#"{"model":"m","input":["a","b"],"dimensions":4}"#, Endpoint::Embeddings);
        let v: Value =
            serde_json::from_str(&text_of(Mock { pacing: Duration::ZERO }.reply(&r, "up"))).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 4);
    }
}
