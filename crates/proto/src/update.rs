//! The event contract read back: a Kafka `TicketEvent` into the domain's `TicketUpdate`, and
//! the notification-outcome events the dispatchers publish. Anything malformed is refused with
//! the field it concerns, so a dispatcher can dead-letter it with a useful reason.

use chrono::{DateTime, Utc};
use tidings_domain::{
    AccountId, ActorKind, Change, DisplayName, Email, Locale, Requester, TicketId, TicketNumber,
    TicketUpdate,
};
use uuid::Uuid;

use crate::events::v1 as ev;
use crate::{from_timestamp, timestamp};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WireError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl std::fmt::Display) -> WireError {
    WireError {
        field,
        reason: reason.to_string(),
    }
}

/// Excerpts arrive single-line and bounded from our producer; a foreign or damaged producer
/// is not trusted: control characters (CR/LF included) become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

fn actor_kind_from_wire(raw: i32) -> Result<ActorKind, WireError> {
    match ev::ActorKind::try_from(raw) {
        Ok(ev::ActorKind::Customer) => Ok(ActorKind::Customer),
        Ok(ev::ActorKind::Agent) => Ok(ActorKind::Agent),
        Ok(ev::ActorKind::Guest) => Ok(ActorKind::Guest),
        Ok(ev::ActorKind::System) => Ok(ActorKind::System),
        _ => Err(bad("actor.kind", format!("unknown value {raw}"))),
    }
}

fn requester_from_wire(r: Option<&ev::Requester>) -> Result<Requester, WireError> {
    use ev::requester::Kind;
    // An unusable locale is not worth losing a notification over: fall back to English.
    let locale = |raw: &str| Locale::parse(raw).unwrap_or_else(|_| Locale::english());
    match r.and_then(|r| r.kind.as_ref()) {
        Some(Kind::Customer(c)) => Ok(Requester::Customer {
            account_id: AccountId::parse(&c.account_id)
                .map_err(|e| bad("requester.account_id", e))?,
            email: Email::parse(&c.email).map_err(|e| bad("requester.email", e))?,
            locale: locale(&c.locale),
            display_name: DisplayName::parse(&c.display_name).ok(),
        }),
        Some(Kind::Guest(g)) => Ok(Requester::Guest {
            email: Email::parse(&g.email).map_err(|e| bad("requester.email", e))?,
            locale: locale(&g.locale),
        }),
        None => Err(bad("requester", "missing")),
    }
}

/// Decodes one record value of the ticket-events topic.
pub fn update_from_wire(bytes: &[u8]) -> Result<TicketUpdate, WireError> {
    use ev::ticket_event::Kind;
    let e = <ev::TicketEvent as prost::Message>::decode(bytes)
        .map_err(|e| bad("value", format!("not a tidings.events.v1.TicketEvent: {e}")))?;
    let event_id = Uuid::parse_str(&e.event_id).map_err(|e| bad("event_id", e))?;
    let ticket_id = TicketId::parse(&e.ticket_id).map_err(|e| bad("ticket_id", e))?;
    let ticket_number =
        TicketNumber::parse(e.ticket_number).map_err(|e| bad("ticket_number", e))?;
    if e.sequence == 0 {
        return Err(bad("sequence", "must be at least 1"));
    }
    let occurred_at = e
        .occurred_at
        .as_ref()
        .and_then(from_timestamp)
        .ok_or_else(|| bad("occurred_at", "missing or out of range"))?;
    let requester = requester_from_wire(e.requester.as_ref())?;
    let actor = e.actor.as_ref().ok_or_else(|| bad("actor", "missing"))?;
    let change = match e.kind.as_ref().ok_or_else(|| bad("kind", "missing"))? {
        Kind::TicketOpened(k) => Change::Opened {
            excerpt: clean(&k.excerpt),
        },
        Kind::ReplyAdded(k) => Change::ReplyAdded {
            author: actor_kind_from_wire(k.author_kind)?,
            excerpt: clean(&k.excerpt),
        },
        Kind::InfoRequested(k) => Change::InfoRequested {
            excerpt: clean(&k.excerpt),
        },
        Kind::Resolved(k) => Change::Resolved {
            note_excerpt: clean(&k.note_excerpt),
        },
        Kind::Reopened(_) => Change::Reopened,
        Kind::AccessCodeRequested(k) => Change::AccessCodeRequested {
            sealed_code: k.sealed_code.clone(),
            expires_at: k
                .expires_at
                .as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| bad("access_code_requested.expires_at", "missing"))?,
        },
        Kind::AccessCodeRejected(_) | Kind::GuestAccessGranted(_) | Kind::GuestAccessLocked(_) => {
            Change::GuestAccessAudit
        }
        Kind::GuestLinkRequested(_) => Change::FreshLinkRequested,
    };
    Ok(TicketUpdate {
        event_id,
        ticket_id,
        ticket_number,
        sequence: e.sequence,
        occurred_at,
        requester,
        actor: actor_kind_from_wire(actor.kind)?,
        actor_name: clean(&actor.display_name),
        subject: clean(&e.subject),
        change,
    })
}

/// The outcome of one notification, as published on the notification-events topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Sent { provider_message_id: String },
    Failed { reason: String, permanent: bool },
    DeviceTokenInvalidated { platform: String, reason: String },
}

impl DeliveryOutcome {
    /// The CloudEvents type, e.g. `tidings.notification.NotificationSent.v1`.
    pub fn cloudevent_type(&self) -> &'static str {
        match self {
            DeliveryOutcome::Sent { .. } => "tidings.notification.NotificationSent.v1",
            DeliveryOutcome::Failed { .. } => "tidings.notification.NotificationFailed.v1",
            DeliveryOutcome::DeviceTokenInvalidated { .. } => {
                "tidings.notification.DeviceTokenInvalidated.v1"
            }
        }
    }
}

/// Builds a notification-events record value. Its id is derived from (source event,
/// channel, recipient, outcome kind), so a redelivered outcome keeps its id.
pub fn notification_to_wire(
    update: &TicketUpdate,
    channel: ev::Channel,
    recipient: &str,
    notification_kind: &str,
    outcome: &DeliveryOutcome,
    at: DateTime<Utc>,
) -> ev::NotificationEvent {
    use ev::notification_event::Outcome;
    let id = Uuid::new_v5(
        &update.event_id,
        format!(
            "{}|{recipient}|{}",
            channel.as_str_name(),
            outcome.cloudevent_type()
        )
        .as_bytes(),
    );
    let outcome = match outcome {
        DeliveryOutcome::Sent {
            provider_message_id,
        } => Outcome::Sent(ev::NotificationSent {
            provider_message_id: provider_message_id.clone(),
        }),
        DeliveryOutcome::Failed { reason, permanent } => Outcome::Failed(ev::NotificationFailed {
            reason: reason.clone(),
            permanent: *permanent,
        }),
        DeliveryOutcome::DeviceTokenInvalidated { platform, reason } => {
            Outcome::DeviceTokenInvalidated(ev::DeviceTokenInvalidated {
                platform: platform.clone(),
                reason: reason.clone(),
            })
        }
    };
    ev::NotificationEvent {
        event_id: id.to_string(),
        ticket_id: update.ticket_id.to_string(),
        ticket_number: update.ticket_number.get(),
        source_event_id: update.event_id.to_string(),
        channel: channel as i32,
        recipient: recipient.to_owned(),
        occurred_at: Some(timestamp(at)),
        notification_kind: notification_kind.to_owned(),
        outcome: Some(outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_to_wire;
    use prost::Message as _;
    use tidings_domain::{Actor, Body, Subject, Ticket, TicketEvent, TicketStatus};

    fn ticket() -> Ticket {
        let now = Utc::now();
        Ticket {
            id: TicketId::new(),
            number: TicketNumber::parse(12345).unwrap(),
            requester: Requester::Guest {
                email: Email::parse("g@example.com").unwrap(),
                locale: Locale::parse("it").unwrap(),
            },
            subject: Subject::parse("Withdrawal stuck").unwrap(),
            status: TicketStatus::Open,
            created_at: now,
            last_activity_at: now,
            messages: vec![],
            version: 2,
            pending_code: None,
            last_code_requested_at: None,
            last_link_requested_at: None,
            guest_day: Default::default(),
        }
    }

    #[test]
    fn a_published_reply_reads_back_as_the_same_update() {
        let t = ticket();
        let agent = Actor::Agent {
            account_id: AccountId::parse("giulia").unwrap(),
            display_name: DisplayName::parse("Giulia").ok(),
        };
        let event = TicketEvent::ReplyAdded {
            body: Body::parse("We are on it.\r\nBcc: evil@example.com").unwrap(),
        };
        let id = Uuid::now_v7();
        let wire = event_to_wire(id, &t, 2, t.created_at, &agent, &event).encode_to_vec();
        let u = update_from_wire(&wire).unwrap();
        assert_eq!(u.event_id, id);
        assert_eq!(u.ticket_number.get(), 12345);
        assert_eq!(u.actor, ActorKind::Agent);
        assert_eq!(u.actor_name, "Giulia");
        assert_eq!(
            u.change,
            Change::ReplyAdded {
                author: ActorKind::Agent,
                excerpt: "We are on it. Bcc: evil@example.com".into()
            }
        );
    }

    #[test]
    fn garbage_and_incomplete_events_name_what_is_wrong() {
        assert_eq!(
            update_from_wire(b"\xff\xfe not protobuf")
                .unwrap_err()
                .field,
            "value"
        );
        let empty = ev::TicketEvent::default().encode_to_vec();
        assert_eq!(update_from_wire(&empty).unwrap_err().field, "event_id");
    }

    proptest::proptest! {
        /// Whatever arrives on the topic, decoding answers; it never panics.
        #[test]
        fn any_bytes_decode_to_an_update_or_an_error(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = update_from_wire(&bytes);
        }

        /// A real event with any one byte changed still decodes or is refused, never panics.
        #[test]
        fn a_damaged_event_is_refused_or_decoded(at in 0usize..4096, byte in proptest::num::u8::ANY) {
            let t = ticket();
            let wire = event_to_wire(
                uuid::Uuid::now_v7(),
                &t,
                1,
                Utc::now(),
                &Actor::System,
                &TicketEvent::ReplyAdded { body: Body::parse("hello").unwrap() },
            )
            .encode_to_vec();
            let mut damaged = wire.clone();
            let i = at % damaged.len();
            damaged[i] = byte;
            let _ = update_from_wire(&damaged);
        }
    }
}
