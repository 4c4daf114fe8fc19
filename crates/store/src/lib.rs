//! The Postgres event store. Events, their outbox rows, the list read model and the
//! idempotency record of a command all commit in one transaction, so a ticket's history,
//! what Kafka will see and what a retried call gets back never disagree.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};
pub use tidings_domain::TicketSummary;
use tidings_domain::{
    Actor, Requester, Subject, Ticket, TicketEvent, TicketId, TicketNumber, TicketStatus, fold,
};
use uuid::Uuid;

pub use sqlx::PgPool as Pool;

pub mod retention;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else appended to the ticket first; retry against fresh state.
    #[error("concurrent write to the same ticket")]
    Conflict,
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // Unique violations are how Postgres tells us a concurrent writer won.
        if let sqlx::Error::Database(db) = &e
            && db.code().as_deref() == Some("23505")
        {
            return StoreError::Conflict;
        }
        StoreError::Database(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Connects with an optional schema (tests use a fresh one each) and pool size.
pub async fn connect(url: &str, schema: Option<&str>, max_connections: u32) -> Result<PgPool> {
    let mut opts = PgConnectOptions::from_str(url)?;
    if let Some(schema) = schema {
        opts = opts.options([("search_path", schema)]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // sqlx pings every connection it hands out by default: a round trip per query. A
        // connection that died while idle fails its query instead, and the pool drops it.
        .test_before_acquire(false)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(opts)
        .await?;
    Ok(pool)
}

/// Connects (see `connect`) and brings the schema up to date with `migrator`: what a service
/// with tables of its own does at start.
pub async fn open(
    url: &str,
    schema: &str,
    max_connections: u32,
    migrator: &sqlx::migrate::Migrator,
) -> Result<PgPool> {
    let pool = connect(url, Some(schema), max_connections).await?;
    migrate_with(&pool, Some(schema), migrator).await?;
    Ok(pool)
}

/// Creates the schema if needed and applies the event store's migrations.
pub async fn migrate(pool: &PgPool, schema: Option<&str>) -> Result<()> {
    migrate_with(pool, schema, &MIGRATOR).await
}

/// Creates the schema if needed and applies `migrator` (services with their own tables use
/// this with their own migrations, in their own schema).
pub async fn migrate_with(
    pool: &PgPool,
    schema: Option<&str>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<()> {
    if let Some(schema) = schema {
        let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
        // The identifier is quoted above (doubled quotes), so it cannot break out.
        let sql = format!("CREATE SCHEMA IF NOT EXISTS {quoted}");
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
    }
    migrator.run(pool).await?;
    Ok(())
}

/// One event as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event_id: Uuid,
    pub sequence: u64,
    pub occurred_at: DateTime<Utc>,
    pub actor: Actor,
    pub event: TicketEvent,
    pub traceparent: Option<String>,
}

/// A message for the relay to publish; built by the service, opaque here.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub event_id: Uuid,
    pub topic: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// What a mutating command produced, kept so that a retry with the same request id gets the
/// same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ticket_id: Uuid,
    pub ticket_number: i64,
    /// Sequence of the event the caller cares about (e.g. the ReplyAdded).
    pub sequence: u64,
    pub status: String,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub requester_account_id: Option<String>,
    pub only_ticket: Option<TicketId>,
    pub statuses: Vec<TicketStatus>,
}

/// How `EventStore::begin` obtains the state a command decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// The decision state this process last wrote for the ticket, if it still has it: no
    /// round trip at all. A stale entry (another replica wrote since) or a reused request id
    /// fails the append with `Conflict`, and the retry reads afresh.
    Cached,
    /// A plain read; `append` then commits on its own (one statement is one transaction).
    Fresh,
    /// A transaction holding the ticket's row lock, so writers to a contended ticket queue.
    Locked,
}

type StateCache = std::sync::Mutex<lru::LruCache<TicketId, Ticket>>;

#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    /// Decision states (no conversation) of recently written tickets, by ticket.
    cache: Option<std::sync::Arc<StateCache>>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore").finish_non_exhaustive()
    }
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, cache: None }
    }

    /// Keeps the decision state of up to `capacity` recently written tickets in memory, so a
    /// write to one of them needs one round trip instead of two. The versioned append keeps
    /// this safe with several replicas: a stale entry only costs a retry.
    pub fn with_state_cache(mut self, capacity: usize) -> Self {
        self.cache = std::num::NonZeroUsize::new(capacity)
            .map(|c| std::sync::Arc::new(std::sync::Mutex::new(lru::LruCache::new(c))));
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn next_ticket_number(&self) -> Result<TicketNumber> {
        let n: i64 = sqlx::query_scalar("SELECT nextval('ticket_number_seq')")
            .fetch_one(&self.pool)
            .await?;
        TicketNumber::parse(n).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    pub async fn find_outcome(
        &self,
        scope: &str,
        request_id: &str,
    ) -> Result<Option<(String, Outcome)>> {
        let row = sqlx::query("SELECT fingerprint, outcome FROM idempotency_keys WHERE scope = $1 AND request_id = $2")
            .bind(scope)
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let outcome: serde_json::Value = r.get("outcome");
            let outcome =
                serde_json::from_value(outcome).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok((r.get("fingerprint"), outcome))
        })
        .transpose()
    }

    /// Loads a ticket's history without locking (reads).
    pub async fn load(&self, id: TicketId) -> Result<Vec<StoredEvent>> {
        load_events(&self.pool, id).await
    }

    pub async fn load_ticket(&self, id: TicketId) -> Result<Option<Ticket>> {
        Ok(rebuild(id, &self.load(id).await?))
    }

    /// Starts a write to one ticket and, in the same round trip, returns the state snapshot
    /// and what an earlier call with the same idempotency key produced. Without a snapshot (a
    /// new ticket, or a row older than snapshots) the state is rebuilt from the events.
    ///
    /// A concurrent writer makes `append` fail with `Conflict` (see `ReadMode`).
    pub async fn begin(
        &self,
        id: TicketId,
        idem: Option<(&str, &str)>,
        mode: ReadMode,
    ) -> Result<(TicketWrite, Option<(String, Outcome)>)> {
        if mode == ReadMode::Cached
            && let Some(cache) = &self.cache
        {
            let cached = cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned();
            if let Some(state) = cached {
                return Ok((self.write(id, None, Some(state)), None));
            }
        }
        let lock = mode == ReadMode::Locked;
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        let mut tx = if lock {
            Some(self.pool.begin().await?)
        } else {
            None
        };
        let query = sqlx::query(if lock {
            "SELECT (SELECT snapshot FROM tickets WHERE ticket_id = $1 FOR UPDATE) AS snapshot,
                    k.fingerprint, k.outcome
             FROM (SELECT 1) AS one
             LEFT JOIN idempotency_keys k ON k.scope = $2 AND k.request_id = $3"
        } else {
            "SELECT (SELECT snapshot FROM tickets WHERE ticket_id = $1) AS snapshot,
                    k.fingerprint, k.outcome
             FROM (SELECT 1) AS one
             LEFT JOIN idempotency_keys k ON k.scope = $2 AND k.request_id = $3"
        })
        .bind(id.as_uuid())
        .bind(idem.map(|i| i.0))
        .bind(idem.map(|i| i.1));
        let row = match tx.as_mut() {
            Some(tx) => query.fetch_one(&mut **tx).await?,
            None => query.fetch_one(&self.pool).await?,
        };
        let write = |state| self.write(id, tx, state);
        if let Some(fp) = row.get::<Option<String>, _>("fingerprint") {
            let outcome = serde_json::from_value(row.get("outcome")).map_err(corrupt)?;
            return Ok((write(None), Some((fp, outcome))));
        }
        let snapshot = row
            .get::<Option<serde_json::Value>, _>("snapshot")
            .and_then(|value| snapshot_state(id, value));
        let mut w = write(snapshot);
        if w.state.is_none() {
            w.state = match w.tx.as_mut() {
                Some(tx) => rebuild(id, &load_events(&mut **tx, id).await?),
                None => rebuild(id, &load_events(&self.pool, id).await?),
            };
        }
        Ok((w, None))
    }

    fn write(
        &self,
        id: TicketId,
        tx: Option<Transaction<'static, Postgres>>,
        state: Option<Ticket>,
    ) -> TicketWrite {
        TicketWrite {
            pool: self.pool.clone(),
            cache: self.cache.clone(),
            tx,
            id,
            state,
            written: None,
        }
    }

    pub async fn list(
        &self,
        filter: &ListFilter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<TicketSummary>> {
        let statuses: Vec<String> = filter
            .statuses
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        let rows = sqlx::query(
            "SELECT ticket_id, ticket_number, requester, subject, status, created_at, last_activity_at
             FROM tickets
             WHERE ($1::text IS NULL OR requester_account_id = $1)
               AND ($2::uuid IS NULL OR ticket_id = $2)
               AND (cardinality($3::text[]) = 0 OR status = ANY($3))
               AND ($4::timestamptz IS NULL OR (last_activity_at, ticket_id) < ($4, $5))
             ORDER BY last_activity_at DESC, ticket_id DESC
             LIMIT $6",
        )
        .bind(filter.requester_account_id.as_deref())
        .bind(filter.only_ticket.map(|t| t.as_uuid()))
        .bind(&statuses)
        .bind(after.map(|c| c.last_activity_at))
        .bind(after.map(|c| c.ticket_id))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(summary_from_row).collect()
    }

    /// Rebuilds the list read model from the event log; returns how many tickets it wrote.
    pub async fn rebuild_read_model(&self) -> Result<u64> {
        // One short transaction per ticket, holding only that ticket's row: writers of other
        // tickets never wait, and a writer of this one waits for one ticket's replay. A
        // writer that commits first is simply included (its events are read after its row
        // lock is released).
        sqlx::query(
            "DELETE FROM tickets t
             WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.ticket_id = t.ticket_id)",
        )
        .execute(&self.pool)
        .await?;
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT DISTINCT ticket_id FROM events")
            .fetch_all(&self.pool)
            .await?;
        let mut n = 0;
        for id in ids {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT 1 FROM tickets WHERE ticket_id = $1 FOR UPDATE")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let id = TicketId::from_uuid(id);
            let history = load_events(&mut *tx, id).await?;
            // Every column from the events: the rebuild repairs a damaged row.
            match rebuild(id, &history) {
                Some(t) => {
                    upsert_summary(&mut tx, &t).await?;
                    n += 1;
                }
                None => {
                    sqlx::query("DELETE FROM tickets WHERE ticket_id = $1")
                        .bind(id.as_uuid())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        }
        Ok(n)
    }
}

/// The shape of the decision-state snapshot. Bump it when `Ticket`'s serialized form changes
/// in a way an older snapshot does not decode into correctly (a new field whose value the
/// events determine): snapshots of another version are ignored, the state is replayed from
/// the events, and the write rewrites the snapshot. Version 2 added the guest access day.
pub const SNAPSHOT_VERSION: u64 = 2;
const SNAPSHOT_VERSION_FIELD: &str = "snapshot_version";

fn snapshot_json(t: &Ticket) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(t).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        object.insert(SNAPSHOT_VERSION_FIELD.into(), SNAPSHOT_VERSION.into());
    }
    Ok(value)
}

/// The snapshot's state, or `None` (replay the events) if it is of another version or does
/// not decode: a damaged snapshot costs a replay, never the ticket's writes.
fn snapshot_state(id: TicketId, value: serde_json::Value) -> Option<Ticket> {
    let version = value.get(SNAPSHOT_VERSION_FIELD).and_then(|v| v.as_u64());
    if version != Some(SNAPSHOT_VERSION) {
        metrics::counter!("tidings_snapshots_replayed_total", "why" => "version").increment(1);
        return None;
    }
    match serde_json::from_value(value) {
        Ok(t) => Some(t),
        Err(e) => {
            metrics::counter!("tidings_snapshots_replayed_total", "why" => "undecodable")
                .increment(1);
            tracing::warn!(ticket_id = %id, error = %e, "snapshot does not decode; replaying the events");
            None
        }
    }
}

/// Brings a stored event's payload to the shape of the current `TicketEvent`, by its
/// `(event_type, schema_version)`. Each change to an event's meaning adds a step here that
/// rewrites version n into n + 1; old rows are never rewritten in place. Only version 1
/// exists so far. A version from the future (a newer release wrote it) is refused rather
/// than misread.
pub fn upcast(
    event_type: &str,
    schema_version: i32,
    payload: serde_json::Value,
) -> Result<serde_json::Value> {
    match (event_type, schema_version) {
        (_, v) if v == TicketEvent::SCHEMA_VERSION => Ok(payload),
        (t, v) => Err(StoreError::Corrupt(format!(
            "event {t} has schema version {v}; this release reads up to {}",
            TicketEvent::SCHEMA_VERSION
        ))),
    }
}

/// Folds stored events into the current state.
pub fn rebuild(id: TicketId, history: &[StoredEvent]) -> Option<Ticket> {
    fold(
        id,
        history
            .iter()
            .map(|e| (e.sequence, e.occurred_at, &e.actor, &e.event)),
    )
}

async fn load_events<'e, E>(exec: E, id: TicketId) -> Result<Vec<StoredEvent>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let rows = sqlx::query(
        "SELECT event_id, sequence, occurred_at, actor, event_type, schema_version, payload,
                traceparent
         FROM events WHERE ticket_id = $1 ORDER BY sequence",
    )
    .bind(id.as_uuid())
    .fetch_all(exec)
    .await?;
    rows.iter()
        .map(|r| {
            let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
            // `try_get`: a row that surprises is a `Corrupt` ticket, never a panic.
            let get = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
            Ok(StoredEvent {
                event_id: r.try_get("event_id").map_err(get)?,
                sequence: r.try_get::<i64, _>("sequence").map_err(get)? as u64,
                occurred_at: r.try_get("occurred_at").map_err(get)?,
                actor: serde_json::from_value(r.try_get("actor").map_err(get)?).map_err(corrupt)?,
                event: serde_json::from_value(upcast(
                    r.try_get("event_type").map_err(get)?,
                    r.try_get("schema_version").map_err(get)?,
                    r.try_get("payload").map_err(get)?,
                )?)
                .map_err(corrupt)?,
                traceparent: r.try_get("traceparent").map_err(get)?,
            })
        })
        .collect()
}

fn summary_from_row(r: &sqlx::postgres::PgRow) -> Result<TicketSummary> {
    let corrupt = |e: String| StoreError::Corrupt(e);
    let get = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    Ok(TicketSummary {
        id: TicketId::from_uuid(r.try_get("ticket_id").map_err(get)?),
        number: TicketNumber::parse(r.try_get("ticket_number").map_err(get)?)
            .map_err(|e| corrupt(e.to_string()))?,
        requester: serde_json::from_value(r.try_get("requester").map_err(get)?)
            .map_err(|e| corrupt(e.to_string()))?,
        subject: Subject::parse(r.try_get("subject").map_err(get)?)
            .map_err(|e| corrupt(e.to_string()))?,
        status: TicketStatus::parse(r.try_get("status").map_err(get)?)
            .map_err(|e| corrupt(e.to_string()))?,
        created_at: r.try_get("created_at").map_err(get)?,
        last_activity_at: r.try_get("last_activity_at").map_err(get)?,
    })
}

async fn upsert_summary(tx: &mut Transaction<'static, Postgres>, t: &Ticket) -> Result<()> {
    let account = match &t.requester {
        Requester::Customer { account_id, .. } => Some(account_id.to_string()),
        Requester::Guest { .. } => None,
    };
    let requester =
        serde_json::to_value(&t.requester).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO tickets (ticket_id, ticket_number, requester, requester_account_id, subject, status,
                              created_at, last_activity_at, version, snapshot)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (ticket_id) DO UPDATE SET ticket_number = EXCLUDED.ticket_number,
             requester = EXCLUDED.requester, requester_account_id = EXCLUDED.requester_account_id,
             subject = EXCLUDED.subject, status = EXCLUDED.status,
             created_at = EXCLUDED.created_at, last_activity_at = EXCLUDED.last_activity_at,
             version = EXCLUDED.version, snapshot = EXCLUDED.snapshot",
    )
    .bind(t.id.as_uuid())
    .bind(t.number.get())
    .bind(requester)
    .bind(account)
    .bind(t.subject.as_str())
    .bind(t.status.as_str())
    .bind(t.created_at)
    .bind(t.last_activity_at)
    .bind(t.version as i64)
    .bind(snapshot_json(t)?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An open write transaction on one ticket.
pub struct TicketWrite {
    pool: PgPool,
    cache: Option<std::sync::Arc<StateCache>>,
    /// The state after `append`, for the cache once committed.
    written: Option<Ticket>,
    /// `None` on the optimistic path: `append` is then its own transaction.
    tx: Option<Transaction<'static, Postgres>>,
    id: TicketId,
    state: Option<Ticket>,
}

impl TicketWrite {
    /// The ticket as of the lock (without its conversation when it came from a snapshot).
    pub fn state(&self) -> Option<Ticket> {
        self.state.clone()
    }

    /// Appends events after the state read by `begin` with their outbox rows, updates the read
    /// model and records the idempotency key — one statement, one round trip. A concurrent
    /// writer (or a concurrent twin of the same request id) surfaces as `Conflict`.
    pub async fn append(
        &mut self,
        events: &[StoredEvent],
        outbox: &[OutboxMessage],
        state: &Ticket,
        idem: Option<(&str, &str, &str, &Outcome)>,
    ) -> Result<()> {
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        let mut seq = Vec::with_capacity(events.len());
        let mut ids = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        let mut actors = Vec::with_capacity(events.len());
        let mut times = Vec::with_capacity(events.len());
        let mut traces = Vec::with_capacity(events.len());
        for e in events {
            seq.push(e.sequence as i64);
            ids.push(e.event_id);
            types.push(e.event.kind().name().to_owned());
            payloads.push(serde_json::to_value(&e.event).map_err(corrupt)?);
            actors.push(serde_json::to_value(&e.actor).map_err(corrupt)?);
            times.push(e.occurred_at);
            traces.push(e.traceparent.clone());
        }
        let mut o_ids = Vec::with_capacity(outbox.len());
        let mut o_topics = Vec::with_capacity(outbox.len());
        let mut o_keys = Vec::with_capacity(outbox.len());
        let mut o_values = Vec::with_capacity(outbox.len());
        let mut o_headers = Vec::with_capacity(outbox.len());
        for m in outbox {
            o_ids.push(m.event_id);
            o_topics.push(m.topic.clone());
            o_keys.push(m.key.clone());
            o_values.push(m.value.clone());
            o_headers.push(serde_json::to_value(&m.headers).map_err(corrupt)?);
        }
        let (scope, request_id, fingerprint, outcome) = match idem {
            Some((s, r, f, o)) => (
                Some(s),
                Some(r),
                Some(f),
                Some(serde_json::to_value(o).map_err(corrupt)?),
            ),
            None => (None, None, None, None),
        };
        // The read-model row is written first and every other insert joins on it: its row
        // lock orders concurrent writers of one ticket (no lock-order inversion with a writer
        // that locked it at read time), and the version check makes a stale writer insert
        // nothing and see zero rows, which is the optimistic-concurrency `Conflict`. The
        // events' (ticket_id, sequence) key stays as the last line of defence.
        // An existing ticket's row is updated (only the columns a command changes); a new
        // one is inserted, and a twin insert is a unique violation, i.e. `Conflict` too.
        let creating = self.state.is_none();
        let rm = if creating {
            "INSERT INTO tickets (ticket_id, status, last_activity_at, version, snapshot,
                                  ticket_number, requester, requester_account_id, subject, created_at)
             VALUES ($1, $19, $20, $21, $22, $24, $25, $26, $27, $28)
             RETURNING 1 AS written"
        } else {
            "UPDATE tickets SET status = $19, last_activity_at = $20, version = $21, snapshot = $22
             WHERE ticket_id = $1 AND version = $23
             RETURNING 1 AS written"
        };
        let sql = format!(
            "WITH rm AS ({rm}), ev AS (
                 INSERT INTO events (ticket_id, sequence, event_id, event_type, schema_version, payload,
                                     actor, occurred_at, traceparent)
                 SELECT $1, s, i, t, $2, p, a, o, tp
                 FROM rm, UNNEST($3::bigint[], $4::uuid[], $5::text[], $6::jsonb[], $7::jsonb[],
                                 $8::timestamptz[], $9::text[]) AS u(s, i, t, p, a, o, tp)
             ), ob AS (
                 INSERT INTO outbox (event_id, topic, key, value, headers)
                 SELECT u.* FROM rm, UNNEST($10::uuid[], $11::text[], $12::bytea[], $13::bytea[],
                                            $14::jsonb[]) AS u
             ), idem AS (
                 INSERT INTO idempotency_keys (scope, request_id, fingerprint, ticket_id, outcome)
                 SELECT $15, $16, $17, $1, $18 FROM rm WHERE $15::text IS NOT NULL
             )
             SELECT count(*) FROM rm"
        );
        // Two fixed texts (one per `creating`), so sqlx's statement cache holds both.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(self.id.as_uuid())
            .bind(TicketEvent::SCHEMA_VERSION)
            .bind(&seq)
            .bind(&ids)
            .bind(&types)
            .bind(&payloads)
            .bind(&actors)
            .bind(&times)
            .bind(&traces)
            .bind(&o_ids)
            .bind(&o_topics)
            .bind(&o_keys)
            .bind(&o_values)
            .bind(&o_headers)
            .bind(scope)
            .bind(request_id)
            .bind(fingerprint)
            .bind(outcome)
            .bind(state.status.as_str())
            .bind(state.last_activity_at)
            .bind(state.version as i64)
            .bind(snapshot_json(state)?)
            .bind(self.state.as_ref().map_or(0, |t| t.version as i64));
        if creating {
            let account = match &state.requester {
                Requester::Customer { account_id, .. } => Some(account_id.to_string()),
                Requester::Guest { .. } => None,
            };
            query = query
                .bind(state.number.get())
                .bind(serde_json::to_value(&state.requester).map_err(corrupt)?)
                .bind(account)
                .bind(state.subject.as_str())
                .bind(state.created_at);
        }
        let result = match self.tx.as_mut() {
            Some(tx) => query.fetch_one(&mut **tx).await,
            None => query.fetch_one(&self.pool).await,
        };
        let written: i64 = match result {
            Ok(row) => row.get(0),
            Err(e) => {
                self.forget();
                return Err(e.into());
            }
        };
        if written == 0 {
            self.forget();
            return Err(StoreError::Conflict);
        }
        // The cache holds decision state only; the conversation is read from the events.
        self.written = Some(Ticket {
            messages: Vec::new(),
            ..state.clone()
        });
        Ok(())
    }

    pub async fn commit(mut self) -> Result<()> {
        if let Some(tx) = self.tx.take()
            && let Err(e) = tx.commit().await
        {
            self.forget();
            return Err(e.into());
        }
        if let (Some(cache), Some(state)) = (&self.cache, self.written.take()) {
            cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(self.id, state);
        }
        Ok(())
    }

    fn forget(&self) {
        if let Some(cache) = &self.cache {
            cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop(&self.id);
        }
    }
}

/// Keyset pagination position; opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub last_activity_at: DateTime<Utc>,
    pub ticket_id: Uuid,
}

impl Cursor {
    pub fn after(s: &TicketSummary) -> Self {
        Self {
            last_activity_at: s.last_activity_at,
            ticket_id: s.id.as_uuid(),
        }
    }
    pub fn encode(&self) -> String {
        B64.encode(format!(
            "{}|{}",
            self.last_activity_at.timestamp_micros(),
            self.ticket_id
        ))
    }
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = B64.decode(raw).ok()?;
        let s = String::from_utf8(bytes).ok()?;
        let (micros, id) = s.split_once('|')?;
        Some(Self {
            last_activity_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            ticket_id: Uuid::parse_str(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_events_of_the_current_version_are_read_and_of_a_newer_one_refused() {
        let payload = serde_json::json!({"type": "Reopened"});
        assert_eq!(
            upcast("Reopened", TicketEvent::SCHEMA_VERSION, payload.clone()).unwrap(),
            payload
        );
        let newer = upcast("Reopened", TicketEvent::SCHEMA_VERSION + 1, payload).unwrap_err();
        assert!(newer.to_string().contains("reads up to"), "{newer}");
    }

    #[test]
    fn a_snapshot_of_another_version_or_undecodable_means_replay() {
        let id = TicketId::new();
        assert!(snapshot_state(id, serde_json::json!({"status": "open"})).is_none());
        assert!(
            snapshot_state(
                id,
                serde_json::json!({"snapshot_version": SNAPSHOT_VERSION, "status": 7})
            )
            .is_none()
        );
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            last_activity_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            ticket_id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not-a-cursor"), None);
    }
}
