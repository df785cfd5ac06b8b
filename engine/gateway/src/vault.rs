//! Secrets from HashiCorp Vault: `vault:MOUNT/PATH#FIELD` references, read from the KV v2 HTTP API
//! (`GET {address}/v1/{MOUNT}/data/{PATH}`, field `FIELD` of the latest version).
//!
//! Sluice authenticates with a token (`X-Vault-Token`) or by AppRole (`POST
//! {address}/v1/auth/{mount}/login` with `role_id` and `secret_id`; logged in again when Vault
//! refuses the token, e.g. after its TTL). Every reference is read at start — a secret that cannot
//! be read stops the start with a sentence naming the reference, never its value. Provider keys are
//! read again every `refresh`: a key rotated in Vault reaches the next request without a restart;
//! a failed refresh is logged and the last value stays. Values never reach a log line, an error,
//! or `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sluice_core::secret::{LiveSecret, Secret};

use crate::config::file::VaultFile;
use crate::routing::endpoints::{CaRoots, EndpointInfo, load_ca};

/// `vault:MOUNT/PATH#FIELD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRef {
    pub mount: String,
    pub path: String,
    pub field: String,
}

impl VaultRef {
    /// `Ok(None)` for a reference that is not `vault:`.
    pub fn parse(reference: &str) -> Result<Option<Self>, String> {
        let Some(rest) = reference.strip_prefix("vault:") else { return Ok(None) };
        let shape = || {
            format!("`{reference}`: expected vault:MOUNT/PATH#FIELD, e.g. vault:secret/sluice/openai#api_key")
        };
        let (location, field) = rest.split_once('#').ok_or_else(shape)?;
        let (mount, path) = location.trim_matches('/').split_once('/').ok_or_else(shape)?;
        let clean =
            |s: &str| !s.is_empty() && s.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if !clean(mount) || !clean(path) || field.is_empty() || location.contains(['?', ' ']) {
            return Err(shape());
        }
        Ok(Some(Self { mount: mount.to_owned(), path: path.to_owned(), field: field.to_owned() }))
    }
}

impl std::fmt::Display for VaultRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vault:{}/{}#{}", self.mount, self.path, self.field)
    }
}

enum Auth {
    Token(Secret),
    AppRole { mount: String, role_id: Secret, secret_id: Secret },
}

pub struct Vault {
    address: String,
    namespace: Option<String>,
    auth: Auth,
    /// The token in use (AppRole: from the last login).
    token: Mutex<Option<Arc<str>>>,
    timeout: Duration,
    ca: Option<CaRoots>,
    refresh: Duration,
    /// Secrets refreshed while the gateway runs: what they are (for logs), where, and the cell.
    live: Mutex<Vec<(String, VaultRef, LiveSecret)>>,
}

impl Vault {
    pub fn new(file: &VaultFile) -> Result<Self, String> {
        let address = file.address.trim_end_matches('/').to_owned();
        EndpointInfo::parse(&address).map_err(|e| format!("address: {e}"))?;
        let auth = match (&file.token, &file.approle) {
            (Some(token), None) => Auth::Token(Secret::resolve(token).map_err(|e| format!("token: {e}"))?),
            (None, Some(a)) => Auth::AppRole {
                mount: a.mount.trim_matches('/').to_owned(),
                role_id: Secret::resolve(&a.role_id).map_err(|e| format!("approle.role_id: {e}"))?,
                secret_id: Secret::resolve(&a.secret_id).map_err(|e| format!("approle.secret_id: {e}"))?,
            },
            _ => return Err("set exactly one of `token` or `approle`".into()),
        };
        let duration = |text: &str, key: &str| match sluice_core::duration::parse(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(format!("{key}: must be above zero")),
            Err(e) => Err(format!("{key}: {e}")),
        };
        Ok(Self {
            address,
            namespace: file.namespace.clone(),
            auth,
            token: Mutex::new(None),
            timeout: duration(&file.timeout, "timeout")?,
            ca: file.ca_file.as_deref().map(load_ca).transpose().map_err(|e| format!("ca_file: {e}"))?,
            refresh: duration(&file.refresh, "refresh")?,
            live: Mutex::new(Vec::new()),
        })
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let url = EndpointInfo::parse(&format!("{}/v1/{path}", self.address))?;
        let mut headers = Vec::new();
        if let Some(t) = token {
            headers.push(("x-vault-token", t.to_owned()));
        }
        if let Some(ns) = &self.namespace {
            headers.push(("x-vault-namespace", ns.clone()));
        }
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, answer) =
            crate::http_client::request_with_ca(method, &url, &headers, body, self.timeout, self.ca.clone())
                .await
                .map_err(|e| format!("cannot reach Vault: {e}"))?;
        Ok((status, serde_json::from_slice(&answer).unwrap_or(Value::Null)))
    }

    /// The token to present; AppRole logs in when there is none (or `again`).
    async fn token(&self, again: bool) -> Result<Arc<str>, String> {
        match &self.auth {
            Auth::Token(t) => Ok(t.expose().into()),
            Auth::AppRole { mount, role_id, secret_id } => {
                if !again && let Some(t) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                    return Ok(t);
                }
                let body = json!({"role_id": role_id.expose(), "secret_id": secret_id.expose()});
                let (status, v) = self.call("POST", &format!("auth/{mount}/login"), None, Some(body)).await?;
                let token = v["auth"]["client_token"]
                    .as_str()
                    .filter(|_| status == 200)
                    .ok_or_else(|| format!("AppRole login refused (HTTP {status}{})", vault_errors(&v)))?;
                let token: Arc<str> = token.into();
                *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
                Ok(token)
            }
        }
    }

    /// The field's current value. With AppRole, a refused token is replaced by a new login once.
    pub async fn read(&self, r: &VaultRef) -> Result<Secret, String> {
        let path = format!("{}/data/{}", r.mount, r.path);
        let mut token = self.token(false).await?;
        let (mut status, mut v) = self.call("GET", &path, Some(&token), None).await?;
        if status == 403 && matches!(self.auth, Auth::AppRole { .. }) {
            token = self.token(true).await?;
            (status, v) = self.call("GET", &path, Some(&token), None).await?;
        }
        match status {
            200 => {}
            403 => return Err(format!("{r}: permission denied{}", vault_errors(&v))),
            404 => return Err(format!("{r}: no secret at {}/{} (KV v2)", r.mount, r.path)),
            s => return Err(format!("{r}: Vault answered HTTP {s}{}", vault_errors(&v))),
        }
        match &v["data"]["data"][&r.field] {
            Value::String(s) if !s.is_empty() => Ok(Secret::fetched(s)),
            Value::Null => Err(format!("{r}: the secret has no field `{}`", r.field)),
            _ => Err(format!("{r}: the field `{}` is not a non-empty string", r.field)),
        }
    }

    /// Reads once from synchronous code (configuration), on a runtime of its own.
    fn read_now(&self, r: &VaultRef) -> Result<Secret, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        rt.block_on(self.read(r))
    }

    /// A secret kept current: read now, then every `refresh` once [`Self::start`] ran.
    pub fn live(&self, r: VaultRef, what: &str) -> Result<LiveSecret, String> {
        let secret = LiveSecret::new(self.read_now(&r)?);
        self.live.lock().unwrap_or_else(|p| p.into_inner()).push((what.to_owned(), r, secret.clone()));
        Ok(secret)
    }

    /// Starts the refresher thread (not done by `check-config`).
    pub fn start(self: &Arc<Self>) -> Result<(), String> {
        if self.live.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return Ok(());
        }
        let me = Arc::downgrade(self);
        let every = self.refresh;
        std::thread::Builder::new()
            .name("sluice-vault".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    log::error!("vault: cannot start a runtime; secrets keep their values from the start");
                    return;
                };
                loop {
                    std::thread::sleep(every);
                    let Some(vault) = me.upgrade() else { return };
                    rt.block_on(vault.refresh_all());
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot start the Vault refresher: {e}"))
    }

    /// Reads every kept secret again; returns how many were read, how many changed, and the
    /// failures (sentences without values).
    pub async fn refresh_all(&self) -> (usize, usize, Vec<String>) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (mut read, mut changed, mut failed) = (0, 0, Vec::new());
        for (what, r, cell) in live {
            match self.read(&r).await {
                Ok(value) => {
                    read += 1;
                    if cell.set(value) {
                        changed += 1;
                        log::info!("vault: {what} changed in Vault ({r}); new requests use the new value");
                    }
                }
                Err(e) => {
                    log::warn!("vault: cannot refresh {what}: {e}; the current value stays");
                    failed.push(format!("{what}: {e}"));
                }
            }
        }
        (read, changed, failed)
    }
}

/// ` (permission denied, ...)` from Vault's `{"errors": [...]}`, or nothing.
fn vault_errors(v: &Value) -> String {
    let errors: Vec<&str> = v["errors"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if errors.is_empty() { String::new() } else { format!(": {}", errors.join("; ")) }
}

/// Resolves a configuration reference: `env:`, `file:`, or `vault:` (read once, at start).
pub fn resolve(reference: &str, vault: Option<&Vault>) -> Result<Secret, String> {
    match VaultRef::parse(reference)? {
        Some(r) => vault.ok_or_else(|| format!("`{r}` needs a [vault] section"))?.read_now(&r),
        None => Secret::resolve(reference),
    }
}

/// Like [`resolve`], but a `vault:` secret is kept current while the gateway runs.
pub fn resolve_live(reference: &str, what: &str, vault: Option<&Vault>) -> Result<LiveSecret, String> {
    match VaultRef::parse(reference)? {
        Some(r) => vault.ok_or_else(|| format!("`{r}` needs a [vault] section"))?.live(r, what),
        None => Secret::resolve(reference).map(LiveSecret::new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_mount_path_and_field() {
        let r = VaultRef::parse("vault:secret/sluice/openai#api_key").unwrap().unwrap();
        assert_eq!(
            (r.mount.as_str(), r.path.as_str(), r.field.as_str()),
            ("secret", "sluice/openai", "api_key")
        );
        assert_eq!(r.to_string(), "vault:secret/sluice/openai#api_key");
        assert_eq!(VaultRef::parse("env:X").unwrap(), None);
        for bad in
            ["vault:secret#k", "vault:secret/a", "vault:secret/a#", "vault:secret/../x#k", "vault:/a#k"]
        {
            assert!(VaultRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_vault_reference_without_a_vault_section_is_refused() {
        let Err(e) = resolve("vault:secret/a#k", None) else { panic!("resolved") };
        assert!(e.contains("needs a [vault] section"), "{e}");
    }
}
