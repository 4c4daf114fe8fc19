//! The outbox relay: publishes committed outbox rows to Kafka in id order and deletes them
//! only after the broker acknowledged them.
//!
//! Ordering across replicas: one relay per schema is the leader, elected by a session-level
//! advisory lock held on a dedicated connection, so per-ticket order is never split between
//! two publishers. The others are standbys: they try to take over every poll interval (the
//! lock is released the moment the leader's connection closes) and forward their writers'
//! wake-ups to the leader with `NOTIFY`.
//!
//! Latency: the writers of this process wake the relay right after they commit (in-process;
//! a `NOTIFY` inside the writers' transactions would serialise every commit behind a global
//! lock). A leader batch costs two round trips: read the pending rows, delete the acknowledged
//! ones. Broker outages never touch the write path: rows wait in Postgres and the relay retries
//! with capped backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tidings_kafka::{KafkaSettings, ensure_topics};

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

/// The relay's dedicated connection. Holding the advisory lock on it makes this relay the
/// leader; closing it (drop, crash, network loss) releases the lock at once.
struct Seat {
    conn: PgConnection,
    leader: bool,
    /// The NOTIFY channel of this schema's relays.
    channel: String,
}

impl Seat {
    async fn open(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
        // Deleting published rows is bookkeeping: if a crash loses it, the rows are sent again
        // (at-least-once allows it), so it need not wait for the WAL flush. This connection
        // writes nothing else; the writers' commits stay fully durable.
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut conn)
            .await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut conn)
            .await?;
        Ok(Self {
            conn,
            leader: false,
            channel: notify_channel(&schema),
        })
    }

    async fn try_lead(&mut self) -> Result<bool, sqlx::Error> {
        if !self.leader {
            self.leader = sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(hashtext(current_schema() || '.tidings_outbox'))",
            )
            .fetch_one(&mut self.conn)
            .await?;
            if self.leader {
                tracing::info!("outbox relay is the leader for this schema");
            }
        }
        Ok(self.leader)
    }
}

/// The channel standbys use to wake the leader (one per schema, within Postgres' 63 bytes).
fn notify_channel(schema: &str) -> String {
    let mut c = format!("tidings_outbox.{schema}");
    while c.len() > 63 {
        c.pop();
    }
    c
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        settings: KafkaSettings,
        config: RelayConfig,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = settings.producer(config.message_timeout)?;
        Ok(Self {
            pool,
            producer,
            settings,
            config,
        })
    }

    /// Runs until `shutdown`, then (as the leader) publishes what is pending, bounded by the
    /// message timeout, and flushes the producer.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.warm_up().await;
        let remote_wake = Arc::new(Notify::new());
        let housekeeping = tokio::spawn(housekeeping(self.pool.clone(), shutdown.clone()));
        let mut listener: Option<tokio::task::JoinHandle<()>> = None;
        let mut seat: Option<Seat> = None;
        let mut backoff = Duration::from_millis(100);
        let mut last_try = Instant::now() - self.config.poll_interval;
        let mut woken_locally = false;
        loop {
            let mut failed = false;
            if seat.is_none() {
                match Seat::open(&self.pool).await {
                    Ok(s) => {
                        if listener.is_none() {
                            listener = Some(tokio::spawn(listen(
                                self.pool.clone(),
                                s.channel.clone(),
                                remote_wake.clone(),
                            )));
                        }
                        seat = Some(s);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox relay cannot connect to postgres");
                        failed = true;
                    }
                }
            }
            if let Some(s) = seat.as_mut() {
                // A standby asks for the lock once per poll interval, not on every wake-up.
                if !s.leader && last_try.elapsed() >= self.config.poll_interval {
                    last_try = Instant::now();
                    if let Err(e) = s.try_lead().await {
                        tracing::warn!(error = %e, "outbox relay lost its connection");
                        seat = None;
                        failed = true;
                    }
                }
            }
            match seat.as_mut() {
                Some(s) if s.leader => match self.drain(&mut s.conn).await {
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(RelayError::Database(e)) => {
                        // The lock may be gone with the connection: step down and start over.
                        tracing::warn!(error = %e, "outbox relay lost its connection; stepping down");
                        seat = None;
                        failed = true;
                    }
                    Err(RelayError::Kafka(e)) => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox publish failed");
                        self.recover_broker().await;
                        failed = true;
                    }
                },
                Some(s) if woken_locally => {
                    // Standby: our writers committed rows the leader should publish now.
                    if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                        .bind(&s.channel)
                        .execute(&mut s.conn)
                        .await
                    {
                        tracing::warn!(error = %e, "outbox relay lost its connection");
                        seat = None;
                    }
                }
                _ => {}
            }
            let wait = if failed {
                let wait = jitter(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                wait
            } else {
                self.config.poll_interval
            };
            woken_locally = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.config.wake.notified(), if !failed => woken_locally = true,
                _ = remote_wake.notified(), if !failed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(s) = seat.as_mut().filter(|s| s.leader) {
            // Final flush: whatever committed before shutdown goes out now if the broker is up.
            match tokio::time::timeout(self.config.message_timeout, self.drain(&mut s.conn)).await {
                Ok(Ok(n)) => tracing::info!(published = n, "outbox relay drained"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "outbox drain at shutdown failed; rows stay pending")
                }
                Err(_) => tracing::warn!("outbox drain at shutdown timed out; rows stay pending"),
            }
        }
        let _ = self.producer.flush(Duration::from_secs(5));
        if let Some(l) = listener {
            l.abort();
        }
        if let Some(s) = seat {
            let _ = s.conn.close().await;
        }
        let _ = housekeeping.await;
    }

    /// After a failed batch: a broker that restarted empty has lost our topics, and the
    /// idempotent producer's id and sequence numbers may be unknown to it, which stalls the
    /// producer for good. Unacknowledged rows are still in the outbox, so a fresh producer
    /// loses nothing.
    async fn recover_broker(&mut self) {
        if let Err(e) =
            ensure_topics(&self.settings, &self.config.topics, self.config.replication).await
        {
            tracing::debug!(error = %e, "re-creating topics failed");
        }
        match self.settings.producer(self.config.message_timeout) {
            Ok(p) => self.producer = p,
            Err(e) => tracing::warn!(error = %e, "recreating kafka producer failed"),
        }
    }

    /// Connects and learns partition leaders before the first batch, so the first rows
    /// after a start do not wait for metadata (otherwise the first batch waits about a second).
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
    async fn drain(&self, conn: &mut PgConnection) -> Result<usize, RelayError> {
        let mut total = 0;
        loop {
            let n = self.publish_batch(conn).await?;
            total += n;
            if (n as i64) < self.config.batch_size {
                return Ok(total);
            }
        }
    }

    async fn publish_batch(&self, conn: &mut PgConnection) -> Result<usize, RelayError> {
        let rows = sqlx::query(
            "SELECT id, topic, key, value, headers, created_at FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(self.config.batch_size)
        .fetch_all(&mut *conn)
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
            let record = FutureRecord::to(&row.topic)
                .key(&row.key)
                .payload(&row.value)
                .headers(tidings_kafka::owned_headers(&row.headers));
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
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(&acked)
                .execute(&mut *conn)
                .await?;
        }
        metrics::counter!("tidings_outbox_published_total").increment(acked.len() as u64);
        match first_error {
            // Rows that were not acknowledged stay pending and go out on the next attempt.
            Some(e) => Err(RelayError::Kafka(e)),
            None => Ok(acked.len()),
        }
    }
}

/// Forwards standbys' `NOTIFY`s to the relay loop. Its own task, so that no half-read
/// notification is ever dropped by a `select!`; the listener reconnects by itself.
async fn listen(pool: PgPool, channel: String, wake: Arc<Notify>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "outbox listener cannot connect");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::debug!(error = %e, "outbox listener cannot listen");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        while listener.recv().await.is_ok() {
            wake.notify_one();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Reports the backlog (rows not yet acknowledged) every 5 s.
async fn housekeeping(pool: PgPool, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(backlog) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
        {
            metrics::gauge!("tidings_outbox_backlog").set(backlog as f64);
        }
    }
}

fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let ms = d.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms.max(1)))
}
