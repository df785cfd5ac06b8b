//! The ledger in PostgreSQL: versioned migrations, day partitions, batched idempotent inserts, and
//! the spend query.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_core::record::CostRecord;
use tokio_postgres::{Client, Statement};

use sluice_core::calendar::date;

use super::spend::{SpendQuery, SpendRow};

/// The schema's versions, applied in order, each once (`sluice_migrations` records them).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "cost_records", include_str!("../../../../conf/migrations/0001_cost_records.sql")),
    (
        2,
        "cost_records_key_index",
        include_str!("../../../../conf/migrations/0002_cost_records_key_index.sql"),
    ),
    (3, "keys", include_str!("../../../../conf/migrations/0003_keys.sql")),
    (4, "audit_log", include_str!("../../../../conf/migrations/0004_audit_log.sql")),
    (5, "audit_request_hash", include_str!("../../../../conf/migrations/0005_audit_request_hash.sql")),
    (6, "partition_function", include_str!("../../../../conf/migrations/0006_partition_function.sql")),
];

/// What `sluice db grant ROLE` gives the gateway's own role: rows in, rows out, never a change to
/// the ledger or the audit trail (UPDATE/DELETE/TRUNCATE/ALTER need the owner). Key management
/// (admin API) updates its own tables.
const GRANTS: &str = "GRANT SELECT ON sluice_migrations TO {role}; \
     GRANT SELECT, INSERT ON cost_records, audit_log TO {role}; \
     GRANT SELECT, INSERT, UPDATE ON orgs, teams, apps, api_keys TO {role}; \
     GRANT EXECUTE ON FUNCTION sluice_create_partition(text, date) TO {role};";

/// Grants `role` what the gateway needs and nothing more (run as the tables' owner, after
/// [`migrate`]). `role` must be a plain identifier.
pub async fn grant(client: &Client, role: &str) -> Result<(), String> {
    let plain = !role.is_empty()
        && role.len() <= 63
        && role.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !role.as_bytes()[0].is_ascii_digit();
    if !plain {
        return Err(format!("`{role}` is not a plain role name (lowercase letters, digits, `_`)"));
    }
    client.batch_execute(&GRANTS.replace("{role}", &format!("\"{role}\""))).await.map_err(|e| {
        match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => e.to_string(),
        }
    })
}

/// Advisory lock keys: migrations and partition creation run one instance at a time.
const MIGRATION_LOCK: i64 = 0x51u64 as i64 * 1_000_003;
pub(crate) const PARTITION_LOCK: i64 = MIGRATION_LOCK + 1;

/// Connects, with a bounded wait; the connection task runs on the caller's runtime.
pub async fn connect(url: &str, timeout: Duration) -> Result<Client, String> {
    let (mut config, tls) = crate::pg_tls::config(url)?;
    config.connect_timeout(timeout);
    if config.get_application_name().is_none() {
        config.application_name("sluice");
    }
    let (client, connection) = tokio::time::timeout(timeout, config.connect(tls))
        .await
        .map_err(|_| "PostgreSQL did not answer in time".to_owned())?
        .map_err(|e| format!("cannot connect to PostgreSQL: {}", crate::pg_tls::describe(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("PostgreSQL connection closed: {e}");
        }
    });
    Ok(client)
}

/// Applies the migrations this database lacks.
pub async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    // Nothing is created when everything is there: the gateway may run as a role without DDL rights.
    let current: bool =
        client.query_one("SELECT to_regclass('sluice_migrations') IS NOT NULL", &[]).await?.get(0);
    if current {
        let applied: HashSet<i32> = client
            .query("SELECT version FROM sluice_migrations", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if MIGRATIONS.iter().all(|(v, _, _)| applied.contains(v)) {
            return Ok(());
        }
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS sluice_migrations (version integer PRIMARY KEY, name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .or_else(ignore_concurrent_create)?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    let applied: HashSet<i32> =
        tx.query("SELECT version FROM sluice_migrations", &[]).await?.iter().map(|r| r.get(0)).collect();
    for (version, name, sql) in MIGRATIONS {
        if !applied.contains(version) {
            log::info!("applying migration {version:04} {name}");
            tx.batch_execute(sql).await?;
            tx.execute("INSERT INTO sluice_migrations (version, name) VALUES ($1, $2)", &[version, name])
                .await?;
        }
    }
    tx.commit().await
}

/// Two instances creating `sluice_migrations` at once: one of them sees a duplicate.
fn ignore_concurrent_create(e: tokio_postgres::Error) -> Result<(), tokio_postgres::Error> {
    match e.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => Ok(()),
        _ => Err(e),
    }
}

/// Writes records, creating the day partitions they need. Known partitions are remembered, and
/// the statements are prepared once for the connection's life.
pub struct Writer {
    pub client: Client,
    partitions: HashSet<i64>,
    statements: Option<Statements>,
}

struct Statements {
    records: Statement,
    audit: crate::audit::Statements,
}

const INSERT_RECORDS: &str = "INSERT INTO cost_records (id, request_id, ts, org, team, app, key_id, \"user\", endpoint, model, \
    provider, target, upstream_model, region, status, error, prompt_tokens, completion_tokens, \
    cached_tokens, reasoning_tokens, usage_estimated, cost_micros, latency_us, attempts, stream, cache) \
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], \
    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
    $13::text[], $14::text[], $15::smallint[], $16::text[], $17::bigint[], $18::bigint[], \
    $19::bigint[], $20::bigint[], $21::bool[], $22::bigint[], $23::bigint[], $24::int[], \
    $25::bool[], $26::text[]) \
    ON CONFLICT (id, ts) DO NOTHING RETURNING id";

impl Writer {
    pub fn new(client: Client) -> Self {
        Self { client, partitions: HashSet::new(), statements: None }
    }

    pub async fn write(&mut self, records: &[CostRecord]) -> Result<u64, tokio_postgres::Error> {
        if records.is_empty() {
            return Ok(0);
        }
        for day in records.iter().map(CostRecord::day).collect::<HashSet<_>>() {
            if !self.partitions.contains(&day) {
                self.create_partition(day).await?;
                self.partitions.insert(day);
            }
        }
        let col = |f: fn(&CostRecord) -> Option<String>| records.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let request_ids: Vec<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
        let ts: Vec<SystemTime> = records.iter().map(|r| time(r.ts_us)).collect();
        let endpoints: Vec<&str> = records.iter().map(|r| r.endpoint.as_ref()).collect();
        let status: Vec<i16> = records.iter().map(|r| r.status as i16).collect();
        let num = |f: fn(&CostRecord) -> u64| {
            records.iter().map(|r| f(r).min(i64::MAX as u64) as i64).collect::<Vec<i64>>()
        };
        let estimated: Vec<bool> = records.iter().map(|r| r.usage_estimated).collect();
        let attempts: Vec<i32> = records.iter().map(|r| r.attempts.min(i32::MAX as u32) as i32).collect();
        let stream: Vec<bool> = records.iter().map(|r| r.stream).collect();
        let cache: Vec<&str> = records.iter().map(|r| r.cache.as_ref()).collect();
        let statements = match &self.statements {
            Some(s) => s,
            None => {
                let (records, audit) = futures_util::try_join!(
                    self.client.prepare(INSERT_RECORDS),
                    crate::audit::Statements::prepare(&self.client)
                )?;
                self.statements.insert(Statements { records, audit })
            }
        };
        // Cost records and their audit rows go in together, or not at all.
        let tx = self.client.transaction().await?;
        // The ids stored now: a replay's records already there get no second audit row.
        let stored: HashSet<String> = tx
            .query(
                &statements.records,
                &[
                    &ids,
                    &request_ids,
                    &ts,
                    &col(|r| r.org.clone()),
                    &col(|r| r.team.clone()),
                    &col(|r| r.app.clone()),
                    &col(|r| r.key_id.clone()),
                    &col(|r| r.user.clone()),
                    &endpoints,
                    &col(|r| r.model.clone()),
                    &col(|r| r.provider.clone()),
                    &col(|r| r.target.clone()),
                    &col(|r| r.upstream_model.clone()),
                    &col(|r| r.region.clone()),
                    &status,
                    &col(|r| r.error.clone()),
                    &num(|r| r.prompt_tokens),
                    &num(|r| r.completion_tokens),
                    &num(|r| r.cached_tokens),
                    &num(|r| r.reasoning_tokens),
                    &estimated,
                    &num(|r| r.cost.0),
                    &num(|r| r.latency_us),
                    &attempts,
                    &stream,
                    &cache,
                ],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let new: Vec<crate::audit::Entry> =
            records.iter().filter(|r| stored.contains(&r.id)).map(crate::audit::Entry::of_request).collect();
        crate::audit::append(&tx, &statements.audit, new, true).await?;
        tx.commit().await?;
        Ok(stored.len() as u64)
    }

    async fn create_partition(&mut self, day: i64) -> Result<(), tokio_postgres::Error> {
        let tx = self.client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK]).await?;
        // The day's audit partition too: request rows are appended with the day's cost records.
        for parent in ["cost_records", "audit_log"] {
            tx.execute("SELECT sluice_create_partition($1, $2::text::date)", &[&parent, &date(day)]).await?;
        }
        tx.commit().await
    }
}

/// Spend grouped by one dimension over a time range.
pub async fn spend(client: &Client, q: &SpendQuery) -> Result<Vec<SpendRow>, tokio_postgres::Error> {
    let column = q.group_by.column();
    let mut sql = format!(
        "SELECT {column}, count(*), sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint, \
         sum(cached_tokens)::bigint, sum(reasoning_tokens)::bigint, sum(cost_micros)::bigint \
         FROM cost_records WHERE ts >= $1 AND ts < $2"
    );
    let from = time(q.from_day * 86_400_000_000);
    let to = time(q.to_day * 86_400_000_000);
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&from, &to];
    for (i, (col, value)) in q.filters.iter().enumerate() {
        sql.push_str(&format!(" AND {} = ${}", col.column(), i + 3));
        params.push(value);
    }
    sql.push_str(" GROUP BY 1 ORDER BY 7 DESC, 1");
    let rows = client.query(&sql, &params).await?;
    Ok(rows
        .iter()
        .map(|r| SpendRow {
            key: r.get::<_, Option<String>>(0),
            requests: r.get::<_, i64>(1) as u64,
            prompt_tokens: r.get::<_, Option<i64>>(2).unwrap_or(0) as u64,
            completion_tokens: r.get::<_, Option<i64>>(3).unwrap_or(0) as u64,
            cached_tokens: r.get::<_, Option<i64>>(4).unwrap_or(0) as u64,
            reasoning_tokens: r.get::<_, Option<i64>>(5).unwrap_or(0) as u64,
            cost_micros: r.get::<_, Option<i64>>(6).unwrap_or(0) as u64,
        })
        .collect())
}

fn time(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}
