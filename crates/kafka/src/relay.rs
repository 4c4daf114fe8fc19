//! The outbox relay: publishes committed outbox rows to Kafka in id order and marks them
//! published only after the broker acknowledged them.
//!
//! Ordering across replicas: each batch runs in a transaction holding a per-schema advisory
//! lock, so at most one replica publishes at a time and per-ticket order is kept (rows of the
//! same ticket are never split between two concurrent publishers). Other replicas are hot
//! standbys that take over on the next wake-up.
//!
//! Latency: the writers of this process wake the relay right after they commit (an
//! in-process signal: Postgres `NOTIFY` would serialise every committing writer behind a
//! global lock). Rows written by other replicas are found by their own relay or by the poll. Broker outages never touch
//! the write path: rows wait in Postgres and the relay retries with capped backoff.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::{PgPool, Row};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{KafkaSettings, ensure_topics};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub message_timeout: Duration,
    /// Topics (with partition counts) re-created if a fresh broker lost them.
    pub topics: Vec<(String, i32)>,
    pub replication: i32,
    /// Signalled by writers after each commit that added outbox rows.
    pub wake: Arc<Notify>,
}

pub struct OutboxRelay {
    contended: std::sync::atomic::AtomicBool,
    pool: PgPool,
    producer: FutureProducer,
    settings: KafkaSettings,
    config: RelayConfig,
}

struct Row_ {
    id: i64,
    topic: String,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, String)>,
    created_at: DateTime<Utc>,
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        settings: KafkaSettings,
        config: RelayConfig,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = settings.producer(config.message_timeout)?;
        Ok(Self {
            contended: Default::default(),
            pool,
            producer,
            settings,
            config,
        })
    }

    /// Runs until `shutdown`, then publishes what is pending (bounded by the message timeout)
    /// and flushes the producer.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.warm_up().await;
        let mut backoff = Duration::from_millis(100);
        // Housekeeping runs beside the publish loop, never inside it: a slow cleanup scan
        // must not stall publishing (it showed as periodic lag spikes).
        let housekeeping = tokio::spawn(housekeeping(self.pool.clone(), shutdown.clone()));
        loop {
            match self.drain().await {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox publish failed");
                    // A broker that restarted empty has lost our topics; put them back.
                    if let Err(e) =
                        ensure_topics(&self.settings, &self.config.topics, self.config.replication)
                            .await
                    {
                        tracing::debug!(error = %e, "re-creating topics failed");
                    }
                    // The idempotent producer's id and sequence numbers may be unknown to a
                    // broker that lost its state, which stalls it for good. Unacknowledged
                    // rows are still in the outbox, so a fresh producer loses nothing.
                    match self.settings.producer(self.config.message_timeout) {
                        Ok(p) => self.producer = p,
                        Err(e) => tracing::warn!(error = %e, "recreating kafka producer failed"),
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(jitter(backoff)) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }

            // Another replica holds the publish lock: look again soon rather than a poll later.
            let wait = if self
                .contended
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                Duration::from_millis(20).min(self.config.poll_interval)
            } else {
                self.config.poll_interval
            };
            let wake = self.config.wake.clone();
            let wait = async move {
                let _ = tokio::time::timeout(wait, wake.notified()).await;
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait => {}
            }
        }
        // Final flush: whatever committed before shutdown goes out now if the broker is up.
        match tokio::time::timeout(self.config.message_timeout, self.drain()).await {
            Ok(Ok(n)) => tracing::info!(published = n, "outbox relay drained"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "outbox drain at shutdown failed; rows stay pending")
            }
            Err(_) => tracing::warn!("outbox drain at shutdown timed out; rows stay pending"),
        }
        let _ = self.producer.flush(Duration::from_secs(5));
        let _ = housekeeping.await;
    }

    /// Connects and learns partition leaders before the first batch, so the first rows
    /// after a start do not wait for metadata (that cost ~1 s on the first batch otherwise).
    async fn warm_up(&self) {
        let producer = self.producer.clone();
        let topics: Vec<String> = self.config.topics.iter().map(|(t, _)| t.clone()).collect();
        // Bounded: with the broker down, the relay must get on with its loop (and back-off).
        let timeout = self.config.message_timeout.min(Duration::from_secs(2));
        let _ = tokio::task::spawn_blocking(move || {
            for t in &topics {
                if let Err(e) = producer.client().fetch_metadata(Some(t), timeout) {
                    tracing::debug!(topic = %t, error = %e, "metadata warm-up failed");
                }
            }
        })
        .await;
    }

    /// Publishes until nothing is pending. Returns the number of rows published.
    async fn drain(&self) -> Result<usize, RelayError> {
        let mut total = 0;
        loop {
            let n = self.publish_batch().await?;
            total += n;
            if (n as i64) < self.config.batch_size {
                return Ok(total);
            }
        }
    }

    async fn publish_batch(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.tidings_outbox'))",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !locked {
            self.contended
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(0);
        }
        // Marking rows published is bookkeeping: if a crash loses the mark, the rows are sent
        // again (at-least-once allows it), so this commit need not wait for the WAL flush.
        // The writers' own commits stay fully durable.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT id, topic, key, value, headers, created_at FROM outbox
             WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| {
            let headers: serde_json::Value = r.get("headers");
            Row_ {
                id: r.get("id"),
                topic: r.get("topic"),
                key: r.get("key"),
                value: r.get("value"),
                headers: serde_json::from_value(headers).unwrap_or_default(),
                created_at: r.get("created_at"),
            }
        })
        .collect::<Vec<_>>();
        if rows.is_empty() {
            return Ok(0);
        }
        tracing::debug!(
            rows = rows.len(),
            first_id = rows[0].id,
            "publishing outbox batch"
        );
        // Enqueue the whole batch, then wait for every acknowledgement. The idempotent
        // producer keeps per-partition order even when it retries internally.
        let deliveries = rows.iter().map(|row| {
            let mut headers = OwnedHeaders::new_with_capacity(row.headers.len());
            for (k, v) in &row.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let record = FutureRecord::to(&row.topic)
                .key(&row.key)
                .payload(&row.value)
                .headers(headers);
            self.producer.send(
                record,
                rdkafka::util::Timeout::After(self.config.message_timeout),
            )
        });
        let results = join_all(deliveries).await;
        let now = Utc::now();
        let mut acked = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(_) => {
                    acked.push(row.id);
                    let lag = (now - row.created_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
                    metrics::histogram!("tidings_outbox_publish_lag_seconds").record(lag.max(0.0));
                }
                Err((e, _)) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !acked.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1)")
                .bind(&acked)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        metrics::counter!("tidings_outbox_published_total").increment(acked.len() as u64);
        match first_error {
            // Rows that were not acknowledged stay pending and go out on the next attempt.
            Some(e) => Err(RelayError::Kafka(e)),
            None => Ok(acked.len()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Reports the backlog every 5 s and deletes rows acknowledged more than a day ago once a
/// minute (they are only kept for debugging).
async fn housekeeping(pool: PgPool, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(backlog) =
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await
        {
            metrics::gauge!("tidings_outbox_backlog").set(backlog as f64);
        }
        if n.is_multiple_of(12) {
            let _ = sqlx::query("DELETE FROM outbox WHERE published_at < now() - interval '1 day'")
                .execute(&pool)
                .await;
        }
        n += 1;
    }
}

fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let ms = d.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms.max(1)))
}
