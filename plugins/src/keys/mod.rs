//! Plugin `keys`: who is calling.
//!
//! Resolves the presented gateway key to an [`Identity`] (key id, org, team, app) by its SHA-256:
//! first among the keys of the configuration file, then among the managed keys (issued through the
//! admin API, kept in PostgreSQL, answered from the store's in-process cache). Missing, unknown,
//! revoked and expired keys get OpenAI's 401; models the key may not use get OpenAI's 404
//! `model_not_found`, so a caller cannot even learn that a model exists.

mod config;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sluice_core::ctx::Endpoint;
use sluice_core::keys::KeyStore;
use sluice_core::secret::Secret;
use sluice_core::wire::Request;
use sluice_core::{ErrorKind, Flow, GatewayError, Identity, Phases, Plugin, RequestCtx};

pub use config::{KeyConfig, KeysConfig};

pub const NAME: &str = "keys";

type KeyHash = [u8; 32];

pub struct Keys {
    by_hash: HashMap<KeyHash, Arc<Identity>>,
    managed: Option<Arc<dyn KeyStore>>,
    /// The clock keys expire by (tests move it).
    now: fn() -> SystemTime,
}

impl Keys {
    /// Builds the key table. Errors name the entry (`key[2].sha256: ...`).
    pub fn new(config: &KeysConfig, managed: Option<Arc<dyn KeyStore>>) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        for (i, k) in config.key.iter().enumerate() {
            let hash = match (&k.sha256, &k.secret, &k.demo_key) {
                (Some(hex), None, None) => {
                    parse_hex(hex).ok_or_else(|| format!("key[{i}].sha256: expected 64 hex digits"))?
                }
                (None, Some(reference), None) => {
                    let secret = Secret::resolve(reference).map_err(|e| format!("key[{i}].secret: {e}"))?;
                    hash_key(secret.expose())
                }
                (None, None, Some(literal)) => hash_key(literal),
                _ => {
                    return Err(format!("key[{i}]: set exactly one of `sha256`, `secret` or `demo_key`"));
                }
            };
            let identity = Identity {
                key_id: k.id.clone(),
                org: k.org.clone(),
                team: k.team.clone(),
                app: k.app.clone(),
                user: k.user.clone(),
                allowed_models: k.models.clone(),
                allowed_regions: k.regions.clone(),
                tags: k.tags.clone(),
            };
            if by_hash.insert(hash, Arc::new(identity)).is_some() {
                return Err(format!("key[{i}]: the same key is declared twice"));
            }
        }
        Ok(Self { by_hash, managed, now: SystemTime::now })
    }

    /// A managed key's identity, or why it is refused.
    async fn managed(&self, hash: &KeyHash, presented: &str) -> Result<Identity, GatewayError> {
        let unknown = || {
            GatewayError::new(
                ErrorKind::Authentication,
                format!("Incorrect API key provided: {}.", mask(presented)),
            )
            .with_code("invalid_api_key")
        };
        let Some(store) = &self.managed else { return Err(unknown()) };
        let record = match store.lookup(hash).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(unknown()),
            Err(e) => {
                // Fail closed: an unverifiable key is not let through.
                log::error!("keys: the key store failed: {e}");
                return Err(GatewayError::new(
                    ErrorKind::Unavailable,
                    "The gateway cannot verify API keys right now; please retry shortly.",
                )
                .with_retry_after(1));
            }
        };
        if record.revoked {
            return Err(GatewayError::new(
                ErrorKind::Authentication,
                format!("The API key {} was revoked; ask your platform team for a new one.", mask(presented)),
            )
            .with_code("invalid_api_key"));
        }
        let now_us = (self.now)()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        if record.expires_at_us.is_some_and(|exp| exp <= now_us) {
            return Err(GatewayError::new(
                ErrorKind::Authentication,
                format!("The API key {} has expired; ask your platform team for a new one.", mask(presented)),
            )
            .with_code("invalid_api_key"));
        }
        Ok(record.identity)
    }
}

#[async_trait]
impl Plugin for Keys {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases { headers: true, request: true, complete: false }
    }

    async fn on_headers(&self, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
        let Some(presented) = ctx.credential.as_deref() else {
            return Err(GatewayError::new(
                ErrorKind::Authentication,
                "You didn't provide an API key. You need to provide your gateway key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            ));
        };
        let hash = hash_key(presented);
        let identity = match self.by_hash.get(&hash) {
            Some(identity) => Arc::clone(identity),
            None => Arc::new(self.managed(&hash, presented).await?),
        };
        ctx.identity = Some(identity);
        Ok(())
    }

    async fn on_request(&self, ctx: &mut RequestCtx, request: &mut Request) -> Result<Flow, GatewayError> {
        let allowed = ctx.identity.as_ref().is_some_and(|i| i.may_use(&request.model));
        if request.endpoint != Endpoint::Models && !allowed {
            return Err(model_not_found(&request.model));
        }
        Ok(Flow::Continue)
    }
}

/// OpenAI's answer for a model that is unknown or not allowed: the two are indistinguishable.
pub fn model_not_found(model: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::NotFound,
        format!("The model `{model}` does not exist or you do not have access to it."),
    )
    .with_param("model")
    .with_code("model_not_found")
}

pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// Shows the first six and last four characters of a key, as OpenAI does in its 401.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return "***".to_owned();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

fn parse_hex(hex: &str) -> Option<KeyHash> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
