//! A ticket event as the notification side sees it: the change plus the context the event
//! contract carries (number, requester, who acted), so dispatchers never call back. Bodies
//! travel only as single-line excerpts: emails and pushes are notifications, not copies.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::types::{Requester, TicketId, TicketNumber};

/// Who caused an update, as far as notifying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Customer,
    Agent,
    Guest,
    System,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Opened {
        excerpt: String,
    },
    ReplyAdded {
        author: ActorKind,
        excerpt: String,
    },
    InfoRequested {
        excerpt: String,
    },
    Resolved {
        note_excerpt: String,
    },
    Reopened,
    /// A guest asked for a one-time code; it travels sealed for the email dispatcher.
    AccessCodeRequested {
        sealed_code: String,
        expires_at: DateTime<Utc>,
    },
    /// A guest asked for a fresh link to the ticket (theirs expired).
    FreshLinkRequested,
    /// Guest verification bookkeeping (wrong code, access granted): audit only.
    GuestAccessAudit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketUpdate {
    pub event_id: Uuid,
    pub ticket_id: TicketId,
    pub ticket_number: TicketNumber,
    /// Per-ticket, gap-free; the authority on order for consumers.
    pub sequence: u64,
    pub occurred_at: DateTime<Utc>,
    pub requester: Requester,
    pub actor: ActorKind,
    /// The actor's display name as the requester should see it (e.g. the agent's name).
    pub actor_name: String,
    pub subject: String,
    pub change: Change,
}
