//! Outcome events: what became of one notification, as a record for the notification-events
//! topic (protobuf, CloudEvents headers, the trace continued), ready for the outbox.

use chrono::Utc;
use prost::Message as _;
use tidings_domain::TicketUpdate;
use tidings_kafka::CloudEvent;
use tidings_proto::events::v1::Channel;
use tidings_proto::{DeliveryOutcome, notification_to_wire};
use uuid::Uuid;

use crate::log::OutcomeMessage;

const OUTCOME_COALESCE: std::time::Duration = std::time::Duration::from_millis(20);

/// The relay that publishes a dispatcher's outcome events from its outbox, and the signal
/// its send log raises after queuing some.
pub fn outcome_relay(
    pool: sqlx::PgPool,
    kafka: tidings_kafka::KafkaSettings,
    topic: &str,
    topics: tidings_kafka::TopicSettings,
    poll_interval: std::time::Duration,
    message_timeout: std::time::Duration,
) -> Result<
    (
        tidings_kafka::OutboxRelay,
        std::sync::Arc<tokio::sync::Notify>,
    ),
    tidings_kafka::KafkaError,
> {
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let relay = tidings_kafka::OutboxRelay::new(
        pool,
        kafka,
        tidings_kafka::RelayConfig {
            batch_size: 500,
            poll_interval,
            message_timeout,
            topics: vec![(topic.to_owned(), topics.partitions)],
            replication: topics.replication,
            wake: wake.clone(),
            // Nobody waits on an outcome event by the millisecond; rounds at most every
            // 20 ms publish them in larger batches.
            coalesce: OUTCOME_COALESCE,
        },
    )?;
    Ok((relay, wake))
}

/// Where a dispatcher's outcome events go and how they name their source.
#[derive(Debug, Clone)]
pub struct OutcomeEvents {
    pub topic: String,
    /// CloudEvents `ce_source`, e.g. `/tidings/email-dispatcher`.
    pub source: String,
    pub channel: Channel,
}

impl OutcomeEvents {
    /// The record for `outcome` of the `kind` notification about `update` to `recipient`,
    /// continuing the trace of `traceparent` (the ticket event's).
    pub fn message(
        &self,
        update: &TicketUpdate,
        recipient: &str,
        kind: &str,
        outcome: &DeliveryOutcome,
        traceparent: Option<&str>,
    ) -> OutcomeMessage {
        let now = Utc::now();
        let wire = notification_to_wire(update, self.channel, recipient, kind, outcome, now);
        let id = wire.event_id.clone();
        let subject = update.ticket_id.to_string();
        let tp = tidings_telemetry::trace_context::current(traceparent).to_string();
        let headers = CloudEvent {
            id: &id,
            ce_type: outcome.cloudevent_type(),
            source: &self.source,
            subject: &subject,
            time: now,
            content_type: "application/protobuf",
            traceparent: Some(&tp),
        }
        .headers();
        OutcomeMessage {
            event_id: Uuid::parse_str(&id).unwrap_or_else(|_| Uuid::now_v7()),
            topic: self.topic.clone(),
            key: subject.into_bytes(),
            value: wire.encode_to_vec(),
            headers,
        }
    }
}
