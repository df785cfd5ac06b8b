//! The contract of rate-limit state: the `limits` plugin decides, a store keeps the counters.
//!
//! Every limit is a GCRA (generic cell rate algorithm) bucket: one number per key, the theoretical
//! arrival time (TAT). A limit of `n` per `period` spends `period / n` of TAT per unit (a request, or
//! a token) and admits while `TAT - now <= period`, so a full period's worth may arrive at once and
//! then it refills smoothly. GCRA needs one value per key and one atomic read-modify-write, which is
//! what makes checking every level (org, team, app; requests and tokens) in one Redis script cheap,
//! and it cannot be gamed at window edges the way fixed windows can. Refunds (a reservation larger
//! than the real usage) move the TAT back.

use std::time::Duration;

use async_trait::async_trait;

/// One bucket to charge: `cost` units against `limit` per `period`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Store key, e.g. `{org:acme}:team:payments:tpm` (hash-tagged by org for Redis Cluster).
    pub key: String,
    pub limit: u64,
    pub period: Duration,
    pub cost: u64,
}

/// A correction of one bucket: `delta` units more (or fewer, when negative) than were reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub key: String,
    pub limit: u64,
    pub period: Duration,
    pub delta: i64,
    /// Corrects a reservation the store's stand-in made ([`BucketState::fallback`]).
    pub fallback: bool,
}

/// The state of one bucket after a decision, for headers and 429 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    pub allowed: bool,
    /// Units still available now.
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
    /// When refused: how long until this charge would fit.
    pub retry_after: Duration,
    /// Decided by the store's stand-in (the in-process limiter while Redis does not answer), not
    /// by the store itself: the corrections of this reservation go to the stand-in as well.
    pub fallback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Checks every charge and, only if all fit, takes them all: atomically across the charges.
    /// Returns one state per charge, in order.
    async fn reserve(&self, charges: &[Charge]) -> Result<Vec<BucketState>, StoreError>;

    /// Gives back (negative `delta`) or takes more (positive) of earlier reservations, without
    /// refusing: the request already ran. One store call for all of them.
    async fn adjust(&self, adjustments: &[Adjustment]) -> Result<(), StoreError>;

    /// A short name for logs and `/health` (`memory`, `redis`).
    fn name(&self) -> &'static str;
}

/// Waiting, for plugins that must (a `queue` burst policy): the engine's timer, so plugins need no
/// runtime of their own.
#[async_trait]
pub trait Timer: Send + Sync {
    async fn sleep(&self, d: Duration);
}

/// GCRA on one bucket, in milliseconds: the new TAT and the state, given the stored TAT (`None` for
/// an empty bucket). The same arithmetic runs in the Redis script.
pub fn gcra(tat_ms: Option<f64>, now_ms: f64, c: &Charge) -> (f64, BucketState) {
    let period_ms = c.period.as_secs_f64() * 1000.0;
    let per_unit = period_ms / c.limit.max(1) as f64;
    let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
    let new_tat = tat + per_unit * c.cost as f64;
    let allowed = new_tat - now_ms <= period_ms;
    let kept = if allowed { new_tat } else { tat };
    let remaining = ((period_ms - (kept - now_ms)) / per_unit).floor().max(0.0) as u64;
    let retry_after = if allowed { 0.0 } else { new_tat - now_ms - period_ms };
    let state = BucketState {
        allowed,
        remaining: remaining.min(c.limit),
        reset: Duration::from_secs_f64(((kept - now_ms).max(0.0)) / 1000.0),
        retry_after: Duration::from_secs_f64(retry_after.max(0.0) / 1000.0),
        fallback: false,
    };
    (kept, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(cost: u64) -> Charge {
        Charge { key: "k".into(), limit: 10, period: Duration::from_secs(60), cost }
    }

    #[test]
    fn a_full_period_is_admitted_at_once_then_it_refills_smoothly() {
        let mut tat = None;
        for i in 0..10 {
            let (t, s) = gcra(tat, 0.0, &charge(1));
            assert!(s.allowed, "request {i}");
            assert_eq!(s.remaining, 9 - i);
            tat = Some(t);
        }
        let (_, s) = gcra(tat, 0.0, &charge(1));
        assert!(!s.allowed);
        assert_eq!(s.retry_after, Duration::from_secs(6), "one unit refills every 6 s");
        let (_, s) = gcra(tat, 6_000.0, &charge(1));
        assert!(s.allowed);
    }

    #[test]
    fn a_charge_larger_than_what_is_left_is_refused_whole() {
        let (t, _) = gcra(None, 0.0, &charge(8));
        let (t2, s) = gcra(Some(t), 0.0, &charge(3));
        assert!(!s.allowed);
        assert_eq!(t2, t, "a refusal takes nothing");
        assert_eq!(s.remaining, 2);
    }
}
