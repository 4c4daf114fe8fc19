//! What a push says: a localized title and body (English, Italian; English otherwise), the
//! ticket for deep-linking, and one thread / collapse key per ticket — as an APNs payload or
//! an FCM v1 message.

use chrono::{DateTime, Utc};
use tidings_domain::{Change, Locale, TicketUpdate};
use tidings_notify::{Device, PushKind};

/// Longest body we send; a reply excerpt is at most 280 characters anyway, and APNs allows
/// 4 KB for the whole payload.
const BODY_MAX_CHARS: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    pub kind: PushKind,
    pub title: String,
    pub body: String,
    pub ticket_id: String,
    pub ticket_number: i64,
    /// Deterministic per (event, device): a resend carries the same `apns-id`.
    pub id: uuid::Uuid,
    pub expires_at: DateTime<Utc>,
}

fn italian(locale: &Locale) -> bool {
    locale.as_str().split('-').next() == Some("it")
}

pub fn build(u: &TicketUpdate, device: &Device, kind: PushKind, now: DateTime<Utc>) -> PushMessage {
    let n = u.ticket_number.get();
    let it = italian(&device.locale);
    let title = match (kind, it) {
        (PushKind::AgentReplied, false) => format!("Ticket {n}: new reply from support"),
        (PushKind::AgentReplied, true) => format!("Ticket {n}: nuova risposta dall'assistenza"),
        (PushKind::InfoRequested, false) => format!("Ticket {n}: we need more information"),
        (PushKind::InfoRequested, true) => format!("Ticket {n}: ci servono altre informazioni"),
        (PushKind::Resolved, false) => format!("Ticket {n} has been resolved"),
        (PushKind::Resolved, true) => format!("Il ticket {n} è stato risolto"),
    };
    let excerpt = match &u.change {
        Change::ReplyAdded { excerpt, .. } | Change::InfoRequested { excerpt } => excerpt.clone(),
        Change::Resolved { note_excerpt } if !note_excerpt.is_empty() => note_excerpt.clone(),
        _ if it => "Apri il ticket per i dettagli.".to_owned(),
        _ => "Open the ticket for details.".to_owned(),
    };
    let body = if excerpt.chars().count() > BODY_MAX_CHARS {
        let cut: String = excerpt.chars().take(BODY_MAX_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        excerpt
    };
    PushMessage {
        kind,
        title,
        body,
        ticket_id: u.ticket_id.to_string(),
        ticket_number: n,
        id: uuid::Uuid::new_v5(&u.event_id, device.id.as_bytes()),
        // A support update a day old is not worth waking a phone for.
        expires_at: now + chrono::Duration::days(1),
    }
}

impl PushMessage {
    /// The APNs JSON payload: alert, a thread per ticket, and the ticket for the app.
    pub fn apns_payload(&self) -> serde_json::Value {
        serde_json::json!({
            "aps": {
                "alert": { "title": self.title, "body": self.body },
                "sound": "default",
                "thread-id": self.ticket_id,
            },
            "ticket_id": self.ticket_id,
            "ticket_number": self.ticket_number,
            "kind": self.kind.name(),
        })
    }

    /// The FCM v1 `messages:send` body for an Android device.
    pub fn fcm_message(&self, token: &str) -> serde_json::Value {
        let ttl = (self.expires_at - Utc::now()).num_seconds().max(0);
        serde_json::json!({
            "message": {
                "token": token,
                "notification": { "title": self.title, "body": self.body },
                "data": {
                    "ticket_id": self.ticket_id,
                    "ticket_number": self.ticket_number.to_string(),
                    "kind": self.kind.name(),
                },
                "android": {
                    "priority": "HIGH",
                    "ttl": format!("{ttl}s"),
                    "collapse_key": self.ticket_id,
                    "notification": { "tag": self.ticket_id },
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_domain::{AccountId, ActorKind, Email, Requester, TicketId, TicketNumber};
    use tidings_notify::{DeviceToken, Platform};

    fn update(change: Change) -> TicketUpdate {
        TicketUpdate {
            event_id: uuid::Uuid::now_v7(),
            ticket_id: TicketId::new(),
            ticket_number: TicketNumber::parse(12345).unwrap(),
            sequence: 2,
            occurred_at: Utc::now(),
            requester: Requester::Customer {
                account_id: AccountId::parse("ann").unwrap(),
                email: Email::parse("ann@example.com").unwrap(),
                locale: Locale::parse("it").unwrap(),
                display_name: None,
            },
            actor: ActorKind::Agent,
            actor_name: "Giulia".into(),
            subject: "Withdrawal".into(),
            change,
        }
    }

    fn device(locale: &str) -> Device {
        Device {
            id: uuid::Uuid::now_v7(),
            platform: Platform::Ios,
            token: DeviceToken::parse(Platform::Ios, &"ab".repeat(32)).unwrap(),
            app_id: "com.example.app".into(),
            locale: Locale::parse(locale).unwrap(),
        }
    }

    #[test]
    fn titles_follow_the_devices_language_with_english_otherwise() {
        let u = update(Change::ReplyAdded {
            author: ActorKind::Agent,
            excerpt: "We are on it".into(),
        });
        let it = build(&u, &device("it-IT"), PushKind::AgentReplied, Utc::now());
        assert_eq!(it.title, "Ticket 12345: nuova risposta dall'assistenza");
        assert_eq!(it.body, "We are on it");
        let de = build(&u, &device("de"), PushKind::AgentReplied, Utc::now());
        assert_eq!(de.title, "Ticket 12345: new reply from support");
    }

    #[test]
    fn the_payloads_carry_the_ticket_and_fit_apples_limit() {
        let u = update(Change::ReplyAdded {
            author: ActorKind::Agent,
            excerpt: "é".repeat(280),
        });
        let d = device("en");
        let m = build(&u, &d, PushKind::AgentReplied, Utc::now());
        let apns = m.apns_payload();
        assert_eq!(apns["aps"]["thread-id"], m.ticket_id);
        assert_eq!(apns["ticket_number"], 12345);
        assert!(apns.to_string().len() <= 4096);
        let fcm = m.fcm_message("tok");
        assert_eq!(fcm["message"]["data"]["ticket_number"], "12345");
        assert_eq!(fcm["message"]["android"]["collapse_key"], m.ticket_id);
        // The same event and device always give the same id.
        assert_eq!(m.id, build(&u, &d, PushKind::AgentReplied, Utc::now()).id);
    }
}
