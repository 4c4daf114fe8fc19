//! The meaning of a Tidings support ticket: validated newtypes, the commands people give,
//! the events that record what happened, and the pure `decide`/`apply` pair that turns one
//! into the other. No I/O lives here; adapters translate to SQL, protobuf and Kafka.

pub mod clock;
mod ticket;
mod types;
mod update;

pub use ticket::{
    AccessCodeOutcome, Command, Context, DomainError, EventKind, GuestDay, Message, MessageKind,
    PendingCode, Ticket, TicketEvent, TicketSummary, apply, decide, fold,
};
pub use types::{
    AccountId, Actor, Body, DisplayName, Email, Locale, ParseError, RequestId, Requester, Subject,
    TicketId, TicketNumber, TicketStatus,
};
pub use update::{ActorKind, Change, TicketUpdate};

/// Limits that callers see in error messages; one place so docs and checks agree.
pub mod limits {
    pub const SUBJECT_MAX_CHARS: usize = 200;
    pub const BODY_MAX_CHARS: usize = 20_000;
    pub const REQUEST_ID_MAX_CHARS: usize = 128;
    pub const ACCOUNT_ID_MAX_CHARS: usize = 128;
    pub const DISPLAY_NAME_MAX_CHARS: usize = 120;
    pub const EMAIL_MAX_CHARS: usize = 254;
    /// Guests get this many wrong guesses per code before it is burnt.
    pub const ACCESS_CODE_MAX_ATTEMPTS: u8 = 5;
    /// Wrong codes a ticket takes in a day, across codes (a new code does not reset the count,
    /// NIST SP 800-63B-4 §3.2.2), before guest access to it is locked for the rest of the day.
    pub const ACCESS_FAILURES_PER_DAY: u32 = 20;
    /// Codes a ticket's guest may request in a day.
    pub const ACCESS_CODES_PER_DAY: u32 = 10;
    /// Excerpts travel in events so dispatchers can notify without calling back.
    pub const EXCERPT_MAX_CHARS: usize = 280;
}
