//! The ledger: every API request's cost record, taken off the request path and kept.
//!
//! ```text
//! request path ──try_send──► bounded queue ──► writer thread ──batch INSERT──► PostgreSQL
//!      │ (queue full or closed)                    │ (PostgreSQL down or failing)   (day partitions)
//!      └──────────────append + fdatasync──────────►└──► spool file ──replay when back──┘
//! ```
//!
//! The request path never waits on the database: it hands the record to a bounded queue. A writer
//! thread (its own runtime) drains it in batches with one multi-row `INSERT ... SELECT unnest(...)
//! ON CONFLICT DO NOTHING`. When PostgreSQL cannot take a batch, the batch goes to the local spool
//! (appended and flushed to disk) and the writer reconnects every `retry_interval`; once connected it
//! replays the spool, idempotently, since records carry their own id. A full queue also spills to
//! the spool. On shutdown the writer drains the queue (to PostgreSQL, or the spool) before the
//! process exits, and a restart replays whatever the spool holds. Without `[state] postgres`, the
//! ledger is in memory (the embedded default), bounded to the latest `memory_records` records.

pub mod postgres;
pub mod spend;
pub mod spool;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use sluice_core::record::CostRecord;
use tokio::sync::mpsc;

use spool::Spool;

/// The ledger's settings, from `[state] postgres` and `[records]`.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// The PostgreSQL URL (resolved); `None`: records in memory.
    pub postgres: Option<String>,
    pub spool_dir: PathBuf,
    pub queue: usize,
    pub batch: usize,
    /// How long the writer waits to fill a batch.
    pub flush_interval: Duration,
    pub retry_interval: Duration,
    pub memory_records: usize,
}

/// In-memory records whose room is taken at start (the embedded default keeps 10,000).
const PREALLOCATED_RECORDS: usize = 10_000;

pub struct Ledger {
    backend: Backend,
    outcomes: IntCounterVec,
}

enum Backend {
    Memory(Mutex<VecDeque<CostRecord>>, usize),
    Postgres(Box<Shared>),
}

/// What the request path and the writer thread share.
struct Shared {
    settings: LedgerSettings,
    tx: mpsc::Sender<CostRecord>,
    /// Taken by the writer when it starts.
    rx: Mutex<Option<mpsc::Receiver<CostRecord>>>,
    /// Opened when the writer starts (not by `check-config`).
    spool: OnceLock<Arc<Spool>>,
    healthy: AtomicBool,
    stop: tokio::sync::Notify,
}

/// The running writer; [`LedgerWriter::finish`] drains and joins it.
pub struct LedgerWriter {
    thread: Option<std::thread::JoinHandle<()>>,
    ledger: Arc<Ledger>,
}

impl Ledger {
    pub fn new(settings: LedgerSettings, outcomes: IntCounterVec) -> Self {
        let backend = match &settings.postgres {
            // The ring is made at its size (up to the default's) once: grown by doubling while it
            // fills, each step would copy every record so far into fresh memory on the request path.
            None => Backend::Memory(
                Mutex::new(VecDeque::with_capacity(settings.memory_records.min(PREALLOCATED_RECORDS))),
                settings.memory_records,
            ),
            Some(_) => {
                let (tx, rx) = mpsc::channel(settings.queue.max(1));
                Backend::Postgres(Box::new(Shared {
                    settings,
                    tx,
                    rx: Mutex::new(Some(rx)),
                    spool: OnceLock::new(),
                    healthy: AtomicBool::new(false),
                    stop: tokio::sync::Notify::new(),
                }))
            }
        };
        Self { backend, outcomes }
    }

    /// Takes a record off the request path. Never blocks on the database; when the queue is full
    /// (or the writer has stopped) the record goes straight to the spool.
    pub fn submit(&self, record: CostRecord) {
        match &self.backend {
            Backend::Memory(records, cap) => {
                let mut records = records.lock().unwrap_or_else(|p| p.into_inner());
                if records.len() >= *cap {
                    records.pop_front();
                }
                records.push_back(record);
                self.outcomes.with_label_values(&["memory"]).inc();
            }
            Backend::Postgres(shared) => match shared.tx.try_send(record) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) => {
                    self.spill(shared, &[r]);
                }
            },
        }
    }

    fn spill(&self, shared: &Shared, records: &[CostRecord]) {
        let result = match shared.spool.get() {
            Some(spool) => spool.append(records),
            None => Err(std::io::Error::other("the ledger's spool is not open")),
        };
        match result {
            Ok(()) => self.outcomes.with_label_values(&["spooled"]).inc_by(records.len() as u64),
            Err(e) => {
                self.outcomes.with_label_values(&["lost"]).inc_by(records.len() as u64);
                for r in records {
                    log::error!(
                        "cost record {} of request {} LOST: cannot spool it: {e}",
                        r.id,
                        r.request_id
                    );
                }
            }
        }
    }

    /// For `/health`: `None` without PostgreSQL; else whether it takes records, and how many wait
    /// in the spool.
    pub fn health(&self) -> Option<(bool, u64)> {
        match &self.backend {
            Backend::Memory(..) => None,
            Backend::Postgres(shared) => {
                Some((shared.healthy.load(Ordering::Relaxed), shared.spool.get().map_or(0, |s| s.pending())))
            }
        }
    }

    /// The in-memory records (the embedded default), for `/admin/spend`.
    pub fn with_memory<T>(&self, f: impl FnOnce(&VecDeque<CostRecord>) -> T) -> Option<T> {
        match &self.backend {
            Backend::Memory(records, _) => Some(f(&records.lock().unwrap_or_else(|p| p.into_inner()))),
            Backend::Postgres(_) => None,
        }
    }

    pub fn postgres_url(&self) -> Option<&str> {
        match &self.backend {
            Backend::Memory(..) => None,
            Backend::Postgres(shared) => shared.settings.postgres.as_deref(),
        }
    }

    /// Opens the spool and starts the writer thread (PostgreSQL only). Errors stop the gateway at
    /// start: a gateway that could not keep its records must not serve.
    pub fn start(self: &Arc<Self>) -> Result<LedgerWriter, String> {
        let Backend::Postgres(shared) = &self.backend else {
            return Ok(LedgerWriter { thread: None, ledger: self.clone() });
        };
        let spool = Spool::open(&shared.settings.spool_dir).map_err(|e| format!("records.spool_dir: {e}"))?;
        if spool.pending() > 0 {
            log::info!(
                "{} cost records wait in the spool; they are replayed once PostgreSQL answers",
                spool.pending()
            );
        }
        let _ = shared.spool.set(Arc::new(spool));
        let rx = shared
            .rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| "the ledger writer is already running".to_owned())?;
        let ledger = self.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-ledger".into())
            .spawn(move || {
                crate::server::yield_to_requests();
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        log::error!("the ledger writer cannot start a runtime: {e}; records go to the spool");
                        return;
                    }
                };
                rt.block_on(write_loop(&ledger, rx));
            })
            .map_err(|e| format!("cannot start the ledger writer: {e}"))?;
        Ok(LedgerWriter { thread: Some(thread), ledger: self.clone() })
    }
}

impl LedgerWriter {
    /// Stops taking records into the queue, writes what it holds (to PostgreSQL, or the spool) and
    /// waits for the writer to finish.
    pub fn finish(mut self) {
        if let Backend::Postgres(shared) = &self.ledger.backend {
            shared.stop.notify_one();
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the ledger writer panicked");
        }
    }
}

/// How long one batch may take before it is spooled instead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

async fn write_loop(ledger: &Ledger, mut rx: mpsc::Receiver<CostRecord>) {
    let Backend::Postgres(shared) = &ledger.backend else { return };
    let Some(spool) = shared.spool.get().cloned() else { return };
    let settings = &shared.settings;
    let url = settings.postgres.clone().unwrap_or_default();
    let mut writer: Option<postgres::Writer> = None;
    let mut next_connect = Instant::now();
    let mut stopping = false;
    let mut batch = Vec::with_capacity(settings.batch);
    loop {
        if writer.is_none() && !stopping && Instant::now() >= next_connect {
            match connect(&url, settings.retry_interval).await {
                Ok(w) => {
                    log::info!("ledger: PostgreSQL connected");
                    writer = Some(w);
                    shared.healthy.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    if shared.healthy.swap(false, Ordering::Relaxed) || spool.pending() == 0 {
                        log::warn!("ledger: {e}; records go to the spool in {}", spool.dir().display());
                    }
                    next_connect = Instant::now() + settings.retry_interval;
                }
            }
        }
        if spool.pending() > 0
            && let Some(w) = writer.as_mut()
            && let Err(e) = replay(ledger, &spool, w, settings.batch).await
        {
            log::warn!("ledger: replaying the spool failed ({e}); retrying in {:?}", settings.retry_interval);
            writer = None;
            shared.healthy.store(false, Ordering::Relaxed);
            next_connect = Instant::now() + settings.retry_interval;
        }
        // The writer polls the queue every flush_interval rather than waiting on it: a waiting
        // receiver would be woken (a cross-thread wake-up, an eventfd write) by every record the
        // request path submits.
        let mut closed = false;
        while batch.len() < settings.batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if batch.is_empty() {
            if closed || (stopping && rx.is_empty()) {
                return; // closed and drained
            }
            tokio::select! {
                () = shared.stop.notified(), if !stopping => {
                    // No new records from here on (submit spools them); drain what is queued.
                    stopping = true;
                    rx.close();
                }
                () = tokio::time::sleep(settings.flush_interval), if !stopping => {}
            }
            continue;
        }
        let written = match writer.as_mut() {
            Some(w) => match tokio::time::timeout(WRITE_TIMEOUT, w.write(&batch)).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => {
                    log::warn!(
                        "ledger: PostgreSQL refused a batch of {} records: {e}; spooling it",
                        batch.len()
                    );
                    false
                }
                Err(_) => {
                    log::warn!("ledger: PostgreSQL took over {WRITE_TIMEOUT:?} for a batch; spooling it");
                    false
                }
            },
            None => false,
        };
        if written {
            ledger.outcomes.with_label_values(&["written"]).inc_by(batch.len() as u64);
        } else {
            if writer.take().is_some() {
                shared.healthy.store(false, Ordering::Relaxed);
                next_connect = Instant::now() + settings.retry_interval;
            }
            ledger.spill(shared, &batch);
        }
        let full = batch.len() >= settings.batch;
        batch.clear();
        // A full batch means more is waiting: go on at once; else give the queue time to fill.
        if !full && !stopping {
            tokio::select! {
                () = shared.stop.notified() => {
                    stopping = true;
                    rx.close();
                }
                () = tokio::time::sleep(settings.flush_interval) => {}
            }
        }
    }
}

async fn connect(url: &str, timeout: Duration) -> Result<postgres::Writer, String> {
    let mut client = postgres::connect(url, timeout.max(Duration::from_secs(1))).await?;
    postgres::migrate(&mut client).await.map_err(|e| format!("cannot migrate the ledger schema: {e}"))?;
    Ok(postgres::Writer::new(client))
}

async fn replay(
    ledger: &Ledger,
    spool: &Spool,
    writer: &mut postgres::Writer,
    batch: usize,
) -> Result<(), String> {
    for path in spool.take() {
        let records = spool.read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for chunk in records.chunks(batch.max(1)) {
            tokio::time::timeout(WRITE_TIMEOUT, writer.write(chunk))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())?;
        }
        // Counted once PostgreSQL has the records and before the file goes: whoever sees the spool
        // empty sees them counted.
        ledger.outcomes.with_label_values(&["replayed"]).inc_by(records.len() as u64);
        log::info!("ledger: replayed {} spooled records from {}", records.len(), path.display());
        spool.done(&path);
    }
    Ok(())
}
