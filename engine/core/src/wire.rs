//! OpenAI's inbound request shapes, parsed once.
//!
//! [`Request::parse`] turns the body bytes into a JSON object with simd-json, checks the fields the
//! gateway relies on with OpenAI's own error wording (naming the field at fault), and lifts them into
//! typed facts. Every other field, unknown ones included, stays in [`Request::body`] and is passed on
//! to the provider verbatim: as the very bytes the client sent while nothing has changed the body
//! (no serialization on the common path), re-serialized once something has.

use std::ops::{Deref, DerefMut};

use bytes::Bytes;
use serde_json::{Map, Number, Value};
use simd_json::{Node, StaticNode};

use crate::ctx::Endpoint;
use crate::error::GatewayError;
use crate::usage::Usage;

/// A parsed inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub endpoint: Endpoint,
    /// The model alias the client asked for.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage: true`).
    pub wants_stream_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_output_tokens: Option<u64>,
    pub user: Option<String>,
    /// The whole body as sent, unknown fields included.
    pub body: Body,
}

/// A request's JSON object, with the client's own bytes for as long as they still spell it.
///
/// Reading goes through `Deref` to the map; any mutable access (`DerefMut`) lets the bytes go, so a
/// body something may have changed is always serialized again before it leaves. A body whose object
/// repeats a key never keeps its bytes: the gateway read the last value, a provider might read the
/// first, and what is checked (model, PII, limits) must be what is sent.
#[derive(Debug, Clone, Default)]
pub struct Body {
    map: Map<String, Value>,
    raw: Option<Bytes>,
}

impl Body {
    /// The client's bytes, while the object is unchanged.
    pub fn raw(&self) -> Option<&Bytes> {
        self.raw.as_ref()
    }

    /// The body as it stands, as JSON: the client's bytes when unchanged, else serialized.
    pub fn to_bytes(&self) -> Bytes {
        match &self.raw {
            Some(raw) => raw.clone(),
            None => Bytes::from(serde_json::to_vec(&self.map).unwrap_or_default()),
        }
    }
}

impl Deref for Body {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        &self.map
    }
}

impl DerefMut for Body {
    fn deref_mut(&mut self) -> &mut Map<String, Value> {
        self.raw = None;
        &mut self.map
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Request {
    /// A request without a body (`GET /v1/models`), so that the plugin chain still runs.
    pub fn listing() -> Self {
        Self {
            endpoint: Endpoint::Models,
            model: String::new(),
            stream: false,
            wants_stream_usage: false,
            max_output_tokens: None,
            user: None,
            body: Body::default(),
        }
    }

    /// Parses and validates a body for `endpoint`. The buffer is parsed in place (simd-json).
    pub fn parse(endpoint: Endpoint, bytes: &mut [u8]) -> Result<Self, GatewayError> {
        // simd-json unescapes strings in place: the bytes to forward are kept before it does.
        let raw = Bytes::copy_from_slice(bytes);
        let invalid = || {
            GatewayError::invalid_request(
                "We could not parse the JSON body of your request. The API expects a JSON payload \
                 (Content-Type: application/json), but what was sent was not valid JSON.",
            )
            .with_code("invalid_json")
        };
        let tape = tape(bytes).map_err(|_| invalid())?;
        let mut tree = Tree { nodes: &tape.0, at: 0, repeated_key: false };
        let value = tree.value().ok_or_else(invalid)?;
        let Value::Object(map) = value else {
            return Err(GatewayError::invalid_request(format!(
                "Invalid request body: expected a JSON object, but got {} instead.",
                type_name(&value)
            ))
            .with_code("invalid_type"));
        };
        let raw = (!tree.repeated_key).then_some(raw);
        Self::from_body(endpoint, Body { map, raw })
    }

    fn from_body(endpoint: Endpoint, body: Body) -> Result<Self, GatewayError> {
        let model = match body.get("model") {
            None | Some(Value::Null) => {
                return Err(GatewayError::invalid_request("you must provide a model parameter")
                    .with_param("model")
                    .with_code("missing_required_parameter"));
            }
            Some(Value::String(m)) if m.is_empty() => {
                return Err(GatewayError::invalid_request("you must provide a model parameter")
                    .with_param("model")
                    .with_code("missing_required_parameter"));
            }
            Some(Value::String(m)) => m.clone(),
            Some(other) => return Err(invalid_type("model", "a string", other)),
        };
        match endpoint {
            Endpoint::ChatCompletions => check_messages(&body)?,
            Endpoint::Messages => {
                check_messages(&body)?;
                // Anthropic requires max_tokens; say so the way Anthropic does.
                if body.get("max_tokens").and_then(Value::as_u64).is_none() {
                    return Err(GatewayError::invalid_request("max_tokens: Field required")
                        .with_param("max_tokens")
                        .with_code("missing_required_parameter"));
                }
            }
            Endpoint::Completions => check_text_input(&body, "prompt")?,
            Endpoint::Embeddings => check_text_input(&body, "input")?,
            Endpoint::Models => {}
        }
        let stream = optional_bool(&body, "stream")?.unwrap_or(false);
        // Anthropic streams always carry usage; only OpenAI clients opt in.
        let wants_stream_usage = endpoint == Endpoint::Messages
            || match body.get("stream_options") {
                None | Some(Value::Null) => false,
                Some(Value::Object(o)) => {
                    if !stream {
                        return Err(GatewayError::invalid_request(
                            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                        )
                        .with_param("stream_options")
                        .with_code("invalid_value"));
                    }
                    match o.get("include_usage") {
                        None | Some(Value::Null) => false,
                        Some(Value::Bool(b)) => *b,
                        Some(other) => {
                            return Err(invalid_type("stream_options.include_usage", "a boolean", other));
                        }
                    }
                }
                Some(other) => return Err(invalid_type("stream_options", "an object", other)),
            };
        let max_output_tokens = match optional_count(&body, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => optional_count(&body, "max_tokens")?,
        };
        optional_count(&body, "n")?;
        let user = match body.get("user") {
            None | Some(Value::Null) => None,
            Some(Value::String(u)) => Some(u.clone()),
            Some(other) => return Err(invalid_type("user", "a string", other)),
        };
        Ok(Self { endpoint, model, stream, wants_stream_usage, max_output_tokens, user, body })
    }

    /// Characters of text the model will read: message contents (string or text parts), tool-call
    /// arguments, prompts and embedding inputs. The basis of token estimates.
    pub fn prompt_chars(&self) -> usize {
        let mut n = 0;
        if let Some(Value::Array(messages)) = self.body.get("messages") {
            for m in messages {
                n += m.get("content").map_or(0, text_chars);
                if let Some(Value::Array(calls)) = m.get("tool_calls") {
                    for c in calls {
                        n += c.get("function").and_then(|f| f.get("arguments")).map_or(0, text_chars);
                    }
                }
            }
        }
        for field in ["prompt", "input", "system"] {
            n += self.body.get(field).map_or(0, text_chars);
        }
        n
    }

    /// Our estimate of the prompt's tokens, used until the provider reports real usage.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        Usage::estimate_tokens(self.prompt_chars())
    }
}

/// Documents up to this size are parsed with this thread's reused simd-json buffers; larger ones
/// with buffers of their own, so a thread never keeps more than about this much.
const REUSED_BUFFERS: usize = 64 * 1024;

thread_local! {
    static BUFFERS: std::cell::RefCell<simd_json::Buffers> =
        std::cell::RefCell::new(simd_json::Buffers::new(REUSED_BUFFERS));
}

/// simd-json's tape of `bytes` (parsed in place). Its scratch buffers are reused per thread: made
/// fresh, they cost about as much as tokenizing a small answer.
fn tape(bytes: &mut [u8]) -> simd_json::Result<simd_json::Tape<'_>> {
    if bytes.len() > REUSED_BUFFERS {
        return simd_json::to_tape(bytes);
    }
    BUFFERS.with(|buffers| match buffers.try_borrow_mut() {
        Ok(mut buffers) => simd_json::to_tape_with_buffers(bytes, &mut buffers),
        Err(_) => simd_json::to_tape(bytes),
    })
}

/// The value of the top-level field `key` of the JSON object in `bytes` (the last one when
/// repeated, as serde_json reads it). Only that value is built: the rest of the document is stepped
/// over — tokenized by simd-json (on a copy) up to [`REUSED_BUFFERS`] bytes, skipped by serde_json
/// above, where a tape of a large answer (an embeddings list of a million numbers) would cost more
/// than it saves. `None` when the bytes are no JSON object or have no such field.
pub fn top_level_field(bytes: &[u8], key: &str) -> Option<Value> {
    if bytes.len() > REUSED_BUFFERS {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        return serde::de::DeserializeSeed::deserialize(FieldSeed(key), &mut de).ok().flatten();
    }
    let mut copy = bytes.to_vec();
    let tape = tape(&mut copy).ok()?;
    let nodes = &tape.0;
    let Node::Object { len, .. } = *nodes.first()? else { return None };
    let mut at = 1;
    let mut found = None;
    for _ in 0..len {
        let Node::String(k) = *nodes.get(at)? else { return None };
        at += 1;
        let extent = match *nodes.get(at)? {
            Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
            _ => 1,
        };
        if k == key {
            found = Some(at..at + extent);
        }
        at += extent;
    }
    Tree { nodes: nodes.get(found?)?, at: 0, repeated_key: false }.value()
}

/// Reads one field of a JSON object with serde, skipping the others without building them.
struct FieldSeed<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldSeed<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if k == self.0 {
                found = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Builds `serde_json` values from simd-json's tape (what its serde path does too, less the visitor
/// machinery), noting whether any object repeats a key. Depth is bounded by simd-json's own limit.
struct Tree<'t, 'input> {
    nodes: &'t [Node<'input>],
    at: usize,
    repeated_key: bool,
}

impl Tree<'_, '_> {
    fn value(&mut self) -> Option<Value> {
        let node = *self.nodes.get(self.at)?;
        self.at += 1;
        Some(match node {
            Node::String(s) => Value::String(s.to_owned()),
            Node::Static(StaticNode::Null) => Value::Null,
            Node::Static(StaticNode::Bool(b)) => Value::Bool(b),
            Node::Static(StaticNode::I64(n)) => Value::Number(n.into()),
            Node::Static(StaticNode::U64(n)) => Value::Number(n.into()),
            Node::Static(StaticNode::F64(f)) => Value::Number(Number::from_f64(f)?),
            Node::Array { len, .. } => {
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(self.value()?);
                }
                Value::Array(items)
            }
            Node::Object { len, .. } => {
                let mut map = Map::with_capacity(len);
                for _ in 0..len {
                    let Some(Node::String(key)) = self.nodes.get(self.at).copied() else { return None };
                    self.at += 1;
                    let value = self.value()?;
                    if map.insert(key.to_owned(), value).is_some() {
                        self.repeated_key = true;
                    }
                }
                Value::Object(map)
            }
        })
    }
}

/// Counts characters of strings in a content value: a string, an array of parts with `text`, or an
/// array of strings (prompts, embedding inputs). Token arrays count one token as four characters.
fn text_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Object(part) => part.get("text").map_or(0, text_chars),
                Value::Number(_) => 4,
                other => text_chars(other),
            })
            .sum(),
        _ => 0,
    }
}

fn check_messages(body: &Map<String, Value>) -> Result<(), GatewayError> {
    let messages = match body.get("messages") {
        None | Some(Value::Null) => {
            return Err(GatewayError::invalid_request("Missing required parameter: 'messages'.")
                .with_param("messages")
                .with_code("missing_required_parameter"));
        }
        Some(Value::Array(m)) => m,
        Some(other) => return Err(invalid_type("messages", "an array", other)),
    };
    if messages.is_empty() {
        return Err(GatewayError::invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an \
             empty array instead.",
        )
        .with_param("messages")
        .with_code("empty_array"));
    }
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(invalid_type(&format!("messages[{i}]"), "an object", m));
        };
        match m.get("role") {
            None | Some(Value::Null) => {
                return Err(GatewayError::invalid_request(format!(
                    "Missing required parameter: 'messages[{i}].role'."
                ))
                .with_param(format!("messages[{i}].role"))
                .with_code("missing_required_parameter"));
            }
            Some(Value::String(_)) => {}
            Some(other) => return Err(invalid_type(&format!("messages[{i}].role"), "a string", other)),
        }
        match m.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(other) => {
                return Err(invalid_type(
                    &format!("messages[{i}].content"),
                    "a string or an array of content parts",
                    other,
                ));
            }
        }
    }
    Ok(())
}

fn check_text_input(body: &Map<String, Value>, field: &str) -> Result<(), GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => {
            Err(GatewayError::invalid_request(format!("Missing required parameter: '{field}'."))
                .with_param(field)
                .with_code("missing_required_parameter"))
        }
        Some(Value::String(_)) | Some(Value::Array(_)) => Ok(()),
        Some(other) => Err(invalid_type(field, "a string or an array", other)),
    }
}

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid_type(field, "a boolean", other)),
    }
}

/// A positive integer field (`max_tokens`, `n`).
fn optional_count(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= 1 => Ok(Some(v)),
            _ => Err(GatewayError::invalid_request(format!(
                "Invalid '{field}': integer below minimum value. Expected a value >= 1, but got {n} instead."
            ))
            .with_param(field)
            .with_code("integer_below_min_value")),
        },
        Some(other) => Err(invalid_type(field, "an integer", other)),
    }
}

fn invalid_type(field: &str, expected: &str, got: &Value) -> GatewayError {
    GatewayError::invalid_request(format!(
        "Invalid type for '{field}': expected {expected}, but got {} instead.",
        type_name(got)
    ))
    .with_param(field)
    .with_code("invalid_type")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: Endpoint, s: &str) -> Result<Request, GatewayError> {
        Request::parse(endpoint, &mut s.as_bytes().to_vec())
    }

    #[test]
    fn an_untouched_body_keeps_the_clients_bytes_until_something_changes_it() {
        let sent = r#"{ "model": "m", "messages": [{"role": "user", "content": "caf\u00e9"}], "temperature": 1.5e0 }"#;
        let mut r = parse(Endpoint::ChatCompletions, sent).unwrap();
        assert_eq!(r.body.raw().map(|b| b.as_ref()), Some(sent.as_bytes()));
        assert_eq!(r.body.to_bytes(), sent.as_bytes());
        assert_eq!(r.body["messages"][0]["content"], "café");
        let _ = r.body.get("model");
        assert!(r.body.raw().is_some(), "reading keeps the bytes");
        r.body.insert("model".into(), "other".into());
        assert!(r.body.raw().is_none(), "a change lets them go");
        let now: Value = serde_json::from_slice(&r.body.to_bytes()).unwrap();
        assert_eq!(now["model"], "other");
        assert_eq!(now["messages"][0]["content"], "café");
    }

    #[test]
    fn a_repeated_key_anywhere_means_the_body_is_serialized_from_what_was_read() {
        for sent in [
            r#"{"model":"a","model":"m","messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x","content":"y"}]}"#,
        ] {
            let r = parse(Endpoint::ChatCompletions, sent).unwrap();
            assert!(r.body.raw().is_none(), "{sent}");
            let out: Value = serde_json::from_slice(&r.body.to_bytes()).unwrap();
            assert_eq!(out["model"], "m");
        }
        let r = parse(Endpoint::ChatCompletions, r#"{"model":"a","model":"m","messages":[{"role":"user"}]}"#);
        assert_eq!(r.unwrap().model, "m", "the last value counts, as serde_json reads it");
    }

    #[test]
    fn one_top_level_field_is_read_without_the_rest() {
        let answer = r#"{"id":"x","choices":[{"message":{"content":"a \"usage\": {}","usage":1}}],
            "usage":{"prompt_tokens":12,"completion_tokens_details":{"reasoning_tokens":2}},"tail":[1,{"b":2}]}"#;
        let usage = top_level_field(answer.as_bytes(), "usage").unwrap();
        assert_eq!(
            usage,
            serde_json::json!({"prompt_tokens":12,"completion_tokens_details":{"reasoning_tokens":2}})
        );
        assert_eq!(top_level_field(answer.as_bytes(), "tail").unwrap()[1]["b"], 2);
        assert_eq!(top_level_field(br#"{"usage":1,"usage":2}"#, "usage").unwrap(), 2);
        for none in [&br#"{"choices":[]}"#[..], b"[1]", b"{\"usage\":", b"", b"null"] {
            assert_eq!(top_level_field(none, "usage"), None, "{:?}", String::from_utf8_lossy(none));
        }
        // Above the reused buffers' size the other fields are skipped by serde_json: same answers.
        let big = format!(
            r#"{{"data":[{}],"usage":{{"prompt_tokens":7}},"model":"e"}}"#,
            vec!["0.125"; 40_000].join(",")
        );
        assert!(big.len() > REUSED_BUFFERS);
        assert_eq!(top_level_field(big.as_bytes(), "usage").unwrap()["prompt_tokens"], 7);
        assert_eq!(top_level_field(big.as_bytes(), "model").unwrap(), "e");
        assert_eq!(top_level_field(&big.as_bytes()[..100_000], "usage"), None, "cut short");
    }

    #[test]
    fn numbers_and_literals_read_as_serde_json_reads_them() {
        let r = parse(
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user"}],"a":-3,"b":18446744073709551615,"c":0.25,"d":[true,false,null]}"#,
        )
        .unwrap();
        assert_eq!(r.body["a"], -3);
        assert_eq!(r.body["b"], u64::MAX);
        assert_eq!(r.body["c"], 0.25);
        assert_eq!(r.body["d"], serde_json::json!([true, false, null]));
        for bad in [r#"{"model":"m""#, r#"{"model":1e999}"#, "[1,", ""] {
            assert!(parse(Endpoint::ChatCompletions, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chat_request_keeps_unknown_fields_and_lifts_facts() {
        let r = parse(
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":"hello"}],"stream":true,
               "stream_options":{"include_usage":true},"max_tokens":7,"x_vendor":{"a":1},"seed":3}"#,
        )
        .unwrap();
        assert_eq!(r.model, "m");
        assert!(r.stream && r.wants_stream_usage);
        assert_eq!(r.max_output_tokens, Some(7));
        assert_eq!(r.body["x_vendor"]["a"], 1);
        assert_eq!(r.body["seed"], 3);
        assert_eq!(r.prompt_chars(), 5);
        assert_eq!(r.estimated_prompt_tokens(), 2);
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        let cases = [
            ("not json", None, "invalid_json"),
            ("[1]", None, "invalid_type"),
            (r#"{"messages":[]}"#, Some("model"), "missing_required_parameter"),
            (r#"{"model":3,"messages":[]}"#, Some("model"), "invalid_type"),
            (r#"{"model":"m"}"#, Some("messages"), "missing_required_parameter"),
            (r#"{"model":"m","messages":"hi"}"#, Some("messages"), "invalid_type"),
            (r#"{"model":"m","messages":[]}"#, Some("messages"), "empty_array"),
            (
                r#"{"model":"m","messages":[{"content":"x"}]}"#,
                Some("messages[0].role"),
                "missing_required_parameter",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                Some("messages[0].content"),
                "invalid_type",
            ),
            (r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#, Some("stream"), "invalid_type"),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":0}"#,
                Some("max_tokens"),
                "integer_below_min_value",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"stream_options":{}}"#,
                Some("stream_options"),
                "invalid_value",
            ),
        ];
        for (body, param, code) in cases {
            let e = parse(Endpoint::ChatCompletions, body).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}");
            assert_eq!(e.code, Some(code), "{body}");
        }
    }

    #[test]
    fn completions_and_embeddings_need_their_input() {
        assert!(parse(Endpoint::Completions, r#"{"model":"m","prompt":"hi"}"#).is_ok());
        let e = parse(Endpoint::Embeddings, r#"{"model":"m"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
        let r = parse(Endpoint::Embeddings, r#"{"model":"m","input":["abcd","efgh"]}"#).unwrap();
        assert_eq!(r.prompt_chars(), 8);
    }
}
