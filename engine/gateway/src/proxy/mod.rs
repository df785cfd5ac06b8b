//! The request lifecycle, in the order [`Worker::serve`] runs it on Pingora's HTTP server.
//!
//! ```text
//! read_request   the request header (a malformed one: OpenAI-shaped 400, connection closed)
//! early          request id, start instant
//! request        route table → /health, /metrics, or the API:
//!                  credential → body (bounded, read once) → parse once → plugin chain
//!                  → forward: targets in fallback order, each attempt over pingora's pooled
//!                    connector (h1/h2, TLS); retry only before the first byte went downstream
//!                  → answer: JSON whole, or SSE chunk by chunk; any failure rendered as
//!                    OpenAI's error by the one renderer (`respond::error`)
//! logging        plugin on_complete, metrics, one JSON access-log line, the cost record
//! finish         the connection kept for the client's next request (HTTP/1 keep-alive)
//! ```
//!
//! Why Sluice is an `HttpServerApp` and makes the upstream call itself rather than going through
//! pingora-proxy's `ProxyHttp` and `upstream_peer`: Pingora can only replay a body it pre-read
//! through its 64 KiB retry buffer, and a gateway must read the whole body (routing by `model`,
//! plugins, translation) and resend it on fallback. `docs/lifecycle.md` tells the full reasoning.

/// `Box::new(value)` with the box taken first, so that `value` is built in it: `Box::new` builds
/// its argument on the stack and copies it over, kilobytes for a large future.
macro_rules! boxed {
    ($value:expr) => {
        Box::write(Box::new_uninit(), $value)
    };
}

mod answers;
mod forward;
mod inbound;
mod record;
mod respond;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType};
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_core::ctx::Endpoint;
use sluice_core::money::{Micros, Pricing};
use sluice_core::wire::Request;
use sluice_core::{ErrorKind, Flow, GatewayError, Plugin, RequestCtx};
use tokio::sync::Notify;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::server::{InflightGuard, Lifecycle};
use inbound::RouteKind;

/// The gateway: settings, routes, plugins and the metrics.
pub struct Gateway {
    pub settings: Settings,
    pub router: Router,
    /// Prices by upstream model: every request's cost.
    pub pricing: Arc<Pricing>,
    /// Where every API request's cost record goes.
    pub ledger: Arc<crate::ledger::Ledger>,
    /// Reads the ledger in PostgreSQL (admin reports, budget counters rebuilt).
    pub reader: Option<Arc<crate::db::Db>>,
    /// The notices' webhook, when configured (started with the server).
    pub webhook: Option<Arc<crate::notify::Webhook>>,
    /// Managed keys (PostgreSQL), when configured (their listener starts with the server).
    pub managed: Option<Arc<crate::keystore::ManagedKeys>>,
    /// Vault, when secrets come from it: provider keys are refreshed from a thread of its own.
    pub vault: Option<Arc<crate::vault::Vault>>,
    /// The TLS listener's certificate, reloaded when its files change.
    pub certs: Option<Arc<crate::tls::CertStore>>,
    /// Managed keys held in this process (no PostgreSQL): their expiry reminders start with it.
    pub memory_keys: Option<Arc<crate::keystore::memory::MemoryKeys>>,
    /// Where the admin API creates orgs, teams, apps and keys (with the admin API on).
    pub directory: Option<Arc<dyn crate::keystore::Directory>>,
    pub plugins: Vec<Arc<dyn Plugin>>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    /// Set when state lives in Redis: whether its last call answered.
    pub redis_healthy: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Set when state lives in Redis: the connection each worker thread makes as it starts.
    pub redis_warmup: Option<crate::stores::redis::Warmup>,
}

/// Per-request state: the plugins' shared facts plus the engine's own bookkeeping.
pub struct Ctx {
    pub core: RequestCtx,
    /// Time spent waiting on upstreams (connect, first byte, body reads).
    pub upstream_time: Duration,
    /// Time spent writing to the client.
    pub downstream_time: Duration,
    pub ttfb: Option<Duration>,
    pub route_label: &'static str,
    pub error: Option<GatewayError>,
    /// `Allow` header for a 405.
    pub allow: Option<&'static str>,
    /// Hex SHA-256 of the request body (audited requests only).
    pub request_sha256: Option<String>,

    _inflight: InflightGuard,
}

impl Ctx {
    /// Time spent in Sluice itself so far.
    pub fn overhead(&self) -> Duration {
        self.core.started.elapsed().saturating_sub(self.upstream_time + self.downstream_time)
    }
}

/// One worker thread's server: every worker thread runs a Pingora service of its own (see
/// `server::run`), and they all serve the same [`Gateway`]. It is Pingora's HTTP server
/// application itself (`HttpServerApp`), not a `ProxyHttp` behind pingora-proxy: Sluice answers
/// every request in its own lifecycle (the upstream exchange included, see `forward`), so
/// pingora-proxy's request machinery (cache, subrequests, modules, its upstream phases) would only
/// be carried along — and its state machine, 10 KiB, copied into a box for every request.
pub struct Worker {
    gateway: Arc<Gateway>,
    /// Set when the service stops: connections idle between requests close instead of waiting.
    closed: AtomicBool,
    closing: Notify,
}

impl Worker {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway, closed: AtomicBool::new(false), closing: Notify::new() }
    }
}

impl std::ops::Deref for Worker {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.gateway
    }
}

impl HttpServerApp for Worker {
    /// One request of a downstream connection (HTTP/1: called again while it is kept alive; HTTP/2:
    /// once per stream). Written out rather than through `async_trait`, which would build the
    /// request's future on the stack and copy it into its box: [`Worker::serve`]'s future is made
    /// in its box.
    fn process_new_http<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        session: ServerSession,
        shutdown: &'life1 ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let serve = boxed!(self.serve(session, shutdown));
        Box::into_pin(serve)
    }

    fn http_cleanup<'life0, 'async_trait>(
        &'life0 self,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
        Box::pin(std::future::ready(()))
    }
}

impl Worker {
    /// The lifecycle of one request, in order: the request header, [`Worker::early`],
    /// [`Worker::request`] (always answers), [`Worker::logging`]; then the connection, when the
    /// client may send another request on it.
    async fn serve(&self, mut session: ServerSession, shutdown: &ShutdownWatch) -> Option<ReusedHttpStream> {
        let read = tokio::select! {
            // Biased: a request already buffered is read even when the service is stopping.
            biased;
            read = session.read_request() => read,
            () = self.stopped() => return None,
        };
        match read {
            Ok(true) => {}
            // The client closed (a kept-alive connection it no longer needs).
            Ok(false) => return None,
            Err(e) => {
                if e.etype() == &ErrorType::InvalidHTTPHeader {
                    let request_id = new_request_id();
                    respond::malformed(&mut session, &request_id).await;
                    record::malformed(self, &session, &request_id);
                }
                log::debug!("cannot read a request header: {e}");
                session.shutdown().await;
                return None;
            }
        }
        // No keep-alive while stopping, nor after CONNECT (its framing is not a request's).
        if *shutdown.borrow() || session.req_header().method == http::Method::CONNECT {
            session.set_keepalive(None);
        }
        let mut ctx = self.new_ctx();
        self.early(&session, &mut ctx);
        self.request(&mut session, &mut ctx).await;
        self.logging(&session, &mut ctx).await;
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent)),
            Err(e) => {
                log::debug!("cannot finish a response: {e}");
                None
            }
        }
    }

    /// Returns once the service stops (at once if it has).
    async fn stopped(&self) {
        let notified = self.closing.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.closed.load(Ordering::Acquire) {
            notified.await;
        }
    }

    fn new_ctx(&self) -> Ctx {
        Ctx {
            core: RequestCtx::new(String::new()),
            upstream_time: Duration::ZERO,
            downstream_time: Duration::ZERO,
            ttfb: None,
            route_label: "other",
            error: None,
            allow: None,
            request_sha256: None,
            _inflight: self.lifecycle.enter(),
        }
    }

    /// The request's id (the client's `x-request-id` when sane) and its start.
    fn early(&self, session: &ServerSession, ctx: &mut Ctx) {
        ctx.core.started = Instant::now();
        ctx.core.received_at = std::time::SystemTime::now();
        ctx.core.request_id = inbound::request_id(session).unwrap_or_else(new_request_id);
    }

    /// Answers the request, whatever happens: a failure is rendered as OpenAI's error.
    async fn request(&self, session: &mut ServerSession, ctx: &mut Ctx) {
        let outcome = self.handle(session, ctx).await;
        if let Err(e) = outcome {
            if session.response_written().is_none()
                && let Err(write) = respond::error(session, ctx, &e).await
            {
                log::debug!("cannot write the error response: {write}");
            }
            ctx.error = Some(e);
        }
    }

    /// After the answer: its cost, the plugins' `on_complete`, metrics and the access line.
    async fn logging(&self, session: &ServerSession, ctx: &mut Ctx) {
        if ctx.core.status == 0 {
            ctx.core.status = session.response_written().map_or(0, |h| h.status.as_u16());
        }
        if let (Some(usage), Some(target)) = (&ctx.core.usage, &ctx.core.target) {
            // Unpriced models are refused by configuration; only the mock provider can be unpriced.
            let price = self.pricing.price(&target.upstream_model);
            ctx.core.cost = Some(price.map_or(Micros(0), |p| p.cost(usage)));
        }
        if let Some(error) = &ctx.error {
            ctx.core.error_code = Some(error.code.unwrap_or(error.kind.label()).to_owned());
        }
        for plugin in self.plugins.iter().filter(|p| p.phases().complete) {
            plugin.on_complete(&ctx.core).await;
        }
        record::record(self, session, ctx);
    }
}

impl Gateway {
    /// Dispatches one request; any error is rendered by the caller.
    async fn handle(&self, session: &mut ServerSession, ctx: &mut Ctx) -> Result<(), GatewayError> {
        let req = session.req_header();
        let route = inbound::route(req.method.as_str(), req.uri.path());
        ctx.route_label = match route {
            RouteKind::Health => "/health",
            RouteKind::Metrics => "/metrics",
            RouteKind::Api(e) => match e {
                Endpoint::ChatCompletions => "/v1/chat/completions",
                Endpoint::Messages => "/v1/messages",
                Endpoint::Completions => "/v1/completions",
                Endpoint::Embeddings => "/v1/embeddings",
                Endpoint::Models => "/v1/models",
            },
            RouteKind::WrongMethod(_) | RouteKind::Unknown => "other",
        };
        match route {
            RouteKind::Health => {
                let (mut status, mut body) = crate::health::report(&self.router);
                if let Some(up) = &self.redis_healthy {
                    let up = up.load(std::sync::atomic::Ordering::Relaxed);
                    body["redis"] =
                        if up { "ok" } else { "unreachable: limits enforced per instance" }.into();
                    if !up && body["status"] == "ok" {
                        body["status"] = "degraded".into();
                    }
                }
                if let Some(keys) = &self.managed {
                    let synced = keys.synced();
                    body["keys"] =
                        if synced { "ok" } else { "not following PostgreSQL: cached keys only" }.into();
                    if !synced && body["status"] == "ok" {
                        body["status"] = "degraded".into();
                    }
                }
                if let Some((up, spooled)) = self.ledger.health() {
                    body["postgres"] = if up {
                        "ok".into()
                    } else {
                        format!("unreachable: cost records are spooled to disk ({spooled} waiting)").into()
                    };
                    if !up && body["status"] == "ok" {
                        body["status"] = "degraded".into();
                    }
                }
                if self.lifecycle.draining() {
                    status = 503;
                    body["status"] = "draining".into();
                } else if !self.lifecycle.started() {
                    status = 503;
                    body["status"] = "starting".into();
                }
                respond::json(session, ctx, status, body.to_string().into_bytes()).await.map_err(write_error)
            }
            RouteKind::Metrics => {
                for t in self.router.targets() {
                    self.metrics.circuit.with_label_values(&[t.name.as_str()]).set(t.circuit.state().gauge());
                }
                let h = respond::header(ctx, 200, "text/plain; version=0.0.4").map_err(write_error)?;
                respond::full(session, ctx, h, Bytes::from(self.metrics.render())).await.map_err(write_error)
            }
            RouteKind::WrongMethod(allow) => {
                ctx.allow = Some(allow);
                let (method, path) = (req.method.as_str(), req.uri.path());
                Err(GatewayError::new(
                    ErrorKind::MethodNotAllowed,
                    format!("Method {method} is not allowed on {path}; use {allow}."),
                ))
            }
            RouteKind::Unknown => {
                let (method, path) = (req.method.as_str(), req.uri.path());
                Err(GatewayError::new(ErrorKind::NotFound, format!("Invalid URL ({method} {path})")))
            }
            RouteKind::Api(endpoint) => self.api(session, ctx, endpoint).await,
        }
    }

    async fn api(
        &self,
        session: &mut ServerSession,
        ctx: &mut Ctx,
        endpoint: Endpoint,
    ) -> Result<(), GatewayError> {
        ctx.core.endpoint = Some(endpoint);
        ctx.core.credential = inbound::credential(session);
        ctx.core.region_hint = session
            .req_header()
            .headers
            .get("x-gateway-region")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        for plugin in self.plugins.iter().filter(|p| p.phases().headers) {
            plugin.on_headers(&mut ctx.core).await?;
        }
        let mut request = if endpoint == Endpoint::Models {
            Request::listing()
        } else {
            let mut body = inbound::body(session, self.settings.max_body_bytes).await?;
            if self.settings.audit {
                // Before parsing: simd-json parses the buffer in place.
                ctx.request_sha256 = Some(crate::audit::hex(&Sha256::digest(&body)));
            }
            Request::parse(endpoint, &mut body)?
        };
        ctx.core.model = (!request.model.is_empty()).then(|| request.model.clone());
        ctx.core.stream = request.stream;
        for plugin in self.plugins.iter().filter(|p| p.phases().request) {
            match plugin.on_request(&mut ctx.core, &mut request).await? {
                Flow::Continue => {}
                Flow::Respond(reply) => {
                    let content_type = reply
                        .headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                        .map_or("application/json", |(_, v)| v.as_str())
                        .to_owned();
                    let mut h = respond::header(ctx, reply.status, &content_type).map_err(write_error)?;
                    for (k, v) in &reply.headers {
                        h.insert_header(k.clone(), v.as_str()).map_err(write_error)?;
                    }
                    return respond::full(session, ctx, h, reply.body).await.map_err(write_error);
                }
            }
        }
        if endpoint == Endpoint::Models {
            return self.list_models(session, ctx).await;
        }
        forward::forward(self, session, ctx, request).await
    }

    /// `GET /v1/models`: the aliases the caller's key may use, in OpenAI's list shape.
    async fn list_models(&self, session: &mut ServerSession, ctx: &mut Ctx) -> Result<(), GatewayError> {
        let data: Vec<_> = self
            .router
            .routes
            .keys()
            .filter(|alias| ctx.core.identity.as_ref().is_none_or(|i| i.may_use(alias)))
            .map(|alias| json!({"id": alias, "object": "model", "created": 0, "owned_by": "sluice"}))
            .collect();
        let body = json!({"object": "list", "data": data}).to_string().into_bytes();
        respond::json(session, ctx, 200, body).await.map_err(write_error)
    }
}

#[expect(clippy::boxed_local, reason = "pingora's errors arrive boxed; this maps them with `map_err`")]
fn write_error(e: Box<Error>) -> GatewayError {
    GatewayError::internal(format!("cannot write the response: {}", e.etype().as_str()))
}

fn new_request_id() -> String {
    crate::id::random("req_")
}
