//! One HTTP request through Pingora's connector (TLS verified against the system roots): for
//! webhooks and the admin command line, so Sluice carries one HTTP client stack, not two.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;

use crate::routing::endpoints::{CaRoots, EndpointInfo, PeerSettings, connector, peer};

/// Sends `method url` with `headers` and `body`; returns the status and the whole answer.
/// `url` is `http(s)://host[:port]/path[?query]`. Errors are sentences without the URL (which may
/// be a secret).
pub async fn request(
    method: &str,
    url: &EndpointInfo,
    headers: &[(&str, String)],
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    request_with_ca(method, url, headers, body, timeout, None).await
}

/// Like [`request`], verifying the server's certificate against `ca` when given.
pub async fn request_with_ca(
    method: &str,
    url: &EndpointInfo,
    headers: &[(&str, String)],
    body: Option<Bytes>,
    timeout: Duration,
    ca: Option<CaRoots>,
) -> Result<(u16, Bytes), String> {
    let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot resolve the host: {e}"))?
        .next()
        .ok_or("the host has no address")?;
    let settings =
        PeerSettings { connect_timeout: timeout, first_byte_timeout: timeout, idle_timeout: timeout };
    let peer = peer(addr, url, &settings, ca);
    let (mut session, _) = connector().get_http_session(&peer).await.map_err(|e| e.to_string())?;
    let path = if url.base_path.is_empty() { "/" } else { url.base_path.as_str() };
    let mut req = RequestHeader::build(method, path.as_bytes(), None).map_err(|e| e.to_string())?;
    req.insert_header("host", url.host_header()).map_err(|e| e.to_string())?;
    req.insert_header("user-agent", "sluice").map_err(|e| e.to_string())?;
    if let Some(b) = &body {
        req.insert_header("content-type", "application/json").map_err(|e| e.to_string())?;
        req.insert_header("content-length", b.len().to_string()).map_err(|e| e.to_string())?;
    }
    for (k, v) in headers {
        req.insert_header((*k).to_owned(), v.as_str()).map_err(|e| e.to_string())?;
    }
    let exchange = async {
        session.write_request_header(Box::new(req)).await.map_err(|e| e.to_string())?;
        if let Some(b) = body {
            session.write_request_body(b, true).await.map_err(|e| e.to_string())?;
        }
        session.finish_request_body().await.map_err(|e| e.to_string())?;
        session.read_response_header().await.map_err(|e| e.to_string())?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        let mut answer = Vec::new();
        while let Some(chunk) = session.read_response_body().await.map_err(|e| e.to_string())? {
            answer.extend_from_slice(&chunk);
        }
        Ok::<_, String>((status, Bytes::from(answer)))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| "timed out".to_owned())?
}
