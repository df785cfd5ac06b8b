//! The `logging` phase's output: metrics, the one access-log line and, for API requests, the cost
//! record of a finished request.

use pingora::protocols::http::ServerSession;
use sluice_core::money::{Usd, UsdText};
use sluice_core::record::CostRecord;

use super::{Ctx, Gateway};
use crate::logging::key;

/// The client's address as its `Display` writes it; an IPv4 one (the common case) digit by digit on
/// the stack, without the formatting machinery.
enum ClientText {
    V4 { buf: [u8; ClientText::LONGEST], len: usize },
    Other(String),
}

impl ClientText {
    /// `255.255.255.255:65535`.
    const LONGEST: usize = 21;

    fn of(addr: &pingora::protocols::l4::socket::SocketAddr) -> Self {
        use pingora::protocols::l4::socket::SocketAddr;
        use std::io::Write;
        let SocketAddr::Inet(std::net::SocketAddr::V4(a)) = addr else {
            return Self::Other(addr.to_string());
        };
        let mut buf = [0u8; Self::LONGEST];
        let mut out = &mut buf[..];
        let [first, rest @ ..] = a.ip().octets();
        let mut digits = itoa::Buffer::new();
        let mut write = || -> std::io::Result<()> {
            out.write_all(digits.format(first).as_bytes())?;
            for octet in rest {
                out.write_all(b".")?;
                out.write_all(digits.format(octet).as_bytes())?;
            }
            out.write_all(b":")?;
            out.write_all(digits.format(a.port()).as_bytes())
        };
        let _ = write(); // cannot fail: the buffer holds the longest
        let len = Self::LONGEST - out.len();
        Self::V4 { buf, len }
    }

    fn as_str(&self) -> &str {
        match self {
            // Digits, dots and a colon only.
            Self::V4 { buf, len } => {
                std::str::from_utf8(buf.get(..*len).unwrap_or_default()).unwrap_or_default()
            }
            Self::Other(text) => text,
        }
    }
}

/// The model label of requests for a model that is no configured alias.
const UNKNOWN_MODEL: &str = "unknown";

pub fn record(gw: &Gateway, session: &ServerSession, ctx: &Ctx) {
    let core = &ctx.core;
    // A metric's model is a configured alias: a name a client sent that is no alias (answered
    // 404) counts as `unknown`, or every such name would stay in /metrics as series of its own.
    let model = match core.model.as_deref() {
        None => "",
        Some(m) => gw.router.routes.get_key_value(m).map_or(UNKNOWN_MODEL, |(alias, _)| alias.as_str()),
    };
    let target = core.target.as_ref().map_or("none", |t| t.name.as_str());
    // The label of a status is the code's own static text (no string per request).
    let code = http::StatusCode::from_u16(core.status).ok();
    let status = code.as_ref().map_or("0", http::StatusCode::as_str);
    let elapsed = core.started.elapsed();
    let overhead = ctx.overhead();
    let m = &gw.metrics;
    m.requests.with_label_values(&[ctx.route_label, model, target, status]).inc();
    m.latency.with_label_values(&[ctx.route_label, model]).observe(elapsed.as_secs_f64());
    if ctx.route_label.starts_with("/v1/") {
        m.overhead.observe(overhead.as_secs_f64());
        gw.ledger.submit(cost_record(ctx, elapsed));
    }
    if let Some(u) = &core.usage {
        m.tokens.with_label_values(&[model, target, "prompt"]).inc_by(u.prompt_tokens);
        m.tokens.with_label_values(&[model, target, "completion"]).inc_by(u.completion_tokens);
    }
    if let Some(cost) = core.cost {
        let team = core.identity.as_ref().map_or("", |i| i.team.as_str());
        m.cost.with_label_values(&[team, model]).inc_by(cost.0);
    }
    if core.attempts > 1 {
        m.retries.with_label_values(&[model]).inc_by(u64::from(core.attempts - 1));
    }
    let req = session.req_header();
    let identity = core.identity.as_ref();
    let client = session.client_addr().map(ClientText::of);
    crate::logging::access(|l| {
        l.str(key!("level"), "info")
            .str(key!("msg"), "access")
            .str(key!("request_id"), &core.request_id)
            .str(key!("method"), req.method.as_str())
            .str(
                key!("http_version"),
                match req.version {
                    http::Version::HTTP_2 => "HTTP/2.0",
                    http::Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
            )
            .str(key!("path"), req.uri.path())
            .num(key!("status"), u64::from(core.status))
            .opt_str(key!("model"), core.model.as_deref())
            .bool(key!("stream"), core.stream)
            .opt_str(key!("target"), core.target.as_ref().map(|t| t.name.as_str()))
            .num(key!("attempts"), u64::from(core.attempts))
            .millis(key!("duration_ms"), elapsed)
            .millis(key!("upstream_ms"), ctx.upstream_time)
            .opt_millis(key!("ttfb_ms"), ctx.ttfb)
            .num(key!("overhead_us"), u64::try_from(overhead.as_micros()).unwrap_or(u64::MAX))
            .opt_num(key!("prompt_tokens"), core.usage.map(|u| u.prompt_tokens))
            .opt_num(key!("completion_tokens"), core.usage.map(|u| u.completion_tokens))
            .opt_bool(key!("usage_estimated"), core.usage.map(|u| u.estimated))
            .opt_str(key!("cost_usd"), core.cost.map(|c| Usd(c).text()).as_ref().map(UsdText::as_str))
            .opt_str(key!("key_id"), identity.map(|i| i.key_id.as_str()))
            .opt_str(key!("team"), identity.map(|i| i.team.as_str()))
            .opt_str(key!("app"), identity.map(|i| i.app.as_str()))
            .opt_str(key!("error"), ctx.error.as_ref().map(|e| e.message.as_str()))
            .opt_str(key!("client"), client.as_ref().map(ClientText::as_str));
    });
}

/// A request whose header did not parse (answered 400 `malformed_http`): no method, path, key or
/// model to name, but a platform engineer still sees it — counted in `sluice_requests_total` under
/// the endpoint `malformed`, and one access line with its id, status, error and client (a client
/// that speaks something else to the port, or a scanner, shows here). No cost record: it reached no
/// API.
pub fn malformed(gw: &Gateway, session: &ServerSession, request_id: &str) {
    gw.metrics.requests.with_label_values(&["malformed", "", "none", "400"]).inc();
    let client = session.client_addr().map(ClientText::of);
    crate::logging::access(|l| {
        l.str(key!("level"), "info")
            .str(key!("msg"), "access")
            .str(key!("request_id"), request_id)
            .num(key!("status"), 400)
            .str(key!("error"), super::respond::MALFORMED)
            .opt_str(key!("client"), client.as_ref().map(ClientText::as_str));
    });
}

/// The ledger's record of an API request: whatever its outcome, unauthenticated ones included.
fn cost_record(ctx: &Ctx, elapsed: std::time::Duration) -> CostRecord {
    let core = &ctx.core;
    let identity = core.identity.as_ref();
    let target = core.target.as_ref();
    let usage = core.usage.unwrap_or_default();
    let owned = |s: &String| s.clone();
    CostRecord {
        id: crate::id::random("rec_"),
        request_id: core.request_id.clone(),
        ts_us: core
            .received_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        org: identity.map(|i| owned(&i.org)),
        team: identity.map(|i| owned(&i.team)),
        app: identity.map(|i| owned(&i.app)),
        key_id: identity.map(|i| owned(&i.key_id)),
        user: identity.and_then(|i| i.user.clone()),
        endpoint: core.endpoint.map_or("other", |e| e.path()).into(),
        model: core.model.clone(),
        provider: target.map(|t| owned(&t.provider)),
        target: target.map(|t| owned(&t.name)),
        upstream_model: target.map(|t| owned(&t.upstream_model)),
        region: target.and_then(|t| t.region.clone()),
        status: core.status,
        error: core.error_code.clone(),
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cached_tokens: usage.cached_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        usage_estimated: usage.estimated,
        cost: core.cost.unwrap_or_default(),
        latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        attempts: core.attempts,
        stream: core.stream,
        cache: "miss".into(),
        pii: core
            .extensions
            .get::<sluice_plugins::pii::Findings>()
            .map(|f| f.counts.iter().map(|(k, n)| (k.clone(), *n as u64)).collect())
            .unwrap_or_default(),
        request_sha256: ctx.request_sha256.clone(),
        content: core.extensions.get::<sluice_plugins::audit::AuditContent>().map(|c| c.0.clone()),
    }
}

#[cfg(test)]
mod tests {
    use pingora::protocols::l4::socket::SocketAddr;

    #[test]
    fn a_client_address_is_written_as_its_display_writes_it() {
        for addr in ["255.255.255.255:65535", "0.0.0.0:0", "10.1.22.133:8080", "127.0.0.1:9", "[::1]:443"] {
            let addr = SocketAddr::Inet(addr.parse().unwrap());
            assert_eq!(super::ClientText::of(&addr).as_str(), addr.to_string());
        }
    }
}
