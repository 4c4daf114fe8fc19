//! The record of what a dispatcher sent, in its own schema. A send is keyed by (event,
//! recipient — an address, a device) and its record is what keeps a redelivered event from
//! sending again; each send also has an outcome event for the notification-events topic.
//!
//! A message the provider accepted is recorded at once, while its outcome event is being
//! published: the time between the provider's acceptance and the record is the crash window
//! in which a `kill -9` sends the message again after the restart, and waiting for the
//! broker's acknowledgement first would add that wait to it, under load far more than the
//! commit itself (docs/delivery.md, "The crash window"). A crash between the record and
//! the acknowledgement leaves a record whose outcome event may be missing, so a handler that
//! finds a sent record publishes its outcome again (`republish`, same event id, derived from
//! the key, so consumers drop the copy). A failure is recorded only after its outcome event
//! is acknowledged: a record of a failure therefore means its outcome is on the broker. The
//! table has the columns of `email_sends` in the email dispatcher's first migration; each
//! dispatcher names its own.
//!
//! Outcome events are published directly, not through an outbox written in the record's
//! statement: such an outbox costs more WAL than the records themselves and, with its relay's
//! reads and deletes, about as much of Postgres' work again (docs/performance.md).
//!
//! Lookups and records are batched across lanes (see `batch.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;
use tidings_kafka::Publisher;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::batch::next_batch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Sent,
    Failed(String),
}

/// An outcome event: published while a sent message's record is written, and before a
/// failure's (see the module).
#[derive(Clone)]
pub struct OutcomeMessage {
    pub topic: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// One send record with its outcome event.
#[derive(Clone)]
pub struct Record {
    pub event_id: Uuid,
    pub recipient: String,
    pub kind: &'static str,
    pub message_id: String,
    pub outcome: Recorded,
    pub event: OutcomeMessage,
}

/// A send found in the log: its outcome and the message id it went out with (the provider's
/// id where it gives one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub outcome: Recorded,
    pub message_id: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("send log: {0}")]
pub struct SendLogError(String);

type Reply<T> = oneshot::Sender<Result<T, SendLogError>>;
/// (event id, recipient) and where the answer goes.
type Lookup = ((Uuid, String), Reply<Option<Found>>);
/// A stored send: event id, recipient, outcome, detail, message id.
type SendRow = (Uuid, String, String, Option<String>, String);

/// Writes a prepared send record when fired; fires at most once, from any thread. Dropped
/// unfired (the message was not accepted), it writes nothing.
#[derive(Clone)]
pub struct Trigger(Arc<std::sync::Mutex<Option<PreparedRecord>>>);

type PreparedRecord = (
    Record,
    Reply<Instant>,
    mpsc::UnboundedSender<(Record, Reply<Instant>)>,
);

impl Trigger {
    pub fn fire(&self) {
        let prepared = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((record, reply, records)) = prepared {
            // A stopped writer drops the reply: the waiter sees "stopped" and retries.
            let _ = records.send((record, reply));
        }
    }
}

/// A prepared record's commit to wait for.
pub struct Pending {
    rx: oneshot::Receiver<Result<Instant, SendLogError>>,
}

#[derive(Clone)]
pub struct SendLog {
    lookups: mpsc::UnboundedSender<Lookup>,
    records: mpsc::UnboundedSender<(Record, Reply<Instant>)>,
    outcomes: Arc<Publisher>,
}

impl SendLog {
    /// The send log over `table`, and its record writer, to run on a runtime of the caller's
    /// choosing: the one whose thread fires the triggers (the SMTP sessions'), so that a
    /// trigger wakes a task on its own thread rather than signal another one. `writers`
    /// batches are written at once: a record waits for a free writer rather than for the
    /// batch before it, so it commits about one write after it was queued — the crash window
    /// of a sent message. The writer ends when every `SendLog` clone and trigger is dropped.
    /// Outcome events go out through `outcomes`.
    pub fn new(
        pool: PgPool,
        table: &'static str,
        outcomes: Arc<Publisher>,
        writers: usize,
    ) -> (Self, RecordWriter) {
        // Unbounded, and still bounded: every caller awaits its own answer before it asks
        // again, so each queue holds at most one entry per handler in flight — the consumer
        // loop's lanes (`*_LANES`), times the recipients an event has at once (one for
        // email, an event's devices for push).
        let (lookups, lrx) = mpsc::unbounded_channel();
        let (records, rrx) = mpsc::unbounded_channel();
        tokio::spawn(lookup_batches(pool.clone(), table, lrx));
        // Its own connections, made on the runtime it runs on, that do not wait for the WAL
        // flush at commit: a committed record is visible at once, so a dispatcher killed
        // after the commit sends nothing twice, and only a crash of Postgres itself within
        // its WAL writer's delay (~0.6 s) can lose records — which makes duplicates (the
        // sends are redone), never losses. Waiting for the flush would be most of the window.
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("synchronous_commit", "off")]);
        let writer = Box::pin(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(writers.max(1) as u32)
                .test_before_acquire(false)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect_lazy_with(options);
            // Every writer's connection is opened before the first record needs it: opened
            // on demand, the first batches would wait for the connection set-up, and every
            // send accepted meanwhile would carry it in its crash window.
            let warm = (0..writers.max(1)).map(|_| pool.acquire());
            if let Err(e) = futures::future::try_join_all(warm).await {
                tracing::warn!(error = %e, "send-record connections not opened yet; records will open them");
            }
            record_batches(pool, table, rrx, writers.max(1)).await;
        });
        (
            Self {
                lookups,
                records,
                outcomes,
            },
            writer,
        )
    }

    /// A record of a sent message to write the moment the provider accepts it, from wherever
    /// the acceptance is read (the SMTP session thread), not when the handler wakes up: see
    /// [`Trigger`]. `wait` then publishes the outcome and waits for the commit. (`record`'s
    /// `event` is not used: `wait` publishes the one built after the acceptance.)
    pub fn prepare(&self, record: Record) -> (Trigger, Pending) {
        let (tx, rx) = oneshot::channel();
        let trigger = Trigger(Arc::new(std::sync::Mutex::new(Some((
            record,
            tx,
            self.records.clone(),
        )))));
        (trigger, Pending { rx })
    }

    /// Publishes `event`, the prepared record's outcome, while the record is written; returns
    /// the instant of the commit. Call it only once the trigger fired (the message was sent).
    pub async fn wait(
        &self,
        pending: Pending,
        event: &OutcomeMessage,
    ) -> Result<Instant, SendLogError> {
        let commit = async {
            pending
                .rx
                .await
                .map_err(|_| SendLogError("stopped".into()))?
        };
        let ((), committed) = tokio::try_join!(self.republish(event), commit)?;
        Ok(committed)
    }

    pub async fn lookup(
        &self,
        event_id: Uuid,
        recipient: &str,
    ) -> Result<Option<Found>, SendLogError> {
        let (tx, rx) = oneshot::channel();
        self.lookups
            .send(((event_id, recipient.to_owned()), tx))
            .map_err(|_| SendLogError("stopped".into()))?;
        rx.await.map_err(|_| SendLogError("stopped".into()))?
    }

    /// Records a send and publishes its outcome event; returns once both are done, with the
    /// instant the record was committed. A sent message's record is written while its outcome
    /// is published; a failure's only after (see the module). A second record for the same
    /// key (a concurrent twin after a rebalance) changes nothing. On an error nothing may be
    /// assumed written: the caller retries the whole.
    pub async fn record(&self, record: Record) -> Result<Instant, SendLogError> {
        let event = record.event.clone();
        let sent = record.outcome == Recorded::Sent;
        let publish = self.republish(&event);
        let write = async {
            let (tx, rx) = oneshot::channel();
            self.records
                .send((record, tx))
                .map_err(|_| SendLogError("stopped".into()))?;
            rx.await.map_err(|_| SendLogError("stopped".into()))?
        };
        if sent {
            let ((), written) = tokio::try_join!(publish, write)?;
            Ok(written)
        } else {
            publish.await?;
            write.await
        }
    }

    /// Publishes an outcome event (again, for a sent record found on redelivery).
    pub async fn republish(&self, e: &OutcomeMessage) -> Result<(), SendLogError> {
        self.outcomes
            .publish(&e.topic, &e.key, &e.value, &e.headers)
            .await
            .map_err(|err| SendLogError(format!("publishing the outcome event: {err}")))?;
        metrics::counter!("tidings_outcome_events_published_total").increment(1);
        Ok(())
    }
}

async fn lookup_batches(
    pool: PgPool,
    table: &'static str,
    mut rx: mpsc::UnboundedReceiver<Lookup>,
) {
    let mut previous = 0;
    while let Some(batch) = next_batch(&mut rx, previous).await {
        previous = batch.len();
        let (ids, recipients): (Vec<Uuid>, Vec<String>) =
            batch.iter().map(|((e, r), _)| (*e, r.clone())).unzip();
        // One primary-key probe per key (LATERAL with LIMIT cannot be flattened into a
        // join): a join lets the planner pick a hash join over a scan of the whole, growing
        // table, and a plan cached while the table was empty keeps doing that.
        let sql = format!(
            "SELECT s.event_id, s.recipient, s.outcome, s.detail, s.message_id
             FROM UNNEST($1::uuid[], $2::text[]) AS k(e, r),
                  LATERAL (SELECT event_id, recipient, outcome, detail, message_id FROM {table}
                           WHERE event_id = k.e AND recipient = k.r LIMIT 1) AS s"
        );
        let rows: Result<Vec<SendRow>, _> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&ids)
            .bind(&recipients)
            .fetch_all(&pool)
            .await;
        match rows {
            Ok(rows) => {
                let found: HashMap<(Uuid, String), Found> = rows
                    .into_iter()
                    .map(|(e, r, outcome, detail, message_id)| {
                        let outcome = match outcome.as_str() {
                            "sent" => Recorded::Sent,
                            _ => Recorded::Failed(detail.unwrap_or_default()),
                        };
                        (
                            (e, r),
                            Found {
                                outcome,
                                message_id,
                            },
                        )
                    })
                    .collect();
                for (key, reply) in batch {
                    let _ = reply.send(Ok(found.get(&key).cloned()));
                }
            }
            Err(e) => {
                let err = SendLogError(e.to_string());
                for (_, reply) in batch {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Writes the records: a future, so that it can run on a thread other than the lanes'. On
/// the shared runtime a record waited for its turn behind hundreds of lane tasks, which was
/// most of the crash window on a busy machine.
pub type RecordWriter = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn record_batches(
    pool: PgPool,
    table: &'static str,
    mut rx: mpsc::UnboundedReceiver<(Record, Reply<Instant>)>,
    writers: usize,
) {
    let in_flight = writers;
    let writers = Arc::new(tokio::sync::Semaphore::new(writers));
    let mut previous = 0;
    while let Some(batch) = next_batch(&mut rx, previous).await {
        previous = batch.len();
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        let pool = pool.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = write_records(&pool, table, &batch)
                .await
                .map(|()| Instant::now());
            // The statement's share of the crash window (the rest is the wait for it).
            metrics::histogram!("tidings_send_record_write_seconds", "table" => table)
                .record(started.elapsed().as_secs_f64());
            drop(writer);
            for (_, reply) in batch {
                let _ = reply.send(result.clone());
            }
        });
    }
    // Let the batches in flight finish before the runtime goes.
    let _ = writers.acquire_many(in_flight as u32).await;
}

async fn write_records(
    pool: &PgPool,
    table: &'static str,
    batch: &[(Record, Reply<Instant>)],
) -> Result<(), SendLogError> {
    let mut seen = HashSet::new();
    let mut cols = RecordColumns::default();
    // In key order: two batches in flight that share keys (a redelivery's twin) then lock
    // them in the same order and cannot deadlock.
    let mut sorted: Vec<&Record> = batch.iter().map(|(r, _)| r).collect();
    sorted.sort_by(|a, b| (a.event_id, &a.recipient).cmp(&(b.event_id, &b.recipient)));
    for r in sorted {
        // A key twice in one batch (redelivery overlap) is written once.
        if !seen.insert((r.event_id, r.recipient.as_str())) {
            continue;
        }
        let (status, detail) = match &r.outcome {
            Recorded::Sent => ("sent", None),
            Recorded::Failed(reason) => ("failed", Some(reason.clone())),
        };
        cols.event_ids.push(r.event_id);
        cols.recipients.push(r.recipient.clone());
        cols.kinds.push(r.kind.to_owned());
        cols.message_ids.push(r.message_id.clone());
        cols.statuses.push(status.to_owned());
        cols.details.push(detail);
    }
    // `table` is a name fixed at compile time by the dispatcher, never input.
    let sql = format!(
        "INSERT INTO {table} (event_id, recipient, kind, message_id, outcome, detail)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
         ON CONFLICT (event_id, recipient) DO NOTHING"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&cols.event_ids)
        .bind(&cols.recipients)
        .bind(&cols.kinds)
        .bind(&cols.message_ids)
        .bind(&cols.statuses)
        .bind(&cols.details)
        .execute(pool)
        .await
        .map_err(|e| SendLogError(e.to_string()))?;
    Ok(())
}

#[derive(Default)]
struct RecordColumns {
    event_ids: Vec<Uuid>,
    recipients: Vec<String>,
    kinds: Vec<String>,
    message_ids: Vec<String>,
    statuses: Vec<String>,
    details: Vec<Option<String>>,
}
