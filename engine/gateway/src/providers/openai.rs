//! OpenAI's wire format over HTTP, for `openai`, `openai_compatible` and `azure_openai` providers.
//!
//! The client's body is forwarded with every field it sent, unknown ones included; only `model` is
//! rewritten to the target's upstream name, and `stream_options.include_usage` is added when the
//! provider is asked for usage on every stream (`proxy/forward.rs`). Azure differs only in its URLs
//! (deployments, `api-version`) and its `api-key` header.

use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use pingora::ErrorType::InvalidHTTPHeader;
use pingora::OrErr;
use pingora::http::RequestHeader;
use serde_json::Value;
use sluice_core::GatewayError;
use sluice_core::ctx::Endpoint;

use super::{Dialect, HttpUpstream};
use crate::headers::{self, X_REQUEST_ID, value};
use crate::routing::endpoints::EndpointInfo;

/// The request header for one attempt: the provider's key replaces the client's gateway key.
pub fn header_for(
    info: &EndpointInfo,
    endpoint: Endpoint,
    upstream_model: &str,
    stream: bool,
    body_len: usize,
    upstream: &HttpUpstream,
    request_id: &str,
) -> Result<RequestHeader, GatewayError> {
    let full = match &upstream.dialect {
        Dialect::OpenAi => [info.base_path.as_str(), endpoint.path()].concat(),
        Dialect::Azure { api_version, deployments } => {
            let deployment = deployments.get(upstream_model).map_or(upstream_model, String::as_str);
            format!(
                "{}/openai/deployments/{}{}?api-version={}",
                info.base_path,
                deployment,
                endpoint.path(),
                api_version
            )
        }
        Dialect::Anthropic { .. } => format!("{}/messages", info.base_path),
        Dialect::Gemini if endpoint == Endpoint::Embeddings => {
            format!("{}/models/{upstream_model}:batchEmbedContents", info.base_path)
        }
        Dialect::Gemini if stream => {
            format!("{}/models/{upstream_model}:streamGenerateContent?alt=sse", info.base_path)
        }
        Dialect::Gemini => format!("{}/models/{upstream_model}:generateContent", info.base_path),
    };
    let build = || -> pingora::Result<RequestHeader> {
        // Built as `http` parts, the fixed names known at compile time, and handed to Pingora
        // without a case map (names go out lowercase, as HTTP/2 sends them anyway): Pingora's
        // `insert_header` parses every name anew.
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = http::Method::POST;
        parts.uri = http::Uri::try_from(full).or_err(InvalidHTTPHeader, "the upstream path")?;
        let h = &mut parts.headers;
        h.reserve(10);
        h.insert(HOST, info.host_header());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
        h.insert(ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
        h.insert(X_REQUEST_ID.clone(), value(request_id)?);
        if let Some(key) = &upstream.api_key {
            let (name, prefix) = upstream.dialect.key_header();
            h.insert(headers::name(name)?, value(&[prefix, &*key.get()].concat())?);
        }
        if let Dialect::Anthropic { version, .. } = &upstream.dialect {
            h.insert(ANTHROPIC_VERSION.clone(), value(version)?);
        }
        for (k, v) in &upstream.headers {
            h.insert(headers::name(k)?, value(v)?);
        }
        Ok(RequestHeader::from(parts))
    };
    build().map_err(|e| GatewayError::internal(format!("cannot build the upstream request: {e}")))
}

static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

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
