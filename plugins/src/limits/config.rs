//! `[limits]`: requests and tokens per minute at org, team and app level.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Tokens reserved for the answer when a request sets no `max_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Limits every org, team or app gets unless overridden; absent = no limit at that level.
    pub org: Option<Rate>,
    pub team: Option<Rate>,
    pub app: Option<Rate>,
    /// Per-owner limits: keys `org:ID`, `team:ID`, `app:ID`.
    #[serde(default)]
    pub overrides: BTreeMap<String, Rate>,
    /// What happens when a level's limit is reached, per level (default `reject` everywhere).
    #[serde(default)]
    pub burst: BurstConfig,
    /// `queue`: the longest a request waits for capacity before it is refused.
    #[serde(default = "default_queue_wait")]
    pub queue_max_wait: String,
    /// When the shared store (Redis) cannot answer: `local` (this instance limits on its own),
    /// `open` (requests pass unlimited) or `closed` (requests are refused with 503).
    #[serde(default)]
    pub on_store_failure: FailMode,
    /// Teams in observe mode (for migrations): limits are evaluated, logged and reported in
    /// `x-sluice-ratelimit-observe`, never enforced.
    #[serde(default)]
    pub observe: Vec<String>,
    /// With Redis: the share of each limit, in percent, an instance may reserve ahead for its next
    /// requests of the same caller (a lease), so that most requests are admitted without a round
    /// trip. Leased units are taken in Redis: instances together never pass a limit. Near a limit
    /// no lease is granted and every request goes to Redis. `0` turns leases off.
    #[serde(default = "default_lease_percent")]
    pub lease_percent: f64,
    /// How long a lease's units may be used; what is left then goes back to Redis.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstConfig {
    #[serde(default)]
    pub org: Burst,
    #[serde(default)]
    pub team: Burst,
    #[serde(default)]
    pub app: Burst,
}

/// A level's burst policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Burst {
    /// Refuse with 429 at once.
    #[default]
    Reject,
    /// Wait for capacity up to `queue_max_wait`, then 429.
    Queue,
    /// Go over this level's own limit while every level above it still has room (the parent's
    /// unused headroom); 429 only when a parent is full too.
    Borrow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    #[default]
    Local,
    Open,
    Closed,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            default_max_tokens: default_max_tokens(),
            org: None,
            team: None,
            app: None,
            overrides: BTreeMap::new(),
            burst: BurstConfig::default(),
            queue_max_wait: default_queue_wait(),
            on_store_failure: FailMode::default(),
            observe: Vec::new(),
            lease_percent: default_lease_percent(),
            lease_ttl: default_lease_ttl(),
        }
    }
}

fn default_queue_wait() -> String {
    "2s".into()
}

fn default_lease_percent() -> f64 {
    1.0
}

fn default_lease_ttl() -> String {
    "1s".into()
}

/// Per-minute limits; either may be left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<u64>,
}

fn default_max_tokens() -> u64 {
    1024
}
