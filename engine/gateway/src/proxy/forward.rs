//! Forwarding: try the model's targets in fallback order until one answers.
//!
//! An attempt fails over to the next target on a connect error, a timeout (no first byte within the
//! provider's deadline), a 408/429/5xx, or a broken body, and only while nothing has gone downstream.
//! Each failure feeds the target's circuit breaker (429s cool the target down for `Retry-After`
//! instead). Once a target answers, a JSON answer goes out whole and an SSE answer chunk by chunk as
//! it arrives; a stream cut after that ends with an OpenAI-shaped error event and a clean close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::client::HttpSession;
// Deadlines on Tokio's timers, armed only once the awaited future is pending; each worker keeps
// a timer due sooner (`server::keep_a_timer_ahead`), so arming one wakes nothing.
use pingora::time::tokio_timeout;
use serde_json::Value;
use sluice_core::ctx::Endpoint;
use sluice_core::json::Json;
use sluice_core::wire::Request;
use sluice_core::{ErrorKind, GatewayError, Usage};

use super::{Ctx, Gateway, answers, respond, write_error};
use crate::providers::{Dialect, HttpUpstream, ReplyBody, Transport, UpstreamReply, openai};
use crate::routing::Target;
use crate::routing::endpoints;
use crate::sse::SseTracker;
use crate::translate::{self, StreamTranslation, ToAnthropic};

/// Largest non-streamed upstream answer we buffer.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Why one attempt failed.
struct Failure {
    kind: FailureKind,
    reason: String,
    retry_after: Option<Duration>,
    /// Set for [`FailureKind::Rejected`]: the error the client gets, at once.
    rejection: Option<Box<GatewayError>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Connect,
    Timeout,
    Status(u16),
    Broken,
    NoEndpoint,
    /// The request cannot go to this target at all (a plugin refused it, or the provider cannot
    /// express it): answered to the client at once, no fallback.
    Rejected,
}

impl FailureKind {
    fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect_error",
            Self::Timeout => "timeout",
            Self::Status(429) => "rate_limited",
            Self::Status(_) => "bad_status",
            Self::Broken => "broken",
            Self::NoEndpoint => "no_endpoint",
            Self::Rejected => "rejected",
        }
    }

    /// Does this failure count against the target's circuit?
    fn trips_circuit(self) -> bool {
        !matches!(self, Self::Status(429) | Self::NoEndpoint | Self::Rejected)
    }
}

impl Failure {
    fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Self { kind, reason: reason.into(), retry_after: None, rejection: None }
    }

    fn rejected(e: GatewayError) -> Self {
        Self {
            kind: FailureKind::Rejected,
            reason: e.message.clone(),
            retry_after: None,
            rejection: Some(Box::new(e)),
        }
    }
}

pub async fn forward(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut Ctx,
    mut request: Request,
) -> Result<(), GatewayError> {
    let Some(route) = gw.router.route(&request.model) else {
        if gw.router.elsewhere.contains(&request.model) {
            let region = gw.settings.region.as_deref().unwrap_or("?");
            return Err(GatewayError::new(
                ErrorKind::NotFound,
                format!(
                    "The model `{}` is not served in region `{region}`: its providers are in other regions.",
                    request.model
                ),
            )
            .with_param("model")
            .with_code("model_not_found"));
        }
        return Err(sluice_plugins::keys::model_not_found(&request.model));
    };
    let mut failures: Vec<String> = Vec::new();
    let mut attempted_kinds: Vec<FailureKind> = Vec::new();
    let mut retry_after: Option<Duration> = None;
    let mut failed_addrs: Vec<SocketAddr> = Vec::new();
    // An Anthropic client's request, in OpenAI's form, for targets that are not Anthropic (built on
    // first need; the answer goes back to Anthropic's form in `deliver`).
    let mut as_openai: Option<Request> = None;
    let mut plan = route.plan();
    if let Some(residency) = &ctx.core.residency {
        plan.retain(|t| residency.admits(t.region.as_deref(), &t.tags));
        if plan.is_empty() {
            return Err(GatewayError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "No target of model `{}` may serve this request ({}); it is refused, never sent elsewhere.",
                    request.model,
                    residency.describe()
                ),
            )
            .with_code("residency_violation"));
        }
    }
    for target in plan {
        if ctx.core.attempts >= gw.settings.max_attempts {
            break;
        }
        if let Some(left) = target.cooling() {
            failures.push(format!("{} (rate limited for {}s more)", target.name, left.as_secs().max(1)));
            retry_after = Some(retry_after.map_or(left, |r| r.min(left)));
            continue;
        }
        if !target.circuit.admit() {
            failures.push(format!("{} (circuit open)", target.name));
            retry_after = Some(retry_after.map_or(gw.settings.cooldown, |r| r.min(gw.settings.cooldown)));
            continue;
        }
        ctx.core.attempts += 1;
        ctx.core.target = Some(target.facts());
        let via_openai = request.endpoint == Endpoint::Messages
            && !matches!(&target.provider.transport, Transport::Http(up) if matches!(up.dialect, Dialect::Anthropic { .. }));
        if via_openai && as_openai.is_none() {
            as_openai = Some(messages_as_openai(&request)?);
        }
        let (sent, client) = match as_openai.as_mut() {
            Some(converted) if via_openai => (converted, ClientFormat::Anthropic),
            _ => (&mut request, ClientFormat::Native),
        };
        let started = Instant::now();
        let outcome = attempt(gw, ctx, sent, &target, &mut failed_addrs).await;
        ctx.upstream_time += started.elapsed();
        match outcome {
            Ok((reply, hide_usage)) => {
                ctx.ttfb = Some(started.elapsed());
                gw.metrics.observe_ttfb(&target.name, started.elapsed());
                gw.metrics.attempts.with_label_values(&[target.name.as_str(), "ok"]).inc();
                target.circuit.record_success();
                return deliver(gw, session, ctx, sent, reply, hide_usage, client).await;
            }
            Err(Failure { rejection: Some(e), .. }) => return Err(*e),
            Err(f) => {
                gw.metrics.attempts.with_label_values(&[target.name.as_str(), f.kind.label()]).inc();
                if f.kind.trips_circuit() {
                    target.circuit.record_failure();
                }
                if let Some(d) = f.retry_after {
                    target.cool_down(d);
                    retry_after = Some(retry_after.map_or(d, |r| r.min(d)));
                }
                log::warn!(
                    "request {} attempt {} on {} failed: {}",
                    ctx.core.request_id,
                    ctx.core.attempts,
                    target.name,
                    f.reason
                );
                failures.push(format!("{} ({})", target.name, f.reason));
                attempted_kinds.push(f.kind);
            }
        }
    }
    Err(spent(&request.model, &failures, &attempted_kinds, retry_after))
}

/// The error once every target is spent: 504 when all attempts timed out, 503 when none could be
/// made (circuits open, rate limited, no endpoint) or every provider was rate limited, unavailable
/// or overloaded (429, 503, Anthropic's 529), 502 otherwise.
fn spent(
    model: &str,
    failures: &[String],
    kinds: &[FailureKind],
    retry_after: Option<Duration>,
) -> GatewayError {
    let kind = if !kinds.is_empty() && kinds.iter().all(|k| *k == FailureKind::Timeout) {
        ErrorKind::GatewayTimeout
    } else if kinds
        .iter()
        .all(|k| matches!(k, FailureKind::Status(429 | 503 | 529) | FailureKind::NoEndpoint))
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::BadGateway
    };
    let tried = if failures.is_empty() { "no target was available".to_owned() } else { failures.join(", ") };
    let mut e = GatewayError::new(kind, format!("No upstream could serve model `{model}`. Tried: {tried}."))
        .with_code("upstream_unavailable");
    if kind == ErrorKind::Unavailable {
        e = e.with_retry_after(retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64));
    }
    e
}

/// One attempt on one target. On success the reply's status is final for this request.
async fn attempt(
    gw: &Gateway,
    ctx: &mut Ctx,
    request: &mut Request,
    target: &Arc<Target>,
    failed_addrs: &mut Vec<SocketAddr>,
) -> Result<(UpstreamReply, bool), Failure> {
    // Translated streams and the mock always end with a usage chunk; OpenAI-shaped providers are
    // asked for one when configured to.
    let asks_usage = match &target.provider.transport {
        Transport::Http(up) => up.stream_usage || up.dialect.translated(),
        Transport::Mock(_) => true,
    };
    let hide_usage = request.stream && asks_usage && !request.wants_stream_usage;
    let [options, model] = request.body.json().fields(["stream_options", "model"]);
    let had_options = options.is_some();
    // Touched only when it changes: an untouched body goes upstream as the client's own bytes.
    let renamed = model.and_then(Json::as_str) != Some(target.upstream_model.as_str());
    if renamed {
        request.body.insert("model".into(), Value::String(target.upstream_model.clone()));
    }
    if hide_usage {
        let options =
            request.body.entry("stream_options").or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(o) = options {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    let mut outcome = Ok(());
    for plugin in &gw.plugins {
        if let Err(e) = plugin.on_upstream_request(&mut ctx.core, &mut request.body) {
            outcome = Err(Failure::rejected(e));
            break;
        }
    }
    let result = match (outcome, &target.provider.transport) {
        (Err(f), _) => Err(f),
        (Ok(()), Transport::Mock(mock)) => Ok(mock.reply(request, &target.upstream_model)),
        (Ok(()), Transport::Http(up)) => match upstream_body(request, &target.upstream_model, up) {
            Ok(body) => http_attempt(ctx, request, &target.upstream_model, up, body, failed_addrs).await,
            Err(e) => Err(Failure::rejected(e)),
        },
    };
    // Later attempts and plugins see the request as the client sent it.
    if renamed {
        request.body.insert("model".into(), Value::String(request.model.clone()));
    }
    if hide_usage {
        if had_options {
            if let Some(Value::Object(o)) = request.body.get_mut("stream_options") {
                o.remove("include_usage");
            }
        } else {
            request.body.remove("stream_options");
        }
    }
    let mut reply = result?;
    let dialect = match &target.provider.transport {
        Transport::Http(up) if translated(request, &up.dialect) => Some(&up.dialect),
        _ => None,
    };
    // A JSON answer is read whole here, so that a body cut short can still fall over.
    if !is_sse(&reply) {
        let mut body = read_all(&mut reply.body).await?;
        if let Some(dialect) = dialect {
            body = from_translated(dialect, reply.status, &body, request, &target.upstream_model)?;
            reply.content_type = Some("application/json".to_owned());
            reply.usage_estimated = request.endpoint == Endpoint::Embeddings;
        }
        reply.body = ReplyBody::Chunks {
            chunks: std::iter::once(body).collect(),
            pacing: Duration::ZERO,
            first: true,
        };
    } else {
        reply.translate = match dialect {
            Some(Dialect::Anthropic { .. }) => Some(Box::new(StreamTranslation::anthropic(unix_now()))),
            Some(Dialect::Gemini) => {
                Some(Box::new(StreamTranslation::gemini(unix_now(), &target.upstream_model)))
            }
            _ => None,
        };
    }
    Ok((reply, hide_usage))
}

/// The body a provider receives: the client's OpenAI body as it now stands, or its translation.
fn upstream_body(request: &Request, upstream_model: &str, up: &HttpUpstream) -> Result<Bytes, GatewayError> {
    if !translated(request, &up.dialect) {
        return Ok(request.body.to_bytes());
    }
    let translated = match &up.dialect {
        Dialect::OpenAi | Dialect::Azure { .. } => return Ok(request.body.to_bytes()),
        Dialect::Anthropic { default_max_tokens, .. } => {
            let chat = translatable(request)?;
            translate::anthropic::request(&chat, upstream_model, *default_max_tokens)?
        }
        Dialect::Gemini if request.endpoint == Endpoint::Embeddings => {
            translate::gemini::embed_request(&request.body, upstream_model)?
        }
        Dialect::Gemini => translate::gemini::request(&translatable(request)?),
    };
    Ok(Bytes::from(serde_json::to_vec(&translated).unwrap_or_default()))
}

/// The form answers take on their way to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientFormat {
    /// As the target's answer already is (OpenAI's, or Anthropic's passed through).
    Native,
    /// OpenAI's answer turned into Anthropic's, for `/v1/messages` clients.
    Anthropic,
}

/// An Anthropic Messages request as the OpenAI chat request an OpenAI-shaped target receives.
fn messages_as_openai(request: &Request) -> Result<Request, GatewayError> {
    let chat = translate::anthropic::chat_from_anthropic(&request.body)?;
    let body = translate::openai::request_from_chat(&chat, &request.model);
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    Request::parse(Endpoint::ChatCompletions, &mut bytes)
}

/// Whether this request to this provider goes through translation (else its body and the answer
/// pass as they are: OpenAI to OpenAI-shaped providers, Anthropic to Anthropic).
fn translated(request: &Request, dialect: &Dialect) -> bool {
    match request.endpoint {
        Endpoint::Messages => !matches!(dialect, Dialect::Anthropic { .. }),
        _ => dialect.translated(),
    }
}

/// The canonical chat of a request bound for a translated provider (chat completions only).
fn translatable(request: &Request) -> Result<translate::canonical::Chat, GatewayError> {
    if request.endpoint != Endpoint::ChatCompletions {
        return Err(GatewayError::invalid_request(format!(
            "Model `{}` is served by a provider that has no {} endpoint here.",
            request.model,
            request.endpoint.path()
        ))
        .with_param("model")
        .with_code("unsupported_endpoint"));
    }
    translate::openai::chat_from_openai(&request.body, request.stream)
}

/// A translated provider's JSON answer (or 4xx error) in OpenAI's shape. A 2xx that cannot be read
/// is a broken answer, worth falling over for.
fn from_translated(
    dialect: &Dialect,
    status: u16,
    body: &[u8],
    request: &Request,
    model: &str,
) -> Result<Bytes, Failure> {
    if (200..300).contains(&status) && request.endpoint == Endpoint::Embeddings {
        let base64 = request.body.get("encoding_format").and_then(Value::as_str) == Some("base64");
        let v = translate::gemini::embed_answer(body, model, base64, request.estimated_prompt_tokens())
            .map_err(|e| Failure::new(FailureKind::Broken, e))?;
        return Ok(Bytes::from(v.to_string()));
    }
    if (200..300).contains(&status) {
        let answer = match dialect {
            Dialect::Gemini => translate::gemini::answer(body, model),
            _ => translate::anthropic::answer(body),
        }
        .map_err(|e| Failure::new(FailureKind::Broken, e))?;
        let v = translate::openai::answer_to_openai(&answer, unix_now());
        return Ok(Bytes::from(v.to_string()));
    }
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // Anthropic says `error.type`, Google `error.status`; OpenAI's vocabulary is close to the former.
    let kind = match parsed
        .pointer("/error/type")
        .or_else(|| parsed.pointer("/error/status"))
        .and_then(Value::as_str)
    {
        Some("permission_error" | "PERMISSION_DENIED") => "permission_error",
        Some("not_found_error" | "NOT_FOUND") => "not_found_error",
        Some("rate_limit_error" | "RESOURCE_EXHAUSTED") => "rate_limit_error",
        _ => "invalid_request_error",
    };
    let message = openai::error_message(body);
    // Both providers say so in words: "prompt is too long" (Anthropic), "exceeds the maximum number
    // of tokens" (Gemini). OpenAI's clients look for the code.
    let lower = message.to_ascii_lowercase();
    let code = (lower.contains("prompt is too long")
        || lower.contains("maximum number of tokens")
        || lower.contains("context length"))
    .then_some("context_length_exceeded");
    let e = serde_json::json!({"error": {
        "message": message,
        "type": kind,
        "param": null,
        "code": code,
    }});
    Ok(Bytes::from(e.to_string()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Endpoints of one provider tried within one attempt when connections are refused.
const ENDPOINTS_PER_ATTEMPT: usize = 3;

async fn http_attempt(
    ctx: &Ctx,
    request: &Request,
    upstream_model: &str,
    up: &HttpUpstream,
    body: Bytes,
    failed_addrs: &mut Vec<SocketAddr>,
) -> Result<UpstreamReply, Failure> {
    let settings = &up.pool.settings;
    let deadline = Instant::now() + settings.first_byte_timeout;
    let mut last = Failure::new(FailureKind::NoEndpoint, "no healthy endpoint");
    let connector = endpoints::connector();
    for _ in 0..ENDPOINTS_PER_ATTEMPT {
        let Some((addr, info)) = up.pool.select(failed_addrs) else { break };
        // Boxed from the start, as the session will be: both end up in the reply's body, and a
        // move of either by value copies hundreds of bytes.
        let peer = boxed!(endpoints::peer(addr, &info, settings, up.ca.clone()));
        let header = openai::header_for(
            &info,
            request.endpoint,
            upstream_model,
            request.stream,
            body.len(),
            up,
            &ctx.core.request_id,
        )
        .map_err(|e| Failure::new(FailureKind::Broken, e.message))?;
        let left = deadline.saturating_duration_since(Instant::now());
        // The exchange (kilobytes of state: Pingora's connection pool lookup, the write, the read)
        // is made in a box: handed to `tokio_timeout` by value, it would be copied twice.
        let exchange = Box::into_pin(boxed!(exchange(&connector, &peer, addr, header, body.clone())));
        match tokio_timeout(left, exchange).await {
            Ok(Ok(session)) => return classify(session, peer, settings.idle_timeout, connector).await,
            // A refused or failed connect: another endpoint of the same provider may take it.
            Ok(Err(f)) if f.kind == FailureKind::Connect => {
                failed_addrs.push(addr);
                last = f;
            }
            Ok(Err(f)) => return Err(f),
            Err(_) => {
                return Err(Failure::new(
                    FailureKind::Timeout,
                    format!("no first byte within {} ms", settings.first_byte_timeout.as_millis()),
                ));
            }
        }
    }
    Err(last)
}

/// Sends the request and reads the response header. A pooled connection may have gone stale:
/// one immediate retry on a fresh one.
async fn exchange(
    connector: &Connector,
    peer: &pingora::prelude::HttpPeer,
    addr: SocketAddr,
    header: pingora::http::RequestHeader,
    body: Bytes,
) -> Result<Box<HttpSession>, Failure> {
    let mut tries = 0;
    loop {
        tries += 1;
        let (s, reused) = connector.get_http_session(peer).await.map_err(|e| {
            Failure::new(FailureKind::Connect, format!("connect to {addr}: {}", e.etype().as_str()))
        })?;
        match send(s, peer, &header, &body).await {
            Ok(s) => return Ok(s),
            Err(_) if reused && tries < 2 => continue,
            Err(e) => {
                return Err(Failure::new(
                    FailureKind::Broken,
                    format!("exchange with {addr}: {}", e.etype().as_str()),
                ));
            }
        }
    }
}

/// A body up to this size leaves in the same write as the request's header.
const ONE_WRITE: usize = 64 * 1024;

/// Writes the request and reads the response header. Over HTTP/1.1 the header and a body of up to
/// [`ONE_WRITE`] bytes leave in one write: Pingora's `write_request_header` flushes the header on
/// its own, which costs a segment, a system call and a wake-up of the upstream per request.
async fn send(
    s: HttpSession,
    peer: &pingora::prelude::HttpPeer,
    header: &pingora::http::RequestHeader,
    body: &Bytes,
) -> pingora::Result<Box<HttpSession>> {
    use pingora::OrErr;
    use pingora::protocols::http::v1::client::{HttpSession as Http1, http_req_header_to_wire};
    use tokio::io::AsyncWriteExt;

    let HttpSession::H1(h1) = s else {
        let mut s = Box::new(s);
        s.write_request_header(Box::new(header.clone())).await?;
        s.write_request_body(body.clone(), true).await?;
        s.finish_request_body().await?;
        s.read_response_header().await?;
        return Ok(s);
    };
    let Some(mut wire) = http_req_header_to_wire(header) else {
        return pingora::Error::e_explain(
            pingora::ErrorType::InvalidHTTPHeader,
            "the upstream request's header",
        );
    };
    let mut stream = h1.into_inner();
    let written = async {
        if body.len() <= ONE_WRITE {
            wire.extend_from_slice(body);
            stream.write_all(&wire).await?;
        } else {
            stream.write_all(&wire).await?;
            stream.write_all(body).await?;
        }
        stream.flush().await
    };
    written.await.or_err(pingora::ErrorType::WriteError, "while writing the request")?;
    let mut s = boxed!(HttpSession::H1(Http1::new_with_options(stream, peer)));
    s.read_response_header().await?;
    Ok(s)
}

/// Turns a response header into a reply, or into a failure worth falling over for (408, 429, 5xx).
async fn classify(
    session: Box<HttpSession>,
    peer: Box<pingora::prelude::HttpPeer>,
    idle: Duration,
    connector: Arc<Connector>,
) -> Result<UpstreamReply, Failure> {
    let Some(h) = session.response_header() else {
        return Err(Failure::new(FailureKind::Broken, "no response header"));
    };
    let status = h.status.as_u16();
    let content_type = h.headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let retry_after = h
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)));
    let mut body = ReplyBody::Http { session, peer, idle, connector };
    if status == 408 || status == 429 || status >= 500 {
        // Boxed: only failures read here, and inline this read would add its kilobytes to every
        // request's state.
        let text = Box::pin(read_all(&mut body)).await.map(|b| openai::error_message(&b)).unwrap_or_default();
        let mut f = Failure::new(FailureKind::Status(status), format!("HTTP {status}: {text}"));
        if status == 429 {
            f.retry_after = retry_after.or(Some(Duration::from_secs(1)));
        }
        return Err(f);
    }
    Ok(UpstreamReply { status, content_type, body, translate: None, usage_estimated: false })
}

fn is_sse(reply: &UpstreamReply) -> bool {
    reply.content_type.as_deref().is_some_and(|c| c.starts_with("text/event-stream"))
}

impl ReplyBody {
    /// The next chunk; `Ok(None)` at the end. HTTP sessions go back to the pool when drained.
    async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        match self {
            ReplyBody::Chunks { chunks, pacing, first } => {
                if !*first && !pacing.is_zero() && !chunks.is_empty() {
                    tokio::time::sleep(*pacing).await;
                }
                *first = false;
                Ok(chunks.pop_front())
            }
            ReplyBody::Http { session, idle, .. } => {
                match tokio_timeout(*idle, session.read_response_body()).await {
                    Ok(Ok(Some(b))) => Ok(Some(b)),
                    Ok(Ok(None)) => {
                        release(self).await;
                        Ok(None)
                    }
                    Ok(Err(e)) => Err(Failure::new(
                        FailureKind::Broken,
                        format!("stream broken: {}", e.etype().as_str()),
                    )),
                    Err(_) => Err(Failure::new(
                        FailureKind::Timeout,
                        format!("no data for {} ms", idle.as_millis()),
                    )),
                }
            }
        }
    }
}

/// Returns a drained HTTP session to the connection pool.
async fn release(body: &mut ReplyBody) {
    let done = std::mem::replace(
        body,
        ReplyBody::Chunks { chunks: Default::default(), pacing: Duration::ZERO, first: true },
    );
    if let ReplyBody::Http { session, peer, connector, .. } = done {
        let session: HttpSession = *session;
        connector.release_http_session(session, &*peer, Some(Duration::from_secs(90))).await;
    }
}

/// Reads a whole (non-streamed) answer, bounded.
async fn read_all(body: &mut ReplyBody) -> Result<Bytes, Failure> {
    let too_large = || Failure::new(FailureKind::Broken, "answer larger than 64 MiB");
    // An answer that came in one piece (the usual) is kept as it came, without a copy.
    let Some(first) = body.next().await? else { return Ok(Bytes::new()) };
    if first.len() > MAX_ANSWER_BYTES {
        return Err(too_large());
    }
    let Some(second) = body.next().await? else { return Ok(first) };
    let mut buf = BytesMut::with_capacity(first.len() + second.len());
    buf.extend_from_slice(&first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        if buf.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
        next = body.next().await?;
    }
    Ok(buf.freeze())
}

/// Sends the chosen target's answer downstream.
async fn deliver(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut Ctx,
    request: &Request,
    mut reply: UpstreamReply,
    hide_usage: bool,
    client: ClientFormat,
) -> Result<(), GatewayError> {
    let mut content_type = reply.content_type.clone().unwrap_or_else(|| "application/json".to_owned());
    if !is_sse(&reply) {
        let body = read_all(&mut reply.body)
            .await
            .map_err(|f| GatewayError::new(ErrorKind::BadGateway, f.reason))?;
        if (200..300).contains(&reply.status) {
            let mut usage = json_usage(&body, request);
            usage.estimated |= reply.usage_estimated;
            ctx.core.usage = Some(usage);
            for plugin in &gw.plugins {
                plugin.on_response_event(&mut ctx.core, &body);
            }
        }
        let body = if (200..300).contains(&reply.status) && answers::wanted(&gw.plugins) {
            answers::check_body(&gw.plugins, &mut ctx.core, &body)?.unwrap_or(body)
        } else {
            body
        };
        let body = match client {
            ClientFormat::Native => body,
            ClientFormat::Anthropic => {
                content_type = "application/json".to_owned();
                translate::answer_for_anthropic(reply.status, &body)
            }
        };
        let h = respond::header(ctx, reply.status, &content_type).map_err(write_error)?;
        return respond::full(session, ctx, h, body).await.map_err(write_error);
    }
    let mut h =
        respond::header(ctx, reply.status, "text/event-stream; charset=utf-8").map_err(write_error)?;
    h.insert_header("cache-control", "no-cache").map_err(write_error)?;
    h.insert_header("transfer-encoding", "chunked").map_err(write_error)?;
    let started = Instant::now();
    session.write_response_header(Box::new(h)).await.map_err(write_error)?;
    ctx.downstream_time += started.elapsed();

    let mut tracker = SseTracker::new(hide_usage);
    let mut guard = answers::wanted(&gw.plugins).then(answers::AnswerGuard::default);
    let mut to_anthropic = (client == ClientFormat::Anthropic).then(ToAnthropic::default);
    let mut outward = |b: Bytes| match to_anthropic.as_mut() {
        Some(t) => t.feed(&b),
        None => b,
    };
    let outcome = loop {
        let waited = Instant::now();
        let next = reply.body.next().await;
        ctx.upstream_time += waited.elapsed();
        match next {
            Ok(Some(chunk)) => {
                let chunk = match reply.translate.as_mut() {
                    Some(t) => t.feed(&chunk),
                    None => chunk,
                };
                let chunk = match guard.as_mut().map(|g| g.feed(&gw.plugins, &mut ctx.core, &chunk)) {
                    None => chunk,
                    Some(Ok(checked)) => checked,
                    Some(Err(e)) => break Err(unchecked(&ctx.core.request_id, &e)),
                };
                let plugins = &gw.plugins;
                let core = &mut ctx.core;
                let out = tracker.feed(chunk, |event| {
                    for p in plugins {
                        p.on_response_event(core, event);
                    }
                });
                let out = outward(out);
                if !out.is_empty() {
                    let wrote = Instant::now();
                    let sent = session.write_response_body(out, false).await;
                    ctx.downstream_time += wrote.elapsed();
                    if sent.is_err() {
                        break Err(StreamEnd::ClientGone);
                    }
                }
            }
            // A translated stream ends here: what the translation still holds (Gemini's end of
            // answer) goes out before the stream is judged complete or cut.
            Ok(None) if reply.translate.is_some() => {
                let mut rest = reply.translate.take().map(|mut t| t.finish()).unwrap_or_default();
                if let Some(g) = guard.as_mut() {
                    let checked = g.feed(&gw.plugins, &mut ctx.core, &rest).and_then(|mut b| {
                        let tail = g.finish(&gw.plugins, &mut ctx.core)?;
                        let mut all = BytesMut::from(&b[..]);
                        all.extend_from_slice(&tail);
                        b = all.freeze();
                        Ok(b)
                    });
                    rest = match checked {
                        Ok(b) => b,
                        Err(e) => break Err(unchecked(&ctx.core.request_id, &e)),
                    };
                }
                let out = outward(tracker.feed(rest, |_| {}));
                if !out.is_empty() && session.write_response_body(out, false).await.is_err() {
                    break Err(StreamEnd::ClientGone);
                }
                break ended(&tracker);
            }
            // Checked answers: what is still held goes out before the end is judged.
            Ok(None) if guard.is_some() => {
                let rest = match guard.as_mut().map(|g| g.finish(&gw.plugins, &mut ctx.core)) {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => break Err(unchecked(&ctx.core.request_id, &e)),
                    None => Bytes::new(),
                };
                let out = outward(tracker.feed(rest, |_| {}));
                if !out.is_empty() && session.write_response_body(out, false).await.is_err() {
                    break Err(StreamEnd::ClientGone);
                }
                break ended(&tracker);
            }
            // After the provider's own error event the client gets no second one.
            Ok(None) => break ended(&tracker),
            Err(f) => break Err(StreamEnd::Cut(format!("the upstream stream failed: {}", f.reason))),
        }
    };
    ctx.core.usage = Some(tracker.usage.unwrap_or_else(|| Usage {
        prompt_tokens: request.estimated_prompt_tokens(),
        completion_tokens: Usage::estimate_tokens(tracker.content_chars),
        estimated: true,
        ..Usage::default()
    }));
    let mut tail = BytesMut::from(&tracker.finish()[..]);
    match &outcome {
        Ok(()) => {}
        Err(StreamEnd::Reported) => {
            ctx.error = Some(GatewayError::new(
                ErrorKind::BadGateway,
                "the upstream reported an error in the stream",
            ));
        }
        Err(StreamEnd::ClientGone) => {
            ctx.error = Some(GatewayError::new(ErrorKind::BadGateway, "the client went away"));
        }
        Err(StreamEnd::Cut(reason)) => {
            log::warn!("request {}: {reason}", ctx.core.request_id);
            ctx.error = Some(GatewayError::new(ErrorKind::BadGateway, reason.clone()));
            if !tail.is_empty() && !tail.ends_with(b"\n\n") {
                tail.extend_from_slice(b"\n\n");
            }
            let message = format!("Stream interrupted: {reason}.");
            if request.endpoint == Endpoint::Messages {
                let event =
                    serde_json::json!({"type": "error", "error": {"type": "api_error", "message": message}});
                tail.extend_from_slice(format!("event: error\ndata: {event}\n\n").as_bytes());
            } else {
                let event = serde_json::json!({"error": {"message": message, "type": "api_error", "param": null,
                    "code": "stream_interrupted"}});
                tail.extend_from_slice(format!("data: {event}\n\n").as_bytes());
            }
        }
    }
    let wrote = Instant::now();
    let tail = outward(tail.freeze());
    let _ = session.write_response_body(tail, true).await;
    ctx.downstream_time += wrote.elapsed();
    Ok(())
}

/// How a stream ended once the upstream stopped sending: complete, with the upstream's own error
/// event, or cut short.
fn ended(tracker: &SseTracker) -> Result<(), StreamEnd> {
    if tracker.saw_done {
        Ok(())
    } else if tracker.saw_error {
        Err(StreamEnd::Reported)
    } else {
        Err(StreamEnd::Cut("the upstream closed the stream before it was complete".to_owned()))
    }
}

/// A stream whose answer a plugin could not check is cut there: nothing unchecked goes out.
fn unchecked(request_id: &str, e: &GatewayError) -> StreamEnd {
    log::error!("request {request_id}: the answer could not be checked ({}); the stream is cut", e.message);
    StreamEnd::Cut("the gateway could not check the rest of the answer".to_owned())
}

/// How a stream that did not end with `[DONE]` ended.
enum StreamEnd {
    /// The upstream's own error event reached the client.
    Reported,
    /// The upstream stopped or failed: the client gets a `stream_interrupted` event.
    Cut(String),
    /// The client disconnected.
    ClientGone,
}

/// Usage of a non-streamed answer: reported, or estimated from its text.
fn json_usage(body: &[u8], request: &Request) -> Usage {
    // Only `usage` is read; the rest of the answer is stepped over.
    let reported = sluice_core::wire::top_level_field(body, "usage", |u| {
        Usage::from_openai(u).or_else(|| match Usage::from_anthropic(u) {
            (Some(input), Some(output), cached) => Some(Usage {
                prompt_tokens: input,
                completion_tokens: output,
                cached_tokens: cached,
                ..Usage::default()
            }),
            _ => None,
        })
    });
    if let Some(u) = reported.flatten() {
        return u;
    }
    // No usage reported: estimate from the answer's text (the whole tree, on this rare path).
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let chars: usize = parsed
        .as_ref()
        .and_then(|v| v.get("choices"))
        .and_then(Value::as_array)
        .map(|choices| {
            choices
                .iter()
                .filter_map(|c| {
                    c.pointer("/message/content").or_else(|| c.get("text")).and_then(Value::as_str)
                })
                .map(|s| s.chars().count())
                .sum()
        })
        .unwrap_or(0);
    Usage {
        prompt_tokens: request.estimated_prompt_tokens(),
        completion_tokens: Usage::estimate_tokens(chars),
        estimated: true,
        ..Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{ReplyBody, read_all};

    fn chunks(parts: &[&'static str]) -> ReplyBody {
        ReplyBody::Chunks {
            chunks: parts.iter().map(|p| Bytes::from_static(p.as_bytes())).collect(),
            pacing: std::time::Duration::ZERO,
            first: true,
        }
    }

    #[tokio::test]
    async fn a_whole_answer_is_every_chunk_in_order() {
        for parts in [&[][..], &["{}"], &["{\"a\":", "1}"], &["{", "\"a\"", ":", "", "2}"]] {
            let whole = read_all(&mut chunks(parts)).await.map_err(|f| f.reason).unwrap();
            assert_eq!(whole, parts.concat().as_bytes(), "{parts:?}");
        }
    }
}
