//! Anthropic's Messages API ⇄ the canonical model: requests out, answers and stream events in.
//!
//! Wire format: `POST /v1/messages` with `x-api-key` and `anthropic-version`; answers are a `message`
//! with content blocks (`text`, `tool_use`) and a `stop_reason`; streams are SSE events
//! `message_start`, `content_block_start/delta/stop`, `message_delta`, `message_stop`, `ping` and
//! `error`.

use std::collections::HashMap;

use serde_json::{Value, json};
use sluice_core::{GatewayError, Usage};

use super::canonical::{
    Answer, Chat, Event, Finish, Image, Part, ResponseFormat, Role, Tool, ToolChoice, Turn,
};

/// The Messages API body for `chat`. Anthropic requires `max_tokens`: `default_max_tokens` fills in.
/// Anthropic has no JSON mode: a JSON `response_format` is a clear 400 rather than a silent ignore.
pub fn request(chat: &Chat, model: &str, default_max_tokens: u64) -> Result<Value, GatewayError> {
    if chat.response_format != ResponseFormat::Text {
        return Err(super::openai::unsupported(
            "response_format",
            "JSON response formats are not supported by this model's provider (Anthropic)",
        ));
    }
    let messages: Vec<Value> = chat
        .turns
        .iter()
        .map(|t| {
            let role = match t.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let content: Vec<Value> = t.parts.iter().filter_map(block).collect();
            json!({"role": role, "content": content})
        })
        .filter(|m| m["content"].as_array().is_some_and(|c| !c.is_empty()))
        .collect();
    let mut body = json!({
        "model": model,
        "max_tokens": chat.max_tokens.unwrap_or(default_max_tokens),
        "messages": messages,
    });
    if !chat.system.is_empty() {
        body["system"] = json!(chat.system.join("\n\n"));
    }
    if let Some(t) = chat.temperature {
        // OpenAI's range is 0–2, Anthropic's 0–1.
        body["temperature"] = json!((t / 2.0).clamp(0.0, 1.0));
    }
    if let Some(p) = chat.top_p {
        body["top_p"] = json!(p);
    }
    if !chat.stop.is_empty() {
        body["stop_sequences"] = json!(chat.stop);
    }
    if chat.stream {
        body["stream"] = json!(true);
    }
    if let Some(u) = &chat.user {
        body["metadata"] = json!({"user_id": u});
    }
    if !chat.tools.is_empty() {
        body["tools"] = Value::Array(
            chat.tools
                .iter()
                .map(|t| {
                    let mut v = json!({"name": t.name, "input_schema": t.parameters});
                    if let Some(d) = &t.description {
                        v["description"] = json!(d);
                    }
                    v
                })
                .collect(),
        );
    }
    match &chat.tool_choice {
        None => {}
        Some(ToolChoice::Auto) => body["tool_choice"] = json!({"type": "auto"}),
        Some(ToolChoice::Required) => body["tool_choice"] = json!({"type": "any"}),
        Some(ToolChoice::Named(n)) => body["tool_choice"] = json!({"type": "tool", "name": n}),
        Some(ToolChoice::None) => body["tool_choice"] = json!({"type": "none"}),
    }
    Ok(body)
}

fn block(part: &Part) -> Option<Value> {
    Some(match part {
        Part::Text(t) if t.is_empty() => return None,
        Part::Text(t) => json!({"type": "text", "text": t}),
        Part::Image(Image::Url(url)) => json!({"type": "image", "source": {"type": "url", "url": url}}),
        Part::Image(Image::Base64 { media_type, data }) => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        Part::ToolCall { id, name, arguments } => {
            let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
        Part::ToolResult { call_id, content } => {
            json!({"type": "tool_result", "tool_use_id": call_id, "content": content})
        }
    })
}

pub fn finish(stop_reason: Option<&str>) -> Finish {
    match stop_reason {
        Some("max_tokens") => Finish::Length,
        Some("tool_use") => Finish::ToolCalls,
        Some("refusal") => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

fn usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    Usage {
        // Anthropic counts cached and cache-written input apart; OpenAI's prompt_tokens holds them all.
        prompt_tokens: n("input_tokens") + cached + n("cache_creation_input_tokens"),
        completion_tokens: n("output_tokens"),
        cached_tokens: cached,
        reasoning_tokens: 0,
        estimated: false,
    }
}

/// A complete `message` as a canonical answer.
pub fn answer(body: &[u8]) -> Result<Answer, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the provider's answer is not JSON: {e}"))?;
    if v.get("type").and_then(Value::as_str) != Some("message") {
        return Err("the provider's answer is not a message".into());
    }
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in v.get("content").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.get_or_insert_with(String::new).push_str(block["text"].as_str().unwrap_or(""));
            }
            Some("tool_use") => tool_calls.push((
                block["id"].as_str().unwrap_or("").to_owned(),
                block["name"].as_str().unwrap_or("").to_owned(),
                block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
            )),
            _ => {}
        }
    }
    Ok(Answer {
        id: format!("chatcmpl-{}", v["id"].as_str().unwrap_or("")),
        model: v["model"].as_str().unwrap_or("").to_owned(),
        text,
        tool_calls,
        finish: finish(v.get("stop_reason").and_then(Value::as_str)),
        usage: v.get("usage").map(usage).unwrap_or_default(),
    })
}

/// Reads Anthropic stream events (the JSON of each `data:` line) into canonical events. Keeps the
/// mapping from content-block index to tool-call index, so parallel tool calls keep their order.
#[derive(Debug, Default)]
pub struct StreamReader {
    tool_of_block: HashMap<u64, u32>,
    next_tool: u32,
    usage: Usage,
}

impl StreamReader {
    pub fn read(&mut self, data: &[u8], out: &mut Vec<Event>) {
        let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let m = &v["message"];
                self.usage = m.get("usage").map(usage).unwrap_or_default();
                out.push(Event::Start {
                    id: format!("chatcmpl-{}", m["id"].as_str().unwrap_or("")),
                    model: m["model"].as_str().unwrap_or("").to_owned(),
                });
            }
            Some("content_block_start") => {
                let block = &v["content_block"];
                let index = v["index"].as_u64().unwrap_or(0);
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let tool = self.next_tool;
                        self.next_tool += 1;
                        self.tool_of_block.insert(index, tool);
                        out.push(Event::ToolStart {
                            index: tool,
                            id: block["id"].as_str().unwrap_or("").to_owned(),
                            name: block["name"].as_str().unwrap_or("").to_owned(),
                        });
                    }
                    Some("text") => {
                        if let Some(t) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(Event::Text(t.to_owned()));
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let delta = &v["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        out.push(Event::Text(delta["text"].as_str().unwrap_or("").to_owned()))
                    }
                    Some("input_json_delta") => {
                        let index = v["index"].as_u64().unwrap_or(0);
                        if let Some(tool) = self.tool_of_block.get(&index) {
                            out.push(Event::ToolArguments {
                                index: *tool,
                                fragment: delta["partial_json"].as_str().unwrap_or("").to_owned(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(u) = v.get("usage") {
                    let later = usage(u);
                    self.usage.completion_tokens = later.completion_tokens;
                    if later.prompt_tokens > 0 {
                        self.usage.prompt_tokens = later.prompt_tokens;
                        self.usage.cached_tokens = later.cached_tokens;
                    }
                }
                if let Some(reason) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(Event::Finish(finish(Some(reason))));
                }
            }
            Some("message_stop") => {
                out.push(Event::Usage(self.usage));
                out.push(Event::End);
            }
            Some("error") => out.push(Event::Error {
                message: v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("provider error")
                    .to_owned(),
            }),
            _ => {}
        }
    }
}

// ---- The other direction: Anthropic clients (`/v1/messages`) in front of other providers. ----

/// Reads an Anthropic Messages body (validated by `Request::parse`) into the canonical model.
pub fn chat_from_anthropic(body: &serde_json::Map<String, Value>) -> Result<Chat, GatewayError> {
    let text_of = |v: &Value| -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    };
    let mut turns = Vec::new();
    for (i, m) in body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            other => {
                return Err(GatewayError::invalid_request(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant', not {other:?}"
                ))
                .with_param(format!("messages[{i}].role")));
            }
        };
        let parts = match m.get("content") {
            Some(Value::String(s)) => vec![Part::Text(s.clone())],
            Some(Value::Array(blocks)) => blocks
                .iter()
                .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                    Some("text") => Some(Part::Text(b["text"].as_str().unwrap_or("").to_owned())),
                    Some("image") => {
                        let src = &b["source"];
                        Some(Part::Image(match src["type"].as_str() {
                            Some("url") => Image::Url(src["url"].as_str().unwrap_or("").to_owned()),
                            _ => Image::Base64 {
                                media_type: src["media_type"].as_str().unwrap_or("image/png").to_owned(),
                                data: src["data"].as_str().unwrap_or("").to_owned(),
                            },
                        }))
                    }
                    Some("tool_use") => Some(Part::ToolCall {
                        id: b["id"].as_str().unwrap_or("").to_owned(),
                        name: b["name"].as_str().unwrap_or("").to_owned(),
                        arguments: b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                    }),
                    Some("tool_result") => Some(Part::ToolResult {
                        call_id: b["tool_use_id"].as_str().unwrap_or("").to_owned(),
                        content: b.get("content").map(&text_of).unwrap_or_default(),
                    }),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        turns.push(Turn { role, parts });
    }
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| Tool {
            name: t["name"].as_str().unwrap_or("").to_owned(),
            description: t.get("description").and_then(Value::as_str).map(str::to_owned),
            parameters: t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
        })
        .collect();
    let tool_choice = body.get("tool_choice").and_then(|c| match c["type"].as_str() {
        Some("auto") => Some(ToolChoice::Auto),
        Some("any") => Some(ToolChoice::Required),
        Some("none") => Some(ToolChoice::None),
        Some("tool") => Some(ToolChoice::Named(c["name"].as_str().unwrap_or("").to_owned())),
        _ => None,
    });
    Ok(Chat {
        system: body.get("system").map(text_of).filter(|s| !s.is_empty()).into_iter().collect(),
        turns,
        tools,
        tool_choice,
        max_tokens: body.get("max_tokens").and_then(Value::as_u64),
        // Anthropic's range is 0–1, the canonical (OpenAI's) 0–2.
        temperature: body.get("temperature").and_then(Value::as_f64).map(|t| t * 2.0),
        top_p: body.get("top_p").and_then(Value::as_f64),
        stop: body
            .get("stop_sequences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        user: body.get("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str).map(str::to_owned),
        response_format: ResponseFormat::Text,
    })
}

fn stop_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
        Finish::ContentFilter => "refusal",
    }
}

fn message_id(id: &str) -> String {
    format!("msg_{}", id.trim_start_matches("chatcmpl-"))
}

/// A canonical answer as an Anthropic `message`.
pub fn answer_to_anthropic(a: &Answer) -> Value {
    let mut content = Vec::new();
    if let Some(t) = a.text.as_deref().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for (id, name, args) in &a.tool_calls {
        let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    json!({"id": message_id(&a.id), "type": "message", "role": "assistant", "model": a.model,
        "content": content, "stop_reason": stop_reason(a.finish), "stop_sequence": null,
        "usage": {"input_tokens": a.usage.prompt_tokens.saturating_sub(a.usage.cached_tokens),
                  "output_tokens": a.usage.completion_tokens,
                  "cache_read_input_tokens": a.usage.cached_tokens}})
}

/// Writes canonical stream events as Anthropic's SSE event sequence. Text goes in one text block;
/// each tool call gets its own `tool_use` block (kept open until the end, so argument fragments of
/// parallel calls may interleave).
#[derive(Debug, Default)]
pub struct EventWriter {
    next_block: u64,
    text_block: Option<u64>,
    tool_blocks: HashMap<u32, u64>,
    open: Vec<u64>,
    finish: Option<Finish>,
    usage: Usage,
}

impl EventWriter {
    pub fn write(&mut self, event: &Event, out: &mut bytes::BytesMut) {
        let mut emit = |name: &str, data: Value| {
            out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
        };
        match event {
            Event::Start { id, model } => emit(
                "message_start",
                json!({"type": "message_start", "message": {"id": message_id(id), "type": "message",
                    "role": "assistant", "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            ),
            Event::Text(t) => {
                let index = match self.text_block {
                    Some(i) => i,
                    None => {
                        let i = self.next_block;
                        self.next_block += 1;
                        self.text_block = Some(i);
                        self.open.push(i);
                        emit(
                            "content_block_start",
                            json!({"type": "content_block_start", "index": i,
                            "content_block": {"type": "text", "text": ""}}),
                        );
                        i
                    }
                };
                emit(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": t}}),
                );
            }
            Event::ToolStart { index, id, name } => {
                let block = self.next_block;
                self.next_block += 1;
                self.tool_blocks.insert(*index, block);
                self.open.push(block);
                emit(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": block,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                );
            }
            Event::ToolArguments { index, fragment } => {
                if let Some(block) = self.tool_blocks.get(index) {
                    emit(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": block,
                        "delta": {"type": "input_json_delta", "partial_json": fragment}}),
                    );
                }
            }
            Event::Finish(f) => self.finish = Some(*f),
            Event::Usage(u) => self.usage = *u,
            Event::Error { message } => {
                emit("error", json!({"type": "error", "error": {"type": "api_error", "message": message}}))
            }
            Event::End => {
                for block in self.open.drain(..) {
                    emit("content_block_stop", json!({"type": "content_block_stop", "index": block}));
                }
                emit(
                    "message_delta",
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(self.finish.unwrap_or(Finish::Stop)), "stop_sequence": null},
                    "usage": {"input_tokens": self.usage.prompt_tokens, "output_tokens": self.usage.completion_tokens}}),
                );
                emit("message_stop", json!({"type": "message_stop"}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::canonical::sample_chat;

    #[test]
    fn request_carries_system_tools_and_required_max_tokens() {
        let chat = Chat {
            tool_choice: Some(ToolChoice::Required),
            temperature: Some(1.0),
            stop: vec!["END".into()],
            stream: true,
            user: Some("u1".into()),
            ..sample_chat()
        };
        let v = request(&chat, "claude-x", 1024).unwrap();
        assert_eq!(v["max_tokens"], 1024);
        assert_eq!(v["system"], "be brief");
        assert_eq!(v["messages"][1]["content"][0]["input"]["a"], 1);
        assert_eq!(v["messages"][2]["content"][0]["tool_use_id"], "c1");
        assert_eq!(v["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(v["tool_choice"]["type"], "any");
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["stop_sequences"][0], "END");
        assert_eq!(v["metadata"]["user_id"], "u1");
        assert_eq!(v["stream"], true);
    }

    #[test]
    fn answer_maps_stop_reasons_tools_and_cached_usage() {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Oslo"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 4,
                      "cache_creation_input_tokens": 0}});
        let a = answer(body.to_string().as_bytes()).unwrap();
        assert_eq!(a.finish, Finish::ToolCalls);
        assert_eq!(a.text.as_deref(), Some("Checking."));
        assert_eq!(a.tool_calls[0].2, "{\"city\":\"Oslo\"}");
        assert_eq!((a.usage.prompt_tokens, a.usage.completion_tokens, a.usage.cached_tokens), (14, 5, 4));
        assert_eq!(finish(Some("end_turn")), Finish::Stop);
        assert_eq!(finish(Some("max_tokens")), Finish::Length);
    }

    #[test]
    fn parallel_tool_calls_keep_their_indexes_in_streams() {
        let mut r = StreamReader::default();
        let mut out = Vec::new();
        for e in [
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 7, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "a", "name": "f", "input": {}}}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "b", "name": "g", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"y\""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"x\""}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ] {
            r.read(e.to_string().as_bytes(), &mut out);
        }
        assert_eq!(out[0], Event::Start { id: "chatcmpl-msg_1".into(), model: "claude-x".into() });
        assert_eq!(out[1], Event::Text("Hi".into()));
        assert_eq!(out[4], Event::ToolArguments { index: 1, fragment: "{\"y\"".into() });
        assert_eq!(out[5], Event::ToolArguments { index: 0, fragment: "{\"x\"".into() });
        assert_eq!(out[6], Event::Finish(Finish::ToolCalls));
        assert!(matches!(out[7], Event::Usage(u) if u.prompt_tokens == 7 && u.completion_tokens == 9));
        assert_eq!(out[8], Event::End);
    }
}

#[cfg(test)]
mod reverse_tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn an_anthropic_request_reads_into_the_canonical_chat() {
        let body = json!({"model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "be brief"}],
            "temperature": 0.5, "stop_sequences": ["X"], "metadata": {"user_id": "u"},
            "tools": [{"name": "w", "input_schema": {"type": "object"}}], "tool_choice": {"type": "tool", "name": "w"},
            "messages": [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "cold"}]}]});
        let chat = chat_from_anthropic(body.as_object().unwrap()).unwrap();
        assert_eq!(chat.system, ["be brief"]);
        assert_eq!(chat.temperature, Some(1.0));
        assert_eq!(chat.tool_choice, Some(ToolChoice::Named("w".into())));
        assert_eq!(
            chat.turns[1].parts[0],
            Part::ToolCall { id: "t1".into(), name: "w".into(), arguments: "{\"a\":1}".into() }
        );
        assert_eq!(chat.turns[2].parts[0], Part::ToolResult { call_id: "t1".into(), content: "cold".into() });
        // And back out: the request Anthropic would have received is the same shape.
        let again = request(&chat, "m", 1).unwrap();
        assert_eq!(again["messages"][1]["content"][0]["input"]["a"], 1);
        assert_eq!(again["temperature"], 0.5);
    }

    #[test]
    fn events_become_anthropics_block_sequence() {
        let mut w = EventWriter::default();
        let mut out = BytesMut::new();
        for e in [
            Event::Start { id: "chatcmpl-1".into(), model: "gpt".into() },
            Event::Text("Hi".into()),
            Event::ToolStart { index: 0, id: "c".into(), name: "w".into() },
            Event::ToolArguments { index: 0, fragment: "{}".into() },
            Event::Finish(Finish::ToolCalls),
            Event::Usage(Usage { prompt_tokens: 3, completion_tokens: 4, ..Usage::default() }),
            Event::End,
        ] {
            w.write(&e, &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains("\"id\":\"msg_1\""));
        assert!(text.contains("\"stop_reason\":\"tool_use\""));
        assert!(text.contains("\"output_tokens\":4"));
    }
}
