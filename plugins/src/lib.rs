//! # sluice-plugins: every gateway feature, one folder each
//!
//! A plugin implements [`sluice_core::Plugin`] and depends on `sluice-core` only. Its folder holds
//! `mod.rs` (the behaviour), `config.rs` (its config table, `deny_unknown_fields`) and `tests.rs`.
//!
//! [`chain`] is THE ordered list: the order in which plugins see a request is policy, so it lives
//! here in code, and configuration only enables and tunes.

use std::sync::Arc;

use sluice_core::Plugin;

pub mod keys;

/// The plugins' configuration tables, one per plugin, named after the plugin. The gateway's config
/// file holds each as a top-level table (`[keys]`, ...).
#[derive(Debug, Clone, Default)]
pub struct PluginsConfig {
    pub keys: keys::KeysConfig,
}

/// Builds the plugin chain in its one fixed order: keys → (residency → limits → budgets → pii →
/// cache, as they arrive). Errors name the config key at fault.
pub fn chain(config: &PluginsConfig) -> Result<Vec<Arc<dyn Plugin>>, String> {
    let keys = keys::Keys::new(&config.keys).map_err(|e| format!("keys.{e}"))?;
    Ok(vec![Arc::new(keys)])
}
