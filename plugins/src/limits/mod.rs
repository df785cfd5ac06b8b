//! Plugin `limits`: requests and tokens per minute, per org, team and app.
//!
//! Before a request goes upstream, one reservation charges every level that has a limit — one
//! request and the token estimate (prompt + `max_tokens`, or the configured default) — all or
//! nothing, in one store call (GCRA, see `sluice_core::limits`). A refused reservation is a 429
//! naming the level and the limit, with `Retry-After`. Every answer carries OpenAI's rate-limit
//! headers for the tightest level. When the request ends, the token reservation is corrected to
//! the real usage.
//!
//! Each level has a burst policy: `reject` (429 at once), `queue` (wait — on the engine's timer —
//! until the refused buckets refill, if that fits `queue_max_wait`) or `borrow` (drop the level's
//! own charge while a parent level with a limit of the same unit still admits the request). If the
//! store fails, `on_store_failure` decides: `local`/`open` let the request through (the Redis
//! store answers `local` with its in-process limiter before it ever fails), `closed` refuses it
//! with a 503.

mod config;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sluice_core::ctx::Endpoint;
use sluice_core::limits::{Adjustment, BucketState, Charge, LimitStore, Timer};
use sluice_core::wire::Request;
use sluice_core::{ErrorKind, Flow, GatewayError, Identity, Phases, Plugin, RequestCtx};

pub use config::{Burst, BurstConfig, FailMode, LimitsConfig, Rate};

pub const NAME: &str = "limits";

const PERIOD: Duration = Duration::from_secs(60);

pub struct Limits {
    config: LimitsConfig,
    store: Arc<dyn LimitStore>,
    timer: Arc<dyn Timer>,
    queue_max_wait: Duration,
}

/// Charges taken, their (level, owner, unit), and their states.
type Reservation = (Vec<Charge>, Vec<(&'static str, String, Unit)>, Vec<BucketState>);

/// Whether `parent` is above `level` in org → team → app.
fn is_parent(parent: &str, level: &str) -> bool {
    matches!((parent, level), ("org", "team" | "app") | ("team", "app"))
}

/// What a request reserved, kept for reconciliation at the end.
#[derive(Debug, Clone)]
struct Reserved {
    token_buckets: Vec<(String, u64)>,
    estimate: u64,
    /// Reserved by the store's stand-in, which gets the corrections too.
    fallback: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Requests,
    Tokens,
}

impl Limits {
    /// `queue_max_wait` is `config.queue_max_wait`, parsed by the caller (durations are the
    /// engine's format).
    pub fn new(
        config: LimitsConfig,
        store: Arc<dyn LimitStore>,
        timer: Arc<dyn Timer>,
        queue_max_wait: Duration,
    ) -> Self {
        Self { config, store, timer, queue_max_wait }
    }

    fn policy(&self, level: &str, observe: bool) -> Burst {
        if observe {
            // Observe mode never waits or borrows: it only reports what would happen.
            return Burst::Reject;
        }
        match level {
            "org" => self.config.burst.org,
            "team" => self.config.burst.team,
            _ => self.config.burst.app,
        }
    }

    /// Reserves the charges under the levels' burst policies. Returns the charges finally taken
    /// (a borrowing level's own charge is left out), their descriptions and states; a refusal is a
    /// state with `allowed == false`. `None`: the store failed and the request goes on unlimited.
    async fn reserve(
        &self,
        ctx: &RequestCtx,
        mut charges: Vec<Charge>,
        mut described: Vec<(&'static str, String, Unit)>,
    ) -> Result<Option<Reservation>, GatewayError> {
        let deadline = Instant::now() + self.queue_max_wait;
        loop {
            let states = match self.store.reserve(&charges).await {
                Ok(s) if s.len() == charges.len() => s,
                Ok(_) | Err(_) => {
                    return match self.config.on_store_failure {
                        FailMode::Closed => {
                            log::error!(
                                "limits: {} store failed; refusing request {}",
                                self.store.name(),
                                ctx.request_id
                            );
                            Err(GatewayError::new(
                                ErrorKind::Unavailable,
                                "Rate limits cannot be checked right now, and this gateway refuses unchecked requests; please retry shortly.",
                            )
                            .with_retry_after(1))
                        }
                        FailMode::Open | FailMode::Local => {
                            log::warn!(
                                "limits: {} store failed, letting request {} through",
                                self.store.name(),
                                ctx.request_id
                            );
                            Ok(None)
                        }
                    };
                }
            };
            let refused: Vec<usize> = (0..states.len()).filter(|i| !states[*i].allowed).collect();
            if refused.is_empty() {
                return Ok(Some((charges, described, states)));
            }
            let observe = ctx.identity.as_ref().is_some_and(|w| self.config.observe.contains(&w.team));
            let policies: Vec<Burst> =
                refused.iter().map(|i| self.policy(described[*i].0, observe)).collect();
            if policies.contains(&Burst::Reject) {
                return Ok(Some((charges, described, states)));
            }
            // Borrow: a refused level whose parents (same unit) still have room goes over its own limit.
            let borrowing: Vec<usize> = refused
                .iter()
                .zip(&policies)
                .filter(|(i, p)| {
                    **p == Burst::Borrow && {
                        let (level, _, unit) = &described[**i];
                        described.iter().any(|(l, _, u)| u == unit && is_parent(l, level))
                    }
                })
                .map(|(i, _)| *i)
                .collect();
            if !borrowing.is_empty() {
                for i in borrowing.into_iter().rev() {
                    log::debug!(
                        "limits: request {} borrows from the parents of {} `{}`",
                        ctx.request_id,
                        described[i].0,
                        described[i].1
                    );
                    charges.remove(i);
                    described.remove(i);
                }
                if charges.is_empty() {
                    return Ok(Some((charges, described, Vec::new())));
                }
                continue;
            }
            // Queue: every refused level queues; wait for the slowest if it fits the bound.
            let all_queue = policies.iter().all(|p| *p == Burst::Queue);
            let wait = refused.iter().map(|i| states[*i].retry_after).max().unwrap_or_default();
            if all_queue && Instant::now() + wait <= deadline {
                self.timer.sleep(wait.max(Duration::from_millis(1))).await;
                continue;
            }
            return Ok(Some((charges, described, states)));
        }
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
            let rate = if self.config.overrides.is_empty() {
                default
            } else {
                self.config.overrides.get(&[level, ":", id].concat()).copied().or(default)
            }?;
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

    fn phases(&self) -> Phases {
        Phases { headers: false, request: true, complete: true }
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
            let key = |unit: &str| ["{org:", &who.org, "}:", level, ":", id, ":", unit].concat();
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
        let Some((charges, described, states)) = self.reserve(ctx, charges, described).await? else {
            return Ok(Flow::Continue);
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
            if self.config.observe.contains(&who.team) {
                // Observe mode: evaluated, logged and reported; the request goes on (nothing was
                // reserved for it, so there is nothing to correct later).
                log::info!(
                    "limits: observe mode, request {} would be refused: {level} `{id}` {short} limit {}{requested}",
                    ctx.request_id,
                    charges[i].limit
                );
                ctx.response_headers.push((
                    "x-sluice-ratelimit-observe",
                    format!("would refuse: {level} `{id}` {short} limit {}", charges[i].limit),
                ));
                return Ok(Flow::Continue);
            }
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
        let fallback = states.iter().any(|s| s.fallback);
        ctx.extensions.insert(Reserved { token_buckets, estimate, fallback });
        Ok(Flow::Continue)
    }

    async fn on_complete(&self, ctx: &RequestCtx) {
        let Some(reserved) = ctx.extensions.get::<Reserved>() else { return };
        let used = ctx.usage.map_or(0, |u| u.total());
        let delta = used as i64 - reserved.estimate as i64;
        if delta == 0 {
            return;
        }
        let adjustments: Vec<Adjustment> = reserved
            .token_buckets
            .iter()
            .map(|(key, limit)| Adjustment {
                key: key.clone(),
                limit: *limit,
                period: PERIOD,
                delta,
                fallback: reserved.fallback,
            })
            .collect();
        if let Err(e) = self.store.adjust(&adjustments).await {
            log::warn!("limits: cannot reconcile the token reservation of request {}: {e}", ctx.request_id);
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
        // Digit by digit (`itoa`): every limited request carries five to eight of these.
        let number = |n: u64| itoa::Buffer::new().format(n).to_owned();
        ctx.response_headers.push((limit, number(charge.limit)));
        ctx.response_headers.push((remaining, number(state.remaining)));
        ctx.response_headers.push((reset, sluice_core::duration::seconds_text(state.reset) + "s"));
        if unit == Unit::Requests {
            ctx.response_headers.push(("x-ratelimit-remaining", number(state.remaining)));
            // Whole seconds, rounded up.
            let whole = state.reset.as_secs() + u64::from(state.reset.subsec_nanos() > 0);
            ctx.response_headers.push(("x-ratelimit-reset", number(whole)));
        }
    }
}
