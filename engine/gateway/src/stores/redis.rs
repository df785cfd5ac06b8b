//! Limit state in Redis, shared by every instance: one Lua script checks and charges every bucket
//! of a request atomically, on Redis' clock (`TIME`), so counters stay right across instances and
//! clock skew. Keys are hash-tagged by org (`{org:ID}`), so one request's keys share a Redis Cluster
//! slot. Each worker thread keeps its own connection, on its own runtime.
//!
//! The correction of a token reservation at the end of a request costs no round trip of its own:
//! it waits (up to 100 ms) and rides along with the next reservation of the same org, applied by
//! the same script before that reservation is checked. Corrections older than that are sent on
//! their own. A refund thus returns capacity up to 100 ms late (never early), and corrections
//! pending when the process stops are lost, which only errs on the side of the limit.
//!
//! When Redis cannot answer (down, slow beyond the command timeout), the in-process limiter takes
//! over for this instance — limits stay in force, but per instance — and `/health` says so. With
//! `limits.on_store_failure = "open"` or `"closed"` there is no local limiter: the failure goes to
//! the plugin, which lets the request through or refuses it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy};
use fred::types::scripts::Script;
use sluice_core::limits::{Adjustment, BucketState, Charge, LimitStore, StoreError};

use super::memory::MemoryLimits;

/// First applies the corrections folded in from earlier requests (KEYS after the first ARGV[1]),
/// then checks every bucket to reserve and charges all or none. ARGV: the number n of buckets to
/// reserve, then per bucket limit, period (ms), cost, then per correction limit, period (ms), delta.
/// Returns per reserved bucket: allowed (1/0), remaining, ms until full, ms to wait when refused.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = tonumber(ARGV[1])
for j = n + 1, #KEYS do
  local base = 1 + (j - 1) * 3
  local tat = tonumber(redis.call('GET', KEYS[j]))
  if tat then
    local limit = tonumber(ARGV[base + 1])
    local new = tat + (tonumber(ARGV[base + 2]) / math.max(limit, 1)) * tonumber(ARGV[base + 3])
    if new < now then new = now end
    redis.call('SET', KEYS[j], tostring(new), 'PX', math.ceil(new - now) + 1000)
  end
end
local d = {}
local ok = true
for i = 1, n do
  local limit = tonumber(ARGV[1 + (i - 1) * 3 + 1])
  local period = tonumber(ARGV[1 + (i - 1) * 3 + 2])
  local cost = tonumber(ARGV[1 + (i - 1) * 3 + 3])
  local per = period / math.max(limit, 1)
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new = tat + per * cost
  local allowed = (new - now) <= period
  if not allowed then ok = false end
  d[i] = {tat, new, allowed, per, period, limit}
end
local out = {}
for i = 1, n do
  local tat, new, allowed, per, period, limit = d[i][1], d[i][2], d[i][3], d[i][4], d[i][5], d[i][6]
  local kept = tat
  if ok then
    kept = new
    redis.call('SET', KEYS[i], tostring(kept), 'PX', math.ceil(kept - now) + 1000)
  end
  local remaining = math.floor((period - (kept - now)) / per)
  if remaining < 0 then remaining = 0 end
  if remaining > limit then remaining = limit end
  local retry = 0
  if not allowed then retry = math.ceil(new - now - period) end
  out[i] = {allowed and 1 or 0, remaining, math.floor(kept - now), retry}
end
return out
"#;

/// Moves each bucket's TAT by its `delta` units (a refund when negative), never before now.
/// ARGV: per key, limit, period (ms), delta.
const ADJUST: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    local limit = tonumber(ARGV[(i - 1) * 3 + 1])
    local delta = tonumber(ARGV[(i - 1) * 3 + 3])
    local new = tat + (tonumber(ARGV[(i - 1) * 3 + 2]) / math.max(limit, 1)) * delta
    if new < now then new = now end
    redis.call('SET', KEYS[i], tostring(new), 'PX', math.ceil(new - now) + 1000)
  end
end
return 1
"#;

thread_local! {
    static CLIENTS: RefCell<HashMap<String, Client>> = RefCell::new(HashMap::new());
}

/// The client configuration of a Redis URL: `redis://`, or `rediss://` for TLS (the server's
/// certificate verified against the system's roots, or against `ca_file`). Errors never repeat the
/// URL, which may carry a password.
pub fn redis_config(url: &str, ca_file: Option<&str>) -> Result<Config, String> {
    let mut config = Config::from_url(url).map_err(|e| format!("not a usable Redis URL: {}", e.details()))?;
    if let Some(path) = ca_file {
        if config.tls.is_none() {
            return Err("a CA file is set but the URL is not rediss:// (TLS)".into());
        }
        let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA file {path}: {e}"))?;
        let ca = native_tls::Certificate::from_pem(&pem).map_err(|e| format!("{path}: {e}"))?;
        let connector = native_tls::TlsConnector::builder()
            .add_root_certificate(ca)
            .build()
            .map_err(|e| format!("TLS: {e}"))?;
        config.tls = Some(fred::types::config::TlsConnector::from(connector).into());
    }
    Ok(config)
}

/// This thread's connection to `url`, made on first use. The first use waits (up to 3 s) for the
/// connection — a Redis Cluster client must first learn the slots and reach every node, which
/// takes longer than one command's timeout; later commands only wait their own 250 ms. Shared by
/// every store using the same Redis.
pub async fn thread_client(url: &str, config: &Config) -> Result<Client, StoreError> {
    let (client, fresh) = CLIENTS.with(|clients| {
        if let Some(c) = clients.borrow().get(url) {
            return Ok((c.clone(), false));
        }
        let client = Builder::from_config(config.clone())
            .with_connection_config(|c| c.connection_timeout = Duration::from_millis(1_000))
            .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(250))
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| StoreError(e.to_string()))?;
        client.connect();
        clients.borrow_mut().insert(url.to_owned(), client.clone());
        Ok::<_, StoreError>((client, true))
    })?;
    if fresh {
        match tokio::time::timeout(Duration::from_secs(3), client.wait_for_connect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("Redis: first connection failed: {e}"),
            Err(_) => log::warn!("Redis: no connection within 3 s"),
        }
    }
    Ok(client)
}

pub struct RedisLimits {
    url: String,
    config: Config,
    prefix: String,
    reserve: Script,
    adjust: Script,
    /// The local limiter, unless failures go to the plugin.
    fallback: Option<MemoryLimits>,
    healthy: Arc<AtomicBool>,
    /// Token corrections not yet sent: folded into the next reservation of the same org (same
    /// Redis Cluster slot), or sent on their own once older than [`FOLD_WINDOW`].
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    by_key: HashMap<String, Adjustment>,
    since: Option<Instant>,
}

/// How long a correction may wait for a reservation to ride along with.
const FOLD_WINDOW: Duration = Duration::from_millis(100);

/// The hash tag of a key (`{org:acme}` of `{org:acme}:team:t:tpm`), or the whole key.
pub(crate) fn tag(key: &str) -> &str {
    match (key.starts_with('{'), key.find('}')) {
        (true, Some(end)) => &key[..=end],
        _ => key,
    }
}

impl RedisLimits {
    /// Adds corrections to the pending ones (deltas of one bucket add up).
    fn defer(&self, adjustments: &[Adjustment]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for a in adjustments {
            pending
                .by_key
                .entry(a.key.clone())
                .and_modify(|p| p.delta += a.delta)
                .or_insert_with(|| a.clone());
        }
        if !pending.by_key.is_empty() && pending.since.is_none() {
            pending.since = Some(Instant::now());
        }
    }

    /// `url`: `redis://host:port[/db]` or `rediss://` for TLS; `prefix` goes before every key.
    pub fn new(url: &str, prefix: &str, local_fallback: bool, ca_file: Option<&str>) -> Result<Self, String> {
        let config = redis_config(url, ca_file)?;
        Ok(Self {
            url: url.to_owned(),
            config,
            prefix: prefix.to_owned(),
            reserve: Script::from_lua(RESERVE),
            adjust: Script::from_lua(ADJUST),
            fallback: local_fallback.then(MemoryLimits::default),
            pending: Mutex::default(),
            healthy: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Whether the last call reached Redis (else the in-process limiter is answering).
    pub fn healthy(&self) -> Arc<AtomicBool> {
        self.healthy.clone()
    }

    async fn client(&self) -> Result<Client, StoreError> {
        thread_client(&self.url, &self.config).await
    }

    fn key(&self, key: &str) -> String {
        [self.prefix.as_str(), key].concat()
    }

    fn note(&self, ok: bool, what: &str, e: Option<&dyn std::fmt::Display>) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        match (was, ok, e) {
            (true, false, Some(e)) => {
                log::warn!("limits: Redis unreachable ({what}: {e}); this instance limits on its own")
            }
            (false, true, _) => log::warn!("limits: Redis is back"),
            _ => {}
        }
    }
}

#[async_trait]
impl LimitStore for RedisLimits {
    async fn reserve(&self, charges: &[Charge]) -> Result<Vec<BucketState>, StoreError> {
        // Corrections of the same org ride along: no round trip of their own.
        let folded: Vec<Adjustment> = match charges.first() {
            Some(first) => {
                let tag = tag(&first.key);
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let keys: Vec<String> =
                    pending.by_key.keys().filter(|k| self::tag(k) == tag).cloned().collect();
                let taken: Vec<Adjustment> = keys.iter().filter_map(|k| pending.by_key.remove(k)).collect();
                if pending.by_key.is_empty() {
                    pending.since = None;
                }
                taken
            }
            None => Vec::new(),
        };
        let keys: Vec<String> =
            charges.iter().map(|c| self.key(&c.key)).chain(folded.iter().map(|a| self.key(&a.key))).collect();
        let mut args: Vec<i64> = vec![charges.len() as i64];
        args.extend(
            charges.iter().flat_map(|c| [c.limit as i64, c.period.as_millis() as i64, c.cost as i64]),
        );
        args.extend(folded.iter().flat_map(|a| [a.limit as i64, a.period.as_millis() as i64, a.delta]));
        let answer: Result<Vec<Vec<i64>>, String> = match self.client().await {
            Ok(client) => {
                self.reserve.evalsha_with_reload(&client, keys, args).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.0),
        };
        if answer.is_err() && !folded.is_empty() {
            self.defer(&folded);
        }
        match answer {
            Ok(rows) if rows.len() == charges.len() => {
                self.note(true, "reserve", None);
                Ok(rows
                    .iter()
                    .map(|r| BucketState {
                        allowed: r.first() == Some(&1),
                        remaining: r.get(1).copied().unwrap_or(0).max(0) as u64,
                        reset: Duration::from_millis(r.get(2).copied().unwrap_or(0).max(0) as u64),
                        retry_after: Duration::from_millis(r.get(3).copied().unwrap_or(0).max(0) as u64),
                    })
                    .collect())
            }
            Ok(rows) => {
                Err(StoreError(format!("Redis answered {} rows for {} keys", rows.len(), charges.len())))
            }
            Err(e) => {
                self.note(false, "reserve", Some(&e));
                match &self.fallback {
                    Some(local) => local.reserve(charges).await,
                    None => Err(StoreError(e)),
                }
            }
        }
    }

    /// Corrections wait (up to [`FOLD_WINDOW`]) for the next reservation of their org; older ones
    /// are sent now, one call per org.
    async fn adjust(&self, adjustments: &[Adjustment]) -> Result<(), StoreError> {
        self.defer(adjustments);
        let due: Vec<Adjustment> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.since.is_none_or(|t| t.elapsed() < FOLD_WINDOW) {
                return Ok(());
            }
            pending.since = None;
            pending.by_key.drain().map(|(_, a)| a).collect()
        };
        let mut by_tag: HashMap<&str, Vec<&Adjustment>> = HashMap::new();
        for a in &due {
            by_tag.entry(tag(&a.key)).or_default().push(a);
        }
        for group in by_tag.into_values() {
            let keys: Vec<String> = group.iter().map(|a| self.key(&a.key)).collect();
            let args: Vec<i64> =
                group.iter().flat_map(|a| [a.limit as i64, a.period.as_millis() as i64, a.delta]).collect();
            let done: Result<i64, String> = match self.client().await {
                Ok(client) => {
                    self.adjust.evalsha_with_reload(&client, keys, args).await.map_err(|e| e.to_string())
                }
                Err(e) => Err(e.0),
            };
            if let Err(e) = done {
                self.note(false, "adjust", Some(&e));
                let group: Vec<Adjustment> = group.into_iter().cloned().collect();
                match &self.fallback {
                    Some(local) => local.adjust(&group).await?,
                    None => return Err(StoreError(e)),
                }
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
