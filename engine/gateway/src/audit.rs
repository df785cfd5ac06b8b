//! The audit trail: append-only, hash-chained per UTC day, in PostgreSQL.
//!
//! Every API request's audit row is derived from its cost record and written by the ledger's
//! writer in the same transaction (so it shares the cost records' queue, spool and replay); admin
//! actions are appended by the admin API. Each day is one chain: a row's `hash` is the SHA-256 of
//! its content (the [`Entry`] below, serialized with its fields in this order) including the
//! previous row's hash, and `seq` counts from 1. Appending takes a per-day advisory lock, so
//! instances never fork a chain. A replayed batch appends nothing twice: the writer chains only the
//! records its insert newly stored (a record's id is unique in its day's chain as well).
//! `sluice audit verify` recomputes every chain and names the first broken link.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_core::calendar::date;
use sluice_core::record::CostRecord;
use tokio_postgres::{GenericClient, Row, Statement, Transaction};

/// Advisory locks of the days' chains: `AUDIT_LOCK + day`.
const AUDIT_LOCK: i64 = 0x5A5A_0000_0000;

/// What one row's hash covers, in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub day: String,
    pub seq: i64,
    pub ts_us: i64,
    pub record_id: String,
    pub action: String,
    pub request_id: Option<String>,
    pub org: Option<String>,
    pub team: Option<String>,
    pub app: Option<String>,
    pub key_id: Option<String>,
    pub user: Option<String>,
    pub model: Option<String>,
    pub target: Option<String>,
    pub region: Option<String>,
    pub status: i32,
    pub pii: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_micros: i64,
    pub detail: Option<String>,
    /// Absent (not null) from the hashed form when empty, so rows older than these two fields
    /// hash as they always did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    pub prev_hash: String,
}

impl Entry {
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(&bytes))
    }

    /// The audit row of an API request.
    pub fn of_request(r: &CostRecord) -> Self {
        Self {
            day: date(r.day()),
            seq: 0,
            ts_us: r.ts_us,
            record_id: r.id.clone(),
            action: "request".into(),
            request_id: Some(r.request_id.clone()),
            org: r.org.clone(),
            team: r.team.clone(),
            app: r.app.clone(),
            key_id: r.key_id.clone(),
            user: r.user.clone(),
            model: r.model.clone(),
            target: r.target.clone(),
            region: r.region.clone(),
            status: i32::from(r.status),
            pii: r.pii.iter().map(|(k, n)| format!("{k}:{n}")).collect::<Vec<_>>().join(","),
            tokens_in: r.prompt_tokens.min(i64::MAX as u64) as i64,
            tokens_out: r.completion_tokens.min(i64::MAX as u64) as i64,
            cost_micros: r.cost.0.min(i64::MAX as u64) as i64,
            detail: None,
            request_hash: r.request_sha256.clone(),
            content: r.content.clone(),
            prev_hash: String::new(),
        }
    }

    /// The audit row of an admin action (`admin.key.issue`, ...); `detail` never holds a secret.
    pub fn of_admin(action: &str, detail: &serde_json::Value) -> Self {
        let ts_us = sluice_core::calendar::unix_us(std::time::SystemTime::now());
        Self {
            day: date(ts_us.div_euclid(sluice_core::calendar::DAY_US)),
            seq: 0,
            ts_us,
            record_id: crate::id::random("adm_"),
            action: action.to_owned(),
            request_id: None,
            org: None,
            team: None,
            app: None,
            key_id: detail.get("id").and_then(|v| v.as_str()).map(str::to_owned),
            user: None,
            model: None,
            target: None,
            region: None,
            status: 0,
            pii: String::new(),
            tokens_in: 0,
            tokens_out: 0,
            cost_micros: 0,
            detail: Some(detail.to_string()),
            request_hash: None,
            content: None,
            prev_hash: String::new(),
        }
    }

    pub(crate) fn from_row(r: &Row) -> (Self, String) {
        let day: String = r.get("day_text");
        (
            Self {
                day,
                seq: r.get("seq"),
                ts_us: r.get("ts_us"),
                record_id: r.get("record_id"),
                action: r.get("action"),
                request_id: r.get("request_id"),
                org: r.get("org"),
                team: r.get("team"),
                app: r.get("app"),
                key_id: r.get("key_id"),
                user: r.get("user"),
                model: r.get("model"),
                target: r.get("target"),
                region: r.get("region"),
                status: r.get("status"),
                pii: r.get("pii"),
                tokens_in: r.get("tokens_in"),
                tokens_out: r.get("tokens_out"),
                cost_micros: r.get("cost_micros"),
                detail: r.get("detail"),
                request_hash: r.get("request_hash"),
                content: r.get("content"),
                prev_hash: r.get("prev_hash"),
            },
            r.get("hash"),
        )
    }
}

/// Lowercase hex of a digest (row hashes, request hashes, export checksums).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// What is wrong with row `entry` (stored hash `stored`) as the `expected_seq`-th link of a chain
/// whose previous hash is `prev`; `None` when it holds. Used by `verify` and by sealed exports.
pub(crate) fn link_fault(entry: &Entry, stored: &str, expected_seq: i64, prev: &str) -> Option<String> {
    if entry.seq != expected_seq {
        Some(format!("expected seq {expected_seq}: a row is missing or was inserted"))
    } else if entry.prev_hash != prev {
        Some("its prev_hash is not the previous row's hash: a row before it was changed or removed".into())
    } else if entry.hash() != stored {
        Some("its content does not match its hash: the row was changed".into())
    } else {
        None
    }
}

/// The first `prev_hash` of a day's chain.
pub(crate) fn genesis(day: &str) -> String {
    format!("sluice-audit-genesis-{day}")
}

/// One multi-row INSERT of chained rows.
const INSERT: &str = "INSERT INTO audit_log (day, seq, ts_us, record_id, action, request_id, org, team, app, key_id, \"user\", \
    model, target, region, status, pii, tokens_in, tokens_out, cost_micros, detail, prev_hash, hash, \
    request_hash, content) \
    SELECT d::date, s, t, r, a, q, o, tm, ap, k, u, m, tg, rg, st, p, ti, tout, c, dt, ph, h, rh, ct FROM unnest(\
    $1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
    $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::int[], $16::text[], \
    $17::bigint[], $18::bigint[], $19::bigint[], $20::text[], $21::text[], $22::text[], $23::text[], \
    $24::text[]) \
    AS x(d, s, t, r, a, q, o, tm, ap, k, u, m, tg, rg, st, p, ti, tout, c, dt, ph, h, rh, ct)";

/// The statements that append to the chains, prepared once per connection: the ledger's writer
/// keeps them for as long as its connection lives (parsing and planning them for every batch cost
/// PostgreSQL more than running them). Prepare them outside the transaction that appends: parsing
/// holds the tables' locks until the transaction ends, ahead of the partition lock (a deadlock with
/// another instance creating the day's partition).
pub struct Statements {
    lock: Statement,
    last: Statement,
    insert: Statement,
}

impl Statements {
    pub async fn prepare(c: &impl GenericClient) -> Result<Self, tokio_postgres::Error> {
        let (lock, last, insert) = futures_util::try_join!(
            c.prepare("SELECT pg_advisory_xact_lock($1)"),
            c.prepare("SELECT seq, hash FROM audit_log WHERE day = $1::text::date ORDER BY seq DESC LIMIT 1"),
            c.prepare(INSERT),
        )?;
        Ok(Self { lock, last, insert })
    }
}

/// Appends entries (in order) to their days' chains. Entries must be new: a record id already in
/// its day's chain fails the insert (the caller leaves out what a replay already stored).
/// `partitions_ready`: the caller already made sure the days' partitions exist (the ledger's writer
/// does once per day), so no DDL runs per batch.
pub async fn append(
    tx: &Transaction<'_>,
    statements: &Statements,
    entries: Vec<Entry>,
    partitions_ready: bool,
) -> Result<u64, tokio_postgres::Error> {
    let mut days: Vec<String> = entries.iter().map(|e| e.day.clone()).collect();
    days.sort();
    days.dedup();
    let mut written = 0;
    for day in days {
        let day_number = sluice_core::calendar::parse_date(&day).unwrap_or_default();
        if !partitions_ready {
            // Under the lock every partition creation takes: CREATE ... IF NOT EXISTS is not safe
            // against a concurrent creation of the same table.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&crate::ledger::postgres::PARTITION_LOCK])
                .await?;
            tx.execute("SELECT sluice_create_partition('audit_log', $1::text::date)", &[&day]).await?;
        }
        tx.execute(&statements.lock, &[&(AUDIT_LOCK + day_number)]).await?;
        let last = tx.query_opt(&statements.last, &[&day]).await?;
        let (mut seq, mut prev): (i64, String) = last.map_or((0, genesis(&day)), |r| (r.get(0), r.get(1)));
        let mut rows: Vec<(Entry, String)> = Vec::new();
        for e in entries.iter().filter(|e| e.day == day) {
            seq += 1;
            let mut e = e.clone();
            e.seq = seq;
            e.prev_hash = prev;
            let hash = e.hash();
            prev = hash.clone();
            rows.push((e, hash));
        }
        written += insert(tx, &statements.insert, &rows).await?;
    }
    Ok(written)
}

/// One multi-row INSERT of chained rows.
async fn insert(
    tx: &Transaction<'_>,
    statement: &Statement,
    rows: &[(Entry, String)],
) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let text = |f: fn(&Entry) -> String| rows.iter().map(|(e, _)| f(e)).collect::<Vec<String>>();
    let opt =
        |f: fn(&Entry) -> Option<String>| rows.iter().map(|(e, _)| f(e)).collect::<Vec<Option<String>>>();
    let int = |f: fn(&Entry) -> i64| rows.iter().map(|(e, _)| f(e)).collect::<Vec<i64>>();
    let status: Vec<i32> = rows.iter().map(|(e, _)| e.status).collect();
    let hashes: Vec<&str> = rows.iter().map(|(_, h)| h.as_str()).collect();
    tx.execute(
        statement,
        &[
            &text(|e| e.day.clone()),
            &int(|e| e.seq),
            &int(|e| e.ts_us),
            &text(|e| e.record_id.clone()),
            &text(|e| e.action.clone()),
            &opt(|e| e.request_id.clone()),
            &opt(|e| e.org.clone()),
            &opt(|e| e.team.clone()),
            &opt(|e| e.app.clone()),
            &opt(|e| e.key_id.clone()),
            &opt(|e| e.user.clone()),
            &opt(|e| e.model.clone()),
            &opt(|e| e.target.clone()),
            &opt(|e| e.region.clone()),
            &status,
            &text(|e| e.pii.clone()),
            &int(|e| e.tokens_in),
            &int(|e| e.tokens_out),
            &int(|e| e.cost_micros),
            &opt(|e| e.detail.clone()),
            &text(|e| e.prev_hash.clone()),
            &hashes,
            &opt(|e| e.request_hash.clone()),
            &opt(|e| e.content.clone()),
        ],
    )
    .await
}

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact { rows: u64, days: u64 },
    Broken { day: String, seq: i64, record_id: String, reason: String },
}

/// Recomputes every chain (or one day's), in order; stops at the first broken link.
pub async fn verify(c: &impl GenericClient, day: Option<&str>) -> Result<Verdict, tokio_postgres::Error> {
    let days: Vec<String> = match day {
        Some(d) => vec![d.to_owned()],
        None => c
            .query("SELECT DISTINCT day::text FROM audit_log ORDER BY 1", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    let (mut rows, mut n_days) = (0, 0);
    for day in days {
        n_days += 1;
        // Streamed: a day of millions of rows is walked without holding it in memory.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&day];
        let stream = c
            .query_raw(
                "SELECT day::text AS day_text, * FROM audit_log WHERE day = $1::text::date ORDER BY seq",
                params.iter().map(|p| *p as &dyn tokio_postgres::types::ToSql),
            )
            .await?;
        let mut stream = std::pin::pin!(stream);
        let mut prev = genesis(&day);
        let mut i = 0usize;
        while let Some(row) = futures_util::StreamExt::next(&mut stream).await {
            let row = row?;
            let (entry, stored) = Entry::from_row(&row);
            if let Some(reason) = link_fault(&entry, &stored, i as i64 + 1, &prev) {
                return Ok(Verdict::Broken {
                    day: day.clone(),
                    seq: entry.seq,
                    record_id: entry.record_id,
                    reason,
                });
            }
            prev = stored;
            rows += 1;
            i += 1;
        }
    }
    Ok(Verdict::Intact { rows, days: n_days })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_lowercase_hex() {
        assert_eq!(hex(&[0x00, 0xab, 0x5f]), "00ab5f");
    }

    #[test]
    fn rows_without_a_request_hash_or_content_hash_as_before_those_fields_existed() {
        let mut e = Entry::of_admin("admin.org.create", &serde_json::json!({"id": "acme"}));
        let text = String::from_utf8(serde_json::to_vec(&e).unwrap()).unwrap();
        assert!(!text.contains("request_hash") && !text.contains("content"), "{text}");
        let before = e.hash();
        e.request_hash = Some("ab".into());
        assert_ne!(e.hash(), before, "the request hash is covered by the row's hash");
    }
}
