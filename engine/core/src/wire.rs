//! OpenAI's inbound request shapes, parsed once.
//!
//! [`Request::parse`] reads the body bytes with simd-json into a [`Doc`], checks the fields the
//! gateway relies on with OpenAI's own error wording (naming the field at fault), and lifts them into
//! typed facts. Every other field, unknown ones included, stays in [`Request::body`] and is passed on
//! to the provider verbatim: as the very bytes the client sent while nothing has changed the body
//! (no serialization on the common path), re-serialized once something has.

use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{Map, Value};
use simd_json::Node;

use crate::ctx::Endpoint;
use crate::error::GatewayError;
use crate::json::{Doc, Json, Kind};
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
/// As read, the object is a [`Doc`]: [`Body::field`] and [`Body::json`] read it in place, and a
/// `serde_json` map is built only when something reads through `Deref` (translation to another
/// provider's shape, for one). Any mutable access (`DerefMut`) lets the document and the bytes go,
/// so a body something may have changed is always serialized again before it leaves. A body whose
/// object repeats a key never keeps its bytes: the gateway read the last value, a provider might
/// read the first, and what is checked (model, PII, limits) must be what is sent.
#[derive(Debug, Clone, Default)]
pub struct Body {
    /// The object as read, while nothing has changed it; its map is built on first use.
    read: Option<(Doc, OnceLock<Map<String, Value>>)>,
    /// The object once something may have changed it (or had no document).
    owned: Map<String, Value>,
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
            None => Bytes::from(serde_json::to_vec(&**self).unwrap_or_default()),
        }
    }

    /// The object, to read without building it.
    pub fn json(&self) -> Json<'_> {
        match &self.read {
            Some((doc, _)) => doc.root(),
            None => Json::from(&self.owned),
        }
    }

    /// One top-level field, read without building the object.
    pub fn field(&self, key: &str) -> Option<Json<'_>> {
        self.json().get(key)
    }
}

impl Deref for Body {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        match &self.read {
            Some((doc, map)) => map.get_or_init(|| doc.root().to_map()),
            None => &self.owned,
        }
    }
}

impl DerefMut for Body {
    fn deref_mut(&mut self) -> &mut Map<String, Value> {
        if let Some((doc, map)) = self.read.take() {
            self.owned = map.into_inner().unwrap_or_else(|| doc.root().to_map());
        }
        self.raw = None;
        &mut self.owned
    }
}

/// The body as it stands, as JSON (what goes upstream when it is serialized again).
impl serde::Serialize for Body {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
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
        let doc = with_tape(bytes, |nodes| Doc::from_tape(nodes, bytes_len(nodes)))
            .map_err(|_| invalid())?
            .ok_or_else(invalid)?;
        let kind = doc.root().kind();
        if kind != Kind::Object {
            return Err(GatewayError::invalid_request(format!(
                "Invalid request body: expected a JSON object, but got {} instead.",
                kind.described()
            ))
            .with_code("invalid_type"));
        }
        // A repeated key: from now on the body is the map of what was read (last values).
        let body = if doc.repeated_key() {
            Body { read: None, owned: doc.root().to_map(), raw: None }
        } else {
            Body { read: Some((doc, OnceLock::new())), owned: Map::new(), raw: Some(raw) }
        };
        Self::from_body(endpoint, body)
    }

    fn from_body(endpoint: Endpoint, body: Body) -> Result<Self, GatewayError> {
        let [
            model,
            messages,
            max_tokens,
            max_completion_tokens,
            stream,
            stream_options,
            n,
            user,
            prompt,
            input,
        ] = body.json().fields([
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "stream",
            "stream_options",
            "n",
            "user",
            "prompt",
            "input",
        ]);
        let model = match model {
            None => "",
            Some(m) if m.is_null() => "",
            Some(m) => m.as_str().ok_or_else(|| invalid_type("model", "a string", m))?,
        };
        if model.is_empty() {
            return Err(GatewayError::invalid_request("you must provide a model parameter")
                .with_param("model")
                .with_code("missing_required_parameter"));
        }
        let model = model.to_owned();
        match endpoint {
            Endpoint::ChatCompletions => check_messages(messages)?,
            Endpoint::Messages => {
                check_messages(messages)?;
                // Anthropic requires max_tokens; say so the way Anthropic does.
                if max_tokens.and_then(Json::as_u64).is_none() {
                    return Err(GatewayError::invalid_request("max_tokens: Field required")
                        .with_param("max_tokens")
                        .with_code("missing_required_parameter"));
                }
            }
            Endpoint::Completions => check_text_input(prompt, "prompt")?,
            Endpoint::Embeddings => check_text_input(input, "input")?,
            Endpoint::Models => {}
        }
        let stream = optional_bool(stream, "stream")?.unwrap_or(false);
        // Anthropic streams always carry usage; only OpenAI clients opt in.
        let wants_stream_usage = endpoint == Endpoint::Messages
            || match stream_options.filter(|o| !o.is_null()) {
                None => false,
                Some(o) if o.kind() == Kind::Object => {
                    if !stream {
                        return Err(GatewayError::invalid_request(
                            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                        )
                        .with_param("stream_options")
                        .with_code("invalid_value"));
                    }
                    optional_bool(o.get("include_usage"), "stream_options.include_usage")?.unwrap_or(false)
                }
                Some(other) => return Err(invalid_type("stream_options", "an object", other)),
            };
        let max_output_tokens = match optional_count(max_completion_tokens, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => optional_count(max_tokens, "max_tokens")?,
        };
        optional_count(n, "n")?;
        let user = match user.filter(|u| !u.is_null()) {
            None => None,
            Some(u) => Some(u.as_str().ok_or_else(|| invalid_type("user", "a string", u))?.to_owned()),
        };
        Ok(Self { endpoint, model, stream, wants_stream_usage, max_output_tokens, user, body })
    }

    /// Characters of text the model will read: message contents (string or text parts), tool-call
    /// arguments, prompts and embedding inputs. The basis of token estimates.
    pub fn prompt_chars(&self) -> usize {
        // One pass over the body's fields, and one over each message's.
        let [messages, prompt, input, system] =
            self.body.json().fields(["messages", "prompt", "input", "system"]);
        let mut n = 0;
        for m in messages.into_iter().flat_map(Json::items) {
            let [content, tool_calls] = m.fields(["content", "tool_calls"]);
            n += content.map_or(0, text_chars);
            for c in tool_calls.into_iter().flat_map(Json::items) {
                n += c.get("function").and_then(|f| f.get("arguments")).map_or(0, text_chars);
            }
        }
        n + [prompt, input, system].into_iter().flatten().map(text_chars).sum::<usize>()
    }

    /// Our estimate of the prompt's tokens, used until the provider reports real usage.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        Usage::estimate_tokens(self.prompt_chars())
    }
}

/// Documents up to this size are parsed with this thread's reused simd-json buffers and tape;
/// larger ones with buffers of their own, so a thread never keeps more than about this much.
const REUSED_BUFFERS: usize = 64 * 1024;

/// A reused tape is kept while it holds no more nodes than this (a 64 KiB document of small
/// values could leave a tape of several hundred KiB behind).
const REUSED_NODES: usize = 4096;

thread_local! {
    static BUFFERS: std::cell::RefCell<(simd_json::Buffers, simd_json::Tape<'static>)> =
        std::cell::RefCell::new((simd_json::Buffers::new(REUSED_BUFFERS), simd_json::Tape(Vec::new())));
}

/// `read` applied to simd-json's tape of `bytes` (parsed in place). Its scratch buffers and the
/// tape itself are reused per thread: made fresh, they cost about as much as tokenizing a small
/// answer, and the tape grew by reallocation while it was filled.
fn with_tape<T>(bytes: &mut [u8], read: impl FnOnce(&[Node<'_>]) -> T) -> simd_json::Result<T> {
    if bytes.len() > REUSED_BUFFERS {
        return simd_json::to_tape(bytes).map(|tape| read(&tape.0));
    }
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => {
            let (buffers, kept_tape) = &mut *kept;
            let mut tape = std::mem::replace(kept_tape, simd_json::Tape(Vec::new())).reset();
            let out = simd_json::fill_tape(bytes, buffers, &mut tape).map(|()| read(&tape.0));
            if tape.0.capacity() <= REUSED_NODES {
                *kept_tape = tape.reset();
            }
            out
        }
        Err(_) => simd_json::to_tape(bytes).map(|tape| read(&tape.0)),
    })
}

/// `read` applied to the value of the top-level field `key` of the JSON object in `bytes` (the last
/// one when repeated, as serde_json reads it). Only that value is looked at: the rest of the
/// document is stepped over — tokenized by simd-json (on a copy) up to [`REUSED_BUFFERS`] bytes,
/// skipped by serde_json above, where a tape of a large answer (an embeddings list of a million
/// numbers) would cost more than it saves. `None` when the bytes are no JSON object or have no such
/// field.
pub fn top_level_field<T>(bytes: &[u8], key: &str, read: impl FnOnce(Json<'_>) -> T) -> Option<T> {
    if bytes.len() > REUSED_BUFFERS {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = serde::de::DeserializeSeed::deserialize(FieldSeed(key), &mut de).ok().flatten()?;
        return Some(read(Json::from(&value)));
    }
    let mut copy = bytes.to_vec();
    let value = with_tape(&mut copy, |nodes| {
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
        let nodes = nodes.get(found?)?;
        Doc::from_tape(nodes, bytes_len(nodes))
    });
    Some(read(value.ok()??.root()))
}

/// The bytes of the strings of `nodes`: room for a [`Doc`]'s text, found without a second pass
/// over the input (its length bounds them).
fn bytes_len(nodes: &[Node<'_>]) -> usize {
    nodes.iter().map(|n| if let Node::String(s) = n { s.len() } else { 0 }).sum()
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

/// Counts characters of strings in a content value: a string, an array of parts with `text`, or an
/// array of strings (prompts, embedding inputs). Token arrays count one token as four characters.
fn text_chars(v: Json<'_>) -> usize {
    match v.kind() {
        Kind::String => v.as_str().map_or(0, |s| s.chars().count()),
        Kind::Array => v
            .items()
            .map(|item| match item.kind() {
                Kind::Object => item.get("text").map_or(0, text_chars),
                Kind::Integer | Kind::Decimal => 4,
                _ => text_chars(item),
            })
            .sum(),
        _ => 0,
    }
}

fn check_messages(messages: Option<Json<'_>>) -> Result<(), GatewayError> {
    let Some(messages) = messages.filter(|m| !m.is_null()) else {
        return Err(GatewayError::invalid_request("Missing required parameter: 'messages'.")
            .with_param("messages")
            .with_code("missing_required_parameter"));
    };
    if messages.kind() != Kind::Array {
        return Err(invalid_type("messages", "an array", messages));
    }
    if messages.items().next().is_none() {
        return Err(GatewayError::invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an \
             empty array instead.",
        )
        .with_param("messages")
        .with_code("empty_array"));
    }
    for (i, m) in messages.items().enumerate() {
        if m.kind() != Kind::Object {
            return Err(invalid_type(&format!("messages[{i}]"), "an object", m));
        }
        // Both fields found in one pass over the message.
        let [role, content] = m.fields(["role", "content"]);
        match role.map_or(Kind::Null, Json::kind) {
            Kind::Null => {
                return Err(GatewayError::invalid_request(format!(
                    "Missing required parameter: 'messages[{i}].role'."
                ))
                .with_param(format!("messages[{i}].role"))
                .with_code("missing_required_parameter"));
            }
            Kind::String => {}
            other => return Err(invalid_type(&format!("messages[{i}].role"), "a string", other)),
        }
        match content.map_or(Kind::Null, Json::kind) {
            Kind::Null | Kind::String | Kind::Array => {}
            other => {
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

fn check_text_input(input: Option<Json<'_>>, field: &str) -> Result<(), GatewayError> {
    match input.map_or(Kind::Null, Json::kind) {
        Kind::Null => Err(GatewayError::invalid_request(format!("Missing required parameter: '{field}'."))
            .with_param(field)
            .with_code("missing_required_parameter")),
        Kind::String | Kind::Array => Ok(()),
        other => Err(invalid_type(field, "a string or an array", other)),
    }
}

fn optional_bool(v: Option<Json<'_>>, field: &str) -> Result<Option<bool>, GatewayError> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| invalid_type(field, "a boolean", v)),
    }
}

/// A positive integer field (`max_tokens`, `n`).
fn optional_count(v: Option<Json<'_>>, field: &str) -> Result<Option<u64>, GatewayError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    match (v.kind(), v.as_u64()) {
        (Kind::Integer, Some(n)) if n >= 1 => Ok(Some(n)),
        (Kind::Integer | Kind::Decimal, _) => Err(GatewayError::invalid_request(format!(
            "Invalid '{field}': integer below minimum value. Expected a value >= 1, but got {} instead.",
            v.to_value()
        ))
        .with_param(field)
        .with_code("integer_below_min_value")),
        _ => Err(invalid_type(field, "an integer", v)),
    }
}

fn invalid_type(field: &str, expected: &str, got: impl Into<Kind>) -> GatewayError {
    GatewayError::invalid_request(format!(
        "Invalid type for '{field}': expected {expected}, but got {} instead.",
        got.into().described()
    ))
    .with_param(field)
    .with_code("invalid_type")
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
        assert_eq!(r.body.field("model").and_then(Json::as_str), Some("m"));
        r.body.insert("model".into(), "other".into());
        assert!(r.body.raw().is_none(), "a change lets them go");
        assert_eq!(r.body.field("model").and_then(Json::as_str), Some("other"), "reads see the change");
        assert_eq!(r.body.json().get("messages").unwrap().items().count(), 1);
        let now: Value = serde_json::from_slice(&r.body.to_bytes()).unwrap();
        assert_eq!(serde_json::to_value(&r.body).unwrap(), now, "a body serializes as it stands");
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
        let field = |b: &[u8], k: &str| top_level_field(b, k, |j| j.to_value());
        let answer = r#"{"id":"x","choices":[{"message":{"content":"a \"usage\": {}","usage":1}}],
            "usage":{"prompt_tokens":12,"completion_tokens_details":{"reasoning_tokens":2}},"tail":[1,{"b":2}]}"#;
        let usage = field(answer.as_bytes(), "usage").unwrap();
        assert_eq!(
            usage,
            serde_json::json!({"prompt_tokens":12,"completion_tokens_details":{"reasoning_tokens":2}})
        );
        assert_eq!(field(answer.as_bytes(), "tail").unwrap()[1]["b"], 2);
        assert_eq!(field(br#"{"usage":1,"usage":2}"#, "usage").unwrap(), 2);
        for none in [&br#"{"choices":[]}"#[..], b"[1]", b"{\"usage\":", b"", b"null"] {
            assert_eq!(field(none, "usage"), None, "{:?}", String::from_utf8_lossy(none));
        }
        // Above the reused buffers' size the other fields are skipped by serde_json: same answers.
        let big = format!(
            r#"{{"data":[{}],"usage":{{"prompt_tokens":7}},"model":"e"}}"#,
            vec!["0.125"; 40_000].join(",")
        );
        assert!(big.len() > REUSED_BUFFERS);
        assert_eq!(field(big.as_bytes(), "usage").unwrap()["prompt_tokens"], 7);
        assert_eq!(field(big.as_bytes(), "model").unwrap(), "e");
        assert_eq!(field(&big.as_bytes()[..100_000], "usage"), None, "cut short");
    }

    #[test]
    fn a_thread_reuses_its_tape_and_reads_only_the_document_at_hand() {
        let field = |b: &[u8], k: &str| top_level_field(b, k, |j| j.to_value());
        // A long document first (the tape kept grows to fit it), a short one after, on one thread.
        let long = format!(
            r#"{{"usage":{{"prompt_tokens":1}},"items":[{}]}}"#,
            vec!["{\"a\":[1,2]}"; 500].join(",")
        );
        assert_eq!(field(long.as_bytes(), "items").unwrap().as_array().map(Vec::len), Some(500));
        assert_eq!(field(br#"{"usage":{"prompt_tokens":2}}"#, "usage").unwrap()["prompt_tokens"], 2);
        assert_eq!(field(br#"{"other":1}"#, "items"), None);
        let r =
            parse(Endpoint::ChatCompletions, r#"{"model":"m2","messages":[{"role":"user","content":"hi"}]}"#)
                .unwrap();
        assert_eq!(r.model, "m2");
        assert!(parse(Endpoint::ChatCompletions, r#"{"model":"m","messages":[}"#).is_err());
        // A failed parse leaves the kept tape usable.
        assert_eq!(field(br#"{"usage":3}"#, "usage").unwrap(), 3);
    }

    #[test]
    fn usage_read_from_the_document_as_from_serde_json_values() {
        let usages = [
            r#"{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4},
                "completion_tokens_details":{"reasoning_tokens":2}}"#,
            r#"{"prompt_tokens":12,"completion_tokens":null,"prompt_tokens_details":null}"#,
            r#"{"prompt_tokens":12.0,"completion_tokens":3}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt_tokens":"12"}"#,
            r#"{"completion_tokens":3}"#,
            r#"{"prompt_tokens":5,"completion_tokens":"3","prompt_tokens_details":{"cached_tokens":1.5}}"#,
            r#"{"input_tokens":7,"output_tokens":2,"cache_read_input_tokens":1}"#,
            r#"[1,2]"#,
        ];
        for usage in usages {
            let value: Value = serde_json::from_str(usage).unwrap();
            let expected =
                (Usage::from_openai(Json::from(&value)), Usage::from_anthropic(Json::from(&value)));
            let read = |u: Json<'_>| (Usage::from_openai(u), Usage::from_anthropic(u));
            let small = format!(r#"{{"id":"a","usage":{usage},"model":"m"}}"#);
            assert_eq!(top_level_field(small.as_bytes(), "usage", read), Some(expected), "{usage}");
            let big = format!(r#"{{"data":[{}],"usage":{usage}}}"#, vec!["0.5"; 40_000].join(","));
            assert!(big.len() > REUSED_BUFFERS);
            assert_eq!(top_level_field(big.as_bytes(), "usage", read), Some(expected), "{usage}");
        }
        let u = |s: &str| Usage::from_openai(Json::from(&serde_json::from_str::<Value>(s).unwrap()));
        assert_eq!(
            u(usages[0]).map(|u| (u.prompt_tokens, u.cached_tokens, u.reasoning_tokens)),
            Some((12, 4, 2))
        );
        assert_eq!(u(usages[2]), None, "a prompt count that is no integer is no usage");
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
