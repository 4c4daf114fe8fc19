//! Parse-don't-validate newtypes: every value here was checked once, at the boundary.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

use crate::limits;

/// Why a raw value was refused; `field` is filled in by the boundary that knows the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TicketId(Uuid);

impl TicketId {
    pub fn new() -> Self {
        // v7 ids sort by creation time, which keeps index inserts local.
        Self(Uuid::now_v7())
    }
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Uuid::parse_str(raw.trim())
            .map(Self)
            .or_else(|_| err("must be a UUID"))
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TicketId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The human number customers see in emails ("ticket 12345").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TicketNumber(i64);

impl TicketNumber {
    pub fn parse(n: i64) -> Result<Self, ParseError> {
        if n > 0 {
            Ok(Self(n))
        } else {
            err("must be positive")
        }
    }
    pub fn get(&self) -> i64 {
        self.0
    }
}

impl fmt::Display for TicketNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! string_newtype {
    ($name:ident) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(AccountId);
string_newtype!(Email);
string_newtype!(Locale);
string_newtype!(Subject);
string_newtype!(Body);
string_newtype!(RequestId);
string_newtype!(DisplayName);

fn bounded_text(raw: &str, max: usize, allow_newlines: bool) -> Result<String, ParseError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return err("must not be empty");
    }
    let chars = trimmed.chars().count();
    if chars > max {
        return err(format!("must be at most {max} characters (got {chars})"));
    }
    let bad =
        |c: char| c.is_control() && !(allow_newlines && (c == '\n' || c == '\r' || c == '\t'));
    if trimmed.chars().any(bad) {
        return err("must not contain control characters");
    }
    Ok(trimmed.to_owned())
}

impl AccountId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        bounded_text(raw, limits::ACCOUNT_ID_MAX_CHARS, false).map(Self)
    }
}

impl Subject {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        bounded_text(raw, limits::SUBJECT_MAX_CHARS, false).map(Self)
    }
}

impl Body {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        bounded_text(raw, limits::BODY_MAX_CHARS, true).map(Self)
    }
    /// A short, single-line preview for notifications; never the whole body.
    pub fn excerpt(&self) -> String {
        let flat: String = self.0.split_whitespace().collect::<Vec<_>>().join(" ");
        if flat.chars().count() <= limits::EXCERPT_MAX_CHARS {
            flat
        } else {
            let cut: String = flat.chars().take(limits::EXCERPT_MAX_CHARS - 1).collect();
            format!("{cut}…")
        }
    }
}

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        bounded_text(raw, limits::DISPLAY_NAME_MAX_CHARS, false).map(Self)
    }
}

impl RequestId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        if s.is_empty() {
            return err("must not be empty (it is the idempotency key of the call)");
        }
        if s.len() > limits::REQUEST_ID_MAX_CHARS {
            return err(format!(
                "must be at most {} characters",
                limits::REQUEST_ID_MAX_CHARS
            ));
        }
        if !s.chars().all(|c| c.is_ascii_graphic()) {
            return err("must be printable ASCII without spaces");
        }
        Ok(Self(s.to_owned()))
    }
}

impl Email {
    /// Deliberately conservative: one `@`, a dotted domain, no spaces or control characters.
    /// The domain part is lower-cased so that links bound to an address match however it
    /// was typed; the local part is kept as given (RFC 5321 says it may be case-sensitive).
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        if s.is_empty() {
            return err("must not be empty");
        }
        if s.len() > limits::EMAIL_MAX_CHARS {
            return err(format!(
                "must be at most {} characters",
                limits::EMAIL_MAX_CHARS
            ));
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return err("is not an email address (missing @)");
        };
        let ok_char = |c: char| !c.is_whitespace() && !c.is_control() && c != '<' && c != '>';
        if local.is_empty()
            || local.len() > 64
            || local.contains('@')
            || !local.chars().all(ok_char)
        {
            return err("is not an email address (bad local part)");
        }
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
        if !domain_ok {
            return err("is not an email address (bad domain)");
        }
        Ok(Self(format!("{local}@{}", domain.to_lowercase())))
    }
}

impl Locale {
    /// BCP 47 shaped tags such as `en`, `it`, `pt-BR`; normalised to `ll` / `ll-RR`.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim().replace('_', "-");
        let mut parts = s.split('-');
        let lang = parts.next().unwrap_or_default();
        if !(2..=3).contains(&lang.len()) || !lang.chars().all(|c| c.is_ascii_alphabetic()) {
            return err("must be a language tag such as en, it or pt-BR");
        }
        let mut out = lang.to_ascii_lowercase();
        for part in parts {
            if part.is_empty() || part.len() > 8 || !part.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return err("must be a language tag such as en, it or pt-BR");
            }
            out.push('-');
            if part.len() == 2 {
                out.push_str(&part.to_ascii_uppercase());
            } else {
                out.push_str(part);
            }
        }
        Ok(Self(out))
    }
    pub fn english() -> Self {
        Self("en".into())
    }
}

/// Who filed the ticket, and so who is notified about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Requester {
    Customer {
        account_id: AccountId,
        email: Email,
        locale: Locale,
        display_name: Option<DisplayName>,
    },
    Guest {
        email: Email,
        locale: Locale,
    },
}

impl Requester {
    pub fn email(&self) -> &Email {
        match self {
            Requester::Customer { email, .. } | Requester::Guest { email, .. } => email,
        }
    }
    pub fn locale(&self) -> &Locale {
        match self {
            Requester::Customer { locale, .. } | Requester::Guest { locale, .. } => locale,
        }
    }
}

/// Who did something. Agents and customers are identified by their account id from the
/// identity provider; a guest only by the address their verified session is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    Customer {
        account_id: AccountId,
        display_name: Option<DisplayName>,
    },
    Agent {
        account_id: AccountId,
        display_name: Option<DisplayName>,
    },
    Guest {
        email: Email,
    },
    /// The service itself (for example a guest asking for a code before having a session).
    System,
}

impl Actor {
    pub fn is_agent(&self) -> bool {
        matches!(self, Actor::Agent { .. })
    }
    /// Is this actor the person who filed the ticket?
    pub fn is_requester_of(&self, requester: &Requester) -> bool {
        match (self, requester) {
            (Actor::Customer { account_id, .. }, Requester::Customer { account_id: r, .. }) => {
                account_id == r
            }
            (Actor::Guest { email }, Requester::Guest { email: r, .. }) => email == r,
            _ => false,
        }
    }
    pub fn display_name(&self) -> String {
        match self {
            Actor::Customer { display_name, .. } => display_name
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_else(|| "Customer".into()),
            Actor::Agent { display_name, .. } => display_name
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_else(|| "Support team".into()),
            Actor::Guest { email } => email.to_string(),
            Actor::System => "Tidings".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    Open,
    /// The team asked for more information; waiting for the requester's reply.
    AwaitingCustomer,
    Resolved,
}

impl TicketStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            TicketStatus::Open => "open",
            TicketStatus::AwaitingCustomer => "awaiting_customer",
            TicketStatus::Resolved => "resolved",
        }
    }
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "open" => Ok(Self::Open),
            "awaiting_customer" => Ok(Self::AwaitingCustomer),
            "resolved" => Ok(Self::Resolved),
            _ => err(format!("unknown status {raw:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_accepts_plain_address_and_lowercases_domain() {
        assert_eq!(
            Email::parse(" Ann@Example.COM ").unwrap().as_str(),
            "Ann@example.com"
        );
    }

    #[test]
    fn email_rejects_garbage() {
        for bad in [
            "",
            "ann",
            "ann@",
            "@x.com",
            "ann@localhost",
            "a b@x.com",
            "a@x..com",
            "a\r\nBcc: x@y.z@x.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn body_limits_are_enforced() {
        assert!(Body::parse("   ").is_err());
        assert!(Body::parse(&"x".repeat(limits::BODY_MAX_CHARS)).is_ok());
        assert!(Body::parse(&"x".repeat(limits::BODY_MAX_CHARS + 1)).is_err());
        assert!(Body::parse("line one\nline two").is_ok());
    }

    #[test]
    fn subject_rejects_newlines_so_it_can_never_become_a_header() {
        assert!(Subject::parse("hello\r\nBcc: evil@example.com").is_err());
    }

    #[test]
    fn excerpt_is_single_line_and_bounded() {
        let body = Body::parse(&format!("a\nb {}", "y".repeat(1000))).unwrap();
        let e = body.excerpt();
        assert!(!e.contains('\n'));
        assert_eq!(e.chars().count(), limits::EXCERPT_MAX_CHARS);
    }

    #[test]
    fn locale_is_normalised() {
        assert_eq!(Locale::parse("pt_br").unwrap().as_str(), "pt-BR");
        assert_eq!(Locale::parse("IT").unwrap().as_str(), "it");
        assert!(Locale::parse("english please").is_err());
    }
}
