//! Limit state in Redis, shared by every instance: one Lua script checks and charges every bucket
//! of a request atomically, on Redis' clock (`TIME`), so counters stay right across instances and
//! clock skew. Keys are hash-tagged by org (`{org:ID}`), so one request's keys share a Redis Cluster
//! slot. Each worker thread keeps its own connection, on its own runtime.
//!
//! When Redis cannot answer (down, slow beyond the command timeout), the in-process limiter takes
//! over for this instance — limits stay in force, but per instance — and `/health` says so. With
//! `limits.on_store_failure = "open"` or `"closed"` there is no local limiter: the failure goes to
//! the plugin, which lets the request through or refuses it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy};
use fred::types::scripts::Script;
use sluice_core::limits::{BucketState, Charge, LimitStore, StoreError};

use super::memory::MemoryLimits;

/// Checks every bucket, then charges all or none. ARGV: per key, limit, period (ms), cost.
/// Returns per key: allowed (1/0), remaining, ms until full, ms to wait when refused.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = #KEYS
local d = {}
local ok = true
for i = 1, n do
  local limit = tonumber(ARGV[(i - 1) * 3 + 1])
  local period = tonumber(ARGV[(i - 1) * 3 + 2])
  local cost = tonumber(ARGV[(i - 1) * 3 + 3])
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

/// Moves one bucket's TAT by `delta` units (a refund when negative), never before now.
const ADJUST: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local new = tat + (tonumber(ARGV[2]) / math.max(tonumber(ARGV[1]), 1)) * tonumber(ARGV[3])
if new < now then new = now end
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil(new - now) + 1000)
return 1
"#;

thread_local! {
    static CLIENTS: RefCell<HashMap<String, Client>> = RefCell::new(HashMap::new());
}

/// This thread's connection to `url`, made on first use (commands wait for it, within their
/// timeout). Shared by every store using the same Redis.
pub fn thread_client(url: &str, config: &Config) -> Result<Client, StoreError> {
    CLIENTS.with(|clients| {
        if let Some(c) = clients.borrow().get(url) {
            return Ok(c.clone());
        }
        let client = Builder::from_config(config.clone())
            .with_connection_config(|c| c.connection_timeout = Duration::from_millis(500))
            .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(250))
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| StoreError(e.to_string()))?;
        client.connect();
        clients.borrow_mut().insert(url.to_owned(), client.clone());
        Ok(client)
    })
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
}

impl RedisLimits {
    /// `url`: `redis://host:port[/db]` or `rediss://` for TLS; `prefix` goes before every key.
    pub fn new(url: &str, prefix: &str, local_fallback: bool) -> Result<Self, String> {
        let config = Config::from_url(url).map_err(|e| format!("`{url}`: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            config,
            prefix: prefix.to_owned(),
            reserve: Script::from_lua(RESERVE),
            adjust: Script::from_lua(ADJUST),
            fallback: local_fallback.then(MemoryLimits::default),
            healthy: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Whether the last call reached Redis (else the in-process limiter is answering).
    pub fn healthy(&self) -> Arc<AtomicBool> {
        self.healthy.clone()
    }

    fn client(&self) -> Result<Client, StoreError> {
        thread_client(&self.url, &self.config)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
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
        let keys: Vec<String> = charges.iter().map(|c| self.key(&c.key)).collect();
        let args: Vec<i64> = charges
            .iter()
            .flat_map(|c| [c.limit as i64, c.period.as_millis() as i64, c.cost as i64])
            .collect();
        let answer: Result<Vec<Vec<i64>>, String> = match self.client() {
            Ok(client) => {
                self.reserve.evalsha_with_reload(&client, keys, args).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.0),
        };
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

    async fn adjust(&self, key: &str, limit: u64, period: Duration, delta: i64) -> Result<(), StoreError> {
        let args = vec![limit as i64, period.as_millis() as i64, delta];
        let done: Result<i64, String> = match self.client() {
            Ok(client) => self
                .adjust
                .evalsha_with_reload(&client, vec![self.key(key)], args)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.0),
        };
        if let Err(e) = done {
            self.note(false, "adjust", Some(&e));
            return match &self.fallback {
                Some(local) => local.adjust(key, limit, period, delta).await,
                None => Err(StoreError(e)),
            };
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
