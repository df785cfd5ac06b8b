//! The local append-only spool: where records wait while PostgreSQL cannot take them.
//!
//! One JSON record per line, appended and flushed to disk (`fdatasync`) before `append` returns. A
//! replay first renames the spool aside (`records.spool` → `records.spool.replaying-<n>`), so new
//! records keep landing in a fresh file while the old ones are sent; the renamed file is removed
//! only once PostgreSQL has all of it. Replays are idempotent (records carry their own id), so a
//! crash mid-replay only means sending some records twice, which the ledger ignores. A torn last
//! line (a crash during a write) is moved to `records.spool.corrupt`, never silently dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_core::record::CostRecord;

const FILE: &str = "records.spool";

pub struct Spool {
    dir: PathBuf,
    /// Serializes appends and the rename that starts a replay.
    file: Mutex<()>,
    /// Records appended and not yet replayed (an estimate across restarts: counted at start).
    pending: AtomicU64,
}

impl Spool {
    /// Opens (creating) the spool directory; fails when it is not writable, so a gateway that could
    /// not keep its records does not start.
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let probe = dir.join(".write-test");
        File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
        // A crash during a write can leave a torn last line: end it, so the next record starts on
        // a line of its own.
        let live = dir.join(FILE);
        if let Ok(bytes) = std::fs::read(&live)
            && bytes.last().is_some_and(|b| *b != b'\n')
        {
            let mut f = OpenOptions::new()
                .append(true)
                .open(&live)
                .map_err(|e| format!("{}: {e}", live.display()))?;
            f.write_all(b"\n").map_err(|e| format!("{}: {e}", live.display()))?;
        }
        let spool = Self { dir: dir.to_owned(), file: Mutex::new(()), pending: AtomicU64::new(0) };
        spool.pending.store(spool.count_waiting(), Ordering::Relaxed);
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records waiting in the spool.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Appends records durably: they are on disk when this returns `Ok`.
    pub fn append(&self, records: &[CostRecord]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut text = Vec::with_capacity(records.len() * 512);
        for r in records {
            serde_json::to_writer(&mut text, r).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        let _guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = OpenOptions::new().create(true).append(true).open(self.dir.join(FILE))?;
        f.write_all(&text)?;
        f.sync_data()?;
        self.pending.fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Moves the live spool aside for a replay and returns every file waiting to be replayed
    /// (earlier interrupted replays first).
    pub fn take(&self) -> Vec<PathBuf> {
        let _guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.dir.join(FILE);
        if live.metadata().is_ok_and(|m| m.len() > 0) {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let aside = self.dir.join(format!("{FILE}.replaying-{stamp:032}"));
            if let Err(e) = std::fs::rename(&live, &aside) {
                log::error!("cannot move the spool aside for replay: {e}");
            }
        }
        self.files_to_replay()
    }

    /// Reads one file taken for replay: its records, in order. Lines that do not parse (a torn
    /// write) are kept in `records.spool.corrupt` for an operator.
    pub fn read(&self, path: &Path) -> std::io::Result<Vec<CostRecord>> {
        let mut records = Vec::new();
        let mut corrupt = Vec::new();
        for line in BufReader::new(File::open(path)?).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(r) => records.push(r),
                Err(_) => corrupt.push(line),
            }
        }
        if !corrupt.is_empty() {
            log::error!("{} unreadable line(s) in {}: kept in {FILE}.corrupt", corrupt.len(), path.display());
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{FILE}.corrupt")))?;
            for line in corrupt {
                writeln!(f, "{line}")?;
            }
            f.sync_data()?;
        }
        Ok(records)
    }

    /// A replayed file is in the ledger: remove it, and count what still waits.
    pub fn done(&self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path) {
            log::error!("cannot remove the replayed spool file {}: {e}", path.display());
        }
        let _guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        self.pending.store(self.count_waiting(), Ordering::Relaxed);
    }

    /// Lines in the files waiting for a replay.
    fn count_waiting(&self) -> u64 {
        let mut pending = 0;
        for path in self.files_to_replay() {
            if let Ok(f) = File::open(&path) {
                pending += BufReader::new(f).lines().count() as u64;
            }
        }
        pending
    }

    fn files_to_replay(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&format!("{FILE}.replaying-")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let live = self.dir.join(FILE);
        if live.metadata().is_ok_and(|m| m.len() > 0) {
            files.push(live);
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn record(id: &str) -> CostRecord {
        CostRecord {
            id: id.into(),
            request_id: format!("req-{id}"),
            ts_us: 1_764_460_800_000_000,
            org: Some("o".into()),
            team: Some("t".into()),
            app: None,
            key_id: None,
            user: None,
            endpoint: "/chat/completions".into(),
            model: Some("m".into()),
            provider: None,
            target: None,
            upstream_model: None,
            region: None,
            status: 200,
            error: None,
            prompt_tokens: 1,
            completion_tokens: 2,
            cached_tokens: 0,
            reasoning_tokens: 0,
            usage_estimated: false,
            cost: sluice_core::money::Micros(3),
            latency_us: 10,
            attempts: 1,
            stream: false,
            cache: "miss".into(),
            pii: Default::default(),
            request_sha256: None,
            content: None,
        }
    }

    #[test]
    fn records_survive_a_reopen_and_a_replay_takes_them_all_once() {
        let dir = std::env::temp_dir().join(format!("sluice-spool-{}-{}", std::process::id(), line!()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir).unwrap();
        spool.append(&[record("a"), record("b")]).unwrap();
        drop(spool);
        let spool = Spool::open(&dir).unwrap();
        assert_eq!(spool.pending(), 2);
        let files = spool.take();
        spool.append(&[record("c")]).unwrap();
        assert_eq!(files.len(), 1);
        let ids: Vec<String> = spool.read(&files[0]).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a", "b"]);
        spool.done(&files[0]);
        assert_eq!(spool.pending(), 1);
        let rest = spool.take();
        assert_eq!(spool.read(&rest[0]).unwrap()[0].id, "c", "new records went to a fresh file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_line_is_kept_aside_not_lost() {
        let dir = std::env::temp_dir().join(format!("sluice-spool-{}-{}", std::process::id(), line!()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir).unwrap();
        spool.append(&[record("a")]).unwrap();
        OpenOptions::new().append(true).open(dir.join(FILE)).unwrap().write_all(b"{\"id\":\"tor").unwrap();
        let files = spool.take();
        let records = spool.read(&files[0]).unwrap();
        assert_eq!(records.len(), 1);
        let corrupt = std::fs::read_to_string(dir.join(format!("{FILE}.corrupt"))).unwrap();
        assert_eq!(corrupt, "{\"id\":\"tor\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
