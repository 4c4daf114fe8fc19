//! Pruning by age: the records that only need to outlive a redelivery or a retried call
//! (send records, idempotency keys, resolutions, removed devices) are deleted once older
//! than their retention, a small batch per statement so that no statement holds many locks
//! or writes a burst of WAL.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement.
const BATCH: i64 = 1_000;

/// Rows of `table` whose `column` (a `timestamptz`) is older than `keep` go.
#[derive(Debug, Clone)]
pub struct Rule {
    pub table: &'static str,
    pub column: &'static str,
    pub keep: chrono::Duration,
}

impl Rule {
    pub fn new(table: &'static str, column: &'static str, keep: std::time::Duration) -> Self {
        Self {
            table,
            column,
            keep: chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX),
        }
    }
}

/// Deletes what `rule` says has expired, [`BATCH`] rows at a time; returns how many.
pub async fn prune(pool: &PgPool, rule: &Rule) -> Result<u64, sqlx::Error> {
    // Names come from code, never from input.
    let sql = format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM {table} WHERE {column} < $1 LIMIT $2))",
        table = rule.table,
        column = rule.column,
    );
    // A retention too long to subtract keeps everything.
    let Some(cutoff) = Utc::now().checked_sub_signed(rule.keep) else {
        return Ok(0);
    };
    let mut total = 0;
    loop {
        let n = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(cutoff)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Applies `rules` shortly after start and then every `every`, until `shutdown`.
pub async fn prune_periodically(
    pool: PgPool,
    rules: Vec<Rule>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for rule in &rules {
            match prune(&pool, rule).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("tidings_pruned_rows_total", "table" => rule.table)
                        .increment(n);
                    tracing::info!(table = rule.table, rows = n, "pruned expired rows");
                }
                Err(e) => tracing::warn!(table = rule.table, error = %e, "pruning failed"),
            }
        }
    }
}
