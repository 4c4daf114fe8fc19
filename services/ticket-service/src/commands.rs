//! The write path shared by every mutating RPC: idempotency check, decide, append events +
//! outbox rows + read model + idempotency record in one statement; optimistic first, then
//! under the ticket's row lock when it is contended.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use prost::Message as _;
use sha2::{Digest, Sha256};
use tidings_auth::Principal;
use tidings_domain::{
    Actor, Command, Context, DomainError, Requester, Ticket, TicketEvent, TicketId, apply, decide,
};
use tidings_kafka::CloudEvent;
use tidings_store::{EventStore, OutboxMessage, Outcome, ReadMode, StoreError, StoredEvent};
use tidings_telemetry::trace_context::TraceParent;
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::Topics;
use crate::error::ApiError;

/// How many times a write is retried against fresh state after losing a race.
const MAX_ATTEMPTS: usize = 8;

pub struct Executor {
    pub store: EventStore,
    /// Wakes this process's outbox relay after a commit that added outbox rows.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    pub clock: Arc<dyn Clock>,
    pub topics: Topics,
    pub ce_source: String,
}

/// The idempotency side of a call: who asked, with which key, for what.
pub struct Idempotency<'a> {
    pub scope: String,
    pub request_id: &'a str,
    /// Hash of the request's content; the same key with other content is refused.
    pub fingerprint: String,
}

pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// One write: the command, who gives it, and how to answer.
pub struct Write<'a> {
    pub id: TicketId,
    pub actor: Actor,
    /// Guards existing tickets: callers who may not see it get `NOT_FOUND`.
    pub visible: &'a (dyn Fn(&Ticket) -> bool + Sync),
    pub command: Command,
    pub idem: Option<Idempotency<'a>>,
    pub trace: TraceParent,
    /// Picks the event whose sequence the caller gets back.
    pub focus: fn(&TicketEvent) -> bool,
}

pub struct Executed {
    pub outcome: Outcome,
    pub events: Vec<TicketEvent>,
}

/// Who may see a ticket at all. Everyone else is told it does not exist.
pub fn visible_to(principal: &Principal, ticket: &Ticket) -> bool {
    match principal {
        Principal::Agent { .. } => true,
        Principal::Customer { account_id, .. } => {
            matches!(&ticket.requester, Requester::Customer { account_id: r, .. } if r == account_id)
        }
        Principal::Guest { ticket: t, email } => {
            *t == ticket.id
                && matches!(&ticket.requester, Requester::Guest { email: r, .. } if r == email)
        }
    }
}

impl Executor {
    /// Runs a write, retrying against fresh state when a concurrent writer won.
    pub async fn execute(&self, w: Write<'_>) -> Result<Executed, ApiError> {
        let id = w.id;
        // The first attempt is optimistic: on the cached decision state (one round trip) or a
        // plain read (two). The cached path never sees an earlier call's idempotency record,
        // so a refusal decided on it (e.g. resolving a ticket that a first, successful try of
        // this very request already resolved) is checked again on a fresh read. After losing
        // a race — which is also how a reused request id shows on the cached path — retries
        // queue on the ticket's row lock.
        let mut mode = ReadMode::Cached;
        for attempt in 1..=MAX_ATTEMPTS {
            match self.try_once(&w, mode).await {
                Err(ApiError::Store(StoreError::Conflict)) if attempt < MAX_ATTEMPTS => {
                    metrics::counter!("tidings_write_conflicts_total").increment(1);
                    tracing::debug!(ticket_id = %id, attempt, "write conflict, retrying");
                    mode = ReadMode::Locked;
                }
                Err(ApiError::Store(StoreError::Conflict)) => return Err(ApiError::Contended),
                Err(ApiError::Domain(_) | ApiError::NotFound) if mode == ReadMode::Cached => {
                    mode = ReadMode::Fresh;
                }
                other => return other,
            }
        }
        Err(ApiError::Contended)
    }

    async fn try_once(&self, w: &Write<'_>, mode: ReadMode) -> Result<Executed, ApiError> {
        let Write {
            id,
            actor,
            visible,
            command,
            idem,
            trace,
            focus,
        } = w;
        let id = *id;
        let (mut tx, prior) = self
            .store
            .begin(
                id,
                idem.as_ref().map(|i| (i.scope.as_str(), i.request_id)),
                mode,
            )
            .await?;
        if let (Some(idem), Some((fp, outcome))) = (idem, prior) {
            if fp != idem.fingerprint {
                return Err(ApiError::invalid(
                    "request_id",
                    "was already used for a different request",
                ));
            }
            return Ok(Executed {
                outcome,
                events: vec![],
            });
        }
        let state = tx.state();
        if let Some(t) = &state
            && !matches!(command, Command::Open { .. })
            && !visible(t)
        {
            return Err(ApiError::NotFound);
        }
        // Postgres keeps microseconds; so must the state we derive, or a snapshot would
        // differ from what replaying the stored events gives.
        let now = chrono::SubsecRound::trunc_subsecs(self.clock.now(), 6);
        let decided = decide(
            state.as_ref(),
            command,
            &Context {
                actor: actor.clone(),
                now,
            },
        )
        .map_err(|e| match e {
            DomainError::NotFound => ApiError::NotFound,
            other => ApiError::Domain(other),
        })?;

        let mut next = state.clone();
        let mut stored = Vec::with_capacity(decided.len());
        let mut outbox = Vec::with_capacity(decided.len() + 1);
        let mut focus_seq = None;
        let base = state.as_ref().map(|t| t.version).unwrap_or(0);
        let tp = trace.to_string();
        let focus = *focus;
        for (i, event) in decided.iter().enumerate() {
            let sequence = base + i as u64 + 1;
            let event_id = Uuid::now_v7();
            next = apply(next, id, sequence, now, actor, event);
            let after = next.as_ref().ok_or_else(|| {
                ApiError::Store(StoreError::Corrupt(
                    "event applied to a ticket that does not exist".into(),
                ))
            })?;
            if focus(event) {
                focus_seq = Some(sequence);
            }
            outbox.extend(self.outbox_messages(event_id, after, sequence, now, actor, event, &tp));
            stored.push(StoredEvent {
                event_id,
                sequence,
                occurred_at: now,
                actor: actor.clone(),
                event: event.clone(),
                traceparent: Some(tp.clone()),
            });
        }
        let after = next.ok_or(ApiError::NotFound)?;
        let outcome = Outcome {
            ticket_id: id.as_uuid(),
            ticket_number: after.number.get(),
            sequence: focus_seq.unwrap_or(after.version),
            status: after.status.as_str().to_owned(),
        };
        let idem = idem.as_ref().map(|i| {
            (
                i.scope.as_str(),
                i.request_id,
                i.fingerprint.as_str(),
                &outcome,
            )
        });
        tx.append(&stored, &outbox, &after, idem).await?;
        tx.commit().await?;
        if !outbox.is_empty() {
            self.outbox_wake.notify_one();
        }
        for e in &decided {
            metrics::counter!("tidings_events_appended_total", "type" => e.kind().name())
                .increment(1);
        }
        tracing::info!(ticket_id = %id, events = decided.len(), version = after.version, "events appended");
        Ok(Executed {
            outcome,
            events: decided,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn outbox_messages(
        &self,
        event_id: Uuid,
        ticket: &Ticket,
        sequence: u64,
        at: DateTime<Utc>,
        actor: &Actor,
        event: &TicketEvent,
        traceparent: &str,
    ) -> Vec<OutboxMessage> {
        let wire = tidings_proto::event_to_wire(event_id, ticket, sequence, at, actor, event);
        let value = wire.encode_to_vec();
        let id = event_id.to_string();
        let subject = ticket.id.to_string();
        let ce_type = tidings_proto::cloudevent_type(event);
        let headers = CloudEvent {
            id: &id,
            ce_type: &ce_type,
            source: &self.ce_source,
            subject: &subject,
            time: at,
            content_type: "application/protobuf",
            traceparent: Some(traceparent),
        }
        .headers();
        let message = |topic: &str| OutboxMessage {
            event_id,
            topic: topic.to_owned(),
            key: subject.clone().into_bytes(),
            value: value.clone(),
            headers: headers.clone(),
        };
        let mut out = vec![message(&self.topics.ticket_events)];
        // Codes are time-critical: they also go to their own topic so the mailer never
        // finds them behind a backlog of ordinary notifications.
        if matches!(event, TicketEvent::AccessCodeRequested { .. }) {
            out.push(message(&self.topics.access_codes));
        }
        out
    }
}
