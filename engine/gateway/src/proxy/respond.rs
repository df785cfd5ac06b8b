//! Writing answers downstream. This is the one place where errors become OpenAI-shaped bodies.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::{ErrorType, OrErr};
use sluice_core::GatewayError;
use sluice_core::duration::push_millis;

use super::Ctx;
use crate::headers::{self, X_REQUEST_ID, value};

/// A response header with what every answer carries: `x-request-id`, `Server-Timing` and
/// `x-sluice-overhead-us` (the gateway's own time so far).
pub fn header(ctx: &mut Ctx, status: u16, content_type: &str) -> pingora::Result<ResponseHeader> {
    // Built as `http` parts with names known at compile time, then handed to Pingora without a
    // case map (every name here is lowercase): Pingora's `insert_header` parses each name anew.
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(status).or_err(ErrorType::InvalidHTTPHeader, "status")?;
    let h = &mut parts.headers;
    h.reserve(12);
    h.insert(
        CONTENT_TYPE,
        match content_type {
            // The usual ones without a copy of their own.
            "application/json" => HeaderValue::from_static("application/json"),
            "text/event-stream" => HeaderValue::from_static("text/event-stream"),
            other => value(other)?,
        },
    );
    h.insert(X_REQUEST_ID.clone(), value(&ctx.core.request_id)?);
    let gateway = ctx.overhead();
    let mut timing = Vec::with_capacity(48);
    timing.extend_from_slice(b"gateway;dur=");
    push_millis(&mut timing, gateway);
    if !ctx.upstream_time.is_zero() {
        timing.extend_from_slice(b", upstream;dur=");
        push_millis(&mut timing, ctx.upstream_time);
    }
    h.insert(
        SERVER_TIMING.clone(),
        HeaderValue::from_maybe_shared(Bytes::from(timing)).or_err(ErrorType::InvalidHTTPHeader, "timing")?,
    );
    h.insert(X_SLUICE_OVERHEAD_US.clone(), HeaderValue::from(gateway.as_micros() as u64));
    if let Some(t) = &ctx.core.target {
        h.insert(X_SLUICE_TARGET.clone(), value(&t.name)?);
    }
    if ctx.core.attempts > 0 {
        const FEW: [&str; 5] = ["0", "1", "2", "3", "4"];
        let attempts = ctx.core.attempts;
        h.insert(
            X_SLUICE_ATTEMPTS.clone(),
            FEW.get(attempts as usize)
                .map_or_else(|| HeaderValue::from(attempts), |n| HeaderValue::from_static(n)),
        );
    }
    for (name, v) in &ctx.core.response_headers {
        h.insert(headers::name(name)?, value(v)?);
    }
    ctx.core.status = status;
    Ok(ResponseHeader::from(parts))
}

static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
static X_SLUICE_OVERHEAD_US: HeaderName = HeaderName::from_static("x-sluice-overhead-us");
static X_SLUICE_TARGET: HeaderName = HeaderName::from_static("x-sluice-target");
static X_SLUICE_ATTEMPTS: HeaderName = HeaderName::from_static("x-sluice-attempts");

/// A complete answer with a known length.
pub async fn full(
    session: &mut ServerSession,
    ctx: &mut Ctx,
    mut h: ResponseHeader,
    body: Bytes,
) -> pingora::Result<()> {
    h.insert_header("content-length", HeaderValue::from(body.len()))?;
    let started = std::time::Instant::now();
    session.write_response_header(Box::new(h)).await?;
    session.write_response_body(body, true).await?;
    ctx.downstream_time += started.elapsed();
    Ok(())
}

pub async fn json(
    session: &mut ServerSession,
    ctx: &mut Ctx,
    status: u16,
    body: Vec<u8>,
) -> pingora::Result<()> {
    let h = header(ctx, status, "application/json")?;
    full(session, ctx, h, Bytes::from(body)).await
}

/// Renders `e` as OpenAI's error body with its status (and `Retry-After`, `Allow` where due).
pub async fn error(session: &mut ServerSession, ctx: &mut Ctx, e: &GatewayError) -> pingora::Result<()> {
    let mut h = header(ctx, e.status(), "application/json")?;
    if let Some(s) = e.retry_after {
        h.insert_header("retry-after", s.to_string())?;
    }
    if let Some(allow) = ctx.allow {
        h.insert_header("allow", allow)?;
    }
    ctx.error = Some(e.clone());
    // Clients of the Anthropic-compatible endpoint get Anthropic's error shape.
    let body = if ctx.core.endpoint == Some(sluice_core::ctx::Endpoint::Messages) {
        e.to_anthropic_json()
    } else {
        e.to_json()
    };
    full(session, ctx, h, Bytes::from(body)).await
}

/// What a client whose request header does not parse is told (and its access line says).
pub const MALFORMED: &str = "The request is not valid HTTP: its header could not be parsed.";

/// Answers a request whose header could not be parsed (no request to route, no context): OpenAI's
/// 400 with a body that says so and the `x-request-id` of its access line, and the connection
/// closed after it.
pub async fn malformed(session: &mut ServerSession, request_id: &str) {
    let error = GatewayError::invalid_request(MALFORMED).with_code("malformed_http");
    let body = Bytes::from(error.to_json());
    let answer = async {
        let mut h = ResponseHeader::build(400, Some(3))?;
        h.insert_header(CONTENT_TYPE, "application/json")?;
        h.insert_header(X_REQUEST_ID.clone(), value(request_id)?)?;
        h.insert_header("content-length", HeaderValue::from(body.len()))?;
        session.write_error_response(h, body).await
    };
    if let Err(e) = answer.await {
        log::debug!("cannot answer a malformed request: {e}");
    }
}
