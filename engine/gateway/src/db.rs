//! PostgreSQL off the ledger's write path: spend reports, the sums that rebuild lost budget
//! counters, and the admin API's reads and writes of orgs, teams, apps and keys. One lazily opened
//! connection (migrated on open), reopened after an error.

use std::time::Duration;

use sluice_core::budgets::{Dimension, SpendScope};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::ledger::postgres;
use crate::ledger::spend::{SpendQuery, SpendRow};

pub struct Db {
    url: String,
    client: Mutex<Option<Client>>,
}

impl Db {
    pub fn new(url: String) -> Self {
        Self { url, client: Mutex::new(None) }
    }

    /// Runs `f` on the connection (opening and migrating it first); drops the connection if `f`
    /// fails. Errors are sentences.
    pub async fn with<T>(
        &self,
        timeout: Duration,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, String> {
        let mut guard = self.client.lock().await;
        if guard.is_none() {
            let mut client = postgres::connect(&self.url, timeout).await?;
            postgres::migrate(&mut client).await.map_err(|e| format!("cannot migrate the schema: {e}"))?;
            *guard = Some(client);
        }
        let Some(client) = guard.as_mut() else { return Err("no database connection".into()) };
        match tokio::time::timeout(timeout, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *guard = None;
                Err(format!("the database query failed: {e}"))
            }
            Err(_) => {
                *guard = None;
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
