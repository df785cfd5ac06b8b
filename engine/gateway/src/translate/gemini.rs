//! Google Gemini's `generateContent` ⇄ the canonical model.
//!
//! Wire format: `POST {base}/models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`)
//! with `x-goog-api-key`; `contents` of `user`/`model` turns made of parts (`text`, `inlineData`,
//! `fileData`, `functionCall`, `functionResponse`), `systemInstruction`, `tools`
//! (`functionDeclarations`), `toolConfig`, `generationConfig`. Answers carry `candidates` with a
//! `finishReason` and `usageMetadata`; a stream is a sequence of such partial answers and simply ends.

use std::collections::HashMap;

use serde_json::{Value, json};
use sluice_core::{GatewayError, Usage};

use super::canonical::{Answer, Chat, Event, Finish, Image, Part, ResponseFormat, Role, ToolChoice};

/// The `generateContent` body for `chat`.
pub fn request(chat: &Chat) -> Value {
    // Gemini answers a function call by name, OpenAI by call id: remember which id named which call.
    let mut names: HashMap<&str, &str> = HashMap::new();
    for t in &chat.turns {
        for p in &t.parts {
            if let Part::ToolCall { id, name, .. } = p {
                names.insert(id.as_str(), name.as_str());
            }
        }
    }
    let contents: Vec<Value> = chat
        .turns
        .iter()
        .map(|t| {
            let role = match t.role {
                Role::User => "user",
                Role::Assistant => "model",
            };
            let parts: Vec<Value> = t.parts.iter().filter_map(|p| part(p, &names)).collect();
            json!({"role": role, "parts": parts})
        })
        .filter(|c| c["parts"].as_array().is_some_and(|p| !p.is_empty()))
        .collect();
    let mut body = json!({"contents": contents});
    if !chat.system.is_empty() {
        body["systemInstruction"] = json!({"parts": [{"text": chat.system.join("\n\n")}]});
    }
    let mut config = serde_json::Map::new();
    if let Some(t) = chat.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(p) = chat.top_p {
        config.insert("topP".into(), json!(p));
    }
    if let Some(m) = chat.max_tokens {
        config.insert("maxOutputTokens".into(), json!(m));
    }
    if !chat.stop.is_empty() {
        config.insert("stopSequences".into(), json!(chat.stop));
    }
    match &chat.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        ResponseFormat::JsonSchema(schema) => {
            config.insert("responseMimeType".into(), json!("application/json"));
            config.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    if !config.is_empty() {
        body["generationConfig"] = Value::Object(config);
    }
    if !chat.tools.is_empty() {
        let declarations: Vec<Value> = chat
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name, "parameters": t.parameters});
                if let Some(desc) = &t.description {
                    d["description"] = json!(desc);
                }
                d
            })
            .collect();
        body["tools"] = json!([{"functionDeclarations": declarations}]);
    }
    if let Some(choice) = &chat.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Named(n) => json!({"mode": "ANY", "allowedFunctionNames": [n]}),
        };
        body["toolConfig"] = json!({"functionCallingConfig": config});
    }
    body
}

fn part(p: &Part, names: &HashMap<&str, &str>) -> Option<Value> {
    Some(match p {
        Part::Text(t) if t.is_empty() => return None,
        Part::Text(t) => json!({"text": t}),
        Part::Image(Image::Base64 { media_type, data }) => {
            json!({"inlineData": {"mimeType": media_type, "data": data}})
        }
        Part::Image(Image::Url(url)) => json!({"fileData": {"mimeType": mime_of(url), "fileUri": url}}),
        Part::ToolCall { name, arguments, .. } => {
            let args: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            json!({"functionCall": {"name": name, "args": args}})
        }
        Part::ToolResult { call_id, content } => {
            let name = names.get(call_id.as_str()).copied().unwrap_or(call_id.as_str());
            // A JSON object result goes as is; anything else is wrapped.
            let response = match serde_json::from_str::<Value>(content) {
                Ok(v @ Value::Object(_)) => v,
                _ => json!({"content": content}),
            };
            json!({"functionResponse": {"name": name, "response": response}})
        }
    })
}

fn mime_of(url: &str) -> &'static str {
    let lower = url.to_ascii_lowercase();
    if lower.ends_with(".png") {
        "image/png"
    } else if lower.ends_with(".webp") {
        "image/webp"
    } else if lower.ends_with(".gif") {
        "image/gif"
    } else {
        "image/jpeg"
    }
}

pub fn finish(reason: &str) -> Finish {
    match reason {
        "MAX_TOKENS" => Finish::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            Finish::ContentFilter
        }
        _ => Finish::Stop,
    }
}

fn usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let reasoning = n("thoughtsTokenCount");
    Usage {
        prompt_tokens: n("promptTokenCount"),
        // Thinking tokens are billed as output: OpenAI counts reasoning inside completion tokens.
        completion_tokens: n("candidatesTokenCount") + reasoning,
        cached_tokens: n("cachedContentTokenCount"),
        reasoning_tokens: reasoning,
        estimated: false,
    }
}

/// A complete `generateContent` answer as a canonical answer.
pub fn answer(body: &[u8], model: &str) -> Result<Answer, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the provider's answer is not JSON: {e}"))?;
    let candidate = v.pointer("/candidates/0").ok_or("the provider's answer has no candidate")?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for p in
        candidate.pointer("/content/parts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
    {
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) != Some(true) {
                text.get_or_insert_with(String::new).push_str(t);
            }
        } else if let Some(call) = p.get("functionCall") {
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("call_{}", tool_calls.len()), str::to_owned);
            tool_calls.push((
                id,
                call["name"].as_str().unwrap_or("").to_owned(),
                call.get("args").map_or_else(|| "{}".to_owned(), Value::to_string),
            ));
        }
    }
    let mut finish = finish(candidate["finishReason"].as_str().unwrap_or("STOP"));
    if !tool_calls.is_empty() && finish == Finish::Stop {
        finish = Finish::ToolCalls;
    }
    Ok(Answer {
        id: format!("chatcmpl-{}", v["responseId"].as_str().unwrap_or("gemini")),
        model: v["modelVersion"].as_str().unwrap_or(model).to_owned(),
        text,
        tool_calls,
        finish,
        usage: v.get("usageMetadata").map(usage).unwrap_or_default(),
    })
}

/// Reads the partial answers of a Gemini stream into canonical events. Gemini sends each function
/// call whole, in one part: it becomes a tool start and its complete arguments.
#[derive(Debug, Default)]
pub struct StreamReader {
    started: bool,
    tools: u32,
    finish: Option<Finish>,
    usage: Usage,
}

impl StreamReader {
    pub fn read(&mut self, data: &[u8], model: &str, out: &mut Vec<Event>) {
        let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
        if let Some(e) = v.get("error") {
            out.push(Event::Error {
                message: e.get("message").and_then(Value::as_str).unwrap_or("provider error").to_owned(),
            });
            return;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: format!("chatcmpl-{}", v["responseId"].as_str().unwrap_or("gemini")),
                model: v["modelVersion"].as_str().unwrap_or(model).to_owned(),
            });
        }
        let candidate = &v["candidates"][0];
        for p in candidate
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                if p.get("thought").and_then(Value::as_bool) != Some(true) && !t.is_empty() {
                    out.push(Event::Text(t.to_owned()));
                }
            } else if let Some(call) = p.get("functionCall") {
                let index = self.tools;
                self.tools += 1;
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("call_{index}"), str::to_owned);
                out.push(Event::ToolStart {
                    index,
                    id,
                    name: call["name"].as_str().unwrap_or("").to_owned(),
                });
                out.push(Event::ToolArguments {
                    index,
                    fragment: call.get("args").map_or_else(|| "{}".to_owned(), Value::to_string),
                });
            }
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            self.finish = Some(finish(reason));
        }
        if let Some(u) = v.get("usageMetadata") {
            self.usage = usage(u);
        }
    }

    /// The stream ended: a finished answer gets its finish reason, usage and end; an answer without
    /// a finish reason was cut short and gets nothing (the gateway reports the interruption).
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let Some(mut finish) = self.finish.take() else { return };
        if self.tools > 0 && finish == Finish::Stop {
            finish = Finish::ToolCalls;
        }
        out.push(Event::Finish(finish));
        out.push(Event::Usage(self.usage));
        out.push(Event::End);
    }
}

/// The `batchEmbedContents` body for an OpenAI embeddings request (`input` a string or strings;
/// `dimensions` becomes `outputDimensionality`). Token-array inputs cannot be translated: a 400.
pub fn embed_request(body: &serde_json::Map<String, Value>, model: &str) -> Result<Value, GatewayError> {
    let inputs: Vec<&str> = match body.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect()
        }
        _ => {
            return Err(super::openai::unsupported(
                "input",
                "only text inputs (a string or an array of strings) can be embedded by this model's provider",
            ));
        }
    };
    let dimensions = body.get("dimensions").and_then(Value::as_u64);
    let requests: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let mut r = json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}});
            if let Some(d) = dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    Ok(json!({"requests": requests}))
}

/// A `batchEmbedContents` answer in OpenAI's embeddings shape, floats or base64 (little-endian
/// f32, as OpenAI encodes them) per `encoding_format`. Gemini reports no usage: `usage` is our
/// estimate, returned separately so records can say so.
pub fn embed_answer(body: &[u8], model: &str, base64: bool, prompt_tokens: u64) -> Result<Value, String> {
    use base64::Engine as _;
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the provider's answer is not JSON: {e}"))?;
    let embeddings =
        v.get("embeddings").and_then(Value::as_array).ok_or("the provider's answer has no embeddings")?;
    let data: Vec<Value> = embeddings
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let values: Vec<f64> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            let embedding = if base64 {
                let bytes: Vec<u8> = values.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(values)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::canonical::sample_chat;

    #[test]
    fn request_uses_system_instruction_model_role_and_function_names() {
        let chat = Chat {
            tool_choice: Some(ToolChoice::Named("w".into())),
            max_tokens: Some(50),
            temperature: Some(0.3),
            response_format: ResponseFormat::JsonObject,
            ..sample_chat()
        };
        let v = request(&chat);
        assert_eq!(v["systemInstruction"]["parts"][0]["text"], "be brief");
        assert_eq!(v["contents"][1]["role"], "model");
        assert_eq!(v["contents"][1]["parts"][0]["functionCall"]["args"]["a"], 1);
        assert_eq!(v["contents"][2]["parts"][0]["functionResponse"]["name"], "w");
        assert_eq!(v["contents"][2]["parts"][0]["functionResponse"]["response"]["content"], "cold");
        assert_eq!(v["generationConfig"]["maxOutputTokens"], 50);
        assert_eq!(v["generationConfig"]["responseMimeType"], "application/json");
        assert_eq!(v["tools"][0]["functionDeclarations"][0]["name"], "w");
        assert_eq!(v["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"][0], "w");
    }

    #[test]
    fn answers_map_finish_reasons_tools_and_thinking_usage() {
        let body = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "thinking...", "thought": true}, {"text": "Sunny."},
            {"functionCall": {"name": "w", "args": {"city": "Rome"}}}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 4, "thoughtsTokenCount": 6,
                              "cachedContentTokenCount": 2}, "modelVersion": "gemini-2.0-flash", "responseId": "r1"});
        let a = answer(body.to_string().as_bytes(), "m").unwrap();
        assert_eq!(a.text.as_deref(), Some("Sunny."));
        assert_eq!(a.tool_calls[0], ("call_0".into(), "w".into(), "{\"city\":\"Rome\"}".into()));
        assert_eq!(a.finish, Finish::ToolCalls);
        assert_eq!((a.usage.prompt_tokens, a.usage.completion_tokens, a.usage.reasoning_tokens), (8, 10, 6));
        assert_eq!(finish("SAFETY"), Finish::ContentFilter);
        assert_eq!(finish("MAX_TOKENS"), Finish::Length);
    }

    #[test]
    fn embeddings_go_as_a_batch_and_come_back_as_floats_or_base64() {
        let body = json!({"model": "m", "input": ["a", "b"], "dimensions": 3});
        let r = embed_request(body.as_object().unwrap(), "text-embedding-004").unwrap();
        assert_eq!(r["requests"][1]["content"]["parts"][0]["text"], "b");
        assert_eq!(r["requests"][0]["model"], "models/text-embedding-004");
        assert_eq!(r["requests"][0]["outputDimensionality"], 3);
        let tokens = json!({"model": "m", "input": [[1, 2, 3]]});
        assert_eq!(embed_request(tokens.as_object().unwrap(), "x").unwrap_err().status(), 400);
        let answer = br#"{"embeddings":[{"values":[0.5,-1.0]},{"values":[0.25,2.0]}]}"#;
        let v = embed_answer(answer, "m", false, 2).unwrap();
        assert_eq!(v["data"][1]["embedding"], json!([0.25, 2.0]));
        let v = embed_answer(answer, "m", true, 2).unwrap();
        // 0.5f32 = 00 00 00 3f, -1.0f32 = 00 00 80 bf (little-endian).
        assert_eq!(v["data"][0]["embedding"], "AAAAPwAAgL8=");
    }

    #[test]
    fn a_stream_without_a_finish_reason_gets_no_end() {
        let mut r = StreamReader::default();
        let mut out = Vec::new();
        r.read(br#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"}}]}"#, "m", &mut out);
        r.finish(&mut out);
        assert_eq!(out.len(), 2);
        assert!(!out.contains(&Event::End));
    }
}
