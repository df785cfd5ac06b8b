//! `[budgets]`: daily and monthly spending budgets per team and per key.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    /// Percent of a budget at which a warning goes out (once per period) and shows in responses.
    #[serde(default = "default_warn_at")]
    pub warn_at: u8,
    /// The budget of every team without an entry in `teams`.
    pub team: Option<Budget>,
    /// The budget of every key without an entry in `keys`.
    pub key: Option<Budget>,
    /// Budgets per team id.
    #[serde(default)]
    pub teams: BTreeMap<String, Budget>,
    /// Budgets per key id.
    #[serde(default)]
    pub keys: BTreeMap<String, Budget>,
    /// Teams in observe mode: their budgets are evaluated, logged and reported in headers, but a
    /// spent budget does not refuse requests (for migrations).
    #[serde(default)]
    pub observe: Vec<String>,
    /// With counters in Redis: how long an instance may answer from its last reading of a counter
    /// before reading it again (the request path then makes no Redis call for budgets). Spend made
    /// meanwhile on other instances is seen that much later.
    #[serde(default = "default_refresh")]
    pub refresh: String,
}

fn default_refresh() -> String {
    "250ms".into()
}

/// Dollar amounts as decimal strings (`"50.00"`); either may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub daily: Option<String>,
    pub monthly: Option<String>,
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        Self {
            warn_at: default_warn_at(),
            team: None,
            key: None,
            teams: BTreeMap::new(),
            keys: BTreeMap::new(),
            observe: Vec::new(),
            refresh: default_refresh(),
        }
    }
}

fn default_warn_at() -> u8 {
    80
}
