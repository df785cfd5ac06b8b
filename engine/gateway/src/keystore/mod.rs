//! Managed gateway keys: PostgreSQL holds them, every instance answers from an in-process cache.
//!
//! The cache holds every active key, loaded at start and again every `refresh` as a safety net.
//! Every change (issue, revoke, rotate) is announced by the admin API with `NOTIFY sluice_keys`;
//! each instance LISTENs on a connection of its own and reloads the key named in the payload at
//! once, so a revocation is seen everywhere within milliseconds. A key the cache does not know is
//! looked up once in PostgreSQL (a key issued a moment ago on another instance), and a hash that
//! is unknown there too is remembered for a few seconds, so a flood of bad keys does not reach the
//! database. If PostgreSQL cannot answer such a lookup, the request is refused (503): an
//! unverifiable key is never let through.
//!
//! The same background thread sends expiry reminders 14, 7 and 1 days before a key expires, each
//! once across instances (a conditional UPDATE decides who sends it).

pub mod memory;
pub mod repo;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::Value;
use sluice_core::budgets::Notifier;
use sluice_core::keys::{KeyRecord, KeyStore};
use sluice_core::limits::StoreError;
use sluice_core::{ErrorKind, GatewayError};
use tokio_postgres::AsyncMessage;

use crate::db::Db;
use crate::ledger::postgres;

/// Orgs, teams, apps and keys as the admin API changes them: in PostgreSQL ([`PgDirectory`]) or,
/// for the embedded default, in this process ([`memory::MemoryKeys`]). Both answer the same JSON.
#[async_trait]
pub trait Directory: Send + Sync {
    /// Creates an org, team or app (`kind`: `orgs`, `teams`, `apps`) under `parent`.
    async fn create(
        &self,
        kind: &str,
        id: &str,
        name: &str,
        parent: Option<&str>,
    ) -> Result<Value, GatewayError>;
    /// Orgs, teams or apps, optionally those of one parent.
    async fn list(&self, kind: &str, parent: Option<&str>) -> Result<Value, GatewayError>;
    /// Issues a key; the answer is the only place its secret ever appears.
    async fn issue_key(&self, new: &repo::NewKey) -> Result<Value, GatewayError>;
    async fn list_keys(&self, app: Option<&str>, team: Option<&str>) -> Result<Value, GatewayError>;
    async fn get_key(&self, id: &str) -> Result<Value, GatewayError>;
    async fn revoke_key(&self, id: &str) -> Result<Value, GatewayError>;
    /// A new key with the same rights now; the old one keeps working for `grace` (24 h by default).
    async fn rotate_key(&self, id: &str, grace: Option<&str>) -> Result<Value, GatewayError>;
}

/// The directory in PostgreSQL: every change is announced to every instance (`NOTIFY`).
pub struct PgDirectory(pub Arc<Db>);

impl PgDirectory {
    async fn run(
        &self,
        f: impl AsyncFnOnce(&mut tokio_postgres::Client) -> Result<Value, GatewayError>,
    ) -> Result<Value, GatewayError> {
        self.0.with(ADMIN_TIMEOUT, async |c| Ok(f(c).await)).await.map_err(|e| {
            GatewayError::new(ErrorKind::Unavailable, format!("The database is unavailable: {e}"))
        })?
    }
}

#[async_trait]
impl Directory for PgDirectory {
    async fn create(
        &self,
        kind: &str,
        id: &str,
        name: &str,
        parent: Option<&str>,
    ) -> Result<Value, GatewayError> {
        let parent = parent.unwrap_or_default();
        match kind {
            "orgs" => self.run(async |c| repo::create_org(c, id, name).await).await,
            "teams" => self.run(async |c| repo::create_team(c, id, parent, name).await).await,
            _ => self.run(async |c| repo::create_app(c, id, parent, name).await).await,
        }
    }

    async fn list(&self, kind: &str, parent: Option<&str>) -> Result<Value, GatewayError> {
        self.run(async |c| repo::list(c, kind, parent).await).await
    }

    async fn issue_key(&self, new: &repo::NewKey) -> Result<Value, GatewayError> {
        self.run(async |c| repo::issue_key(c, new).await).await
    }

    async fn list_keys(&self, app: Option<&str>, team: Option<&str>) -> Result<Value, GatewayError> {
        self.run(async |c| repo::list_keys(c, app, team).await).await
    }

    async fn get_key(&self, id: &str) -> Result<Value, GatewayError> {
        self.run(async |c| repo::get_key(c, id).await).await
    }

    async fn revoke_key(&self, id: &str) -> Result<Value, GatewayError> {
        self.run(async |c| repo::revoke_key(c, id).await).await
    }

    async fn rotate_key(&self, id: &str, grace: Option<&str>) -> Result<Value, GatewayError> {
        self.run(async |c| repo::rotate_key(c, id, grace).await).await
    }
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an unknown hash is remembered as unknown.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct KeySettings {
    /// Full reload of the cache (a safety net under LISTEN/NOTIFY).
    pub refresh: Duration,
    /// How often expiry reminders are checked.
    pub reminder_interval: Duration,
}

#[derive(Default)]
struct Cache {
    by_hash: HashMap<[u8; 32], KeyRecord>,
    hash_of: HashMap<String, [u8; 32]>,
}

pub struct ManagedKeys {
    url: String,
    db: Arc<Db>,
    settings: KeySettings,
    notifier: Arc<dyn Notifier>,
    cache: RwLock<Cache>,
    unknown: Mutex<HashMap<[u8; 32], Instant>>,
    /// The listener is connected and the cache loaded.
    synced: AtomicBool,
    started: AtomicBool,
}

impl ManagedKeys {
    pub fn new(url: String, db: Arc<Db>, settings: KeySettings, notifier: Arc<dyn Notifier>) -> Self {
        Self {
            url,
            db,
            settings,
            notifier,
            cache: RwLock::default(),
            unknown: Mutex::default(),
            synced: AtomicBool::new(false),
            started: AtomicBool::new(false),
        }
    }

    /// Whether the cache follows PostgreSQL right now (for `/health`).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    fn put(&self, hash: [u8; 32], record: KeyRecord) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.hash_of.insert(record.identity.key_id.clone(), hash);
        cache.by_hash.insert(hash, record);
    }

    fn forget_id(&self, id: &str) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if let Some(hash) = cache.hash_of.remove(id) {
            cache.by_hash.remove(&hash);
        }
    }

    /// Starts the listener thread (not done by `check-config`).
    pub fn start(self: &Arc<Self>) -> Result<(), String> {
        if self.started.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("sluice-keys".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    log::error!("keys: cannot start a runtime; managed keys are looked up one by one");
                    return;
                };
                rt.block_on(me.follow());
            })
            .map_err(|e| format!("cannot start the key listener: {e}"))?;
        Ok(())
    }

    /// LISTEN, load everything, then follow notifications; reconnects on any error.
    async fn follow(&self) {
        loop {
            if let Err(e) = self.follow_once().await
                && self.synced.swap(false, Ordering::Relaxed)
            {
                log::warn!("keys: lost PostgreSQL ({e}); cached keys keep working, reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn follow_once(&self) -> Result<(), String> {
        let (mut config, tls) = crate::pg_tls::config(&self.url)?;
        config.connect_timeout(Duration::from_secs(3));
        config.application_name("sluice-keys");
        let (client, mut connection) = config
            .connect(tls)
            .await
            .map_err(|e| format!("cannot connect: {}", crate::pg_tls::describe(&e)))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        log::debug!("keys: listener connection: {e}");
                        break;
                    }
                }
            }
        });
        let mut client = client;
        postgres::migrate(&mut client).await.map_err(|e| format!("cannot migrate: {e}"))?;
        client.batch_execute("LISTEN sluice_keys").await.map_err(|e| e.to_string())?;
        self.load_all(&client).await?;
        if !self.synced.swap(true, Ordering::Relaxed) {
            log::info!("keys: following PostgreSQL");
        }
        let mut refresh = tokio::time::interval(self.settings.refresh);
        let mut reminders = tokio::time::interval(self.settings.reminder_interval);
        refresh.tick().await;
        loop {
            tokio::select! {
                id = rx.recv() => {
                    let Some(id) = id else { break };
                    self.reload(&client, &id).await?;
                }
                _ = refresh.tick() => self.load_all(&client).await?,
                _ = reminders.tick() => {
                    if let Err(e) = repo::send_reminders(&client, self.notifier.as_ref()).await {
                        log::warn!("keys: expiry reminders failed: {e}");
                    }
                }
            }
        }
        driver.abort();
        Err("the listener connection closed".into())
    }

    async fn load_all(&self, client: &tokio_postgres::Client) -> Result<(), String> {
        let rows = repo::active_keys(client).await.map_err(|e| format!("cannot load keys: {e}"))?;
        let mut fresh = Cache::default();
        for (hash, record) in rows {
            fresh.hash_of.insert(record.identity.key_id.clone(), hash);
            fresh.by_hash.insert(hash, record);
        }
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    async fn reload(&self, client: &tokio_postgres::Client, id: &str) -> Result<(), String> {
        match repo::key_by_id(client, id).await.map_err(|e| format!("cannot reload key {id}: {e}"))? {
            Some((hash, record)) => {
                self.unknown.lock().unwrap_or_else(|p| p.into_inner()).remove(&hash);
                self.put(hash, record);
            }
            None => self.forget_id(id),
        }
        Ok(())
    }
}

#[async_trait]
impl KeyStore for ManagedKeys {
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Option<KeyRecord>, StoreError> {
        if let Some(r) = self.cache.read().unwrap_or_else(|p| p.into_inner()).by_hash.get(hash) {
            return Ok(Some(r.clone()));
        }
        {
            let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
            if unknown.get(hash).is_some_and(|t| t.elapsed() < NEGATIVE_TTL) {
                return Ok(None);
            }
            if unknown.len() > 100_000 {
                unknown.clear();
            }
        }
        let found = self
            .db
            .with(LOOKUP_TIMEOUT, async |c| repo::key_by_hash(c, hash).await)
            .await
            .map_err(StoreError)?;
        match found {
            Some(record) => {
                self.put(*hash, record.clone());
                Ok(Some(record))
            }
            None => {
                self.unknown.lock().unwrap_or_else(|p| p.into_inner()).insert(*hash, Instant::now());
                Ok(None)
            }
        }
    }
}
