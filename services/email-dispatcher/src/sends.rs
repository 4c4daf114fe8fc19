//! The record of what was mailed, in the dispatcher's own schema. A send is keyed by (event,
//! recipient); its record and the outcome event for the notification-events topic are written
//! in one statement, and the outbox relay publishes the latter.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Sent,
    Failed(String),
}

/// An outcome event to publish with the record.
pub struct OutcomeMessage {
    pub event_id: Uuid,
    pub topic: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct SendLog {
    pool: PgPool,
    /// Wakes the outbox relay after an outcome was written.
    wake: Arc<Notify>,
}

impl SendLog {
    pub fn new(pool: PgPool, wake: Arc<Notify>) -> Self {
        Self { pool, wake }
    }

    pub async fn migrate(pool: &PgPool, schema: &str) -> Result<(), tidings_store::StoreError> {
        tidings_store::migrate_with(pool, Some(schema), &MIGRATOR).await
    }

    pub async fn lookup(
        &self,
        event_id: Uuid,
        recipient: &str,
    ) -> Result<Option<Recorded>, sqlx::Error> {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT outcome, detail FROM email_sends WHERE event_id = $1 AND recipient = $2",
        )
        .bind(event_id)
        .bind(recipient)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(outcome, detail)| match outcome.as_str() {
            "sent" => Recorded::Sent,
            _ => Recorded::Failed(detail.unwrap_or_default()),
        }))
    }

    /// Records the outcome and queues its event; a second record for the same key (a
    /// concurrent twin after a rebalance) changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        &self,
        event_id: Uuid,
        recipient: &str,
        kind: &str,
        message_id: &str,
        outcome: &Recorded,
        event: &OutcomeMessage,
    ) -> Result<(), sqlx::Error> {
        let (status, detail) = match outcome {
            Recorded::Sent => ("sent", None),
            Recorded::Failed(reason) => ("failed", Some(reason.as_str())),
        };
        let headers = serde_json::to_value(&event.headers)
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        sqlx::query(
            "WITH rec AS (
                 INSERT INTO email_sends (event_id, recipient, kind, message_id, outcome, detail)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (event_id, recipient) DO NOTHING
                 RETURNING 1
             )
             INSERT INTO outbox (event_id, topic, key, value, headers)
             SELECT $7, $8, $9, $10, $11 FROM rec",
        )
        .bind(event_id)
        .bind(recipient)
        .bind(kind)
        .bind(message_id)
        .bind(status)
        .bind(detail)
        .bind(event.event_id)
        .bind(&event.topic)
        .bind(&event.key)
        .bind(&event.value)
        .bind(headers)
        .execute(&self.pool)
        .await?;
        self.wake.notify_one();
        Ok(())
    }
}
