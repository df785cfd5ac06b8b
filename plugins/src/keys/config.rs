//! `[keys]`: gateway keys declared in the configuration file.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// `[[keys.key]]`: one entry per gateway key.
    #[serde(default)]
    pub key: Vec<KeyConfig>,
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
}
