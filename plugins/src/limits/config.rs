//! `[limits]`: requests and tokens per minute at org, team and app level.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
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
