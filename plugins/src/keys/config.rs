//! `[keys]`: gateway keys declared in the configuration file.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// `[[keys.key]]`: one entry per gateway key.
    #[serde(default)]
    pub key: Vec<KeyConfig>,
    /// Managed keys (with `[state] postgres`): how often the whole cache is reloaded, as a safety
    /// net under the change notifications.
    #[serde(default = "default_refresh")]
    pub refresh: String,
    /// Managed keys: how often expiry reminders (14, 7, 1 days before) are checked.
    #[serde(default = "default_reminder_interval")]
    pub reminder_interval: String,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self { key: Vec::new(), refresh: default_refresh(), reminder_interval: default_reminder_interval() }
    }
}

fn default_refresh() -> String {
    "60s".into()
}

fn default_reminder_interval() -> String {
    "1h".into()
}

/// One gateway key and its owners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Public id of the key (logs, records); never the secret.
    pub id: String,
    /// Hex SHA-256 of the key. The safe way: the secret itself is never written down.
    pub sha256: Option<String>,
    /// The key itself as a reference (`env:NAME`, `file:PATH`), hashed at start.
    pub secret: Option<String>,
    /// A literal key. Only for demos such as the embedded default; prefer `sha256` or `secret`.
    pub demo_key: Option<String>,
    pub org: String,
    pub team: String,
    pub app: String,
    pub user: Option<String>,
    /// Model aliases this key may use; absent means all.
    pub models: Option<Vec<String>>,
    /// Regions this key's traffic may go to; absent means any.
    pub regions: Option<Vec<String>>,
    /// Tags of the key's traffic (e.g. `phi`).
    #[serde(default)]
    pub tags: Vec<String>,
}
