//! OpenAI's chat format ⇄ the canonical model: client requests in, answers and stream chunks out.

use bytes::BytesMut;
use serde_json::{Map, Value, json};
use sluice_core::json::Json;
use sluice_core::{GatewayError, Usage};

use super::canonical::{
    Answer, Chat, Event, Finish, Image, Part, ResponseFormat, Role, Tool, ToolChoice, Turn,
};

/// Reads an OpenAI chat body (already validated by `Request::parse`) into the canonical model.
/// Fails with a 400 naming the field when the body asks for something the canonical model (and so a
/// translated provider) cannot carry.
pub fn chat_from_openai(body: &Map<String, Value>, stream: bool) -> Result<Chat, GatewayError> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported("n", "`n` above 1 is not supported by this model's provider"));
    }
    let format = body.get("response_format");
    let response_format = match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
        None | Some("text") => ResponseFormat::Text,
        Some("json_object") => ResponseFormat::JsonObject,
        Some("json_schema") => ResponseFormat::JsonSchema(
            format.and_then(|f| f.pointer("/json_schema/schema")).cloned().unwrap_or_else(|| json!({})),
        ),
        Some(kind) => {
            return Err(unsupported(
                "response_format.type",
                &format!("response_format `{kind}` is not supported"),
            ));
        }
    };
    let mut chat = Chat {
        system: Vec::new(),
        turns: Vec::new(),
        tools: tools(body)?,
        tool_choice: tool_choice(body.get("tool_choice"))?,
        max_tokens: body
            .get("max_completion_tokens")
            .and_then(Value::as_u64)
            .or_else(|| body.get("max_tokens").and_then(Value::as_u64)),
        temperature: body.get("temperature").and_then(Value::as_f64),
        top_p: body.get("top_p").and_then(Value::as_f64),
        stop: match body.get("stop") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        },
        stream,
        user: body.get("user").and_then(Value::as_str).map(str::to_owned),
        response_format,
    };
    let messages = body.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content");
        match role {
            "system" | "developer" => chat.system.push(text_of(content)),
            "user" => push(&mut chat.turns, Role::User, parts(content, i)?),
            "assistant" => {
                let mut p = parts(content, i)?;
                for call in
                    m.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
                {
                    p.push(Part::ToolCall {
                        id: str_at(call, "/id"),
                        name: str_at(call, "/function/name"),
                        arguments: str_at(call, "/function/arguments"),
                    });
                }
                push(&mut chat.turns, Role::Assistant, p);
            }
            "tool" | "function" => {
                let call_id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("").to_owned();
                push(
                    &mut chat.turns,
                    Role::User,
                    vec![Part::ToolResult { call_id, content: text_of(content) }],
                );
            }
            other => {
                return Err(GatewayError::invalid_request(format!(
                    "Invalid value for 'messages[{i}].role': `{other}` is not a supported role."
                ))
                .with_param(format!("messages[{i}].role"))
                .with_code("invalid_value"));
            }
        }
    }
    Ok(chat)
}

/// Appends parts to the last turn when it has the same role (providers that want alternating roles
/// get them), else starts a new turn.
fn push(turns: &mut Vec<Turn>, role: Role, parts: Vec<Part>) {
    match turns.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => turns.push(Turn { role, parts }),
    }
}

fn parts(content: Option<&Value>, i: usize) -> Result<Vec<Part>, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(s.clone())]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(j, item)| match item.get("type").and_then(Value::as_str) {
                Some("text") => Ok(Part::Text(str_at(item, "/text"))),
                Some("image_url") => Ok(Part::Image(image(&str_at(item, "/image_url/url")))),
                other => Err(unsupported(
                    &format!("messages[{i}].content[{j}].type"),
                    &format!(
                        "content part `{}` is not supported by this model's provider",
                        other.unwrap_or("?")
                    ),
                )),
            })
            .collect(),
        Some(_) => Ok(Vec::new()),
    }
}

/// A `data:` URL becomes inline base64; anything else stays a URL.
fn image(url: &str) -> Image {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(media_type) = meta.strip_suffix(";base64")
    {
        return Image::Base64 { media_type: media_type.to_owned(), data: data.to_owned() };
    }
    Image::Url(url.to_owned())
}

fn tools(body: &Map<String, Value>) -> Result<Vec<Tool>, GatewayError> {
    let Some(list) = body.get("tools").and_then(Value::as_array) else { return Ok(Vec::new()) };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let Some(f) = t.get("function") else {
                return Err(unsupported(&format!("tools[{i}].type"), "only function tools are supported"));
            };
            Ok(Tool {
                name: str_at(f, "/name"),
                description: f.get("description").and_then(Value::as_str).map(str::to_owned),
                parameters: f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
            })
        })
        .collect()
}

fn tool_choice(v: Option<&Value>) -> Result<Option<ToolChoice>, GatewayError> {
    Ok(match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(GatewayError::invalid_request(format!(
                    "Invalid value for 'tool_choice': `{other}`."
                ))
                .with_param("tool_choice")
                .with_code("invalid_value"));
            }
        }),
        Some(obj) => Some(ToolChoice::Named(str_at(obj, "/function/name"))),
    })
}

fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            items.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

fn str_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("").to_owned()
}

pub fn unsupported(param: &str, message: &str) -> GatewayError {
    GatewayError::invalid_request(format!("{message}.")).with_param(param).with_code("unsupported_parameter")
}

pub fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
        Finish::ContentFilter => "content_filter",
    }
}

fn usage_json(u: &Usage) -> Value {
    let mut v = json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "total_tokens": u.total()});
    if u.cached_tokens > 0 {
        v["prompt_tokens_details"] = json!({"cached_tokens": u.cached_tokens});
    }
    if u.reasoning_tokens > 0 {
        v["completion_tokens_details"] = json!({"reasoning_tokens": u.reasoning_tokens});
    }
    v
}

/// A complete answer in OpenAI's `chat.completion` shape.
pub fn answer_to_openai(a: &Answer, created: u64) -> Value {
    let tool_calls: Vec<Value> = a
        .tool_calls
        .iter()
        .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
        .collect();
    let mut message = json!({"role": "assistant", "content": a.text, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({
        "id": a.id, "object": "chat.completion", "created": created, "model": a.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(a.finish)}],
        "usage": usage_json(&a.usage),
    })
}

/// Writes canonical stream events as OpenAI `chat.completion.chunk` SSE events. It always writes
/// the usage chunk (before `[DONE]`); the forwarding path hides it from clients that did not ask.
#[derive(Debug, Default)]
pub struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
    usage: Usage,
    finish: Option<Finish>,
}

impl ChunkWriter {
    pub fn new(created: u64) -> Self {
        Self { created, ..Self::default() }
    }

    pub fn write(&mut self, event: &Event, out: &mut BytesMut) {
        match event {
            Event::Start { id, model } => {
                self.id = id.clone();
                self.model = model.clone();
                self.chunk(json!({"role": "assistant", "content": ""}), None, out);
            }
            Event::Text(t) => self.chunk(json!({"content": t}), None, out),
            Event::ToolStart { index, id, name } => self.chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                None,
                out,
            ),
            Event::ToolArguments { index, fragment } => self.chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                None,
                out,
            ),
            Event::Finish(f) => self.finish = Some(*f),
            Event::Usage(u) => {
                self.usage.prompt_tokens = self.usage.prompt_tokens.max(u.prompt_tokens);
                self.usage.completion_tokens = self.usage.completion_tokens.max(u.completion_tokens);
                self.usage.cached_tokens = self.usage.cached_tokens.max(u.cached_tokens);
                self.usage.reasoning_tokens = self.usage.reasoning_tokens.max(u.reasoning_tokens);
            }
            Event::Error { message } => {
                let e = json!({"error": {"message": message, "type": "api_error", "param": null,
                    "code": "upstream_stream_error"}});
                out.extend_from_slice(format!("data: {e}\n\n").as_bytes());
            }
            Event::End => {
                let finish = self.finish.unwrap_or(Finish::Stop);
                self.chunk(json!({}), Some(finish), out);
                let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": usage_json(&self.usage)});
                out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
        }
    }

    fn chunk(&self, delta: Value, finish: Option<Finish>, out: &mut BytesMut) {
        let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [{"index": 0, "delta": delta, "logprobs": null,
            "finish_reason": finish.map(finish_reason)}]});
        out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
    }
}

// ---- The other direction: OpenAI-shaped providers behind `/v1/messages`. ----

/// An OpenAI chat body for `chat` (the request an OpenAI-shaped provider receives on behalf of an
/// Anthropic client). Streams ask for the usage chunk.
pub fn request_from_chat(chat: &Chat, model: &str) -> Value {
    let mut messages = Vec::new();
    if !chat.system.is_empty() {
        messages.push(json!({"role": "system", "content": chat.system.join("\n\n")}));
    }
    for turn in &chat.turns {
        let mut content = Vec::new();
        let mut calls = Vec::new();
        for part in &turn.parts {
            match part {
                Part::Text(t) => content.push(json!({"type": "text", "text": t})),
                Part::Image(Image::Url(url)) => content.push(json!({"type": "image_url", "image_url": {"url": url}})),
                Part::Image(Image::Base64 { media_type, data }) => content.push(
                    json!({"type": "image_url", "image_url": {"url": format!("data:{media_type};base64,{data}")}}),
                ),
                Part::ToolCall { id, name, arguments } => calls.push(
                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}),
                ),
                // Each tool result is its own `tool` message in OpenAI's format.
                Part::ToolResult { call_id, content: result } => {
                    messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": result}));
                }
            }
        }
        match turn.role {
            Role::User if !content.is_empty() => messages.push(json!({"role": "user", "content": content})),
            Role::User => {}
            Role::Assistant => {
                let text: String = content.iter().filter_map(|c| c["text"].as_str()).collect();
                let mut m = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
                if !calls.is_empty() {
                    m["tool_calls"] = Value::Array(calls);
                }
                messages.push(m);
            }
        }
    }
    let mut body = json!({"model": model, "messages": messages});
    if let Some(m) = chat.max_tokens {
        body["max_tokens"] = json!(m);
    }
    if let Some(t) = chat.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(p) = chat.top_p {
        body["top_p"] = json!(p);
    }
    if !chat.stop.is_empty() {
        body["stop"] = json!(chat.stop);
    }
    if let Some(u) = &chat.user {
        body["user"] = json!(u);
    }
    if chat.stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    if !chat.tools.is_empty() {
        body["tools"] = Value::Array(
            chat.tools
                .iter()
                .map(|t| {
                    let mut f = json!({"name": t.name, "parameters": t.parameters});
                    if let Some(d) = &t.description {
                        f["description"] = json!(d);
                    }
                    json!({"type": "function", "function": f})
                })
                .collect(),
        );
    }
    if let Some(choice) = &chat.tool_choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Named(n) => json!({"type": "function", "function": {"name": n}}),
        };
    }
    body
}

fn finish_from(reason: Option<&str>) -> Finish {
    match reason {
        Some("length") => Finish::Length,
        Some("tool_calls" | "function_call") => Finish::ToolCalls,
        Some("content_filter") => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

/// An OpenAI `chat.completion` as a canonical answer.
pub fn answer_from_openai(body: &[u8]) -> Result<Answer, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the provider's answer is not JSON: {e}"))?;
    let choice = v.pointer("/choices/0").ok_or("the provider's answer has no choice")?;
    let message = &choice["message"];
    let tool_calls = message["tool_calls"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| (str_at(c, "/id"), str_at(c, "/function/name"), str_at(c, "/function/arguments")))
        .collect();
    Ok(Answer {
        id: v["id"].as_str().unwrap_or("").to_owned(),
        model: v["model"].as_str().unwrap_or("").to_owned(),
        text: message["content"].as_str().map(str::to_owned),
        tool_calls,
        finish: finish_from(choice["finish_reason"].as_str()),
        usage: v.get("usage").map(Json::from).and_then(Usage::from_openai).unwrap_or_default(),
    })
}

/// Reads OpenAI `chat.completion.chunk` events (the JSON of each `data:` line, or `[DONE]`) into
/// canonical events.
#[derive(Debug, Default)]
pub struct StreamReader {
    started: bool,
}

impl StreamReader {
    pub fn read(&mut self, data: &[u8], out: &mut Vec<Event>) {
        if data == b"[DONE]" {
            out.push(Event::End);
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
        if let Some(e) = v.get("error") {
            out.push(Event::Error { message: e["message"].as_str().unwrap_or("provider error").to_owned() });
            return;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: v["id"].as_str().unwrap_or("").to_owned(),
                model: v["model"].as_str().unwrap_or("").to_owned(),
            });
        }
        if let Some(u) = v.get("usage").map(Json::from).and_then(Usage::from_openai) {
            out.push(Event::Usage(u));
        }
        let choice = &v["choices"][0];
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            out.push(Event::Text(t.to_owned()));
        }
        for call in delta["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let index = call["index"].as_u64().unwrap_or(0) as u32;
            if let Some(id) = call["id"].as_str() {
                out.push(Event::ToolStart { index, id: id.to_owned(), name: str_at(call, "/function/name") });
            }
            if let Some(fragment) =
                call.pointer("/function/arguments").and_then(Value::as_str).filter(|f| !f.is_empty())
            {
                out.push(Event::ToolArguments { index, fragment: fragment.to_owned() });
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            out.push(Event::Finish(finish_from(Some(reason))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn reads_roles_tools_and_results_into_alternating_turns() {
        let b = body(json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "cold"},
            {"role": "tool", "tool_call_id": "c2", "content": "warm"}],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "w"}}, "stop": "END", "max_tokens": 9}));
        let chat = chat_from_openai(&b, false).unwrap();
        assert_eq!(chat.system, ["be brief"]);
        assert_eq!(chat.turns.len(), 3, "the two tool results share one user turn");
        assert_eq!(
            chat.turns[0].parts[1],
            Part::Image(Image::Base64 { media_type: "image/png".into(), data: "AAAA".into() })
        );
        assert!(matches!(&chat.turns[1].parts[1], Part::ToolCall { id, .. } if id == "c2"));
        assert_eq!(chat.turns[2].parts.len(), 2);
        assert_eq!(chat.tool_choice, Some(ToolChoice::Named("w".into())));
        assert_eq!(chat.stop, ["END"]);
        assert_eq!(chat.max_tokens, Some(9));
    }

    #[test]
    fn what_cannot_be_translated_is_a_clear_400() {
        let e = chat_from_openai(&body(json!({"model": "m", "messages": [], "n": 2})), false).unwrap_err();
        assert_eq!((e.status(), e.param.as_deref()), (400, Some("n")));
        let chat = chat_from_openai(
            &body(json!({"model": "m", "messages": [],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}})),
            false,
        )
        .unwrap();
        assert_eq!(chat.response_format, ResponseFormat::JsonSchema(json!({"type": "object"})));
    }

    #[test]
    fn writes_openai_chunks_with_tool_indexes_and_a_final_usage_chunk() {
        let mut w = ChunkWriter::new(7);
        let mut out = BytesMut::new();
        for e in [
            Event::Start { id: "chatcmpl-x".into(), model: "m".into() },
            Event::Text("Hi".into()),
            Event::ToolStart { index: 0, id: "t1".into(), name: "f".into() },
            Event::ToolArguments { index: 0, fragment: "{\"a\"".into() },
            Event::Usage(Usage { prompt_tokens: 5, completion_tokens: 3, ..Usage::default() }),
            Event::Finish(Finish::ToolCalls),
            Event::End,
        ] {
            w.write(&e, &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        let events: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(events[2]["choices"][0]["delta"]["tool_calls"][0]["id"], "t1");
        assert_eq!(events[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"], "{\"a\"");
        assert_eq!(events[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(events[5]["usage"]["total_tokens"], 8);
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}
