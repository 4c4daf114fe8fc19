//! The ticket aggregate. `decide` checks a command against the current state and answers
//! with the events that record it; `apply` folds an event into the state. State is only ever
//! rebuilt from events, so the two must agree — the tests below pin that down.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::limits::{ACCESS_CODE_MAX_ATTEMPTS, ACCESS_CODES_PER_DAY, ACCESS_FAILURES_PER_DAY};
use crate::types::{Actor, Body, Requester, Subject, TicketId, TicketNumber, TicketStatus};

/// Facts about the call that are not part of the command itself.
#[derive(Debug, Clone)]
pub struct Context {
    pub actor: Actor,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Open {
        id: TicketId,
        number: TicketNumber,
        requester: Requester,
        subject: Subject,
        body: Body,
    },
    PostReply {
        body: Body,
    },
    RequestInfo {
        body: Body,
    },
    Resolve {
        note: Option<Body>,
    },
    /// A guest holding a valid link asks for a one-time code. The code itself never enters
    /// the domain: only its keyed hash (to check guesses) and its sealed form (for the mailer).
    RequestAccessCode {
        code_hash: String,
        sealed_code: String,
        ttl: Duration,
        min_interval: Duration,
    },
    VerifyAccessCode {
        code_hash: String,
    },
    /// A guest whose link expired asks for a fresh one, mailed to the ticket's address.
    RequestFreshLink {
        min_interval: Duration,
    },
}

/// What happened to a ticket. Past tense, serialised as the event store's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TicketEvent {
    TicketOpened {
        number: TicketNumber,
        requester: Requester,
        subject: Subject,
        body: Body,
    },
    ReplyAdded {
        body: Body,
    },
    InfoRequested {
        body: Body,
    },
    Resolved {
        note: Option<Body>,
    },
    Reopened,
    AccessCodeRequested {
        code_hash: String,
        sealed_code: String,
        expires_at: DateTime<Utc>,
    },
    AccessCodeRejected {
        attempts: u8,
    },
    GuestAccessGranted,
    /// Too many wrong codes today: no code is sent or checked for this ticket until `until`.
    GuestAccessLocked {
        until: DateTime<Utc>,
    },
    /// The guest asked for a fresh link; the email dispatcher mails one.
    GuestLinkRequested,
}

/// Stable names, used as the store's `event_type` and in CloudEvents `ce_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    TicketOpened,
    ReplyAdded,
    InfoRequested,
    Resolved,
    Reopened,
    AccessCodeRequested,
    AccessCodeRejected,
    GuestAccessGranted,
    GuestAccessLocked,
    GuestLinkRequested,
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::TicketOpened => "TicketOpened",
            EventKind::ReplyAdded => "ReplyAdded",
            EventKind::InfoRequested => "InfoRequested",
            EventKind::Resolved => "Resolved",
            EventKind::Reopened => "Reopened",
            EventKind::AccessCodeRequested => "AccessCodeRequested",
            EventKind::AccessCodeRejected => "AccessCodeRejected",
            EventKind::GuestAccessGranted => "GuestAccessGranted",
            EventKind::GuestAccessLocked => "GuestAccessLocked",
            EventKind::GuestLinkRequested => "GuestLinkRequested",
        }
    }
}

impl TicketEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            TicketEvent::TicketOpened { .. } => EventKind::TicketOpened,
            TicketEvent::ReplyAdded { .. } => EventKind::ReplyAdded,
            TicketEvent::InfoRequested { .. } => EventKind::InfoRequested,
            TicketEvent::Resolved { .. } => EventKind::Resolved,
            TicketEvent::Reopened => EventKind::Reopened,
            TicketEvent::AccessCodeRequested { .. } => EventKind::AccessCodeRequested,
            TicketEvent::AccessCodeRejected { .. } => EventKind::AccessCodeRejected,
            TicketEvent::GuestAccessGranted => EventKind::GuestAccessGranted,
            TicketEvent::GuestAccessLocked { .. } => EventKind::GuestAccessLocked,
            TicketEvent::GuestLinkRequested => EventKind::GuestLinkRequested,
        }
    }
    /// Schema version of the payload; bump when a field's meaning changes.
    pub const SCHEMA_VERSION: i32 = 1;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    /// The text the requester opened the ticket with.
    Initial,
    Reply,
    InfoRequest,
    Resolution,
}

/// One entry of the conversation history, as customers and agents read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageKind,
    pub author: Actor,
    pub body: Body,
    pub at: DateTime<Utc>,
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCode {
    pub code_hash: String,
    pub expires_at: DateTime<Utc>,
    pub failed_attempts: u8,
}

/// The state of one ticket. Serialisable without its conversation: that form is the store's
/// snapshot of what `decide` needs; the conversation is always rebuilt from events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: TicketId,
    pub number: TicketNumber,
    pub requester: Requester,
    pub subject: Subject,
    pub status: TicketStatus,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    #[serde(skip)]
    pub messages: Vec<Message>,
    /// Sequence of the last applied event; the next event gets `version + 1`.
    pub version: u64,
    pub pending_code: Option<PendingCode>,
    pub last_code_requested_at: Option<DateTime<Utc>>,
    /// When a fresh link was last mailed (absent from snapshots written before it).
    #[serde(default)]
    pub last_link_requested_at: Option<DateTime<Utc>>,
    /// Guest access attempts of the current day (absent from snapshots written before it).
    #[serde(default)]
    pub guest_day: GuestDay,
}

/// What a ticket's guest access took in a day: codes sent and wrong codes, across codes.
/// The day starts with its first attempt and lasts 24 hours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDay {
    pub started_at: Option<DateTime<Utc>>,
    pub codes: u32,
    pub failures: u32,
    pub locked_until: Option<DateTime<Utc>>,
}

impl GuestDay {
    const LENGTH: Duration = Duration::hours(24);

    /// The day as it stands at `now`: a day that has ended counts nothing.
    fn at(&self, now: DateTime<Utc>) -> GuestDay {
        match self.started_at {
            Some(start) if now < start + Self::LENGTH => self.clone(),
            _ => GuestDay {
                started_at: Some(now),
                locked_until: self.locked_until.filter(|until| now < *until),
                ..GuestDay::default()
            },
        }
    }

    fn ends_at(&self) -> DateTime<Utc> {
        self.started_at.unwrap_or_default() + Self::LENGTH
    }

    fn locked(&self, now: DateTime<Utc>) -> Option<DomainError> {
        let until = self.locked_until.filter(|until| now < *until)?;
        Some(DomainError::GuestAccessLocked {
            retry_after_secs: retry_after(until - now),
        })
    }
}

fn retry_after(wait: Duration) -> i64 {
    (wait.num_milliseconds() + 999) / 1000
}

/// A ticket as the list shows it (the read model's row): no conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketSummary {
    pub id: TicketId,
    pub number: TicketNumber,
    pub requester: Requester,
    pub subject: Subject,
    pub status: TicketStatus,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
}

impl Ticket {
    /// The ticket as a list shows it.
    pub fn summary(&self) -> TicketSummary {
        TicketSummary {
            id: self.id,
            number: self.number,
            requester: self.requester.clone(),
            subject: self.subject.clone(),
            status: self.status,
            created_at: self.created_at,
            last_activity_at: self.last_activity_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("ticket already exists")]
    AlreadyExists,
    #[error("ticket not found")]
    NotFound,
    #[error("{0}")]
    NotPermitted(&'static str),
    #[error("ticket is resolved")]
    AlreadyResolved,
    #[error("an access code was requested recently; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: i64 },
    #[error("no access code was requested, or it has expired; request a new one")]
    CodeExpired,
    #[error("too many wrong codes; request a new one")]
    CodeAttemptsExhausted,
    /// The ticket's daily bound on codes or wrong codes is reached.
    #[error("too many access attempts on this ticket today; try again in {retry_after_secs} s")]
    GuestAccessLocked { retry_after_secs: i64 },
}

/// The result of a `VerifyAccessCode`, read off the events it produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessCodeOutcome {
    Granted,
    Rejected {
        attempts_left: u8,
    },
    /// Wrong, and the last wrong code the ticket takes today.
    Locked {
        until: DateTime<Utc>,
    },
}

impl AccessCodeOutcome {
    pub fn from_events(events: &[TicketEvent]) -> Option<Self> {
        if let Some(until) = events.iter().find_map(|e| match e {
            TicketEvent::GuestAccessLocked { until } => Some(*until),
            _ => None,
        }) {
            return Some(AccessCodeOutcome::Locked { until });
        }
        events.iter().find_map(|e| match e {
            TicketEvent::GuestAccessGranted => Some(AccessCodeOutcome::Granted),
            TicketEvent::AccessCodeRejected { attempts } => Some(AccessCodeOutcome::Rejected {
                attempts_left: ACCESS_CODE_MAX_ATTEMPTS.saturating_sub(*attempts),
            }),
            _ => None,
        })
    }
}

pub fn decide(
    state: Option<&Ticket>,
    command: &Command,
    ctx: &Context,
) -> Result<Vec<TicketEvent>, DomainError> {
    let ticket = match (state, command) {
        (
            None,
            Command::Open {
                number,
                requester,
                subject,
                body,
                ..
            },
        ) => {
            let may_open = match (&ctx.actor, requester) {
                (Actor::Customer { .. }, Requester::Customer { .. }) => {
                    ctx.actor.is_requester_of(requester)
                }
                (Actor::Guest { .. } | Actor::System, Requester::Guest { .. }) => true,
                _ => false,
            };
            if !may_open {
                return Err(DomainError::NotPermitted(
                    "tickets are opened by their requester",
                ));
            }
            return Ok(vec![TicketEvent::TicketOpened {
                number: *number,
                requester: requester.clone(),
                subject: subject.clone(),
                body: body.clone(),
            }]);
        }
        (Some(_), Command::Open { .. }) => return Err(DomainError::AlreadyExists),
        (None, _) => return Err(DomainError::NotFound),
        (Some(t), _) => t,
    };
    let is_agent = ctx.actor.is_agent();
    let is_requester = ctx.actor.is_requester_of(&ticket.requester);

    match command {
        Command::Open { .. } => unreachable!("handled above"),
        Command::PostReply { body } => {
            if !is_agent && !is_requester {
                return Err(DomainError::NotPermitted(
                    "only the requester or an agent may reply",
                ));
            }
            let mut events = Vec::with_capacity(2);
            // Customers continue in the original ticket: a reply revives a resolved one.
            if ticket.status == TicketStatus::Resolved {
                events.push(TicketEvent::Reopened);
            }
            events.push(TicketEvent::ReplyAdded { body: body.clone() });
            Ok(events)
        }
        Command::RequestInfo { body } => {
            if !is_agent {
                return Err(DomainError::NotPermitted(
                    "only agents may request information",
                ));
            }
            if ticket.status == TicketStatus::Resolved {
                return Err(DomainError::AlreadyResolved);
            }
            Ok(vec![TicketEvent::InfoRequested { body: body.clone() }])
        }
        Command::Resolve { note } => {
            if !is_agent {
                return Err(DomainError::NotPermitted("only agents may resolve tickets"));
            }
            if ticket.status == TicketStatus::Resolved {
                return Err(DomainError::AlreadyResolved);
            }
            Ok(vec![TicketEvent::Resolved { note: note.clone() }])
        }
        Command::RequestAccessCode {
            code_hash,
            sealed_code,
            ttl,
            min_interval,
        } => {
            if !matches!(ticket.requester, Requester::Guest { .. }) || !is_requester {
                return Err(DomainError::NotPermitted(
                    "access codes are for the guest who filed the ticket",
                ));
            }
            let day = ticket.guest_day.at(ctx.now);
            if let Some(locked) = day.locked(ctx.now) {
                return Err(locked);
            }
            if day.codes >= ACCESS_CODES_PER_DAY {
                // The day's codes are used up: the lock goes on the ticket's record, as the
                // wrong-code lock does, and every later request is refused by it.
                return Ok(vec![TicketEvent::GuestAccessLocked {
                    until: day.ends_at(),
                }]);
            }
            if let Some(last) = ticket.last_code_requested_at {
                let next_allowed = last + *min_interval;
                if ctx.now < next_allowed {
                    return Err(DomainError::RateLimited {
                        retry_after_secs: retry_after(next_allowed - ctx.now),
                    });
                }
            }
            Ok(vec![TicketEvent::AccessCodeRequested {
                code_hash: code_hash.clone(),
                sealed_code: sealed_code.clone(),
                expires_at: ctx.now + *ttl,
            }])
        }
        Command::VerifyAccessCode { code_hash } => {
            if !matches!(ticket.requester, Requester::Guest { .. }) || !is_requester {
                return Err(DomainError::NotPermitted(
                    "access codes are for the guest who filed the ticket",
                ));
            }
            let day = ticket.guest_day.at(ctx.now);
            if let Some(locked) = day.locked(ctx.now) {
                return Err(locked);
            }
            let Some(pending) = &ticket.pending_code else {
                return Err(DomainError::CodeExpired);
            };
            if pending.failed_attempts >= ACCESS_CODE_MAX_ATTEMPTS {
                return Err(DomainError::CodeAttemptsExhausted);
            }
            if ctx.now >= pending.expires_at {
                return Err(DomainError::CodeExpired);
            }
            if &pending.code_hash == code_hash {
                Ok(vec![TicketEvent::GuestAccessGranted])
            } else {
                let mut events = vec![TicketEvent::AccessCodeRejected {
                    attempts: pending.failed_attempts + 1,
                }];
                if day.failures + 1 >= ACCESS_FAILURES_PER_DAY {
                    events.push(TicketEvent::GuestAccessLocked {
                        until: day.ends_at(),
                    });
                }
                Ok(events)
            }
        }
        Command::RequestFreshLink { min_interval } => {
            if !matches!(ticket.requester, Requester::Guest { .. }) || !is_requester {
                return Err(DomainError::NotPermitted(
                    "fresh links are for the guest who filed the ticket",
                ));
            }
            if let Some(locked) = ticket.guest_day.at(ctx.now).locked(ctx.now) {
                return Err(locked);
            }
            if let Some(last) = ticket.last_link_requested_at {
                let next_allowed = last + *min_interval;
                if ctx.now < next_allowed {
                    return Err(DomainError::RateLimited {
                        retry_after_secs: retry_after(next_allowed - ctx.now),
                    });
                }
            }
            Ok(vec![TicketEvent::GuestLinkRequested])
        }
    }
}

/// Fold one stored event into the state. `sequence`, `at` and `actor` come from the envelope.
pub fn apply(
    state: Option<Ticket>,
    id: TicketId,
    sequence: u64,
    at: DateTime<Utc>,
    actor: &Actor,
    event: &TicketEvent,
) -> Option<Ticket> {
    let mut t = match (state, event) {
        (
            None,
            TicketEvent::TicketOpened {
                number,
                requester,
                subject,
                body,
            },
        ) => {
            return Some(Ticket {
                id,
                number: *number,
                requester: requester.clone(),
                subject: subject.clone(),
                status: TicketStatus::Open,
                created_at: at,
                last_activity_at: at,
                messages: vec![Message {
                    kind: MessageKind::Initial,
                    author: actor.clone(),
                    body: body.clone(),
                    at,
                    sequence,
                }],
                version: sequence,
                pending_code: None,
                last_code_requested_at: None,
                last_link_requested_at: None,
                guest_day: GuestDay::default(),
            });
        }
        // An event for a ticket that was never opened cannot be folded; keep nothing.
        (None, _) => return None,
        (Some(t), _) => t,
    };
    t.version = sequence;
    let push = |t: &mut Ticket, kind, body: &Body| {
        t.messages.push(Message {
            kind,
            author: actor.clone(),
            body: body.clone(),
            at,
            sequence,
        });
        t.last_activity_at = at;
    };
    match event {
        TicketEvent::TicketOpened { .. } => {}
        TicketEvent::ReplyAdded { body } => {
            push(&mut t, MessageKind::Reply, body);
            if t.status == TicketStatus::AwaitingCustomer && actor.is_requester_of(&t.requester) {
                t.status = TicketStatus::Open;
            }
        }
        TicketEvent::InfoRequested { body } => {
            push(&mut t, MessageKind::InfoRequest, body);
            t.status = TicketStatus::AwaitingCustomer;
        }
        TicketEvent::Resolved { note } => {
            if let Some(note) = note {
                push(&mut t, MessageKind::Resolution, note);
            } else {
                t.last_activity_at = at;
            }
            t.status = TicketStatus::Resolved;
        }
        TicketEvent::Reopened => {
            t.status = TicketStatus::Open;
            t.last_activity_at = at;
        }
        TicketEvent::AccessCodeRequested {
            code_hash,
            expires_at,
            ..
        } => {
            t.pending_code = Some(PendingCode {
                code_hash: code_hash.clone(),
                expires_at: *expires_at,
                failed_attempts: 0,
            });
            t.last_code_requested_at = Some(at);
            t.guest_day = t.guest_day.at(at);
            t.guest_day.codes += 1;
        }
        TicketEvent::AccessCodeRejected { attempts } => {
            if let Some(p) = t.pending_code.as_mut() {
                p.failed_attempts = *attempts;
            }
            t.guest_day = t.guest_day.at(at);
            t.guest_day.failures += 1;
        }
        // A code is single-use: once it opened a session it is gone. Failures are counted
        // until a success (consecutive failures, as NIST SP 800-63B-4 bounds them).
        TicketEvent::GuestAccessGranted => {
            t.pending_code = None;
            t.guest_day.failures = 0;
        }
        TicketEvent::GuestAccessLocked { until } => t.guest_day.locked_until = Some(*until),
        TicketEvent::GuestLinkRequested => t.last_link_requested_at = Some(at),
    }
    Some(t)
}

/// Rebuild a ticket from its stored history: `(sequence, at, actor, event)` in order.
pub fn fold<'a>(
    id: TicketId,
    history: impl IntoIterator<Item = (u64, DateTime<Utc>, &'a Actor, &'a TicketEvent)>,
) -> Option<Ticket> {
    history
        .into_iter()
        .fold(None, |state, (seq, at, actor, event)| {
            apply(state, id, seq, at, actor, event)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;
    use chrono::TimeZone;

    // --- a tiny given/when/then harness (in the spirit of cqrs' TestFramework) ---

    struct Given {
        id: TicketId,
        history: Vec<(u64, DateTime<Utc>, Actor, TicketEvent)>,
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap()
    }

    fn customer(id: &str) -> Actor {
        Actor::Customer {
            account_id: AccountId::parse(id).unwrap(),
            display_name: None,
        }
    }
    fn agent() -> Actor {
        Actor::Agent {
            account_id: AccountId::parse("agent-7").unwrap(),
            display_name: None,
        }
    }
    fn guest(email: &str) -> Actor {
        Actor::Guest {
            email: Email::parse(email).unwrap(),
        }
    }
    fn ann() -> Requester {
        Requester::Customer {
            account_id: AccountId::parse("ann").unwrap(),
            email: Email::parse("ann@example.com").unwrap(),
            locale: Locale::parse("it").unwrap(),
            display_name: None,
        }
    }
    fn guest_requester() -> Requester {
        Requester::Guest {
            email: Email::parse("g@example.com").unwrap(),
            locale: Locale::english(),
        }
    }
    fn body(s: &str) -> Body {
        Body::parse(s).unwrap()
    }
    fn opened(requester: Requester) -> TicketEvent {
        TicketEvent::TicketOpened {
            number: TicketNumber::parse(12345).unwrap(),
            requester,
            subject: Subject::parse("Withdrawal stuck").unwrap(),
            body: body("tx 0xabc is pending"),
        }
    }

    fn given(events: Vec<(Actor, TicketEvent)>) -> Given {
        let history = events
            .into_iter()
            .enumerate()
            .map(|(i, (a, e))| (i as u64 + 1, t0() + Duration::minutes(i as i64), a, e))
            .collect();
        Given {
            id: TicketId::new(),
            history,
        }
    }

    impl Given {
        fn state(&self) -> Option<Ticket> {
            fold(
                self.id,
                self.history.iter().map(|(s, at, a, e)| (*s, *at, a, e)),
            )
        }
        fn when(&self, actor: Actor, command: Command) -> Result<Vec<TicketEvent>, DomainError> {
            self.when_at(actor, command, t0() + Duration::hours(1))
        }
        fn when_at(
            &self,
            actor: Actor,
            command: Command,
            now: DateTime<Utc>,
        ) -> Result<Vec<TicketEvent>, DomainError> {
            decide(self.state().as_ref(), &command, &Context { actor, now })
        }
        /// Apply what `when` decided, as the store would.
        fn then_state(&mut self, actor: Actor, events: Vec<TicketEvent>) -> Ticket {
            self.then_state_at(actor, events, t0() + Duration::hours(2))
        }
        fn then_state_at(
            &mut self,
            actor: Actor,
            events: Vec<TicketEvent>,
            at: DateTime<Utc>,
        ) -> Ticket {
            for e in events {
                let seq = self.history.len() as u64 + 1;
                self.history.push((seq, at, actor.clone(), e));
            }
            self.state().unwrap()
        }
        /// Decides at `now` and applies what was decided at `now`.
        fn step(
            &mut self,
            actor: Actor,
            command: Command,
            now: DateTime<Utc>,
        ) -> Result<Vec<TicketEvent>, DomainError> {
            let events = self.when_at(actor.clone(), command, now)?;
            self.then_state_at(actor, events.clone(), now);
            Ok(events)
        }
    }

    fn reply(s: &str) -> Command {
        Command::PostReply { body: body(s) }
    }

    // --- opening ---

    #[test]
    fn customer_opens_own_ticket() {
        let g = given(vec![]);
        let cmd = Command::Open {
            id: g.id,
            number: TicketNumber::parse(12345).unwrap(),
            requester: ann(),
            subject: Subject::parse("Withdrawal stuck").unwrap(),
            body: body("tx 0xabc is pending"),
        };
        assert_eq!(g.when(customer("ann"), cmd).unwrap(), vec![opened(ann())]);
    }

    #[test]
    fn customer_cannot_open_a_ticket_in_someone_elses_name() {
        let g = given(vec![]);
        let cmd = Command::Open {
            id: g.id,
            number: TicketNumber::parse(1).unwrap(),
            requester: ann(),
            subject: Subject::parse("x").unwrap(),
            body: body("y"),
        };
        assert!(matches!(
            g.when(customer("bob"), cmd),
            Err(DomainError::NotPermitted(_))
        ));
    }

    #[test]
    fn opening_twice_is_refused() {
        let g = given(vec![(customer("ann"), opened(ann()))]);
        let cmd = Command::Open {
            id: g.id,
            number: TicketNumber::parse(1).unwrap(),
            requester: ann(),
            subject: Subject::parse("x").unwrap(),
            body: body("y"),
        };
        assert_eq!(
            g.when(customer("ann"), cmd),
            Err(DomainError::AlreadyExists)
        );
    }

    #[test]
    fn commands_on_unknown_ticket_are_not_found() {
        assert_eq!(
            given(vec![]).when(agent(), reply("hi")),
            Err(DomainError::NotFound)
        );
    }

    // --- replies ---

    #[test]
    fn agent_reply_adds_reply() {
        let g = given(vec![(customer("ann"), opened(ann()))]);
        assert_eq!(
            g.when(agent(), reply("we are on it")).unwrap(),
            vec![TicketEvent::ReplyAdded {
                body: body("we are on it")
            }]
        );
    }

    #[test]
    fn stranger_cannot_reply() {
        let g = given(vec![(customer("ann"), opened(ann()))]);
        assert!(matches!(
            g.when(customer("bob"), reply("me too")),
            Err(DomainError::NotPermitted(_))
        ));
        assert!(matches!(
            g.when(guest("ann@example.com"), reply("hi")),
            Err(DomainError::NotPermitted(_))
        ));
    }

    #[test]
    fn requester_reply_on_resolved_ticket_reopens_it() {
        let mut g = given(vec![
            (customer("ann"), opened(ann())),
            (agent(), TicketEvent::Resolved { note: None }),
        ]);
        let events = g.when(customer("ann"), reply("still broken")).unwrap();
        assert_eq!(
            events,
            vec![
                TicketEvent::Reopened,
                TicketEvent::ReplyAdded {
                    body: body("still broken")
                }
            ]
        );
        let t = g.then_state(customer("ann"), events);
        assert_eq!(t.status, TicketStatus::Open);
        assert_eq!(t.version, 4);
    }

    #[test]
    fn guest_reply_on_own_ticket_is_accepted() {
        let g = given(vec![(Actor::System, opened(guest_requester()))]);
        assert!(g.when(guest("g@example.com"), reply("attached")).is_ok());
        assert!(g.when(guest("other@example.com"), reply("x")).is_err());
    }

    // --- info requests ---

    #[test]
    fn request_info_makes_ticket_await_customer_until_they_reply() {
        let mut g = given(vec![(customer("ann"), opened(ann()))]);
        let ev = g
            .when(
                agent(),
                Command::RequestInfo {
                    body: body("tx id?"),
                },
            )
            .unwrap();
        assert_eq!(
            g.then_state(agent(), ev).status,
            TicketStatus::AwaitingCustomer
        );
        // An agent's follow-up does not end the wait; the customer's reply does.
        let ev = g.when(agent(), reply("any news?")).unwrap();
        assert_eq!(
            g.then_state(agent(), ev).status,
            TicketStatus::AwaitingCustomer
        );
        let ev = g.when(customer("ann"), reply("0xabc")).unwrap();
        assert_eq!(g.then_state(customer("ann"), ev).status, TicketStatus::Open);
    }

    #[test]
    fn request_info_on_resolved_ticket_fails() {
        let g = given(vec![
            (customer("ann"), opened(ann())),
            (agent(), TicketEvent::Resolved { note: None }),
        ]);
        assert_eq!(
            g.when(agent(), Command::RequestInfo { body: body("?") }),
            Err(DomainError::AlreadyResolved)
        );
    }

    #[test]
    fn only_agents_request_info_and_resolve() {
        let g = given(vec![(customer("ann"), opened(ann()))]);
        assert!(matches!(
            g.when(customer("ann"), Command::RequestInfo { body: body("?") }),
            Err(DomainError::NotPermitted(_))
        ));
        assert!(matches!(
            g.when(customer("ann"), Command::Resolve { note: None }),
            Err(DomainError::NotPermitted(_))
        ));
    }

    #[test]
    fn resolve_twice_fails_and_history_keeps_the_note() {
        let mut g = given(vec![(customer("ann"), opened(ann()))]);
        let ev = g
            .when(
                agent(),
                Command::Resolve {
                    note: Some(body("refunded")),
                },
            )
            .unwrap();
        let t = g.then_state(agent(), ev);
        assert_eq!(t.status, TicketStatus::Resolved);
        assert_eq!(t.messages.last().unwrap().kind, MessageKind::Resolution);
        assert_eq!(
            g.when(agent(), Command::Resolve { note: None }),
            Err(DomainError::AlreadyResolved)
        );
    }

    // --- guest access codes ---

    fn request_code(hash: &str) -> Command {
        Command::RequestAccessCode {
            code_hash: hash.into(),
            sealed_code: "sealed".into(),
            ttl: Duration::minutes(10),
            min_interval: Duration::minutes(1),
        }
    }

    #[test]
    fn guest_code_is_granted_once_and_then_consumed() {
        let mut g = given(vec![(Actor::System, opened(guest_requester()))]);
        let me = guest("g@example.com");
        let ev = g.when(me.clone(), request_code("h1")).unwrap();
        g.then_state(me.clone(), ev);
        // decided at t0+1h, so the code is valid until t0+1h10m
        let now = t0() + Duration::hours(1) + Duration::minutes(1);
        let ev = g
            .when_at(
                me.clone(),
                Command::VerifyAccessCode {
                    code_hash: "h1".into(),
                },
                now,
            )
            .unwrap();
        assert_eq!(
            AccessCodeOutcome::from_events(&ev),
            Some(AccessCodeOutcome::Granted)
        );
        g.then_state(me.clone(), ev);
        assert_eq!(
            g.when_at(
                me,
                Command::VerifyAccessCode {
                    code_hash: "h1".into()
                },
                now
            ),
            Err(DomainError::CodeExpired)
        );
    }

    #[test]
    fn guest_code_expires_after_its_ttl() {
        let mut g = given(vec![(Actor::System, opened(guest_requester()))]);
        let me = guest("g@example.com");
        let ev = g.when(me.clone(), request_code("h1")).unwrap();
        g.then_state(me.clone(), ev);
        // requested at t0+1h (when), expires 10 minutes later
        let late = t0() + Duration::hours(1) + Duration::minutes(10);
        assert_eq!(
            g.when_at(
                me,
                Command::VerifyAccessCode {
                    code_hash: "h1".into()
                },
                late
            ),
            Err(DomainError::CodeExpired)
        );
    }

    fn verify(hash: &str) -> Command {
        Command::VerifyAccessCode {
            code_hash: hash.into(),
        }
    }

    #[test]
    fn wrong_codes_are_counted_per_ticket_across_codes_and_lock_it_for_the_day() {
        let mut g = given(vec![(Actor::System, opened(guest_requester()))]);
        let me = guest("g@example.com");
        let start = t0() + Duration::hours(1);
        let mut last = Vec::new();
        // Four codes, five wrong guesses each: a new code does not reset the count.
        for round in 0..4 {
            let at = start + Duration::minutes(2 * round);
            g.step(me.clone(), request_code(&format!("right{round}")), at)
                .unwrap();
            for _ in 0..5 {
                last = g.step(me.clone(), verify("wrong"), at).unwrap();
            }
        }
        // The 20th wrong code locks the ticket until a day after the first attempt.
        let until = start + Duration::hours(24);
        assert_eq!(
            last,
            vec![
                TicketEvent::AccessCodeRejected { attempts: 5 },
                TicketEvent::GuestAccessLocked { until }
            ]
        );
        assert_eq!(
            AccessCodeOutcome::from_events(&last),
            Some(AccessCodeOutcome::Locked { until })
        );
        let later = start + Duration::hours(3);
        assert_eq!(
            g.when_at(me.clone(), request_code("again"), later),
            Err(DomainError::GuestAccessLocked {
                retry_after_secs: 21 * 3600
            })
        );
        // The next day starts afresh.
        g.step(me.clone(), request_code("fresh"), until).unwrap();
        assert_eq!(
            AccessCodeOutcome::from_events(&g.step(me, verify("fresh"), until).unwrap()),
            Some(AccessCodeOutcome::Granted)
        );
    }

    #[test]
    fn a_success_ends_the_run_of_wrong_codes() {
        let mut g = given(vec![(Actor::System, opened(guest_requester()))]);
        let me = guest("g@example.com");
        let start = t0() + Duration::hours(1);
        for round in 0..3 {
            let at = start + Duration::minutes(2 * round);
            g.step(me.clone(), request_code("right"), at).unwrap();
            for _ in 0..4 {
                g.step(me.clone(), verify("wrong"), at).unwrap();
            }
            g.step(me.clone(), verify("right"), at).unwrap();
        }
        // Twelve wrong codes, each run ended by the right one: not locked.
        let t = g.state().unwrap();
        assert_eq!((t.guest_day.failures, t.guest_day.locked_until), (0, None));
    }

    #[test]
    fn a_ticket_gets_ten_codes_a_day_and_the_eleventh_request_locks_it_on_its_record() {
        // Given ten codes requested a minute apart.
        let mut g = given(vec![(Actor::System, opened(guest_requester()))]);
        let me = guest("g@example.com");
        let start = t0() + Duration::hours(1);
        for n in 0..10 {
            g.step(me.clone(), request_code("c"), start + Duration::minutes(n))
                .unwrap();
        }
        // When an eleventh is asked for, then no code: the lock, as an event.
        let at = start + Duration::minutes(10);
        let ev = g.when_at(me.clone(), request_code("c"), at).unwrap();
        assert_eq!(
            ev,
            vec![TicketEvent::GuestAccessLocked {
                until: start + Duration::hours(24)
            }]
        );
        g.then_state_at(me.clone(), ev, at);
        // Then every later request is refused until the day is over.
        assert_eq!(
            g.when_at(me.clone(), request_code("c"), at + Duration::minutes(1)),
            Err(DomainError::GuestAccessLocked {
                retry_after_secs: (Duration::hours(24) - Duration::minutes(11)).num_seconds()
            })
        );
        assert!(
            g.when_at(me, request_code("c"), start + Duration::hours(24))
                .is_ok()
        );
    }

    #[test]
    fn five_wrong_codes_burn_the_code() {
        let mut g = given(vec![(Actor::System, opened(guest_requester()))]);
        let me = guest("g@example.com");
        let ev = g.when(me.clone(), request_code("right")).unwrap();
        g.then_state(me.clone(), ev);
        let soon = t0() + Duration::hours(1) + Duration::minutes(1);
        for n in 1..=5u8 {
            let ev = g
                .when_at(
                    me.clone(),
                    Command::VerifyAccessCode {
                        code_hash: "wrong".into(),
                    },
                    soon,
                )
                .unwrap();
            assert_eq!(
                AccessCodeOutcome::from_events(&ev),
                Some(AccessCodeOutcome::Rejected {
                    attempts_left: 5 - n
                })
            );
            g.then_state(me.clone(), ev);
        }
        assert_eq!(
            g.when_at(
                me,
                Command::VerifyAccessCode {
                    code_hash: "right".into()
                },
                soon
            ),
            Err(DomainError::CodeAttemptsExhausted)
        );
    }

    #[test]
    fn code_requests_are_rate_limited_per_ticket() {
        let mut g = given(vec![(Actor::System, opened(guest_requester()))]);
        let me = guest("g@example.com");
        let ev = g
            .when_at(me.clone(), request_code("h1"), t0() + Duration::hours(2))
            .unwrap();
        g.then_state(me.clone(), ev); // applied at t0+2h
        let err = g
            .when_at(
                me.clone(),
                request_code("h2"),
                t0() + Duration::hours(2) + Duration::seconds(20),
            )
            .unwrap_err();
        assert_eq!(
            err,
            DomainError::RateLimited {
                retry_after_secs: 40
            }
        );
        assert!(
            g.when_at(
                me,
                request_code("h2"),
                t0() + Duration::hours(2) + Duration::seconds(61)
            )
            .is_ok()
        );
    }

    #[test]
    fn codes_are_only_for_the_guest_requester() {
        let g = given(vec![(customer("ann"), opened(ann()))]);
        assert!(matches!(
            g.when(customer("ann"), request_code("h")),
            Err(DomainError::NotPermitted(_))
        ));
        let g = given(vec![(Actor::System, opened(guest_requester()))]);
        assert!(matches!(
            g.when(guest("x@example.com"), request_code("h")),
            Err(DomainError::NotPermitted(_))
        ));
    }

    #[test]
    fn a_snapshot_keeps_everything_decide_needs_but_not_the_conversation() {
        let mut g = given(vec![(Actor::System, opened(guest_requester()))]);
        let me = guest("g@example.com");
        let ev = g.when(me.clone(), request_code("h1")).unwrap();
        let t = g.then_state(me, ev);
        let json = serde_json::to_value(&t).unwrap();
        let back: Ticket = serde_json::from_value(json).unwrap();
        assert!(back.messages.is_empty());
        assert_eq!(
            Ticket {
                messages: vec![],
                ..t
            },
            back
        );
    }

    #[test]
    fn events_round_trip_through_json() {
        let e = opened(ann());
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"type\":\"TicketOpened\""));
        assert_eq!(serde_json::from_str::<TicketEvent>(&json).unwrap(), e);
    }

    fn fresh_link() -> Command {
        Command::RequestFreshLink {
            min_interval: Duration::minutes(10),
        }
    }

    #[test]
    fn a_guest_gets_a_fresh_link_at_most_every_interval() {
        // Given a guest ticket, when its guest asks for a fresh link, then one is mailed.
        let mut g = given(vec![(Actor::System, opened(guest_requester()))]);
        let me = guest("g@example.com");
        let ev = g.when(me.clone(), fresh_link()).unwrap();
        assert_eq!(ev, vec![TicketEvent::GuestLinkRequested]);
        g.then_state(me.clone(), ev); // applied at t0+2h
        // When asked again five minutes later, then it waits out the interval.
        let err = g
            .when_at(me.clone(), fresh_link(), t0() + Duration::minutes(125))
            .unwrap_err();
        assert_eq!(
            err,
            DomainError::RateLimited {
                retry_after_secs: 300
            }
        );
        assert!(
            g.when_at(me, fresh_link(), t0() + Duration::minutes(131))
                .is_ok()
        );
    }

    #[test]
    fn fresh_links_are_only_for_the_guest_requester() {
        // Given a customer's ticket, when anyone asks for a fresh link, then it is refused.
        let g = given(vec![(customer("ann"), opened(ann()))]);
        assert!(matches!(
            g.when(customer("ann"), fresh_link()),
            Err(DomainError::NotPermitted(_))
        ));
        // Given a guest ticket, when another address asks, then it is refused.
        let g = given(vec![(Actor::System, opened(guest_requester()))]);
        assert!(matches!(
            g.when(guest("other@example.com"), fresh_link()),
            Err(DomainError::NotPermitted(_))
        ));
    }
}
