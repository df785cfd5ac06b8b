//! OpenAI's wire format over HTTP, for `openai` and `openai_compatible` providers.
//!
//! The client's body is forwarded with every field it sent, unknown ones included; only `model` is
//! rewritten to the target's upstream name, and `stream_options.include_usage` is added when the
//! provider is asked for usage on every stream.

use pingora::http::RequestHeader;
use serde_json::Value;
use sluice_core::GatewayError;
use sluice_core::wire::Request;

use super::HttpUpstream;
use crate::routing::endpoints::EndpointInfo;

/// The body for one attempt. Returns whether we asked for a usage chunk the client did not want
/// (then it must be hidden from the client).
pub fn body_for(request: &mut Request, upstream_model: &str, upstream: &HttpUpstream) -> (Vec<u8>, bool) {
    request.body.insert("model".into(), Value::String(upstream_model.to_owned()));
    let mut hide_usage = false;
    if request.stream && upstream.stream_usage && !request.wants_stream_usage {
        let options =
            request.body.entry("stream_options").or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(o) = options {
            o.insert("include_usage".into(), Value::Bool(true));
            hide_usage = true;
        }
    }
    let bytes = serde_json::to_vec(&request.body).unwrap_or_default();
    // The alias goes back so that later attempts and plugins see what the client sent.
    request.body.insert("model".into(), Value::String(request.model.clone()));
    (bytes, hide_usage)
}

/// The request header for one attempt: the provider's key replaces the client's gateway key.
pub fn header_for(
    info: &EndpointInfo,
    path: &str,
    body_len: usize,
    upstream: &HttpUpstream,
    request_id: &str,
) -> Result<RequestHeader, GatewayError> {
    let full = format!("{}{}", info.base_path, path);
    let build = || -> pingora::Result<RequestHeader> {
        let mut h = RequestHeader::build("POST", full.as_bytes(), Some(8))?;
        h.insert_header("host", info.authority())?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", body_len.to_string())?;
        h.insert_header("accept", "application/json, text/event-stream")?;
        h.insert_header("x-request-id", request_id)?;
        if let Some(key) = &upstream.api_key {
            h.insert_header("authorization", format!("Bearer {}", key.expose()))?;
        }
        for (k, v) in &upstream.headers {
            h.insert_header(k.clone(), v.as_str())?;
        }
        Ok(h)
    };
    build().map_err(|e| GatewayError::internal(format!("cannot build the upstream request: {e}")))
}

/// The message inside a provider's error body, OpenAI-shaped or not, cut to a readable length.
pub fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let msg = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message").or_else(|| v.get("message")).or_else(|| v.get("error")))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let msg = msg.trim();
    if msg.chars().count() > 200 {
        format!("{}…", msg.chars().take(200).collect::<String>())
    } else {
        msg.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_reads_openai_and_plain_bodies() {
        assert_eq!(error_message(br#"{"error":{"message":"over capacity","type":"x"}}"#), "over capacity");
        assert_eq!(error_message(b"upstream exploded"), "upstream exploded");
        assert!(error_message(&[b'x'; 500]).ends_with('…'));
    }
}
