//! The contract of spend state and notices: the `budgets` plugin decides, a store keeps the
//! counters, a notifier tells people.
//!
//! A spend counter is one integer of micro-dollars per owner and period (`team payments, day
//! 2026-11-30`), created on first use with an expiry past the period's end. The store may rebuild a
//! counter it lost (Redis restarted) from the ledger, which is the truth; [`SpendScope`] says what
//! the counter sums so it can.

use std::time::Duration;

use async_trait::async_trait;

use crate::limits::StoreError;
use crate::money::Micros;

/// What a counter sums: the cost of every record of `owner` (a team or a key id) in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendScope {
    pub dimension: Dimension,
    pub owner: String,
    /// Microseconds since the Unix epoch (UTC).
    pub from_us: i64,
    pub to_us: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Team,
    Key,
}

/// One spend counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// Store key, hash-tagged by org like the limits' keys.
    pub key: String,
    /// How long the counter must live (to the end of its period, plus a margin).
    pub ttl: Duration,
    pub scope: SpendScope,
}

#[async_trait]
pub trait SpendStore: Send + Sync {
    /// The current value of each counter, in order (0 for one never charged).
    async fn spent(&self, counters: &[Counter]) -> Result<Vec<Micros>, StoreError>;

    /// Adds `amount` to every counter; returns their new values, in order.
    async fn add(&self, counters: &[Counter], amount: Micros) -> Result<Vec<Micros>, StoreError>;

    /// True the first time `key` is marked within `ttl`, across instances: for notices sent once
    /// per period.
    async fn first_time(&self, key: &str, ttl: Duration) -> Result<bool, StoreError>;

    fn name(&self) -> &'static str;
}

/// Something people should hear about (a budget warning, a key about to expire).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// `budget.warning`, `budget.exhausted`, ...
    pub event: &'static str,
    /// One sentence for a chat channel.
    pub text: String,
    /// The facts, for machines.
    pub details: serde_json::Value,
}

/// Delivers notices off the request path (the gateway's webhook sender).
pub trait Notifier: Send + Sync {
    fn notify(&self, notice: Notice);
}

/// A notifier that drops everything: no webhook configured.
#[derive(Debug, Default)]
pub struct NoNotifier;

impl Notifier for NoNotifier {
    fn notify(&self, notice: Notice) {
        log::info!("notice (no webhook configured): {}", notice.text);
    }
}
