//! The page templates (askama, compiled in; every value is HTML-escaped, so subjects,
//! replies and names written by users render as text) and the views they are filled from.

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::PrivateCookieJar;
use tidings_proto::ticket::v1 as pb;
use uuid::Uuid;

use crate::backend::CallError;
use crate::i18n::Lang;
use crate::i18n::Texts;
use crate::web::{AppState, Chrome, csrf_token, page, with_retry_after};

/// The ticket service's bounds, checked here first so the form comes back with the field's
/// message instead of a round trip.
pub const SUBJECT_MAX_CHARS: usize = 200;
pub const BODY_MAX_CHARS: usize = 20_000;

#[derive(Template)]
#[template(path = "home.html")]
pub struct HomePage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub signed_in: bool,
    pub sign_in_enabled: bool,
}

#[derive(Template)]
#[template(path = "notice.html")]
pub struct Notice {
    pub chrome: Chrome,
    pub title: String,
    pub body: String,
    /// Announced to screen readers as an alert.
    pub alert: bool,
    /// A button posting here, e.g. "Email me a fresh link".
    pub post_action: Option<String>,
    pub post_label: &'static str,
    /// A link onwards, e.g. "Sign in again".
    pub link_href: Option<String>,
    pub link_label: &'static str,
    /// Text the visitor wrote that could not be sent, shown so it is not lost.
    pub draft: String,
}

impl Notice {
    pub fn new(t: &'static Texts, csrf: String, title: &str, body: &str) -> Self {
        Notice {
            chrome: Chrome {
                t,
                csrf,
                sign_out: None,
            },
            title: title.to_owned(),
            body: body.to_owned(),
            alert: false,
            post_action: None,
            post_label: "",
            link_href: None,
            link_label: "",
            draft: String::new(),
        }
    }
}

#[derive(Template)]
#[template(path = "verify.html")]
pub struct VerifyPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub number_label: String,
    pub masked: String,
    pub ticket_id: String,
    /// "We sent a 6-digit code to …", once a code is on its way.
    pub code_sent: Option<String>,
    pub error: Option<String>,
}

pub struct MessageView<'a> {
    pub author: String,
    pub mine: bool,
    pub agent: bool,
    pub time_iso: String,
    pub time_text: String,
    pub body: &'a str,
}

#[derive(Template)]
#[template(path = "ticket.html")]
pub struct TicketPage<'a> {
    pub chrome: Chrome,
    pub title: String,
    pub number_label: String,
    pub status_label: &'static str,
    pub status_class: &'static str,
    pub awaiting: bool,
    pub resolved: bool,
    pub messages: Vec<MessageView<'a>>,
    pub reply_action: String,
    pub request_id: String,
    pub error: Option<&'static str>,
    pub draft: String,
    pub body_max: usize,
}

#[derive(Template)]
#[template(path = "new_ticket.html")]
pub struct NewTicketPage {
    pub chrome: Chrome,
    pub title: &'static str,
    /// A guest's form has the address, the language and the honeypot; a customer's not.
    pub guest: bool,
    pub action: &'static str,
    pub submit_label: &'static str,
    pub has_errors: bool,
    pub subject: String,
    pub subject_error: Option<&'static str>,
    pub body: String,
    pub body_error: Option<&'static str>,
    pub email: String,
    pub email_error: Option<&'static str>,
    pub language: String,
    pub request_id: String,
    pub subject_max: usize,
    pub body_max: usize,
}

pub struct TicketRow {
    pub id: String,
    pub subject: String,
    pub number_label: String,
    pub status_label: &'static str,
    pub status_class: &'static str,
    pub time_iso: String,
    pub time_text: String,
}

#[derive(Template)]
#[template(path = "tickets.html")]
pub struct TicketsPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub tickets: Vec<TicketRow>,
    /// Not the first page: offer the way back to the newest.
    pub paged: bool,
    /// The next page's token, URL-safe.
    pub next_page: Option<String>,
}

/// A status as the customer reads it, and its badge's class.
pub fn status_badge(t: &'static Texts, status: i32) -> (&'static str, &'static str) {
    match pb::TicketStatus::try_from(status) {
        Ok(pb::TicketStatus::AwaitingCustomer) => (t.status_awaiting, "awaiting"),
        Ok(pb::TicketStatus::Resolved) => (t.status_resolved, "resolved"),
        _ => (t.status_open, "open"),
    }
}

/// A time as the pages show it: ISO for `<time datetime>`, and UTC text (the page's script
/// turns it into the reader's zone).
pub fn times(at: Option<&prost_types::Timestamp>) -> (String, String) {
    use chrono::{Datelike as _, Timelike as _};
    // Written out field by field: a ticket page shows two per message, and chrono's `format`
    // parses its pattern on every call (docs/performance.md, the portal).
    let Some(at) = at.and_then(tidings_proto::from_timestamp) else {
        return (String::new(), String::new());
    };
    let (y, mo, d, h, mi) = (at.year(), at.month(), at.day(), at.hour(), at.minute());
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{:02}Z", at.second()),
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC"),
    )
}

/// The ticket page: the conversation in order and the reply box.
pub fn ticket_page(
    status: StatusCode,
    chrome: Chrome,
    ticket: &pb::Ticket,
    reply_action: String,
    error: Option<&'static str>,
    draft: String,
) -> Response {
    let t = chrome.t;
    let (status_label, status_class) = status_badge(t, ticket.status);
    let messages = ticket
        .messages
        .iter()
        .map(|m| {
            let kind = pb::AuthorKind::try_from(m.author_kind).unwrap_or_default();
            let (author, mine, agent) = match kind {
                pb::AuthorKind::Agent => (t.support_agent(&m.author_display_name), false, true),
                pb::AuthorKind::Customer | pb::AuthorKind::Guest => (t.you.to_owned(), true, false),
                _ => (t.system.to_owned(), false, false),
            };
            let (time_iso, time_text) = times(m.created_at.as_ref());
            MessageView {
                author,
                mine,
                agent,
                time_iso,
                time_text,
                body: &m.body,
            }
        })
        .collect();
    let body = TicketPage {
        chrome,
        title: ticket.subject.clone(),
        number_label: t.ticket_number(ticket.ticket_number),
        status_label,
        status_class,
        awaiting: status_class == "awaiting",
        resolved: status_class == "resolved",
        messages,
        reply_action,
        request_id: Uuid::new_v4().to_string(),
        error,
        draft,
        body_max: BODY_MAX_CHARS,
    };
    page(status, &body)
}

/// The ticket service could not answer: say so, and log why.
pub fn unavailable(t: &'static Texts, e: &CallError) -> Response {
    tracing::warn!(code = ?e.code, message = %e.message, "ticket service call failed");
    let mut notice = Notice::new(t, String::new(), t.error_title, t.unavailable);
    notice.alert = true;
    page(StatusCode::SERVICE_UNAVAILABLE, &notice)
}

/// A POST whose CSRF token is missing or wrong: nothing is done, and what the visitor wrote
/// is shown so it is not lost.
pub fn form_expired(
    state: &AppState,
    jar: PrivateCookieJar,
    headers: &HeaderMap,
    draft: String,
) -> Response {
    let t = Lang::choose(None, headers).texts();
    let (jar, csrf) = csrf_token(state, jar);
    let mut notice = Notice::new(t, csrf, t.error_title, t.form_expired);
    notice.alert = true;
    notice.draft = draft;
    (jar, page(StatusCode::FORBIDDEN, &notice)).into_response()
}

/// A client over one of the portal's rate limits.
pub fn slow_down(
    state: &AppState,
    jar: PrivateCookieJar,
    t: &'static Texts,
    secs: u64,
) -> Response {
    let (jar, csrf) = csrf_token(state, jar);
    let mut notice = Notice::new(t, csrf, t.error_title, &t.slow_down(secs));
    notice.alert = true;
    let response = page(StatusCode::TOO_MANY_REQUESTS, &notice);
    (jar, with_retry_after(response, secs)).into_response()
}

/// A form that could not be read (too large, wrong encoding): its status, with a page.
pub fn form_rejected(t: &'static Texts, rejection: &FormRejection) -> Response {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        t.too_long
    } else {
        t.form_expired
    };
    let mut notice = Notice::new(t, String::new(), t.error_title, message);
    notice.alert = true;
    page(status, &notice)
}

/// A refused reply as the page says it, or `None` when the service could not answer.
pub fn reply_refused(t: &'static Texts, e: &CallError) -> Option<(StatusCode, &'static str)> {
    match e.code {
        tonic::Code::InvalidArgument if e.message.contains("empty") => {
            Some((StatusCode::UNPROCESSABLE_ENTITY, t.reply_empty))
        }
        tonic::Code::InvalidArgument => Some((StatusCode::UNPROCESSABLE_ENTITY, t.reply_invalid)),
        // The same request id with another text: the form was sent before, then edited.
        tonic::Code::AlreadyExists => Some((StatusCode::CONFLICT, t.reply_conflict)),
        tonic::Code::FailedPrecondition | tonic::Code::Aborted => {
            Some((StatusCode::CONFLICT, t.reply_conflict))
        }
        tonic::Code::ResourceExhausted => Some((StatusCode::TOO_MANY_REQUESTS, t.reply_later)),
        _ => None,
    }
}

/// A reply's or description's problem, if any: empty, or longer than the service takes.
pub fn check_body(t: &'static Texts, body: &str) -> Option<(StatusCode, &'static str)> {
    if body.trim().is_empty() {
        Some((StatusCode::UNPROCESSABLE_ENTITY, t.reply_empty))
    } else if body.chars().count() > BODY_MAX_CHARS {
        Some((StatusCode::PAYLOAD_TOO_LARGE, t.too_long))
    } else {
        None
    }
}

/// The form's idempotency key (a double-clicked "Send" posts once), or a fresh one.
pub fn request_id_of(raw: &str) -> String {
    Uuid::parse_str(raw.trim()).map_or_else(|_| Uuid::new_v4().to_string(), |id| id.to_string())
}

/// Any address the portal does not serve.
pub async fn not_found(headers: HeaderMap) -> Response {
    let t = Lang::choose(None, &headers).texts();
    let notice = Notice::new(t, String::new(), t.error_title, t.not_found);
    page(StatusCode::NOT_FOUND, &notice)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_iso_for_machines_and_utc_text_for_people() {
        // Given a timestamp, then both forms name the same minute.
        let at = prost_types::Timestamp {
            seconds: 1_796_408_105, // 2026-12-04 18:15:05 UTC
            nanos: 120_000_000,
        };
        let (iso, text) = super::times(Some(&at));
        assert_eq!(iso, "2026-12-04T18:15:05Z");
        assert_eq!(text, "2026-12-04 18:15 UTC");
        assert_eq!(super::times(None), (String::new(), String::new()));
    }
}
