//! Email: every customer-facing change of a ticket is mailed to its requester — signed-in
//! customers at their account address, guests at the address they filed with. Never for the
//! requester's own messages.

use chrono::{DateTime, Utc};
use tidings_domain::{ActorKind, Change, Email, Locale, Requester, TicketUpdate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmailKind {
    /// Confirmation after opening; for guests it is also the first mail with their link.
    TicketReceived,
    AgentReplied,
    InfoRequested,
    Resolved,
    /// The one-time code a guest asked for.
    AccessCode,
    /// A fresh link for a guest whose link expired.
    FreshLink,
}

impl EmailKind {
    pub fn name(&self) -> &'static str {
        match self {
            EmailKind::TicketReceived => "ticket_received",
            EmailKind::AgentReplied => "agent_replied",
            EmailKind::InfoRequested => "info_requested",
            EmailKind::Resolved => "resolved",
            EmailKind::AccessCode => "access_code",
            EmailKind::FreshLink => "fresh_link",
        }
    }
}

/// Decides which link the mail carries: the app/web ticket page for signed-in customers, the
/// email-bound guest link for guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Customer,
    Guest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailPlan {
    pub kind: EmailKind,
    pub to: Email,
    pub locale: Locale,
    pub audience: Audience,
}

fn to_requester(kind: EmailKind, requester: &Requester) -> EmailPlan {
    let audience = match requester {
        Requester::Customer { .. } => Audience::Customer,
        Requester::Guest { .. } => Audience::Guest,
    };
    EmailPlan {
        kind,
        to: requester.email().clone(),
        locale: requester.locale().clone(),
        audience,
    }
}

/// The email, if any, that an update of the ticket-events topic causes. Code requests are
/// answered from their own topic (`plan_code_email`), so they are not mailed from here.
pub fn plan_email(u: &TicketUpdate) -> Option<EmailPlan> {
    let kind = match &u.change {
        Change::Opened { .. } => EmailKind::TicketReceived,
        // Only the support team's replies are news to the requester.
        Change::ReplyAdded {
            author: ActorKind::Agent,
            ..
        } => EmailKind::AgentReplied,
        Change::ReplyAdded { .. } => return None,
        Change::InfoRequested { .. } => EmailKind::InfoRequested,
        Change::Resolved { .. } => EmailKind::Resolved,
        // A reopen always comes with the reply that caused it; that one is mailed (or not).
        Change::Reopened => return None,
        // Links are for guests; a signed-in customer signs in instead.
        Change::FreshLinkRequested if matches!(u.requester, Requester::Guest { .. }) => {
            EmailKind::FreshLink
        }
        Change::FreshLinkRequested => return None,
        Change::AccessCodeRequested { .. } | Change::GuestAccessAudit => return None,
    };
    Some(to_requester(kind, &u.requester))
}

/// Why a code request is not mailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    NotACodeRequest,
    /// Codes are for guests; a signed-in customer never gets one.
    NotAGuest,
    /// The code expired before it could be sent; the guest will ask again.
    Expired,
}

/// The code email for an update of the access-codes topic, unless the code already expired.
pub fn plan_code_email(u: &TicketUpdate, now: DateTime<Utc>) -> Result<EmailPlan, SkipReason> {
    let Change::AccessCodeRequested { expires_at, .. } = &u.change else {
        return Err(SkipReason::NotACodeRequest);
    };
    if !matches!(u.requester, Requester::Guest { .. }) {
        return Err(SkipReason::NotAGuest);
    }
    if *expires_at <= now {
        return Err(SkipReason::Expired);
    }
    Ok(to_requester(EmailKind::AccessCode, &u.requester))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use tidings_domain::{AccountId, TicketId, TicketNumber};

    fn customer() -> Requester {
        Requester::Customer {
            account_id: AccountId::parse("ann").unwrap(),
            email: Email::parse("ann@example.com").unwrap(),
            locale: Locale::parse("it").unwrap(),
            display_name: None,
        }
    }

    fn guest() -> Requester {
        Requester::Guest {
            email: Email::parse("guest@example.org").unwrap(),
            locale: Locale::parse("en").unwrap(),
        }
    }

    /// Given a ticket filed by `requester`, when `actor` causes `change`.
    fn update(requester: Requester, actor: ActorKind, change: Change) -> TicketUpdate {
        TicketUpdate {
            event_id: uuid::Uuid::now_v7(),
            ticket_id: TicketId::new(),
            ticket_number: TicketNumber::parse(12345).unwrap(),
            sequence: 2,
            occurred_at: Utc::now(),
            requester,
            actor,
            actor_name: "Giulia".into(),
            subject: "Withdrawal stuck".into(),
            change,
        }
    }

    fn reply(author: ActorKind) -> Change {
        Change::ReplyAdded {
            author,
            excerpt: "hello".into(),
        }
    }

    #[test]
    fn agent_reply_to_a_customer_mails_the_account_address_in_their_locale() {
        let plan = plan_email(&update(
            customer(),
            ActorKind::Agent,
            reply(ActorKind::Agent),
        ));
        assert_eq!(
            plan,
            Some(EmailPlan {
                kind: EmailKind::AgentReplied,
                to: Email::parse("ann@example.com").unwrap(),
                locale: Locale::parse("it").unwrap(),
                audience: Audience::Customer,
            })
        );
    }

    #[test]
    fn agent_reply_to_a_guest_mails_the_guest_with_a_guest_link() {
        let plan = plan_email(&update(guest(), ActorKind::Agent, reply(ActorKind::Agent))).unwrap();
        assert_eq!(plan.to.as_str(), "guest@example.org");
        assert_eq!(plan.audience, Audience::Guest);
    }

    #[test]
    fn the_requesters_own_reply_mails_nobody() {
        let c = update(customer(), ActorKind::Customer, reply(ActorKind::Customer));
        let g = update(guest(), ActorKind::Guest, reply(ActorKind::Guest));
        assert_eq!(plan_email(&c), None);
        assert_eq!(plan_email(&g), None);
    }

    #[test]
    fn info_requested_resolved_and_opened_each_have_their_own_mail() {
        let kinds: Vec<_> = [
            Change::InfoRequested {
                excerpt: "tx id?".into(),
            },
            Change::Resolved {
                note_excerpt: String::new(),
            },
            Change::Opened {
                excerpt: "help".into(),
            },
        ]
        .into_iter()
        .map(|c| plan_email(&update(guest(), ActorKind::Agent, c)).map(|p| p.kind))
        .collect();
        assert_eq!(
            kinds,
            [
                Some(EmailKind::InfoRequested),
                Some(EmailKind::Resolved),
                Some(EmailKind::TicketReceived)
            ]
        );
    }

    #[test]
    fn reopen_and_guest_access_bookkeeping_mail_nobody() {
        for change in [Change::Reopened, Change::GuestAccessAudit] {
            assert_eq!(plan_email(&update(guest(), ActorKind::Guest, change)), None);
        }
    }

    #[test]
    fn a_fresh_link_is_mailed_to_guests_only() {
        // Given a guest's request for a fresh link, then the guest gets a link mail.
        let plan = plan_email(&update(
            guest(),
            ActorKind::Guest,
            Change::FreshLinkRequested,
        ));
        assert_eq!(
            plan.map(|p| (p.kind, p.audience)),
            Some((EmailKind::FreshLink, Audience::Guest))
        );
        // Given the same change on a customer's ticket, then nobody is mailed.
        let plan = plan_email(&update(
            customer(),
            ActorKind::Customer,
            Change::FreshLinkRequested,
        ));
        assert_eq!(plan, None);
    }

    fn code_request(expires_in: Duration) -> Change {
        Change::AccessCodeRequested {
            sealed_code: "sealed".into(),
            expires_at: Utc::now() + expires_in,
        }
    }

    #[test]
    fn a_code_request_is_not_mailed_from_the_ticket_events_topic() {
        let u = update(
            guest(),
            ActorKind::System,
            code_request(Duration::minutes(10)),
        );
        assert_eq!(plan_email(&u), None);
    }

    #[test]
    fn a_live_code_is_mailed_to_the_guest() {
        let u = update(
            guest(),
            ActorKind::System,
            code_request(Duration::minutes(10)),
        );
        let plan = plan_code_email(&u, Utc::now()).unwrap();
        assert_eq!(plan.kind, EmailKind::AccessCode);
        assert_eq!(plan.to.as_str(), "guest@example.org");
    }

    #[test]
    fn an_expired_code_or_a_customers_ticket_gets_no_code_mail() {
        let expired = update(
            guest(),
            ActorKind::System,
            code_request(Duration::seconds(-1)),
        );
        assert_eq!(
            plan_code_email(&expired, Utc::now()),
            Err(SkipReason::Expired)
        );
        let customers = update(
            customer(),
            ActorKind::System,
            code_request(Duration::minutes(5)),
        );
        assert_eq!(
            plan_code_email(&customers, Utc::now()),
            Err(SkipReason::NotAGuest)
        );
        let reply = update(guest(), ActorKind::Agent, reply(ActorKind::Agent));
        assert_eq!(
            plan_code_email(&reply, Utc::now()),
            Err(SkipReason::NotACodeRequest)
        );
    }
}
