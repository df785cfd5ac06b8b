//! PostgreSQL off the ledger's write path: spend reports, the sums that rebuild lost budget
//! counters, managed-key lookups the cache missed, and the admin API's reads and writes. A small
//! pool (deadpool-postgres, 4 connections, opened on demand); the schema is migrated on first use.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use sluice_core::budgets::{Dimension, SpendScope};
use tokio::sync::OnceCell;
use tokio_postgres::Client;

use crate::ledger::postgres;
use crate::ledger::spend::{SpendQuery, SpendRow};

/// Connections the pool opens at most.
const POOL_SIZE: usize = 4;

pub struct Db {
    pool: Pool,
    migrated: OnceCell<()>,
}

impl Db {
    /// `url` is checked by configuration before it gets here.
    pub fn new(url: String) -> Result<Self, String> {
        let (mut config, tls) = crate::pg_tls::config(&url)?;
        config.connect_timeout(Duration::from_secs(3));
        if config.get_application_name().is_none() {
            config.application_name("sluice");
        }
        let manager =
            Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| format!("cannot build the PostgreSQL pool: {e}"))?;
        Ok(Self { pool, migrated: OnceCell::new() })
    }

    /// Runs `f` on a pooled connection (the schema migrated first, once); a connection whose call
    /// failed or timed out is not reused. Errors are sentences.
    pub async fn with<T>(
        &self,
        timeout: Duration,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, String> {
        let mut client = tokio::time::timeout(timeout, self.pool.get())
            .await
            .map_err(|_| "no database connection within the deadline".to_owned())?
            .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        self.migrated
            .get_or_try_init(|| async {
                postgres::migrate(&mut client).await.map_err(|e| format!("cannot migrate the schema: {e}"))
            })
            .await?;
        match tokio::time::timeout(timeout, f(&mut client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                drop(Object::take(client));
                Err(format!("the database query failed: {}", crate::pg_tls::describe(&e)))
            }
            Err(_) => {
                drop(Object::take(client));
                Err("the database did not answer in time".into())
            }
        }
    }

    pub async fn spend(&self, q: &SpendQuery) -> Result<Vec<SpendRow>, String> {
        self.with(Duration::from_secs(5), async |c| postgres::spend(c, q).await).await
    }

    /// What the ledger holds for a budget counter's scope, in micro-dollars.
    pub async fn sum(&self, scope: &SpendScope, timeout: Duration) -> Result<u64, String> {
        let column = match scope.dimension {
            Dimension::Team => "team",
            Dimension::Key => "key_id",
        };
        let sql = format!(
            "SELECT coalesce(sum(cost_micros), 0)::bigint FROM cost_records \
             WHERE {column} = $1 AND ts >= to_timestamp($2::double precision / 1e6) \
             AND ts < to_timestamp($3::double precision / 1e6)"
        );
        let (from, to) = (scope.from_us as f64, scope.to_us as f64);
        self.with(timeout, async |c| {
            let row = c.query_one(&sql, &[&scope.owner, &from, &to]).await?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
        .await
    }
}
