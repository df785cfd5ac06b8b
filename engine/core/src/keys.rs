//! The contract of managed gateway keys: the `keys` plugin asks, a store answers from its
//! in-process cache (the request path never waits on a database for a known key).

use async_trait::async_trait;

use crate::ctx::Identity;
use crate::limits::StoreError;

/// A managed key as the request path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub identity: Identity,
    /// Microseconds since the Unix epoch; `None`: never expires.
    pub expires_at_us: Option<i64>,
    pub revoked: bool,
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The key whose secret hashes (SHA-256) to `hash`, if the store knows one.
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Option<KeyRecord>, StoreError>;
}
