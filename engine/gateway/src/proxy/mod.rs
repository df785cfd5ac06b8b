//! The request lifecycle, in the order Pingora runs it.
//!
//! ```text
//! early_request_filter  request id, start instant
//! request_filter        route table → /health, /metrics, or the API:
//!                         credential → body (bounded, read once) → parse once → plugin chain
//!                         → forward: targets in fallback order, each attempt over pingora's
//!                           pooled connector (h1/h2, TLS); retry only before the first byte went
//!                           downstream → answer: JSON whole, or SSE chunk by chunk
//!                       → always answered here (returns true), so Pingora's own upstream phase
//!                         (`upstream_peer`) never runs
//! fail_to_proxy         a Pingora-level error: rendered by the same OpenAI-shaped renderer
//! logging               metrics, one JSON access-log line, plugin on_complete
//! ```
//!
//! Why the upstream call is made in `request_filter` rather than through `upstream_peer`: Pingora can
//! only replay a body it pre-read through its 64 KiB retry buffer, and a gateway must read the whole
//! body (routing by `model`, plugins, translation) and resend it on fallback. `docs/lifecycle.md`
//! tells the full reasoning.

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

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_core::ctx::Endpoint;
use sluice_core::money::{Micros, Pricing};
use sluice_core::wire::Request;
use sluice_core::{ErrorKind, Flow, GatewayError, Plugin, RequestCtx};

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

/// One worker thread's handle on the shared gateway: every worker thread runs a Pingora service of
/// its own (see `server::run`), and they all serve the same [`Gateway`].
pub struct Worker(pub Arc<Gateway>);

impl std::ops::Deref for Worker {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.0
    }
}

#[async_trait]
impl ProxyHttp for Worker {
    type CTX = Ctx;

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

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // None. Pingora's default adds a response-compression module (disabled), which still
        // allocates its state and runs its filters on every request; Sluice compresses nothing.
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<()> {
        ctx.core.started = Instant::now();
        ctx.core.received_at = std::time::SystemTime::now();
        ctx.core.request_id = inbound::request_id(session).unwrap_or_else(new_request_id);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        // Boxed: the whole request's state machine lives on the heap once, instead of inside the
        // future Pingora moves around for every request (several KiB copied each time), and made
        // in its box (`boxed!`) rather than copied into it.
        let outcome = Box::into_pin(boxed!(self.handle(session, ctx))).await;
        if let Err(e) = outcome {
            if session.response_written().is_none()
                && let Err(write) = respond::error(session, ctx, &e).await
            {
                log::debug!("cannot write the error response: {write}");
            }
            ctx.error = Some(e);
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
        // Every request is answered in request_filter; reaching this is a bug.
        Error::e_explain(ErrorType::InternalError, "upstream_peer is not used by Sluice")
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let error = GatewayError::internal(format!(
            "The gateway failed to handle the request: {}",
            e.etype().as_str()
        ));
        let code = if session.response_written().is_some() {
            0
        } else {
            match respond::error(session, ctx, &error).await {
                Ok(()) => error.status(),
                Err(_) => 0,
            }
        };
        ctx.error = Some(error);
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
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
        record::record(self, session, e, ctx);
    }
}

impl Gateway {
    /// Dispatches one request; any error is rendered by the caller.
    async fn handle(&self, session: &mut Session, ctx: &mut Ctx) -> Result<(), GatewayError> {
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
        session: &mut Session,
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
    async fn list_models(&self, session: &mut Session, ctx: &mut Ctx) -> Result<(), GatewayError> {
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
