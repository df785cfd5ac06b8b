//! # sluice-plugins: every gateway feature, one folder each
//!
//! A plugin implements [`sluice_core::Plugin`] and depends on `sluice-core` only. Its folder holds
//! `mod.rs` (the behaviour), `config.rs` (its config table, `deny_unknown_fields`) and `tests.rs`.
//!
//! [`chain`] is THE ordered list: the order in which plugins see a request is policy, so it lives
//! here in code, and configuration only enables and tunes.

use std::sync::Arc;

use sluice_core::Plugin;
use sluice_core::budgets::{Notifier, SpendStore};
use sluice_core::keys::KeyStore;
use sluice_core::limits::{LimitStore, Timer};

pub mod audit;
pub mod budgets;
pub mod keys;
pub mod limits;
pub mod pii;
pub mod residency;

/// The plugins' configuration tables, one per plugin, named after the plugin. The gateway's config
/// file holds each as a top-level table (`[keys]`, ...).
#[derive(Debug, Clone, Default)]
pub struct PluginsConfig {
    pub keys: keys::KeysConfig,
    /// `None`: no `[limits]` table, the plugin is off.
    pub limits: Option<limits::LimitsConfig>,
    /// `None`: no `[budgets]` table, the plugin is off.
    pub budgets: Option<budgets::BudgetsConfig>,
    /// Always on: without constraints it only honours `X-Gateway-Region`.
    pub residency: residency::ResidencyConfig,
    /// Always on, with the default actions unless configured.
    pub pii: pii::PiiConfig,
    /// Always in the chain; keeps request content only when configured.
    pub audit: audit::AuditConfig,
}

/// The state stores plugins keep their counters in, chosen by the gateway's configuration.
pub struct Stores {
    pub limits: Arc<dyn LimitStore>,
    pub spend: Arc<dyn SpendStore>,
    /// Where notices (budget warnings) go.
    pub notifier: Arc<dyn Notifier>,
    /// Managed keys (PostgreSQL), when configured.
    pub keys: Option<Arc<dyn KeyStore>>,
    /// The engine's timer (burst policy `queue`).
    pub timer: Arc<dyn Timer>,
}

/// Builds the plugin chain in its one fixed order: keys → residency → limits → budgets → pii →
/// audit (last: it keeps what is forwarded, after redaction) → (cache when it arrives). Errors name the config key at fault.
pub fn chain(config: &PluginsConfig, stores: &Stores) -> Result<Vec<Arc<dyn Plugin>>, String> {
    let keys = keys::Keys::new(&config.keys, stores.keys.clone()).map_err(|e| format!("keys.{e}"))?;
    let mut chain: Vec<Arc<dyn Plugin>> =
        vec![Arc::new(keys), Arc::new(residency::ResidencyPlugin::new(config.residency.clone()))];
    if let Some(limits) = &config.limits {
        let wait = sluice_core::duration::parse(&limits.queue_max_wait)
            .map_err(|e| format!("limits.queue_max_wait: {e}"))?;
        chain.push(Arc::new(limits::Limits::new(
            limits.clone(),
            stores.limits.clone(),
            stores.timer.clone(),
            wait,
        )));
    }
    if let Some(budgets) = &config.budgets {
        let plugin = budgets::Budgets::new(budgets, stores.spend.clone(), stores.notifier.clone())
            .map_err(|e| format!("budgets.{e}"))?;
        chain.push(Arc::new(plugin));
    }
    chain.push(Arc::new(pii::Pii::new(&config.pii).map_err(|e| format!("pii.{e}"))?));
    chain.push(Arc::new(audit::Audit::new(&config.audit)));
    Ok(chain)
}

/// What the plugins' unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use sluice_core::{Identity, RequestCtx};

    /// A request context whose caller is key `k` of org `acme`, team `team`, app `checkout`.
    pub fn ctx(team: &str) -> RequestCtx {
        let mut c = RequestCtx::new("r".into());
        c.identity = Some(std::sync::Arc::new(Identity {
            key_id: "k".into(),
            org: "acme".into(),
            team: team.into(),
            app: "checkout".into(),
            user: None,
            allowed_models: None,
            allowed_regions: None,
            tags: Vec::new(),
        }));
        c
    }

    /// Runs a future that never waits on I/O (plugins with in-memory stores) to completion.
    pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }
}
