//! Spend counters for budgets: in memory (one instance), or in Redis (shared by every instance,
//! beside the limits, hash-tagged by org).
//!
//! PostgreSQL's ledger is the truth. When a counter is missing — a new period, or Redis lost its
//! data — and the ledger is configured, the counter is rebuilt from the ledger's sum for its scope
//! before it is used: once per counter (a `:seeded` mark guards it across instances), so a Redis
//! restart does not reset anyone's budget. A spend that landed in Redis while its seed was being
//! read may be counted twice, which errs on the side of the budget. If Redis stops answering, the
//! in-memory counters take over for this instance (and rebuild themselves from the ledger too);
//! after three failed calls in a row, of this store or the limits', both leave Redis alone for a
//! second (`HoldOff`).
//!
//! The Redis store answers reads from the values it last saw (read or returned by an add) for up
//! to `budgets.refresh`, plus what this instance spent since, so the request path usually makes no
//! Redis call for budgets; and it sends its spend at most once per `refresh` (all pending amounts
//! in one call per org), so the end of a request usually makes none either. A reading older than
//! `refresh` but younger than [`STALE_FOR`] of them still answers at once, while a fresh one is read
//! behind the request (one read at a time per set of counters): a key used a few times a second
//! then never waits on Redis either. Other instances see this instance's spend up to two windows
//! late (up to [`STALE_FOR`] + 1 windows for a caller seen less often); spend not yet sent when the
//! process stops is rebuilt from the ledger only if the counter is lost.

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

use super::redis::{HoldOff, joined, tag, thread_client};
use crate::db::Db;

/// How many `refresh` windows old a reading may be and still answer while a fresh one is read.
pub const STALE_FOR: u32 = 4;

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

/// Adds ARGV[2i-1] to KEYS[i]; a key without expiry gets ARGV[2i] ms. Returns the new values.
const ADD: &str = r#"
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2 * i]) end
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

/// Spend counters in Redis; see the module's notes on `refresh`.
pub struct RedisSpend(Arc<RedisInner>);

struct RedisInner {
    url: String,
    config: Config,
    prefix: String,
    add: Script,
    seed: Script,
    seeder: Option<Arc<Seeder>>,
    fallback: MemorySpend,
    healthy: Arc<AtomicBool>,
    hold_off: Arc<HoldOff>,
    /// A flush of unsent spend is scheduled.
    scheduled: AtomicBool,
    /// Last values seen, and when.
    seen: Mutex<HashMap<String, (u64, Instant)>>,
    /// Sets of counters (their keys joined) being read again behind a request.
    reading: Mutex<std::collections::HashSet<String>>,
    refresh: Duration,
    /// Spend added here and not yet sent: sent with the first add after `refresh`, one call per org.
    unsent: Mutex<Unsent>,
}

#[derive(Default)]
struct Unsent {
    by_key: HashMap<String, (Counter, u64)>,
    since: Option<Instant>,
}

impl RedisInner {
    /// Sends everything unsent (the scheduled flush).
    async fn flush(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
        let due: Vec<(Counter, u64)> = {
            let mut unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
            unsent.since = None;
            unsent.by_key.drain().map(|(_, v)| v).collect()
        };
        if due.is_empty() {
            return;
        }
        let sent = !self.hold_off.active()
            && match self.send(&due).await {
                Ok(_) => {
                    self.hold_off.record(true);
                    true
                }
                Err(e) => {
                    self.failed("add", &e);
                    false
                }
            };
        if !sent {
            // What could not be sent is counted here, on this instance.
            for (c, n) in &due {
                if let Err(e) = self.fallback.add(std::slice::from_ref(c), Micros(*n)).await {
                    log::error!("budgets: cannot count spend on {}: {e}", c.key);
                }
            }
        }
    }

    fn remember(&self, counters: &[Counter], values: &[Micros]) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 100_000 {
            seen.retain(|_, (_, at)| at.elapsed() < self.refresh * STALE_FOR);
        }
        for (c, v) in counters.iter().zip(values) {
            seen.insert(c.key.clone(), (v.0, now));
        }
    }

    /// The values seen within `age` plus what this instance has not sent yet, if every counter
    /// has one; and whether any is older than `refresh`.
    fn recent(&self, counters: &[Counter], age: Duration) -> Option<(Vec<Micros>, bool)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
        let mut stale = false;
        let values = counters
            .iter()
            .map(|c| {
                let (v, at) = seen.get(&c.key)?;
                let old = at.elapsed();
                if old >= age {
                    return None;
                }
                stale |= old >= self.refresh;
                Some(Micros(v + unsent.by_key.get(&c.key).map_or(0, |(_, n)| *n)))
            })
            .collect::<Option<Vec<Micros>>>()?;
        Some((values, stale))
    }

    /// Reads `counters` again behind the request, unless a read of them is under way.
    fn read_behind(self: &Arc<Self>, counters: &[Counter]) {
        if self.hold_off.active() {
            return;
        }
        let name = joined(counters.iter().map(|c| c.key.as_str()));
        if !self.reading.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone()) {
            return;
        }
        let (inner, counters) = (self.clone(), counters.to_vec());
        tokio::spawn(async move {
            match inner.try_spent(&counters).await {
                Ok(v) => {
                    inner.hold_off.record(true);
                    inner.remember(&counters, &v);
                }
                Err(e) => inner.failed("read", &e),
            }
            inner.reading.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        });
    }

    /// Sends `adds` (counter, amount), one call per org; remembers the new values.
    async fn send(&self, adds: &[(Counter, u64)]) -> Result<Vec<Micros>, String> {
        let client = thread_client(&self.url, &self.config).await.map_err(|e| e.0)?;
        let mut by_tag: HashMap<&str, Vec<&(Counter, u64)>> = HashMap::new();
        for add in adds {
            by_tag.entry(tag(&add.0.key)).or_default().push(add);
        }
        let mut totals = HashMap::new();
        for group in by_tag.into_values() {
            let keys: Vec<String> = group.iter().map(|(c, _)| self.key(&c.key)).collect();
            let args: Vec<i64> =
                group.iter().flat_map(|(c, n)| [*n as i64, c.ttl.as_millis() as i64]).collect();
            let values: Vec<i64> =
                self.add.evalsha_with_reload(&client, keys, args).await.map_err(|e| e.to_string())?;
            let counters: Vec<Counter> = group.iter().map(|(c, _)| c.clone()).collect();
            let values: Vec<Micros> = values.into_iter().map(|n| Micros(n.max(0) as u64)).collect();
            self.remember(&counters, &values);
            for (c, v) in counters.iter().zip(values) {
                totals.insert(c.key.clone(), v);
            }
        }
        Ok(adds.iter().map(|(c, _)| totals.get(&c.key).copied().unwrap_or_default()).collect())
    }

    fn key(&self, key: &str) -> String {
        [self.prefix.as_str(), key].concat()
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.hold_off.record(false);
        if self.healthy.swap(false, Ordering::Relaxed) {
            log::warn!("budgets: Redis unreachable ({what}: {e}); this instance counts spend on its own");
        }
    }

    async fn try_spent(&self, counters: &[Counter]) -> Result<Vec<Micros>, String> {
        let client = thread_client(&self.url, &self.config).await.map_err(|e| e.0)?;
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

    async fn spent(self: &Arc<Self>, counters: &[Counter]) -> Result<Vec<Micros>, StoreError> {
        if let Some((values, stale)) = self.recent(counters, self.refresh * STALE_FOR) {
            if stale {
                self.read_behind(counters);
            }
            return Ok(values);
        }
        if self.hold_off.active() {
            return self.fallback.spent(counters).await;
        }
        match self.try_spent(counters).await {
            Ok(v) => {
                self.hold_off.record(true);
                self.remember(counters, &v);
                Ok(v)
            }
            Err(e) => {
                self.failed("read", &e);
                self.fallback.spent(counters).await
            }
        }
    }

    /// Adds the amount to this instance's unsent spend; true when it is to wait for the scheduled
    /// flush (a `refresh` window is set), false when it is to be sent now.
    fn defer(&self, counters: &[Counter], amount: Micros) -> bool {
        if self.refresh.is_zero() {
            return false;
        }
        let mut unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
        for c in counters {
            unsent.by_key.entry(c.key.clone()).or_insert_with(|| (c.clone(), 0)).1 += amount.0;
        }
        unsent.since.get_or_insert_with(Instant::now);
        true
    }

    /// This instance's best knowledge of the counters: the last values seen plus its unsent spend.
    fn estimate(&self, counters: &[Counter]) -> Vec<Micros> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
        counters
            .iter()
            .map(|c| {
                let base = seen.get(&c.key).map_or(0, |(v, _)| *v);
                Micros(base + unsent.by_key.get(&c.key).map_or(0, |(_, n)| *n))
            })
            .collect()
    }

    async fn add_now(&self, counters: &[Counter], amount: Micros) -> Result<Vec<Micros>, StoreError> {
        if self.hold_off.active() {
            return self.fallback.add(counters, amount).await;
        }
        let adds: Vec<(Counter, u64)> = counters.iter().map(|c| (c.clone(), amount.0)).collect();
        match self.send(&adds).await {
            Ok(values) => {
                self.hold_off.record(true);
                Ok(values)
            }
            Err(e) => {
                self.failed("add", &e);
                self.fallback.add(counters, amount).await
            }
        }
    }

    async fn first_time(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        if self.hold_off.active() {
            return self.fallback.first_time(key, ttl).await;
        }
        let answer: Result<Option<String>, String> = match thread_client(&self.url, &self.config).await {
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
            Ok(set) => {
                self.hold_off.record(true);
                Ok(set.is_some())
            }
            Err(e) => {
                self.failed("mark", &e);
                self.fallback.first_time(key, ttl).await
            }
        }
    }
}

impl RedisSpend {
    /// `healthy` and `hold_off` are shared with the limits store: one Redis, one health flag, one
    /// pause after failures. `refresh`: see the module's notes.
    pub fn new(
        url: &str,
        prefix: &str,
        seeder: Option<Arc<Seeder>>,
        healthy: Arc<AtomicBool>,
        hold_off: Arc<HoldOff>,
        refresh: Duration,
        ca_file: Option<&str>,
    ) -> Result<Self, String> {
        Ok(Self(Arc::new(RedisInner {
            url: url.to_owned(),
            config: crate::stores::redis::redis_config(url, ca_file)?,
            prefix: prefix.to_owned(),
            add: Script::from_lua(ADD),
            seed: Script::from_lua(SEED),
            fallback: MemorySpend::new(seeder.clone()),
            seeder,
            healthy,
            hold_off,
            scheduled: AtomicBool::new(false),
            seen: Mutex::new(HashMap::new()),
            reading: Mutex::default(),
            refresh,
            unsent: Mutex::default(),
        })))
    }
}

#[async_trait]
impl SpendStore for RedisSpend {
    async fn spent(&self, counters: &[Counter]) -> Result<Vec<Micros>, StoreError> {
        self.0.spent(counters).await
    }

    async fn add(&self, counters: &[Counter], amount: Micros) -> Result<Vec<Micros>, StoreError> {
        if self.0.defer(counters, amount) {
            if !self.0.scheduled.swap(true, Ordering::Relaxed) {
                let inner = self.0.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(inner.refresh).await;
                    inner.flush().await;
                });
            }
            return Ok(self.0.estimate(counters));
        }
        self.0.add_now(counters, amount).await
    }

    async fn first_time(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.0.first_time(key, ttl).await
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
