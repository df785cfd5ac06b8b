//! Sealed exports of the audit trail, for storage under object lock (WORM).
//!
//! An export covers one day's chain from its first row to row N: `audit-DAY-N.jsonl` (one row per
//! line, with its hash) and `audit-DAY-N.seal.json` (`day`, `rows`, the `head` hash of row N, and
//! the SHA-256 of the JSONL file). Files are written to a temporary name, synced, then renamed, and
//! never overwritten. A chain that does not verify is not exported.
//!
//! The seal closes the gap a hash chain leaves open: rows removed from the *end* of a day leave a
//! valid shorter chain, but `sluice audit verify --sealed DIR` finds that the sealed row N is gone
//! or differs. With `[audit] export_dir`, each instance seals every finished day (after
//! `export_delay` past UTC midnight, so late records can land first); `sluice audit export` seals a
//! day, or today so far, by hand.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use crate::audit::Entry;

/// What a seal file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Seal {
    pub day: String,
    pub rows: i64,
    /// The hash of row `rows`: the chain's head when sealed.
    pub head: String,
    pub jsonl_sha256: String,
    pub sealed_at: String,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    entry: &'a Entry,
    hash: &'a str,
}

/// Exports `day`'s chain as it stands into `dir`. `Ok(None)`: nothing to export (no rows, or an
/// export ending at the same row exists already).
pub async fn export_day(c: &impl GenericClient, day: &str, dir: &Path) -> Result<Option<Seal>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&day];
    let stream = c
        .query_raw(
            "SELECT day::text AS day_text, * FROM audit_log WHERE day = $1::text::date ORDER BY seq",
            params.iter().map(|p| *p as &dyn tokio_postgres::types::ToSql),
        )
        .await
        .map_err(|e| format!("cannot read the audit trail: {e}"))?;
    let mut stream = std::pin::pin!(stream);
    // Streamed into a temporary file (a day can be large), hashed on the way.
    let tmp = dir.join(format!(".audit-{day}.jsonl.partial"));
    let file = std::fs::File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut digest = Sha256::new();
    let mut prev = crate::audit::genesis(day);
    let mut n = 0i64;
    let result = async {
        while let Some(row) = futures_util::StreamExt::next(&mut stream).await {
            let row = row.map_err(|e| format!("cannot read the audit trail: {e}"))?;
            let (entry, hash) = Entry::from_row(&row);
            if let Some(reason) = crate::audit::link_fault(&entry, &hash, n + 1, &prev) {
                return Err(format!(
                    "the chain of {day} is broken at row {}: {reason}; not sealed",
                    entry.seq
                ));
            }
            let mut line =
                serde_json::to_vec(&Line { entry: &entry, hash: &hash }).map_err(|e| e.to_string())?;
            line.push(b'\n');
            digest.update(&line);
            out.write_all(&line).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
            prev = hash;
            n += 1;
        }
        let file = out.into_inner().map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        file.sync_all().map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        Ok(())
    }
    .await;
    let (jsonl, seal_path) = paths(dir, day, n);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if n == 0 || seal_path.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Ok(None);
    }
    let ours = crate::audit::hex(&digest.finalize());
    if jsonl.exists() {
        // An earlier export stopped between its two files: seal the file it left if it is ours.
        let _ = std::fs::remove_file(&tmp);
        let theirs = crate::audit::hex(&Sha256::digest(std::fs::read(&jsonl).map_err(|e| e.to_string())?));
        if theirs != ours {
            return Err(format!("{} exists with other content; not replaced", jsonl.display()));
        }
    } else {
        std::fs::rename(&tmp, &jsonl).map_err(|e| format!("cannot write {}: {e}", jsonl.display()))?;
    }
    let seal = Seal {
        day: day.to_owned(),
        rows: n,
        head: prev,
        jsonl_sha256: ours,
        sealed_at: sluice_core::calendar::iso(sluice_core::calendar::unix_us(std::time::SystemTime::now())),
    };
    let mut seal_bytes = serde_json::to_vec_pretty(&seal).map_err(|e| e.to_string())?;
    seal_bytes.push(b'\n');
    write_new(&seal_path, &seal_bytes)?;
    Ok(Some(seal))
}

fn paths(dir: &Path, day: &str, rows: i64) -> (PathBuf, PathBuf) {
    let stem = format!("audit-{day}-{rows:08}");
    (dir.join(format!("{stem}.jsonl")), dir.join(format!("{stem}.seal.json")))
}

/// Writes `bytes` to `path` through a synced temporary file; an existing `path` is never replaced.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    if path.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{} exists already; not replaced", path.display()));
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Every seal in `dir`, in file-name order.
pub fn seals(dir: &Path) -> Result<Vec<Seal>, String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".seal.json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let text = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            serde_json::from_slice(&text).map_err(|e| format!("{} is not a seal: {e}", p.display()))
        })
        .collect()
}

/// Checks that the table still holds every sealed row as sealed: row `rows` of the day exists and
/// has the sealed hash (the chain walk proves the rows before it). `Ok(None)`: all hold.
pub async fn check_seals(c: &impl GenericClient, dir: &Path) -> Result<Option<String>, String> {
    for seal in seals(dir)? {
        let row = c
            .query_opt(
                "SELECT hash FROM audit_log WHERE day = $1::text::date AND seq = $2",
                &[&seal.day, &seal.rows],
            )
            .await
            .map_err(|e| format!("cannot read the audit trail: {e}"))?;
        let found: Option<String> = row.map(|r| r.get(0));
        match found {
            Some(hash) if hash == seal.head => {}
            Some(_) => {
                return Ok(Some(format!(
                    "{}: row {} differs from its seal: the day was rewritten after it was sealed",
                    seal.day, seal.rows
                )));
            }
            None => {
                return Ok(Some(format!(
                    "{}: row {} was sealed but is gone: rows were removed after the day was sealed",
                    seal.day, seal.rows
                )));
            }
        }
    }
    Ok(None)
}

/// Seals every finished day in `dir` from a thread of its own: at start and every 5 minutes, each
/// day with audit rows in the last 40 days that is `delay` past its end and not sealed yet — while
/// the ledger's spool is empty (a spooled record may still belong to that day).
pub fn start_sealer(
    url: String,
    dir: PathBuf,
    delay: std::time::Duration,
    ledger: std::sync::Arc<crate::ledger::Ledger>,
) -> Result<(), String> {
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("audit.export_dir: cannot create {}: {e}", dir.display()))?;
    std::thread::Builder::new()
        .name("sluice-audit-seal".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                log::error!("audit: cannot start a runtime; days are not sealed");
                return;
            };
            loop {
                let spooled = ledger.health().map_or(0, |(_, pending)| pending);
                if spooled == 0
                    && let Err(e) = rt.block_on(seal_due(&url, &dir, delay))
                {
                    log::warn!("audit: sealing finished days failed (retried in 5 minutes): {e}");
                }
                std::thread::sleep(std::time::Duration::from_secs(300));
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the audit sealer: {e}"))
}

async fn seal_due(url: &str, dir: &Path, delay: std::time::Duration) -> Result<(), String> {
    let client = crate::ledger::postgres::connect(url, std::time::Duration::from_secs(5)).await?;
    let days: Vec<String> = client
        .query("SELECT DISTINCT day::text FROM audit_log WHERE day >= current_date - 40 ORDER BY 1", &[])
        .await
        .map_err(|e| format!("cannot read the audit trail: {e}"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let now = sluice_core::calendar::unix_us(std::time::SystemTime::now());
    let delay_us = i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
    for day in due_days(&days, &seals(dir)?, now, delay_us) {
        if let Some(seal) = export_day(&client, &day, dir).await? {
            log::info!("audit: sealed {} rows of {day} in {}", seal.rows, dir.display());
        }
    }
    Ok(())
}

/// The finished days not sealed yet that are due: before today, and `delay` past their end.
pub fn due_days(days_with_rows: &[String], sealed: &[Seal], now_us: i64, delay_us: i64) -> Vec<String> {
    days_with_rows
        .iter()
        .filter(|day| {
            let Some(n) = sluice_core::calendar::parse_date(day) else { return false };
            let end = (n + 1) * sluice_core::calendar::DAY_US;
            now_us >= end + delay_us && !sealed.iter().any(|s| &s.day == *day)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_due_once_finished_and_past_the_delay_and_only_if_unsealed() {
        let days = vec!["2026-11-28".to_owned(), "2026-11-29".to_owned(), "2026-11-30".to_owned()];
        let day = |d: &str| sluice_core::calendar::parse_date(d).unwrap() * sluice_core::calendar::DAY_US;
        let hour = 3_600_000_000;
        let now = day("2026-11-30") + hour / 2;
        let sealed = vec![Seal {
            day: "2026-11-28".into(),
            rows: 3,
            head: "h".into(),
            jsonl_sha256: "s".into(),
            sealed_at: "t".into(),
        }];
        assert_eq!(due_days(&days, &sealed, now, hour), Vec::<String>::new(), "29th: not an hour past yet");
        assert_eq!(due_days(&days, &sealed, now + hour, hour), vec!["2026-11-29".to_owned()]);
        assert_eq!(
            due_days(&days, &[], now + hour, hour),
            vec!["2026-11-28".to_owned(), "2026-11-29".to_owned()]
        );
    }
}
