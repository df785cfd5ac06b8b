//! Spend counters for budgets: in memory (one instance), or in Redis (shared by every instance,
//! beside the limits, hash-tagged by org).
//!
//! PostgreSQL's ledger is the truth. When a counter is missing — a new period, or Redis lost its
//! data — and the ledger is configured, the counter is rebuilt from the ledger's sum for its scope
//! before it is used: once per counter (a `:seeded` mark guards it across instances), so a Redis
//! restart does not reset anyone's budget. A spend that landed in Redis while its seed was being
//! read may be counted twice, which errs on the side of the budget. If Redis stops answering, the
//! in-memory counters take over for this instance (and rebuild themselves from the ledger too).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::prelude::{Config, KeysInterface};
use fred::types::Expiration;
use fred::types::scripts::Script;
use sluice_core::budgets::{Counter, SpendStore};
use sluice_core::limits::StoreError;
use sluice_core::money::Micros;

use super::redis::thread_client;
use crate::db::Db;

/// How long a failed rebuild is not retried for the same counter.
const SEED_BACKOFF: Duration = Duration::from_secs(30);
const SEED_TIMEOUT: Duration = Duration::from_millis(500);

/// Rebuilds counters from the ledger.
pub struct Seeder {
    reader: Arc<Db>,
    failed: Mutex<HashMap<String, Instant>>,
}

impl Seeder {
    pub fn new(reader: Arc<Db>) -> Self {
        Self { reader, failed: Mutex::new(HashMap::new()) }
    }

    /// The ledger's sum for a counter, or `None` when it cannot be read now.
    async fn sum(&self, c: &Counter) -> Option<u64> {
        {
            let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            if failed.get(&c.key).is_some_and(|t| t.elapsed() < SEED_BACKOFF) {
                return None;
            }
        }
        match self.reader.sum(&c.scope, SEED_TIMEOUT).await {
            Ok(sum) => Some(sum),
            Err(e) => {
                log::warn!(
                    "budgets: cannot rebuild {} from the ledger ({e}); counting from what is known",
                    c.key
                );
                self.failed.lock().unwrap_or_else(|p| p.into_inner()).insert(c.key.clone(), Instant::now());
                None
            }
        }
    }
}

/// Counters and once-marks in this process.
#[derive(Default)]
pub struct MemorySpend {
    state: Mutex<MemoryState>,
    seeder: Option<Arc<Seeder>>,
}

#[derive(Default)]
struct MemoryState {
    counters: HashMap<String, (u64, Instant)>,
    marks: HashMap<String, Instant>,
}

impl MemorySpend {
    pub fn new(seeder: Option<Arc<Seeder>>) -> Self {
        Self { state: Mutex::default(), seeder }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SpendStore for MemorySpend {
    async fn spent(&self, counters: &[Counter]) -> Result<Vec<Micros>, StoreError> {
        let now = Instant::now();
        let missing: Vec<&Counter> = {
            let state = self.lock();
            counters
                .iter()
                .filter(|c| state.counters.get(&c.key).is_none_or(|(_, exp)| *exp <= now))
                .collect()
        };
        if let Some(seeder) = &self.seeder {
            for c in missing {
                if let Some(sum) = seeder.sum(c).await {
                    // A spend added while the sum was read stays (counted twice at worst, like Redis).
                    let mut state = self.lock();
                    match state.counters.get_mut(&c.key) {
                        Some(entry) if entry.1 > now => entry.0 = entry.0.saturating_add(sum),
                        _ => {
                            state.counters.insert(c.key.clone(), (sum, now + c.ttl));
                        }
                    }
                }
            }
        }
        let state = self.lock();
        Ok(counters
            .iter()
            .map(|c| Micros(state.counters.get(&c.key).filter(|(_, exp)| *exp > now).map_or(0, |(v, _)| *v)))
            .collect())
    }

    async fn add(&self, counters: &[Counter], amount: Micros) -> Result<Vec<Micros>, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        Ok(counters
            .iter()
            .map(|c| {
                let entry = state.counters.entry(c.key.clone()).or_insert((0, now + c.ttl));
                if entry.1 <= now {
                    *entry = (0, now + c.ttl);
                }
                entry.0 = entry.0.saturating_add(amount.0);
                Micros(entry.0)
            })
            .collect())
    }

    async fn first_time(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        if state.marks.get(key).is_some_and(|exp| *exp > now) {
            return Ok(false);
        }
        state.marks.insert(key.to_owned(), now + ttl);
        Ok(true)
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// Adds ARGV[1] to every key; a key without expiry gets ARGV[i+1] ms. Returns the new values.
const ADD: &str = r#"
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('INCRBY', KEYS[i], ARGV[1])
  if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[i + 1]) end
end
return out
"#;

/// Rebuilds KEYS[1] from the ledger's sum ARGV[1] once (KEYS[2] marks it); returns its value.
const SEED: &str = r#"
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  redis.call('INCRBY', KEYS[1], ARGV[1])
  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
return tonumber(redis.call('GET', KEYS[1]) or '0')
"#;

pub struct RedisSpend {
    url: String,
    config: Config,
    prefix: String,
    add: Script,
    seed: Script,
    seeder: Option<Arc<Seeder>>,
    fallback: MemorySpend,
    healthy: Arc<AtomicBool>,
}

impl RedisSpend {
    /// `healthy` is shared with the limits store: one Redis, one health flag.
    pub fn new(
        url: &str,
        prefix: &str,
        seeder: Option<Arc<Seeder>>,
        healthy: Arc<AtomicBool>,
    ) -> Result<Self, String> {
        Ok(Self {
            url: url.to_owned(),
            config: Config::from_url(url).map_err(|e| format!("`{url}`: {e}"))?,
            prefix: prefix.to_owned(),
            add: Script::from_lua(ADD),
            seed: Script::from_lua(SEED),
            fallback: MemorySpend::new(seeder.clone()),
            seeder,
            healthy,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            log::warn!("budgets: Redis unreachable ({what}: {e}); this instance counts spend on its own");
        }
    }

    async fn try_spent(&self, counters: &[Counter]) -> Result<Vec<Micros>, String> {
        let client = thread_client(&self.url, &self.config).map_err(|e| e.0)?;
        let keys: Vec<String> = counters.iter().map(|c| self.key(&c.key)).collect();
        let values: Vec<Option<i64>> = client.mget(keys.clone()).await.map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(counters.len());
        for ((c, key), value) in counters.iter().zip(&keys).zip(values) {
            let v = match (value, &self.seeder) {
                (Some(v), _) => v,
                (None, Some(seeder)) => match seeder.sum(c).await {
                    Some(sum) => {
                        let ttl = c.ttl.as_millis() as i64;
                        self.seed
                            .evalsha_with_reload::<i64, _, _>(
                                &client,
                                vec![key.clone(), format!("{key}:seeded")],
                                vec![sum as i64, ttl],
                            )
                            .await
                            .map_err(|e| e.to_string())?
                    }
                    None => 0,
                },
                (None, None) => 0,
            };
            out.push(Micros(v.max(0) as u64));
        }
        Ok(out)
    }
}

#[async_trait]
impl SpendStore for RedisSpend {
    async fn spent(&self, counters: &[Counter]) -> Result<Vec<Micros>, StoreError> {
        match self.try_spent(counters).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.failed("read", &e);
                self.fallback.spent(counters).await
            }
        }
    }

    async fn add(&self, counters: &[Counter], amount: Micros) -> Result<Vec<Micros>, StoreError> {
        let keys: Vec<String> = counters.iter().map(|c| self.key(&c.key)).collect();
        let mut args = vec![amount.0 as i64];
        args.extend(counters.iter().map(|c| c.ttl.as_millis() as i64));
        let answer: Result<Vec<i64>, String> = match thread_client(&self.url, &self.config) {
            Ok(client) => self.add.evalsha_with_reload(&client, keys, args).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.0),
        };
        match answer {
            Ok(v) => Ok(v.into_iter().map(|n| Micros(n.max(0) as u64)).collect()),
            Err(e) => {
                self.failed("add", &e);
                self.fallback.add(counters, amount).await
            }
        }
    }

    async fn first_time(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let answer: Result<Option<String>, String> = match thread_client(&self.url, &self.config) {
            Ok(client) => client
                .set(
                    self.key(key),
                    "1",
                    Some(Expiration::PX(ttl.as_millis() as i64)),
                    Some(fred::types::SetOptions::NX),
                    false,
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.0),
        };
        match answer {
            Ok(set) => Ok(set.is_some()),
            Err(e) => {
                self.failed("mark", &e);
                self.fallback.first_time(key, ttl).await
            }
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
