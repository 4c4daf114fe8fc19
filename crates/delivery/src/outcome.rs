//! Outcome events: what became of one notification, as a record for the notification-events
//! topic (protobuf, CloudEvents headers, the trace continued), ready to publish.

use chrono::Utc;
use prost::Message as _;
use tidings_domain::TicketUpdate;
use tidings_kafka::CloudEvent;
use tidings_proto::events::v1::Channel;
use tidings_proto::{DeliveryOutcome, notification_to_wire};

use crate::log::OutcomeMessage;

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
            topic: self.topic.clone(),
            key: subject.into_bytes(),
            value: wire.encode_to_vec(),
            headers,
        }
    }
}
