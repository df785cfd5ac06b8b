//! Plugin `limits`: requests and tokens per minute, per org, team and app.
//!
//! Before a request goes upstream, one reservation charges every level that has a limit — one
//! request and the token estimate (prompt + `max_tokens`, or the configured default) — all or
//! nothing, in one store call (GCRA, see `sluice_core::limits`). A refused reservation is a 429
//! naming the level and the limit, with `Retry-After`. Every answer carries OpenAI's rate-limit
//! headers for the tightest level. When the request ends, the token reservation is corrected to
//! the real usage. If the store fails, the request goes through (fail-open) and the failure is
//! logged.

mod config;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::ctx::Endpoint;
use sluice_core::limits::{BucketState, Charge, LimitStore};
use sluice_core::wire::Request;
use sluice_core::{ErrorKind, Flow, GatewayError, Identity, Plugin, RequestCtx};

pub use config::{LimitsConfig, Rate};

pub const NAME: &str = "limits";

const PERIOD: Duration = Duration::from_secs(60);

pub struct Limits {
    config: LimitsConfig,
    store: Arc<dyn LimitStore>,
}

/// What a request reserved, kept for reconciliation at the end.
#[derive(Debug, Clone)]
struct Reserved {
    token_buckets: Vec<(String, u64)>,
    estimate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Requests,
    Tokens,
}

impl Limits {
    pub fn new(config: LimitsConfig, store: Arc<dyn LimitStore>) -> Self {
        Self { config, store }
    }

    /// The levels with a limit for this identity: (level name, owner id, rate).
    fn levels<'a>(&self, who: &'a Identity) -> Vec<(&'static str, &'a str, Rate)> {
        [
            ("org", who.org.as_str(), self.config.org),
            ("team", who.team.as_str(), self.config.team),
            ("app", who.app.as_str(), self.config.app),
        ]
        .into_iter()
        .filter_map(|(level, id, default)| {
            let rate = self.config.overrides.get(&format!("{level}:{id}")).copied().or(default)?;
            Some((level, id, rate))
        })
        .collect()
    }
}

#[async_trait]
impl Plugin for Limits {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn on_request(&self, ctx: &mut RequestCtx, request: &mut Request) -> Result<Flow, GatewayError> {
        if request.endpoint == Endpoint::Models {
            return Ok(Flow::Continue);
        }
        let Some(who) = ctx.identity.clone() else { return Ok(Flow::Continue) };
        let estimate = request.estimated_prompt_tokens()
            + request.max_output_tokens.unwrap_or(self.config.default_max_tokens);
        let mut charges = Vec::new();
        let mut described = Vec::new();
        for (level, id, rate) in self.levels(&who) {
            // Hash-tagged by org, so that one request's keys share a Redis Cluster slot.
            let key = |unit: &str| format!("{{org:{}}}:{level}:{id}:{unit}", who.org);
            if let Some(rpm) = rate.rpm {
                charges.push(Charge { key: key("rpm"), limit: rpm, period: PERIOD, cost: 1 });
                described.push((level, id.to_owned(), Unit::Requests));
            }
            if let Some(tpm) = rate.tpm {
                charges.push(Charge { key: key("tpm"), limit: tpm, period: PERIOD, cost: estimate });
                described.push((level, id.to_owned(), Unit::Tokens));
            }
        }
        if charges.is_empty() {
            return Ok(Flow::Continue);
        }
        let states = match self.store.reserve(&charges).await {
            Ok(s) => s,
            Err(e) => {
                log::warn!(
                    "limits: {} store failed, letting request {} through: {e}",
                    self.store.name(),
                    ctx.request_id
                );
                return Ok(Flow::Continue);
            }
        };
        headers(ctx, &charges, &states, &described);
        if let Some(i) = states.iter().position(|s| !s.allowed) {
            let (level, id, unit) = &described[i];
            let (what, short) = match unit {
                Unit::Requests => ("requests per minute", "RPM"),
                Unit::Tokens => ("tokens per minute", "TPM"),
            };
            let wait = states[i].retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let requested =
                if *unit == Unit::Tokens { format!(", requested {estimate}") } else { String::new() };
            return Err(GatewayError::new(
                ErrorKind::RateLimited,
                format!(
                    "Rate limit reached for {level} `{id}` on {what} ({short}): limit {}{requested}. Please try again in {wait}s.",
                    charges[i].limit
                ),
            )
            .with_code("rate_limit_exceeded")
            .with_retry_after(wait));
        }
        let token_buckets = charges
            .iter()
            .zip(&described)
            .filter(|(_, (_, _, unit))| *unit == Unit::Tokens)
            .map(|(c, _)| (c.key.clone(), c.limit))
            .collect();
        ctx.extensions.insert(Reserved { token_buckets, estimate });
        Ok(Flow::Continue)
    }

    async fn on_complete(&self, ctx: &RequestCtx) {
        let Some(reserved) = ctx.extensions.get::<Reserved>() else { return };
        let used = ctx.usage.map_or(0, |u| u.total());
        let delta = used as i64 - reserved.estimate as i64;
        if delta == 0 {
            return;
        }
        for (key, limit) in &reserved.token_buckets {
            if let Err(e) = self.store.adjust(key, *limit, PERIOD, delta).await {
                log::warn!("limits: cannot reconcile {key}: {e}");
            }
        }
    }
}

/// OpenAI's rate-limit headers, for the tightest level of each unit.
fn headers(
    ctx: &mut RequestCtx,
    charges: &[Charge],
    states: &[BucketState],
    described: &[(&str, String, Unit)],
) {
    for (unit, suffix) in [(Unit::Requests, "requests"), (Unit::Tokens, "tokens")] {
        let tightest = charges
            .iter()
            .zip(states)
            .zip(described)
            .filter(|(_, (_, _, u))| *u == unit)
            .min_by_key(|((_, s), _)| s.remaining);
        let Some(((charge, state), _)) = tightest else { continue };
        let (limit, remaining, reset) = match suffix {
            "requests" => {
                ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
            }
            _ => ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
        };
        ctx.response_headers.push((limit, charge.limit.to_string()));
        ctx.response_headers.push((remaining, state.remaining.to_string()));
        ctx.response_headers.push((reset, format!("{:.3}s", state.reset.as_secs_f64())));
        if unit == Unit::Requests {
            ctx.response_headers.push(("x-ratelimit-remaining", state.remaining.to_string()));
            ctx.response_headers.push(("x-ratelimit-reset", state.reset.as_secs_f64().ceil().to_string()));
        }
    }
}
