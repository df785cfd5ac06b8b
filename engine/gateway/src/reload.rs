//! A reload: what Sluice takes up again while it runs, on `POST /admin/reload` (or `sluice admin
//! reload`) and on SIGHUP — secrets from Vault and the TLS listener's certificate, read again now
//! rather than at their next interval. Routes, providers, plugins and prices are read at start
//! only: changing them takes a restart (SIGTERM drains first). Every reload through the admin API
//! is audited (`admin.config.reload`).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::tls::CertStore;
use crate::vault::Vault;

#[derive(Default)]
pub struct Reload {
    pub vault: Option<Arc<Vault>>,
    pub certs: Option<Arc<CertStore>>,
}

impl Reload {
    /// Reloads what can be; the answer says what happened to each part (never a secret).
    pub async fn run(&self) -> Value {
        let mut done = json!({"object": "config", "action": "reload", "restart_needed_for": ["models", "providers", "plugins", "pricing"]});
        if let Some(vault) = &self.vault {
            let (read, changed, failed) = vault.refresh_all().await;
            done["vault"] = json!({"read": read, "changed": changed, "failed": failed});
        }
        if let Some(certs) = &self.certs {
            done["tls"] = match certs.reload() {
                Ok(_) => "reloaded".into(),
                Err(e) => format!("not reloaded, the previous certificate keeps serving: {e}").into(),
            };
        }
        log::info!("reload: {done}");
        done
    }
}
