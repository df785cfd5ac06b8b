//! The inbound side of a request: which route it is, who sent it, and its body, read once and bounded.

use bytes::BytesMut;
use pingora::protocols::http::ServerSession;
use sluice_core::ctx::Endpoint;
use sluice_core::{ErrorKind, GatewayError};

/// What the method and path ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Health,
    Metrics,
    Api(Endpoint),
    /// A known path with the wrong method; carries the `Allow` value.
    WrongMethod(&'static str),
    Unknown,
}

pub fn route(method: &str, path: &str) -> RouteKind {
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    let (allowed, kind) = match path {
        "/health" => ("GET", RouteKind::Health),
        "/metrics" => ("GET", RouteKind::Metrics),
        "/v1/models" => ("GET", RouteKind::Api(Endpoint::Models)),
        "/v1/chat/completions" => ("POST", RouteKind::Api(Endpoint::ChatCompletions)),
        "/v1/completions" => ("POST", RouteKind::Api(Endpoint::Completions)),
        "/v1/messages" => ("POST", RouteKind::Api(Endpoint::Messages)),
        "/v1/embeddings" => ("POST", RouteKind::Api(Endpoint::Embeddings)),
        _ => return RouteKind::Unknown,
    };
    if method == allowed || (method == "HEAD" && allowed == "GET") {
        kind
    } else {
        RouteKind::WrongMethod(allowed)
    }
}

/// The gateway key, from `Authorization: Bearer`, `x-api-key` or `api-key` (Azure SDKs).
pub fn credential(session: &ServerSession) -> Option<String> {
    let h = &session.req_header().headers;
    if let Some(v) = h.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim().to_owned());
        }
    }
    ["x-api-key", "api-key"]
        .iter()
        .find_map(|name| h.get(*name).and_then(|v| v.to_str().ok()))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A client-sent request id worth keeping: short and printable.
pub fn request_id(session: &ServerSession) -> Option<String> {
    let v = session.req_header().headers.get("x-request-id")?.to_str().ok()?;
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())).then(|| v.to_owned())
}

/// Reads the whole body, refusing more than `limit` bytes with a 413 (before reading, when the
/// declared length already says so).
pub async fn body(session: &mut ServerSession, limit: usize) -> Result<BytesMut, GatewayError> {
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("Request body too large: the limit is {limit} bytes."),
        )
        .with_code("request_too_large")
    };
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf),
            Err(e) => {
                return Err(GatewayError::invalid_request(format!(
                    "The request body could not be read: {}",
                    e.etype().as_str()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(route("POST", "/v1/chat/completions"), RouteKind::Api(Endpoint::ChatCompletions));
        assert_eq!(route("POST", "/v1/chat/completions/"), RouteKind::Api(Endpoint::ChatCompletions));
        assert_eq!(route("GET", "/v1/chat/completions"), RouteKind::WrongMethod("POST"));
        assert_eq!(route("GET", "/v1/models"), RouteKind::Api(Endpoint::Models));
        assert_eq!(route("POST", "/v1/nope"), RouteKind::Unknown);
        assert_eq!(route("GET", "/"), RouteKind::Unknown);
        assert_eq!(route("HEAD", "/health"), RouteKind::Health);
    }
}
