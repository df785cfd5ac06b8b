//! The `logging` phase's output: metrics and the one access-log line of a finished request.

use pingora::Error;
use pingora::proxy::Session;
use serde::Serialize;

use super::{Ctx, Gateway};

/// One access-log line. Serialized straight from borrowed fields: no map is built per request.
#[derive(Serialize)]
struct AccessLine<'a> {
    ts: String,
    level: &'static str,
    msg: &'static str,
    request_id: &'a str,
    method: &'a str,
    http_version: &'static str,
    path: &'a str,
    status: u16,
    model: Option<&'a str>,
    stream: bool,
    target: Option<&'a str>,
    attempts: u32,
    duration_ms: f64,
    upstream_ms: f64,
    ttfb_ms: Option<f64>,
    overhead_us: u64,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    usage_estimated: Option<bool>,
    key_id: Option<&'a str>,
    team: Option<&'a str>,
    app: Option<&'a str>,
    error: Option<&'a str>,
    client: Option<String>,
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

pub fn record(gw: &Gateway, session: &Session, e: Option<&Error>, ctx: &Ctx) {
    let core = &ctx.core;
    let model = core.model.as_deref().unwrap_or("");
    let target = core.target.as_ref().map_or("none", |t| t.name.as_str());
    let status = core.status.to_string();
    let elapsed = core.started.elapsed();
    let overhead = ctx.overhead();
    let m = &gw.metrics;
    m.requests.with_label_values(&[ctx.route_label, model, target, &status]).inc();
    m.latency.with_label_values(&[ctx.route_label, model]).observe(elapsed.as_secs_f64());
    if ctx.route_label.starts_with("/v1/") {
        m.overhead.observe(overhead.as_secs_f64());
    }
    if let Some(u) = &core.usage {
        m.tokens.with_label_values(&[model, target, "prompt"]).inc_by(u.prompt_tokens);
        m.tokens.with_label_values(&[model, target, "completion"]).inc_by(u.completion_tokens);
    }
    if core.attempts > 1 {
        m.retries.with_label_values(&[model]).inc_by(u64::from(core.attempts - 1));
    }
    let req = session.req_header();
    let identity = core.identity.as_ref();
    let line = AccessLine {
        ts: crate::logging::now_rfc3339(),
        level: "info",
        msg: "access",
        request_id: &core.request_id,
        method: req.method.as_str(),
        http_version: match req.version {
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        path: req.uri.path(),
        status: core.status,
        model: core.model.as_deref(),
        stream: core.stream,
        target: core.target.as_ref().map(|t| t.name.as_str()),
        attempts: core.attempts,
        duration_ms: ms(elapsed),
        upstream_ms: ms(ctx.upstream_time),
        ttfb_ms: ctx.ttfb.map(ms),
        overhead_us: overhead.as_micros() as u64,
        prompt_tokens: core.usage.map(|u| u.prompt_tokens),
        completion_tokens: core.usage.map(|u| u.completion_tokens),
        usage_estimated: core.usage.map(|u| u.estimated),
        key_id: identity.map(|i| i.key_id.as_str()),
        team: identity.map(|i| i.team.as_str()),
        app: identity.map(|i| i.app.as_str()),
        error: ctx.error.as_ref().map(|e| e.message.as_str()).or(e.map(|_| "proxy error")),
        client: session.client_addr().map(|a| a.to_string()),
    };
    crate::logging::access(&line);
}
