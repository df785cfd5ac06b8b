//! Limit state in Redis, shared by every instance: one Lua script checks and charges every bucket
//! of a request atomically, on Redis' clock (`TIME`), so counters stay right across instances and
//! clock skew. An org's buckets are the fields of one hash, `{org:ID}:limits` (hash-tagged, so it
//! sits in one Redis Cluster slot): a reservation reads them with one `HMGET` and writes them with
//! one `HSET`. Each worker thread keeps its own connection, on its own runtime.
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
use fred::types::Value;
use fred::types::scripts::Script;
use sluice_core::limits::{Adjustment, BucketState, Charge, LimitStore, StoreError};

use super::memory::MemoryLimits;

/// Buckets live as fields of one hash per hash tag (`{org:acme}:limits`, field `:team:t:tpm`), so
/// that a request's buckets are read with one `HMGET` and written with one `HSET`: inside a script
/// each `redis.call` costs Redis a few microseconds of its own, and per-key `GET`/`SET` made a
/// reservation a dozen or more of them.
///
/// First applies the corrections (folded in from earlier requests, or sent on their own with no
/// bucket to reserve), then checks every bucket to reserve and charges all or none; a bucket that
/// is corrected and reserved is read and written once. ARGV: n buckets to reserve, m corrections,
/// then per bucket (reserved ones first) its hash's index in KEYS, its field, limit, period (ms),
/// and cost (a correction: delta). A hash lives until its furthest bucket is full again, plus a
/// second; it is never shortened. Returns per reserved bucket: allowed (1/0), remaining, ms until
/// full, ms to wait when refused.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = {}
for i = 1, n + m do
  local a = 2 + (i - 1) * 5
  b[i] = {key = KEYS[tonumber(ARGV[a + 1])], field = ARGV[a + 2], limit = tonumber(ARGV[a + 3]),
    period = tonumber(ARGV[a + 4]), amount = tonumber(ARGV[a + 5])}
end
local tats = {}
for k = 1, #KEYS do
  local fields = {}
  for i = 1, n + m do
    if b[i].key == KEYS[k] then fields[#fields + 1] = b[i].field end
  end
  local got = redis.call('HMGET', KEYS[k], unpack(fields))
  local map = {}
  for i = 1, #fields do map[fields[i]] = tonumber(got[i]) end
  tats[KEYS[k]] = map
end
local dirty = {}
for i = n + 1, n + m do
  local x = b[i]
  local tat = tats[x.key][x.field]
  if tat then
    local new = tat + (x.period / math.max(x.limit, 1)) * x.amount
    if new < now then new = now end
    tats[x.key][x.field] = new
    dirty[i] = true
  end
end
local d = {}
local ok = true
for i = 1, n do
  local x = b[i]
  local per = x.period / math.max(x.limit, 1)
  local tat = tats[x.key][x.field] or now
  if tat < now then tat = now end
  local new = tat + per * x.amount
  local allowed = (new - now) <= x.period
  if not allowed then ok = false end
  d[i] = {tat, new, allowed, per}
end
local out = {}
for i = 1, n do
  local x = b[i]
  local tat, new, allowed, per = d[i][1], d[i][2], d[i][3], d[i][4]
  local kept = tat
  if ok then
    kept = new
    tats[x.key][x.field] = kept
    dirty[i] = true
  end
  local remaining = math.floor((x.period - (kept - now)) / per)
  if remaining < 0 then remaining = 0 end
  if remaining > x.limit then remaining = x.limit end
  local retry = 0
  if not allowed then retry = math.ceil(new - now - x.period) end
  out[i] = {allowed and 1 or 0, remaining, math.floor(kept - now), retry}
end
for k = 1, #KEYS do
  local args, done, horizon = {}, {}, 0
  for i = 1, n + m do
    local x = b[i]
    if dirty[i] and x.key == KEYS[k] and not done[x.field] then
      done[x.field] = true
      local v = tats[x.key][x.field]
      args[#args + 1] = x.field
      args[#args + 1] = tostring(v)
      if v - now > horizon then horizon = v - now end
    end
  end
  if #args > 0 then
    redis.call('HSET', KEYS[k], unpack(args))
    local ttl = math.ceil(horizon) + 1000
    if redis.call('PTTL', KEYS[k]) < ttl then redis.call('PEXPIRE', KEYS[k], ttl) end
  end
end
return out
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

    /// KEYS and ARGV of [`RESERVE`] for `reserved` buckets followed by corrections, each
    /// (bucket key, limit, period, cost or delta): one hash per hash tag, the rest of a bucket's key
    /// its field.
    fn script_args<'a>(
        &self,
        reserved: usize,
        buckets: impl Iterator<Item = (&'a str, u64, Duration, i64)>,
    ) -> (Vec<String>, Vec<Value>) {
        let mut keys: Vec<String> = Vec::with_capacity(1);
        let mut tags: Vec<&str> = Vec::with_capacity(1);
        let mut args: Vec<Value> = Vec::with_capacity(32);
        args.push(Value::Integer(reserved as i64));
        args.push(Value::Integer(0));
        let mut count: usize = 0;
        for (key, limit, period, amount) in buckets {
            let tag = tag(key);
            let index = match tags.iter().position(|t| *t == tag) {
                Some(i) => i,
                None => {
                    tags.push(tag);
                    keys.push([self.prefix.as_str(), tag, ":limits"].concat());
                    tags.len() - 1
                }
            };
            args.push(Value::Integer(index as i64 + 1));
            args.push(Value::from(&key[tag.len()..]));
            args.push(Value::Integer(limit as i64));
            args.push(Value::Integer(period.as_millis() as i64));
            args.push(Value::Integer(amount));
            count += 1;
        }
        args[1] = Value::Integer(count.saturating_sub(reserved) as i64);
        (keys, args)
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
        let reserved = charges.iter().map(|c| (c.key.as_str(), c.limit, c.period, c.cost as i64));
        let corrected = folded.iter().map(|a| (a.key.as_str(), a.limit, a.period, a.delta));
        let (keys, args) = self.script_args(charges.len(), reserved.chain(corrected));
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
            let corrected = group.iter().map(|a| (a.key.as_str(), a.limit, a.period, a.delta));
            let (keys, args) = self.script_args(0, corrected);
            let done: Result<Vec<Vec<i64>>, String> = match self.client().await {
                Ok(client) => {
                    self.reserve.evalsha_with_reload(&client, keys, args).await.map_err(|e| e.to_string())
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
