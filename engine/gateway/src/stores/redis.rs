//! Limit state in Redis, shared by every instance: one Lua script checks and charges every bucket
//! of a request atomically, on Redis' clock (`TIME`), so counters stay right across instances and
//! clock skew. An org's buckets are the fields of one hash, `{org:ID}` (the hash tag of the keys
//! the plugin names), so one request's state is one key in one Redis Cluster slot. Each worker
//! thread keeps its own connection, on its own runtime.
//!
//! The correction of a token reservation at the end of a request costs no round trip of its own:
//! it waits (up to 100 ms) and rides along with the next reservation of the same org, applied by
//! the same script before that reservation is checked. Corrections older than that are sent on
//! their own. A refund thus returns capacity up to 100 ms late (never early), and corrections
//! pending when the process stops are lost, which only errs on the side of the limit.
//!
//! A call that Redis may have run is never sent again: a command past its deadline may still run
//! (a slow Redis answers late), so corrections that rode along with it are dropped, not re-queued
//! — only those of a call that never left (no connection) wait for the next one. A reservation
//! the in-process limiter made instead is corrected there, never in Redis, which did not take it;
//! if the reservation also ran in Redis after its deadline, Redis keeps it uncorrected until it
//! expires — again on the side of the limit.
//!
//! Leases (`limits.lease_percent`, on by default): the script can also take units ahead for the
//! next requests of the same caller, which this instance then admits without a round trip while
//! the lease lasts (`limits.lease_ttl`) — see [`RedisLimits::reserve`] and docs/operations.md.
//!
//! When Redis cannot answer (down, slow beyond the command timeout), the in-process limiter takes
//! over for this instance — limits stay in force, but per instance — and `/health` says so. A
//! request never waits on a connection known to be down, and after three failed calls in a row
//! Redis is left alone for a second: a Redis that hangs costs one request a second the 250 ms
//! deadline. With `limits.on_store_failure = "open"` or `"closed"` there is no local limiter: the
//! failure goes to the plugin, which lets the request through or refuses it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy};
use fred::types::ConnectHandle;
use fred::types::Value;
use fred::types::scripts::Script;
use sluice_core::limits::{Adjustment, BucketState, Charge, LimitStore, StoreError};

use super::memory::MemoryLimits;

/// Applies corrections, then checks every bucket to reserve and charges all or none (GCRA, as
/// `sluice_core::limits::gcra`). The buckets of a hash tag live in one Redis hash (`KEYS`), a field
/// per bucket holding its TAT in ms as a decimal string, the hash kept until its fullest bucket is
/// full again plus a second. The numbers travel packed (`struct`, little-endian doubles): Lua's
/// `tonumber` on three dozen arguments and a reply of nested arrays cost Redis more than the
/// arithmetic, and the client as much again to encode and decode (see docs/benchmarks.md).
///
/// `ARGV[1]`: the number n of buckets to reserve, the number m of fields, the lease k, per field
/// the index of its hash in `KEYS`, then per bucket (the n reserved first, then the corrections)
/// its field's index, limit, period (ms) and units (the cost, or a correction's delta).
/// `ARGV[2..=m+1]`: the field names. With k > 0, a request that fits also takes a lease for up to
/// k more like it: as many as leave every bucket at least twice the lease's units (so leases
/// shrink as a bucket drains, and none is granted near its limit). Returns, packed, per reserved
/// bucket: allowed (1/0), remaining, ms until full, ms to wait when refused; then the lease granted
/// (requests; 0 for none). Nothing when n = 0.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local v = {struct.unpack('<' .. string.rep('d', #ARGV[1] / 8), ARGV[1])}
local n, m, lease = v[1], v[2], v[3]
local buckets = (#ARGV[1] / 8 - 3 - m) / 4
local tat = {}
for k = 1, #KEYS do
  local fields, names = {}, {}
  for j = 1, m do
    if v[3 + j] == k then
      fields[#fields + 1] = j
      names[#names + 1] = ARGV[1 + j]
    end
  end
  if #names > 0 then
    local stored = redis.call('HMGET', KEYS[k], unpack(names))
    for i = 1, #fields do tat[fields[i]] = tonumber(stored[i]) end
  end
end
local dirty = {}
for b = n, buckets - 1 do
  local at = 4 + m + b * 4
  local j = v[at]
  if tat[j] then
    local new = tat[j] + v[at + 2] / math.max(v[at + 1], 1) * v[at + 3]
    if new < now then new = now end
    tat[j] = new
    dirty[j] = true
  end
end
local function try(times)
  local d, ok = {}, true
  for b = 0, n - 1 do
    local at = 4 + m + b * 4
    local limit, period = v[at + 1], v[at + 2]
    local per = period / math.max(limit, 1)
    local old = tat[v[at]] or now
    if old < now then old = now end
    local new = old + per * v[at + 3] * times
    local allowed = (new - now) <= period
    if not allowed then ok = false end
    d[b] = {old, new, allowed, per, period, limit}
  end
  return d, ok
end
local d, ok = try(1)
if ok and lease > 0 then
  for b = 0, n - 1 do
    local cost = v[4 + m + b * 4 + 3]
    if cost > 0 then
      local _, new, _, per, period = unpack(d[b])
      local most = math.floor(math.floor((period - (new - now)) / per) / (2 * cost))
      if most < lease then lease = most end
    end
  end
  if lease > 0 then
    local dl, okl = try(1 + lease)
    if okl then d = dl else lease = 0 end
  end
else
  lease = 0
end
local out = {}
for b = 0, n - 1 do
  local old, new, allowed, per, period, limit = unpack(d[b])
  local kept = old
  if ok then
    kept = new
    tat[v[4 + m + b * 4]] = new
    dirty[v[4 + m + b * 4]] = true
  end
  local remaining = math.floor((period - (kept - now)) / per)
  if remaining < 0 then remaining = 0 end
  if remaining > limit then remaining = limit end
  local retry = 0
  if not allowed then retry = math.ceil(new - now - period) end
  out[#out + 1] = allowed and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = math.floor(kept - now)
  out[#out + 1] = retry
end
if n > 0 then out[#out + 1] = lease end
for k = 1, #KEYS do
  local set, far = {}, now
  for j = 1, m do
    if dirty[j] and v[3 + j] == k then
      set[#set + 1] = ARGV[1 + j]
      set[#set + 1] = tostring(tat[j])
      if tat[j] > far then far = tat[j] end
    end
  end
  if #set > 0 then
    redis.call('HSET', KEYS[k], unpack(set))
    local keep = math.ceil(far - now) + 1000
    if redis.call('PTTL', KEYS[k]) < keep then redis.call('PEXPIRE', KEYS[k], keep) end
  end
end
return struct.pack('<' .. string.rep('d', #out), unpack(out))
"#;

thread_local! {
    static CLIENTS: RefCell<HashMap<String, ThreadClient>> = RefCell::new(HashMap::new());
}

/// A worker thread's connection to one Redis, and the task that keeps it.
struct ThreadClient {
    client: Client,
    /// The connection task: it reconnects on its own after a lost connection, but ends when the
    /// first connection fails.
    task: ConnectHandle,
    /// When the task was started last.
    started: Instant,
    created: Instant,
}

/// How long the requests that arrive while a thread's first connection is being made wait for
/// it — a Redis Cluster client must first learn the slots and reach every node, which takes
/// longer than one command's timeout.
const FIRST_CONNECTION: Duration = Duration::from_secs(3);

/// How often a connection that never came up is tried again.
const RETRY_FIRST_CONNECTION: Duration = Duration::from_secs(1);

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

/// This thread's connection to `url`, made as the worker starts ([`Warmup`]) or on first use; the
/// uses of its first moments wait for it (up to [`FIRST_CONNECTION`]), later commands only wait
/// their own 250 ms. Shared by every store using the same Redis.
///
/// While the connection is down this answers at once with an error, so a request falls back
/// without waiting on a command that cannot be sent. A lost connection is re-made by fred's
/// reconnection policy; a first connection that failed (Redis not up yet when the gateway
/// started) is tried again every [`RETRY_FIRST_CONNECTION`].
pub async fn thread_client(url: &str, config: &Config) -> Result<Client, StoreError> {
    let (client, wait, fresh) = CLIENTS.with(|clients| {
        if let Some(c) = clients.borrow_mut().get_mut(url) {
            if c.client.is_connected() {
                return Ok((c.client.clone(), None, false));
            }
            if c.task.is_finished() && c.started.elapsed() >= RETRY_FIRST_CONNECTION {
                c.task = c.client.connect();
                c.started = Instant::now();
            }
            let wait = FIRST_CONNECTION.checked_sub(c.created.elapsed()).filter(|_| !c.task.is_finished());
            return Ok((c.client.clone(), wait, false));
        }
        let client = Builder::from_config(config.clone())
            .with_connection_config(|c| c.connection_timeout = Duration::from_millis(1_000))
            .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(250))
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| StoreError(e.to_string()))?;
        let task = client.connect();
        let now = Instant::now();
        let c = ThreadClient { client: client.clone(), task, started: now, created: now };
        clients.borrow_mut().insert(url.to_owned(), c);
        Ok::<_, StoreError>((client, Some(FIRST_CONNECTION), true))
    })?;
    if let Some(wait) = wait.filter(|_| !client.is_connected()) {
        let outcome = tokio::time::timeout(wait, client.wait_for_connect()).await;
        match outcome {
            Ok(Err(e)) if fresh => log::warn!("Redis: first connection failed: {e}"),
            Err(_) if fresh => log::warn!("Redis: no connection within {} s", FIRST_CONNECTION.as_secs()),
            _ => {}
        }
    }
    if client.is_connected() { Ok(client) } else { Err(StoreError("not connected".into())) }
}

/// A Redis that each worker thread connects to as it starts, so that no request waits for the
/// connection (nor, on a Redis Cluster, for the slots to be learned).
#[derive(Clone)]
pub struct Warmup {
    url: String,
    config: Config,
}

impl Warmup {
    /// Makes this thread's connection ([`thread_client`]); a failure is logged there and the
    /// connection is tried again on use.
    pub async fn connect(&self) {
        let _ = thread_client(&self.url, &self.config).await;
    }
}

pub struct RedisLimits {
    url: String,
    config: Config,
    prefix: String,
    reserve: Script,
    /// The local limiter, unless failures go to the plugin.
    fallback: Option<MemoryLimits>,
    healthy: Arc<AtomicBool>,
    hold_off: Arc<HoldOff>,
    /// Token corrections not yet sent: folded into the next reservation of the same org (same
    /// Redis Cluster slot), or sent on their own once older than [`FOLD_WINDOW`].
    pending: Mutex<Pending>,
    /// How leases are sized, when they are on.
    lease: Option<LeasePolicy>,
    /// The leases this instance holds, and those being asked for.
    leases: Mutex<Leases>,
}

/// Leases by the keys of the buckets they are taken on.
#[derive(Default)]
struct Leases {
    held: HashMap<String, Lease>,
    /// Buckets a reservation is asking a lease for now: requests alongside it ask for none, so
    /// that a burst of them does not take a lease each.
    asking: std::collections::HashSet<String>,
}

/// A lease being asked for; dropped (the call done, failed or abandoned), it lets others ask.
struct Asking<'a> {
    leases: &'a Mutex<Leases>,
    name: String,
    k: u64,
    ttl: Duration,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).asking.remove(&self.name);
    }
}

/// How much an instance reserves ahead: at most `share` of each limit, usable for `ttl`.
#[derive(Debug, Clone, Copy)]
struct LeasePolicy {
    share: f64,
    ttl: Duration,
}

/// Units of a set of buckets taken in Redis ahead of the requests that use them: requests of the
/// same caller are admitted from it without a round trip while it lasts and holds their cost.
struct Lease {
    /// Units left per bucket, in the order of the charges it was taken with.
    left: Vec<u64>,
    /// The buckets (key, limit, period), to check a request against and to give back what is left.
    buckets: Vec<(String, u64, Duration)>,
    /// What Redis answered when it was taken: remaining counts without this lease's units.
    states: Vec<BucketState>,
    taken: Instant,
    /// Requests admitted on it, the one that took it included: the next lease is sized from it.
    used: u64,
}

impl Lease {
    /// Whether `charges` are this lease's buckets and fit in what it has left.
    fn covers(&self, charges: &[Charge]) -> bool {
        charges.len() == self.buckets.len()
            && charges.iter().zip(&self.buckets).zip(&self.left).all(|((c, (key, limit, period)), left)| {
                c.key == *key && c.limit == *limit && c.period == *period && c.cost <= *left
            })
    }

    /// The states to report for a request admitted now: what Redis had left when the lease was
    /// taken, plus what the lease still holds.
    fn states(&self) -> Vec<BucketState> {
        let elapsed = self.taken.elapsed();
        self.states
            .iter()
            .zip(&self.left)
            .map(|(s, left)| BucketState {
                allowed: true,
                remaining: s.remaining + left,
                reset: s.reset.saturating_sub(elapsed),
                retry_after: Duration::ZERO,
                fallback: false,
            })
            .collect()
    }

    /// Gives back what is left: corrections for Redis.
    fn refund(&self) -> Vec<Adjustment> {
        self.buckets
            .iter()
            .zip(&self.left)
            .filter(|(_, left)| **left > 0)
            .map(|((key, limit, period), left)| Adjustment {
                key: key.clone(),
                limit: *limit,
                period: *period,
                delta: -(*left as i64),
                fallback: false,
            })
            .collect()
    }
}

/// Leases held at once before expired ones are swept.
const LEASES_SWEPT_FROM: usize = 4096;

#[derive(Default)]
struct Pending {
    by_key: HashMap<String, Adjustment>,
    since: Option<Instant>,
}

/// After [`FAILURES_TO_HOLD_OFF`] failed calls in a row, how long the stores of a Redis go to
/// their fallbacks (or the failure policy) without trying it.
const HOLD_OFF: Duration = Duration::from_secs(1);
const FAILURES_TO_HOLD_OFF: u32 = 3;

/// Leaves a Redis alone for [`HOLD_OFF`] after [`FAILURES_TO_HOLD_OFF`] failed calls in a row, so
/// a Redis that hangs costs one call a second the command deadline, not every request. One slow
/// call alone, as on a loaded machine, does not send an instance's traffic to its own limiter (or
/// refuse it, failing closed). Shared by the stores of one Redis; after the pause the next call
/// tries Redis again, and one more failure starts another pause.
pub struct HoldOff {
    /// Calls failed in a row.
    failures: AtomicU32,
    /// Until when, in milliseconds after `epoch`, calls skip Redis.
    until: AtomicU64,
    epoch: Instant,
}

impl HoldOff {
    pub fn new() -> Self {
        Self { failures: AtomicU32::new(0), until: AtomicU64::new(0), epoch: Instant::now() }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether calls are to skip Redis now.
    pub fn active(&self) -> bool {
        self.now() < self.until.load(Ordering::Relaxed)
    }

    /// Counts the outcome of a call.
    pub fn record(&self, ok: bool) {
        if !ok {
            if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAILURES_TO_HOLD_OFF {
                self.until.store(self.now() + HOLD_OFF.as_millis() as u64, Ordering::Relaxed);
            }
        } else if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }
}

impl Default for HoldOff {
    fn default() -> Self {
        Self::new()
    }
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

/// Store keys as one name (each ended by a newline), for what is kept per set of keys.
pub(crate) fn joined<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> String {
    let mut name = String::with_capacity(keys.clone().map(|k| k.len() + 1).sum());
    for k in keys {
        name.push_str(k);
        name.push('\n');
    }
    name
}

/// A failed call of [`RESERVE`].
struct CallError {
    message: String,
    /// Whether the command left: past its deadline it may still run, so it is not sent again.
    sent: bool,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl RedisLimits {
    /// The in-process limiter's decision, marked as such (its corrections go to it).
    async fn reserve_locally(
        &self,
        local: &MemoryLimits,
        charges: &[Charge],
    ) -> Result<Vec<BucketState>, StoreError> {
        let mut states = local.reserve(charges).await?;
        for s in &mut states {
            s.fallback = true;
        }
        Ok(states)
    }

    /// Adds corrections of Redis' reservations to the pending ones (deltas of one bucket add up);
    /// those of the in-process limiter's are not Redis' to apply.
    fn defer(&self, adjustments: &[Adjustment]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for a in adjustments.iter().filter(|a| !a.fallback) {
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
            hold_off: Arc::new(HoldOff::new()),
            lease: None,
            leases: Mutex::default(),
        })
    }

    /// Turns leases on: each instance may reserve up to `percent` of a limit ahead, usable for
    /// `ttl`. See [`RedisLimits::reserve`].
    pub fn with_leases(mut self, percent: f64, ttl: Duration) -> Self {
        self.lease = (percent > 0.0 && !ttl.is_zero()).then_some(LeasePolicy { share: percent / 100.0, ttl });
        self
    }

    /// A request admitted from a lease, if one covers it. An expired lease, or one that cannot
    /// hold this request, is given back (its refund rides along with the next reservation).
    /// Otherwise: whether to ask for a new lease (no other request is asking for one for these
    /// buckets), and how many requests the last one admitted, to size it.
    fn take_from_lease(
        &self,
        name: &str,
        charges: &[Charge],
        ttl: Duration,
    ) -> Result<Vec<BucketState>, Option<u64>> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let mut used = 0;
        let mut refund = Vec::new();
        if let Some(lease) = leases.held.get_mut(name) {
            if lease.taken.elapsed() < ttl && lease.covers(charges) {
                for (left, c) in lease.left.iter_mut().zip(charges) {
                    *left -= c.cost;
                }
                lease.used += 1;
                return Ok(lease.states());
            }
            used = lease.used;
            refund = lease.refund();
            leases.held.remove(name);
        }
        let ask = leases.asking.insert(name.to_owned());
        drop(leases);
        self.defer(&refund);
        Err(ask.then_some(used))
    }

    /// Keeps a lease Redis granted; one it replaces (taken by a request running alongside) or
    /// expired ones swept from a full table are given back.
    fn keep_lease(&self, name: String, lease: Lease, ttl: Duration) {
        let mut refund = Vec::new();
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if leases.held.len() >= LEASES_SWEPT_FROM {
            leases.held.retain(|_, l| {
                let live = l.taken.elapsed() < ttl;
                if !live {
                    refund.extend(l.refund());
                }
                live
            });
        }
        if let Some(old) = leases.held.insert(name, lease) {
            refund.extend(old.refund());
        }
        drop(leases);
        self.defer(&refund);
    }

    /// Whether the last call reached Redis (else the in-process limiter is answering).
    pub fn healthy(&self) -> Arc<AtomicBool> {
        self.healthy.clone()
    }

    /// The connection each worker thread makes as it starts.
    pub fn warmup(&self) -> Warmup {
        Warmup { url: self.url.clone(), config: self.config.clone() }
    }

    /// When to leave this Redis alone; to be shared with the other stores using it.
    pub fn hold_off(&self) -> Arc<HoldOff> {
        self.hold_off.clone()
    }

    async fn client(&self) -> Result<Client, StoreError> {
        thread_client(&self.url, &self.config).await
    }

    /// One call of [`RESERVE`]: reserves `charges` after applying `corrections`. Returns the states
    /// of the charges, or what went wrong.
    async fn call(
        &self,
        charges: &[Charge],
        corrections: &[Adjustment],
        lease: u64,
    ) -> Result<(Vec<BucketState>, u64), CallError> {
        let (keys, args) = self.arguments(charges, corrections, lease);
        let client = self.client().await.map_err(|e| CallError { message: e.0, sent: false })?;
        let sent = |message: String| CallError { message, sent: true };
        let reply: Option<Bytes> =
            self.reserve.evalsha_with_reload(&client, keys, args).await.map_err(|e| sent(e.to_string()))?;
        let reply = reply.unwrap_or_default();
        let expected = if charges.is_empty() { 0 } else { charges.len() * 32 + 8 };
        if reply.len() != expected {
            return Err(sent(format!("Redis answered {} bytes for {} buckets", reply.len(), charges.len())));
        }
        let numbers: Vec<f64> = reply
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(<[u8; 8]>::try_from(b).unwrap_or_default()))
            .collect();
        let ms = |x: f64| Duration::from_millis(x.max(0.0) as u64);
        let leased = if charges.is_empty() { 0 } else { numbers.last().map_or(0, |x| x.max(0.0) as u64) };
        let states = numbers
            .chunks_exact(4)
            .map(|r| BucketState {
                allowed: r[0] == 1.0,
                remaining: r[1].max(0.0) as u64,
                reset: ms(r[2]),
                retry_after: ms(r[3]),
                fallback: false,
            })
            .collect();
        Ok((states, leased))
    }

    /// The keys and arguments of [`RESERVE`]: one hash per hash tag, one field per bucket.
    fn arguments(
        &self,
        charges: &[Charge],
        corrections: &[Adjustment],
        lease: u64,
    ) -> (Vec<String>, Vec<Value>) {
        let buckets = charges
            .iter()
            .map(|c| (c.key.as_str(), c.limit, c.period, c.cost as f64))
            .chain(corrections.iter().map(|a| (a.key.as_str(), a.limit, a.period, a.delta as f64)));
        let mut keys: Vec<String> = Vec::with_capacity(1);
        let mut fields: Vec<(usize, &str)> = Vec::with_capacity(charges.len());
        let mut rows: Vec<[f64; 4]> = Vec::with_capacity(charges.len() + corrections.len());
        for (key, limit, period, units) in buckets {
            let tag = tag(key);
            let k = match keys.iter().position(|h| h.get(self.prefix.len()..) == Some(tag)) {
                Some(k) => k,
                None => {
                    keys.push([self.prefix.as_str(), tag].concat());
                    keys.len() - 1
                }
            };
            let field = &key[tag.len()..];
            let j = match fields.iter().position(|f| *f == (k, field)) {
                Some(j) => j,
                None => {
                    fields.push((k, field));
                    fields.len() - 1
                }
            };
            rows.push([(j + 1) as f64, limit as f64, period.as_millis() as f64, units]);
        }
        let header = [charges.len() as f64, fields.len() as f64, lease as f64];
        let numbers = header
            .into_iter()
            .chain(fields.iter().map(|(k, _)| (k + 1) as f64))
            .chain(rows.into_iter().flatten());
        let mut packed = Vec::with_capacity(8 * (3 + fields.len() + 4 * (charges.len() + corrections.len())));
        for x in numbers {
            packed.extend_from_slice(&x.to_le_bytes());
        }
        let mut args = Vec::with_capacity(1 + fields.len());
        args.push(Value::Bytes(packed.into()));
        args.extend(fields.iter().map(|(_, f)| Value::from(*f)));
        (keys, args)
    }

    fn note(&self, ok: bool, what: &str, e: Option<&dyn std::fmt::Display>) {
        self.hold_off.record(ok);
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
    /// With leases on, a request whose buckets this instance holds a lease on, with room for its
    /// cost, is admitted from it without a round trip. Otherwise the reservation asks Redis for
    /// the request and a lease for up to k more like it — k twice what the last lease admitted,
    /// at most the policy's share of each limit; the script grants what leaves every bucket at
    /// least twice the lease (nothing near a limit). Only one request at a time asks for a given
    /// caller's lease; those alongside it reserve for themselves alone. Leased units are charged
    /// in Redis when granted, so instances together never pass a limit; what a lease has not used
    /// when it expires goes back with the next reservation.
    async fn reserve(&self, charges: &[Charge]) -> Result<Vec<BucketState>, StoreError> {
        let mut lease = None;
        if let Some(policy) = self.lease
            && !charges.is_empty()
        {
            let name = joined(charges.iter().map(|c| c.key.as_str()));
            match self.take_from_lease(&name, charges, policy.ttl) {
                Ok(states) => return Ok(states),
                Err(None) => {}
                Err(Some(used)) => {
                    // The most requests like this one the share of every limit holds.
                    let most = charges
                        .iter()
                        .filter(|c| c.cost > 0)
                        .map(|c| (c.limit as f64 * policy.share / c.cost as f64) as u64)
                        .min()
                        .unwrap_or(0);
                    let k = (2 * used).max(1).min(most);
                    // Dropped on every way out of this call, so others may ask again.
                    lease = Some(Asking { leases: &self.leases, name, k, ttl: policy.ttl });
                }
            }
        }
        if self.hold_off.active() {
            return match &self.fallback {
                Some(local) => self.reserve_locally(local, charges).await,
                None => Err(StoreError("Redis failed repeatedly less than a second ago".into())),
            };
        }
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
        let k = lease.as_ref().map_or(0, |a| a.k);
        match self.call(charges, &folded, k).await {
            Ok((mut states, leased)) => {
                self.note(true, "reserve", None);
                if let (k @ 1.., Some(asking)) = (leased, lease.as_ref()) {
                    let left: Vec<u64> = charges.iter().map(|c| c.cost * k).collect();
                    // Reported as the lease will: the units it holds are this caller's to use.
                    for (s, l) in states.iter_mut().zip(&left) {
                        s.remaining += l;
                    }
                    let granted = Lease {
                        states: states
                            .iter()
                            .zip(&left)
                            .map(|(s, l)| BucketState { remaining: s.remaining - l, ..*s })
                            .collect(),
                        left,
                        buckets: charges.iter().map(|c| (c.key.clone(), c.limit, c.period)).collect(),
                        taken: Instant::now(),
                        used: 1,
                    };
                    self.keep_lease(asking.name.clone(), granted, asking.ttl);
                }
                Ok(states)
            }
            Err(e) => {
                if !e.sent {
                    self.defer(&folded);
                }
                self.note(false, "reserve", Some(&e));
                match &self.fallback {
                    Some(local) => self.reserve_locally(local, charges).await,
                    None => Err(StoreError(e.message)),
                }
            }
        }
    }

    /// Corrections wait (up to [`FOLD_WINDOW`]) for the next reservation of their org; older ones
    /// are sent now, one call per org. Those of the in-process limiter's reservations go to it.
    async fn adjust(&self, adjustments: &[Adjustment]) -> Result<(), StoreError> {
        if let Some(local) = &self.fallback
            && adjustments.iter().any(|a| a.fallback)
        {
            let theirs: Vec<Adjustment> = adjustments.iter().filter(|a| a.fallback).cloned().collect();
            local.adjust(&theirs).await?;
        }
        self.defer(adjustments);
        if self.hold_off.active() {
            // They wait for Redis to answer again.
            return Ok(());
        }
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
            let group: Vec<Adjustment> = group.into_iter().cloned().collect();
            match self.call(&[], &group, 0).await {
                Ok(_) => self.note(true, "adjust", None),
                Err(e) => {
                    self.note(false, "adjust", Some(&e));
                    if e.sent {
                        // Past its deadline it may still run: not sent again.
                        log::warn!(
                            "limits: {} token corrections may not have reached Redis: {e}",
                            group.len()
                        );
                    } else {
                        self.defer(&group);
                    }
                }
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str, cost: u64) -> Charge {
        Charge { key: key.into(), limit: 1_000, period: Duration::from_secs(60), cost }
    }

    fn lease(left: &[u64]) -> Lease {
        let keys = ["{org:o}:team:t:rpm", "{org:o}:team:t:tpm"];
        Lease {
            left: left.to_vec(),
            buckets: keys.iter().map(|k| ((*k).to_owned(), 1_000, Duration::from_secs(60))).collect(),
            states: vec![
                BucketState {
                    allowed: true,
                    remaining: 900,
                    reset: Duration::from_secs(6),
                    retry_after: Duration::ZERO,
                    fallback: false,
                };
                2
            ],
            taken: Instant::now(),
            used: 1,
        }
    }

    #[test]
    fn a_lease_covers_only_its_own_buckets_with_room_for_the_cost() {
        let l = lease(&[3, 100]);
        assert!(l.covers(&[charge("{org:o}:team:t:rpm", 1), charge("{org:o}:team:t:tpm", 100)]));
        assert!(
            !l.covers(&[charge("{org:o}:team:t:rpm", 1), charge("{org:o}:team:t:tpm", 101)]),
            "tokens short"
        );
        assert!(!l.covers(&[charge("{org:o}:team:t:rpm", 1)]), "another set of buckets");
        assert!(
            !l.covers(&[charge("{org:o}:team:u:rpm", 1), charge("{org:o}:team:t:tpm", 1)]),
            "another owner"
        );
        let mut other_limit = charge("{org:o}:team:t:tpm", 1);
        other_limit.limit = 2_000;
        assert!(!l.covers(&[charge("{org:o}:team:t:rpm", 1), other_limit]), "a limit changed by a reload");
    }

    #[test]
    fn a_lease_reports_redis_remaining_plus_what_it_holds_and_refunds_what_is_left() {
        let l = lease(&[3, 0]);
        let states = l.states();
        assert_eq!(states.iter().map(|s| s.remaining).collect::<Vec<_>>(), [903, 900]);
        assert!(states.iter().all(|s| s.allowed && !s.fallback && s.reset <= Duration::from_secs(6)));
        let refund = l.refund();
        assert_eq!(refund.len(), 1, "nothing to give back on an empty bucket");
        assert_eq!(
            (refund[0].key.as_str(), refund[0].delta, refund[0].fallback),
            ("{org:o}:team:t:rpm", -3, false)
        );
    }
}
