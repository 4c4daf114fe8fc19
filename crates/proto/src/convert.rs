//! Domain <-> wire conversions.

use chrono::{DateTime, Utc};
use tidings_domain::{
    Actor, Message, MessageKind, ParseError, Requester, Ticket, TicketEvent, TicketStatus,
    TicketSummary,
};
use uuid::Uuid;

use crate::events::v1 as ev;
use crate::ticket::v1 as api;

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

pub fn status_to_wire(s: TicketStatus) -> api::TicketStatus {
    match s {
        TicketStatus::Open => api::TicketStatus::Open,
        TicketStatus::AwaitingCustomer => api::TicketStatus::AwaitingCustomer,
        TicketStatus::Resolved => api::TicketStatus::Resolved,
    }
}

/// Unknown and unspecified enum values are refused rather than guessed.
pub fn status_from_wire(raw: i32) -> Result<TicketStatus, ParseError> {
    match api::TicketStatus::try_from(raw) {
        Ok(api::TicketStatus::Open) => Ok(TicketStatus::Open),
        Ok(api::TicketStatus::AwaitingCustomer) => Ok(TicketStatus::AwaitingCustomer),
        Ok(api::TicketStatus::Resolved) => Ok(TicketStatus::Resolved),
        Ok(api::TicketStatus::Unspecified) => Err(ParseError("must not be UNSPECIFIED".into())),
        Err(_) => Err(ParseError(format!("unknown TicketStatus value {raw}"))),
    }
}

pub fn author_kind(a: &Actor) -> api::AuthorKind {
    match a {
        Actor::Customer { .. } => api::AuthorKind::Customer,
        Actor::Agent { .. } => api::AuthorKind::Agent,
        Actor::Guest { .. } => api::AuthorKind::Guest,
        Actor::System => api::AuthorKind::System,
    }
}

fn message_kind(k: MessageKind) -> api::MessageKind {
    match k {
        MessageKind::Initial => api::MessageKind::Initial,
        MessageKind::Reply => api::MessageKind::Reply,
        MessageKind::InfoRequest => api::MessageKind::InfoRequest,
        MessageKind::Resolution => api::MessageKind::Resolution,
    }
}

fn message_to_wire(m: &Message) -> api::Message {
    api::Message {
        kind: message_kind(m.kind) as i32,
        author_kind: author_kind(&m.author) as i32,
        author_display_name: m.author.display_name(),
        created_at: Some(timestamp(m.at)),
        body: m.body.to_string(),
        sequence: m.sequence,
    }
}

/// How much of a ticket the caller may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub with_history: bool,
    /// Agents also see who the requester is.
    pub agent: bool,
}

pub fn ticket_to_wire(t: &Ticket, view: View) -> api::Ticket {
    let mut wire = summary_to_wire(&t.summary(), view);
    if view.with_history {
        wire.messages = t.messages.iter().map(message_to_wire).collect();
    }
    wire
}

/// A list entry; `messages` stays empty.
pub fn summary_to_wire(s: &TicketSummary, view: View) -> api::Ticket {
    let (requester_kind, account_id) = match &s.requester {
        Requester::Customer { account_id, .. } => {
            (api::AuthorKind::Customer, account_id.to_string())
        }
        Requester::Guest { .. } => (api::AuthorKind::Guest, String::new()),
    };
    api::Ticket {
        ticket_id: s.id.to_string(),
        ticket_number: s.number.get(),
        subject: s.subject.to_string(),
        status: status_to_wire(s.status) as i32,
        requester_kind: requester_kind as i32,
        created_at: Some(timestamp(s.created_at)),
        last_activity_at: Some(timestamp(s.last_activity_at)),
        messages: vec![],
        requester_email: if view.agent {
            s.requester.email().to_string()
        } else {
            String::new()
        },
        requester_account_id: if view.agent {
            account_id
        } else {
            String::new()
        },
    }
}

fn actor_kind(a: &Actor) -> ev::ActorKind {
    match a {
        Actor::Customer { .. } => ev::ActorKind::Customer,
        Actor::Agent { .. } => ev::ActorKind::Agent,
        Actor::Guest { .. } => ev::ActorKind::Guest,
        Actor::System => ev::ActorKind::System,
    }
}

fn actor_to_wire(a: &Actor) -> ev::Actor {
    let account_id = match a {
        Actor::Customer { account_id, .. } | Actor::Agent { account_id, .. } => {
            account_id.to_string()
        }
        Actor::Guest { .. } | Actor::System => String::new(),
    };
    ev::Actor {
        kind: actor_kind(a) as i32,
        account_id,
        display_name: a.display_name(),
    }
}

fn requester_to_wire(r: &Requester) -> ev::Requester {
    let kind = match r {
        Requester::Customer {
            account_id,
            email,
            locale,
            display_name,
        } => ev::requester::Kind::Customer(ev::requester::Customer {
            account_id: account_id.to_string(),
            email: email.to_string(),
            locale: locale.to_string(),
            display_name: display_name
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default(),
        }),
        Requester::Guest { email, locale } => ev::requester::Kind::Guest(ev::requester::Guest {
            email: email.to_string(),
            locale: locale.to_string(),
        }),
    };
    ev::Requester { kind: Some(kind) }
}

/// Builds the Kafka value for one stored event. `ticket` is the state *after* the event,
/// which supplies what dispatchers need (number, requester, subject) without a call back.
pub fn event_to_wire(
    event_id: Uuid,
    ticket: &Ticket,
    sequence: u64,
    occurred_at: DateTime<Utc>,
    actor: &Actor,
    event: &TicketEvent,
) -> ev::TicketEvent {
    use ev::ticket_event::Kind;
    let kind = match event {
        TicketEvent::TicketOpened { body, .. } => Kind::TicketOpened(ev::TicketOpened {
            excerpt: body.excerpt(),
        }),
        TicketEvent::ReplyAdded { body } => Kind::ReplyAdded(ev::ReplyAdded {
            author_kind: actor_kind(actor) as i32,
            excerpt: body.excerpt(),
        }),
        TicketEvent::InfoRequested { body } => Kind::InfoRequested(ev::InfoRequested {
            excerpt: body.excerpt(),
        }),
        TicketEvent::Resolved { note } => Kind::Resolved(ev::Resolved {
            note_excerpt: note.as_ref().map(|n| n.excerpt()).unwrap_or_default(),
        }),
        TicketEvent::Reopened => Kind::Reopened(ev::Reopened {}),
        TicketEvent::AccessCodeRequested {
            sealed_code,
            expires_at,
            ..
        } => {
            // The keyed hash stays in Postgres; only the sealed code travels.
            Kind::AccessCodeRequested(ev::AccessCodeRequested {
                sealed_code: sealed_code.clone(),
                expires_at: Some(timestamp(*expires_at)),
            })
        }
        TicketEvent::AccessCodeRejected { attempts } => {
            Kind::AccessCodeRejected(ev::AccessCodeRejected {
                attempts: u32::from(*attempts),
            })
        }
        TicketEvent::GuestAccessGranted => Kind::GuestAccessGranted(ev::GuestAccessGranted {}),
        TicketEvent::GuestAccessLocked { until } => {
            Kind::GuestAccessLocked(ev::GuestAccessLocked {
                until: Some(timestamp(*until)),
            })
        }
        TicketEvent::GuestLinkRequested => Kind::GuestLinkRequested(ev::GuestLinkRequested {}),
    };
    ev::TicketEvent {
        event_id: event_id.to_string(),
        ticket_id: ticket.id.to_string(),
        sequence,
        ticket_number: ticket.number.get(),
        occurred_at: Some(timestamp(occurred_at)),
        requester: Some(requester_to_wire(&ticket.requester)),
        actor: Some(actor_to_wire(actor)),
        subject: ticket.subject.to_string(),
        kind: Some(kind),
    }
}

/// CloudEvents `ce_type` for an event, e.g. `tidings.ticket.ReplyAdded.v1`.
pub fn cloudevent_type(event: &TicketEvent) -> String {
    format!(
        "tidings.ticket.{}.v{}",
        event.kind().name(),
        TicketEvent::SCHEMA_VERSION
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_status_values_are_refused() {
        assert!(status_from_wire(0).is_err());
        assert!(status_from_wire(42).is_err());
        assert_eq!(status_from_wire(3).unwrap(), TicketStatus::Resolved);
    }

    #[test]
    fn timestamps_round_trip() {
        let now = Utc::now();
        assert_eq!(from_timestamp(&timestamp(now)).unwrap(), now);
    }
}
