//! Plugin `budgets`: daily and monthly spending budgets per team and per key.
//!
//! Before a request goes upstream, the spend counters of its team and key for the current UTC day
//! and month are read (one store call). A counter at or above its budget refuses the request with
//! OpenAI's `insufficient_quota` (429, `Retry-After` until the period resets) — unless the team is in
//! observe mode, where the refusal is only logged and reported in `x-sluice-budget-observe`. Every
//! answer carries `x-sluice-budget-remaining-usd` (the tightest budget), and
//! `x-sluice-budget-warning` once a budget passes `warn_at` percent. When the request ends, its cost
//! is added to every counter; crossing `warn_at` and reaching 100 % each send one notice per period
//! (the gateway's webhook), across instances.
//!
//! The check reads spend before the request runs, so concurrent requests near the limit can each
//! pass and overshoot by what they cost together; a budget is a spending cap, not a reservation.

mod config;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::json;
use sluice_core::budgets::{Counter, Dimension, Notice, Notifier, SpendScope, SpendStore};
use sluice_core::calendar::{DAY_US, date, month_of, unix_us};
use sluice_core::ctx::Endpoint;
use sluice_core::money::Micros;
use sluice_core::wire::Request;
use sluice_core::{ErrorKind, Flow, GatewayError, Identity, Phases, Plugin, RequestCtx};

pub use config::{Budget, BudgetsConfig};

pub const NAME: &str = "budgets";

/// A parsed budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Caps {
    daily: Option<Micros>,
    monthly: Option<Micros>,
}

pub struct Budgets {
    warn_at: u64,
    team: Caps,
    key: Caps,
    teams: std::collections::HashMap<String, Caps>,
    keys: std::collections::HashMap<String, Caps>,
    observe: std::collections::HashSet<String>,
    store: Arc<dyn SpendStore>,
    notifier: Arc<dyn Notifier>,
    /// The clock; tests move it.
    now: fn() -> SystemTime,
}

/// One budget that applies to a request.
#[derive(Debug, Clone)]
struct Applied {
    counter: Counter,
    cap: Micros,
    period: &'static str,
    period_label: String,
    owner: String,
    dimension: Dimension,
    /// When the period resets.
    resets_us: i64,
}

impl Applied {
    /// e.g. "team `payments` daily budget" (spelled only when a message needs it).
    fn what(&self) -> String {
        let label = match self.dimension {
            Dimension::Team => "team",
            Dimension::Key => "key",
        };
        format!("{label} `{}` {} budget", self.owner, self.period)
    }
}

/// What on_request found, for on_complete.
#[derive(Debug, Clone)]
struct Checked(std::sync::Arc<Vec<Applied>>);

impl Budgets {
    pub fn new(
        config: &BudgetsConfig,
        store: Arc<dyn SpendStore>,
        notifier: Arc<dyn Notifier>,
    ) -> Result<Self, String> {
        if config.warn_at == 0 || config.warn_at > 100 {
            return Err("warn_at: a percentage from 1 to 100".into());
        }
        let caps = |b: &Budget, key: &str| -> Result<Caps, String> {
            let parse = |field: &str, v: &Option<String>| {
                v.as_deref()
                    .map(|t| Micros::parse_usd(t).map_err(|e| format!("{key}.{field}: {e}")))
                    .transpose()
            };
            Ok(Caps { daily: parse("daily", &b.daily)?, monthly: parse("monthly", &b.monthly)? })
        };
        let mut teams = std::collections::HashMap::new();
        for (id, b) in &config.teams {
            teams.insert(id.clone(), caps(b, &format!("teams.{id}"))?);
        }
        let mut keys = std::collections::HashMap::new();
        for (id, b) in &config.keys {
            keys.insert(id.clone(), caps(b, &format!("keys.{id}"))?);
        }
        Ok(Self {
            warn_at: u64::from(config.warn_at),
            team: config.team.as_ref().map(|b| caps(b, "team")).transpose()?.unwrap_or_default(),
            key: config.key.as_ref().map(|b| caps(b, "key")).transpose()?.unwrap_or_default(),
            teams,
            keys,
            observe: config.observe.iter().cloned().collect(),
            store,
            notifier,
            now: SystemTime::now,
        })
    }

    #[cfg(test)]
    fn with_clock(mut self, now: fn() -> SystemTime) -> Self {
        self.now = now;
        self
    }

    /// Every budget that applies to this caller now.
    fn applied(&self, who: &Identity) -> Vec<Applied> {
        let now_us = unix_us((self.now)());
        let today = now_us.div_euclid(DAY_US);
        let (month_start, month_end) = month_of(today);
        // The day's and the month's names, spelled once for every budget below.
        let day = date(today);
        let month = date(month_start).get(..7).unwrap_or_default().to_owned();
        let (day_stamp, month_stamp) = (day.replace('-', ""), month.replace('-', ""));
        let mut out = Vec::with_capacity(4);
        let owners = [
            (
                Dimension::Team,
                "team",
                who.team.as_str(),
                self.teams.get(&who.team).copied().unwrap_or(self.team),
            ),
            (
                Dimension::Key,
                "key",
                who.key_id.as_str(),
                self.keys.get(&who.key_id).copied().unwrap_or(self.key),
            ),
        ];
        for (dimension, kind, owner, caps) in owners {
            let periods = [
                ("daily", caps.daily, today, today + 1, &day_stamp, &day),
                ("monthly", caps.monthly, month_start, month_end, &month_stamp, &month),
            ];
            for (period, cap, from, to, stamp, label) in periods {
                let Some(cap) = cap else { continue };
                let resets_us = to * DAY_US;
                let ttl =
                    Duration::from_micros((resets_us - now_us).max(0) as u64) + Duration::from_secs(86_400);
                out.push(Applied {
                    counter: Counter {
                        key: ["{org:", &who.org, "}:spend:", kind, ":", owner, ":", period, ":", stamp]
                            .concat(),
                        ttl,
                        scope: SpendScope {
                            dimension,
                            owner: owner.to_owned(),
                            from_us: from * DAY_US,
                            to_us: resets_us,
                        },
                    },
                    cap,
                    period,
                    period_label: label.clone(),
                    owner: owner.to_owned(),
                    dimension,
                    resets_us,
                });
            }
        }
        out
    }

    fn notice(&self, who: &Identity, a: &Applied, spent: Micros, event: &'static str) -> Notice {
        let pct = percent(spent, a.cap);
        let text = match event {
            "budget.exhausted" => format!(
                "Sluice: {} is spent ({} of {} for {}); requests are refused until it resets.",
                a.what(),
                spent,
                a.cap,
                a.period_label
            ),
            _ => {
                format!(
                    "Sluice: {} is {pct}% used ({} of {} for {}).",
                    a.what(),
                    spent,
                    a.cap,
                    a.period_label
                )
            }
        };
        Notice {
            event,
            text,
            details: json!({
                "org": who.org,
                "dimension": match a.dimension { Dimension::Team => "team", Dimension::Key => "key" },
                "owner": a.owner,
                "period": a.period,
                "period_label": a.period_label,
                "spent_usd": spent.usd(),
                "budget_usd": a.cap.usd(),
                "percent": pct,
                "observe": self.observe.contains(&who.team),
            }),
        }
    }
}

fn percent(spent: Micros, cap: Micros) -> u64 {
    if cap.0 == 0 {
        return 100;
    }
    (u128::from(spent.0) * 100 / u128::from(cap.0)).min(u128::from(u64::MAX)) as u64
}

#[async_trait]
impl Plugin for Budgets {
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
        // Shared with the request's `Checked` mark below, not copied into it.
        let applied = std::sync::Arc::new(self.applied(&who));
        if applied.is_empty() {
            return Ok(Flow::Continue);
        }
        let counters: Vec<Counter> = applied.iter().map(|a| a.counter.clone()).collect();
        let spent = match self.store.spent(&counters).await {
            Ok(s) if s.len() == applied.len() => s,
            Ok(_) | Err(_) => {
                log::warn!(
                    "budgets: {} store failed, request {} goes through unchecked",
                    self.store.name(),
                    ctx.request_id
                );
                return Ok(Flow::Continue);
            }
        };
        let observe = self.observe.contains(&who.team);
        let remaining =
            applied.iter().zip(&spent).map(|(a, s)| a.cap.0.saturating_sub(s.0)).min().unwrap_or(0);
        ctx.response_headers.push(("x-sluice-budget-remaining-usd", Micros(remaining).usd()));
        if let Some((a, s)) = applied
            .iter()
            .zip(&spent)
            .filter(|(a, s)| percent(**s, a.cap) >= self.warn_at)
            .max_by_key(|(a, s)| percent(**s, a.cap))
        {
            ctx.response_headers.push((
                "x-sluice-budget-warning",
                format!("{} {}% used ({} of {})", a.what(), percent(*s, a.cap), s, a.cap),
            ));
        }
        ctx.extensions.insert(Checked(applied.clone()));
        let Some((a, s)) = applied.iter().zip(&spent).find(|(a, s)| s.0 >= a.cap.0) else {
            return Ok(Flow::Continue);
        };
        let message = format!(
            "You exceeded your {}: {} of {} spent for {}. Requests are refused until it resets at {}T00:00:00Z.",
            a.what(),
            s,
            a.cap,
            a.period_label,
            date(a.resets_us.div_euclid(DAY_US))
        );
        if observe {
            log::info!("budgets: observe mode, request {} would be refused: {message}", ctx.request_id);
            ctx.response_headers
                .push(("x-sluice-budget-observe", format!("would refuse: {} spent", a.what())));
            return Ok(Flow::Continue);
        }
        let wait = ((a.resets_us - unix_us((self.now)())).max(0) as u64).div_ceil(1_000_000).max(1);
        Err(GatewayError::new(ErrorKind::InsufficientQuota, message)
            .with_code("insufficient_quota")
            .with_retry_after(wait))
    }

    async fn on_complete(&self, ctx: &RequestCtx) {
        let (Some(Checked(applied)), Some(who)) = (ctx.extensions.get::<Checked>(), ctx.identity.as_ref())
        else {
            return;
        };
        let Some(cost) = ctx.cost.filter(|c| c.0 > 0) else { return };
        let counters: Vec<Counter> = applied.iter().map(|a| a.counter.clone()).collect();
        let totals = match self.store.add(&counters, cost).await {
            Ok(t) => t,
            Err(e) => {
                log::error!(
                    "budgets: cannot add {cost} of request {} to the spend counters: {e}",
                    ctx.request_id
                );
                return;
            }
        };
        for (a, total) in applied.iter().zip(totals) {
            let event = if total.0 >= a.cap.0 {
                "budget.exhausted"
            } else if percent(total, a.cap) >= self.warn_at {
                "budget.warning"
            } else {
                continue;
            };
            match self.store.first_time(&format!("{}:{event}", a.counter.key), a.counter.ttl).await {
                Ok(true) => self.notifier.notify(self.notice(who, a, total, event)),
                Ok(false) => {}
                Err(e) => log::warn!("budgets: cannot mark the {event} notice of {}: {e}", a.what()),
            }
        }
    }
}
