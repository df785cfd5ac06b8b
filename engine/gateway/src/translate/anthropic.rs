//! Anthropic's Messages API ⇄ the canonical model: requests out, answers and stream events in.
//!
//! Wire format: `POST /v1/messages` with `x-api-key` and `anthropic-version`; answers are a `message`
//! with content blocks (`text`, `tool_use`) and a `stop_reason`; streams are SSE events
//! `message_start`, `content_block_start/delta/stop`, `message_delta`, `message_stop`, `ping` and
//! `error`.

use std::collections::HashMap;

use serde_json::{Value, json};
use sluice_core::{GatewayError, Usage};

use super::canonical::{Answer, Chat, Event, Finish, Image, Part, ResponseFormat, Role, ToolChoice};

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
