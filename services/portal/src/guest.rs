//! The guest's path: the emailed link → "verify your email" → a code by email → the ticket
//! page, bound to that one ticket.
//!
//! - A GET never sends a code or uses anything up: mail scanners open every link before the
//!   person does. Only the "Send code" button (a POST) asks for one.
//! - The link token leaves the URL at once: `?link=` is moved into a short-lived cookie and
//!   the browser is redirected to the clean address, so the token never sits in history,
//!   logs or a `Referer`.
//! - Pages never say whether a ticket or an address exists: a page without a usable link or
//!   session looks the same for every ticket id.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::PrivateCookieJar;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tonic::Code;
use uuid::Uuid;

use crate::backend::{CallError, Caller};
use crate::i18n::{Lang, Texts};
use crate::pages::{Notice, VerifyPage, slow_down, ticket_page, unavailable};
use crate::web::{
    AppState, CheckedForm, Chrome, ClientAddr, GUEST, LINK, Limited, csrf_token, page, see_other,
    with_retry_after,
};

/// The link cookie outlives a code (10 minutes) with room to type it.
const LINK_COOKIE_MINUTES: i64 = 30;
const SIGN_OUT: &str = "/guest/sign-out";

/// The guest's link, moved out of the URL.
#[derive(Debug, Serialize, Deserialize)]
struct LinkState {
    ticket_id: String,
    token: String,
    /// Set once a code was sent: the page then shows the code form.
    #[serde(default)]
    code_expires_at: Option<i64>,
}

/// A verified guest: a session for one ticket.
#[derive(Debug, Serialize, Deserialize)]
struct GuestSession {
    ticket_id: String,
    token: String,
    locale: String,
}

#[derive(Deserialize)]
pub struct LinkQuery {
    link: Option<String>,
}

/// A form that is only a button (and its CSRF token).
#[derive(Deserialize)]
pub struct ButtonForm {
    #[serde(default)]
    csrf: String,
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
}

/// The reply box, on a guest's and on a customer's ticket page.
#[derive(Deserialize)]
pub struct ReplyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pub(crate) request_id: String,
    #[serde(default)]
    pub(crate) body: String,
}

impl crate::web::CsrfForm for ButtonForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl crate::web::CsrfForm for CodeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl crate::web::CsrfForm for ReplyForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    fn draft(&self) -> Option<&str> {
        Some(&self.body)
    }
}

fn link_of(state: &AppState, jar: &PrivateCookieJar, ticket_id: &str) -> Option<LinkState> {
    state
        .cookies
        .read::<LinkState>(jar, LINK)
        .filter(|l| l.ticket_id == ticket_id)
}

/// The cookie of the guest session for `ticket_id`: one per ticket, so verifying a second
/// ticket keeps the first.
fn guest_cookie(ticket_id: &str) -> String {
    format!("{GUEST}_{}", ticket_id.replace('-', ""))
}

fn session_of(state: &AppState, jar: &PrivateCookieJar, ticket_id: &str) -> Option<GuestSession> {
    state
        .cookies
        .read::<GuestSession>(jar, &guest_cookie(ticket_id))
        .filter(|s| s.ticket_id == ticket_id)
}

fn save_link(state: &AppState, jar: PrivateCookieJar, link: &LinkState) -> PrivateCookieJar {
    jar.add(state.cookies.make(
        LINK,
        link,
        Some(time::Duration::minutes(LINK_COOKIE_MINUTES)),
    ))
}

/// Ticket ids are UUIDs; anything else is a page that does not exist (and never reaches a
/// redirect target).
fn ticket_id_of(raw: &str) -> Option<String> {
    Uuid::parse_str(raw).ok().map(|id| id.to_string())
}

/// `GET /guest/tickets/{id}[?link=…]`.
pub async fn show(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(query): Query<LinkQuery>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Response {
    let Some(ticket_id) = ticket_id_of(&raw_id) else {
        return no_link(&state, jar, &headers);
    };
    if let Some(token) = query.link.filter(|t| !t.trim().is_empty()) {
        // Every mail carries the link, the code's too: opening it again keeps the code that
        // is on its way, so the code form stays.
        let pending = link_of(&state, &jar, &ticket_id).and_then(|l| l.code_expires_at);
        let link = LinkState {
            ticket_id: ticket_id.clone(),
            token,
            code_expires_at: pending,
        };
        let jar = save_link(&state, jar, &link);
        return (jar, see_other(&format!("/guest/tickets/{ticket_id}"))).into_response();
    }
    render_current(&state, jar, &headers, client, &ticket_id, None).await
}

/// The page for whatever the browser holds for this ticket: a session → the ticket; a link →
/// "verify your email"; nothing → "open the link from your email".
async fn render_current(
    state: &AppState,
    jar: PrivateCookieJar,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    ticket_id: &str,
    reply_error: Option<(StatusCode, &'static str, String)>,
) -> Response {
    let mut jar = jar;
    if let Some(session) = session_of(state, &jar, ticket_id) {
        let caller = Caller {
            token: Some(&session.token),
            client,
        };
        let lang = Lang::choose(Some(&session.locale), headers);
        match state.backend.get_ticket(caller, ticket_id).await {
            Ok(ticket) => {
                let (jar, csrf) = csrf_token(state, jar);
                let chrome = Chrome {
                    t: lang.texts(),
                    csrf,
                    sign_out: Some(SIGN_OUT),
                };
                let action = format!("/guest/tickets/{ticket_id}/reply");
                let (status, error, draft) = match reply_error {
                    Some((status, message, draft)) => (status, Some(message), draft),
                    None => (StatusCode::OK, None, String::new()),
                };
                return (
                    jar,
                    ticket_page(status, chrome, &ticket, action, error, draft),
                )
                    .into_response();
            }
            // The session ran out (or its key was rotated away): verify again.
            Err(e) if matches!(e.code, Code::Unauthenticated | Code::NotFound) => {
                jar = jar.remove(state.cookies.removal(&guest_cookie(ticket_id)));
            }
            Err(e) => return (jar, unavailable(lang.texts(), &e)).into_response(),
        }
    }
    let Some(link) = link_of(state, &jar, ticket_id) else {
        return no_link(state, jar, headers);
    };
    verify_page(state, jar, headers, client, &link, None).await
}

/// What went wrong on the verify page, said in the page's language.
enum VerifyError {
    /// A code was sent moments ago: wait this many seconds.
    Wait(u64),
    /// Wrong; this many attempts are left.
    Rejected(String),
    Expired,
    Exhausted,
    NotSixDigits,
}

impl VerifyError {
    fn message(&self, t: &'static Texts) -> String {
        match self {
            VerifyError::Wait(secs) => t.wait_seconds(*secs),
            VerifyError::Rejected(left) => t.code_rejected(left),
            VerifyError::Expired => t.code_expired.to_owned(),
            VerifyError::Exhausted => t.code_attempts_exhausted.to_owned(),
            VerifyError::NotSixDigits => t.code_not_six_digits.to_owned(),
        }
    }
}

/// A link whose ticket is not the one in the address: as good as a forged one here.
fn foreign_link() -> CallError {
    CallError {
        code: Code::Unauthenticated,
        reason: Some("LINK_INVALID".to_owned()),
        metadata: Default::default(),
        message: "the link is for another ticket".to_owned(),
    }
}

/// "Verify your email", with the code form once a code was sent, and `error` if any.
async fn verify_page(
    state: &AppState,
    jar: PrivateCookieJar,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    link: &LinkState,
    error: Option<(StatusCode, VerifyError)>,
) -> Response {
    let caller = Caller {
        token: None,
        client,
    };
    let described = match state.backend.describe_link(caller, &link.token).await {
        Ok(d) if d.ticket_id == link.ticket_id => d,
        Ok(_) => return dead_link(state, jar, headers, &link.ticket_id, &foreign_link()),
        Err(e) => return dead_link(state, jar, headers, &link.ticket_id, &e),
    };
    let lang = Lang::choose(Some(&described.locale), headers);
    let t = lang.texts();
    let now = Utc::now().timestamp();
    let code_sent = link.code_expires_at.filter(|at| *at > now).map(|at| {
        t.code_sent(
            &described.masked_email,
            (at - now + 59).div_euclid(60).max(1),
        )
    });
    let (jar, csrf) = csrf_token(state, jar);
    let (status, error) = error.map_or((StatusCode::OK, None), |(s, e)| (s, Some(e.message(t))));
    let body = VerifyPage {
        chrome: Chrome {
            t,
            csrf,
            sign_out: None,
        },
        title: t.verify_title,
        number_label: t.ticket_number(described.ticket_number),
        masked: described.masked_email,
        ticket_id: link.ticket_id.clone(),
        code_sent,
        error,
    };
    (jar, page(status, &body)).into_response()
}

/// A reply posted without a (still valid) session: 401, what to do, and the text kept.
fn session_ended(
    state: &AppState,
    jar: PrivateCookieJar,
    headers: &HeaderMap,
    draft: String,
) -> Response {
    let t = Lang::choose(None, headers).texts();
    let (jar, csrf) = csrf_token(state, jar);
    let mut notice = Notice::new(t, csrf, t.error_title, t.session_ended_guest);
    notice.alert = true;
    notice.draft = draft;
    (jar, page(StatusCode::UNAUTHORIZED, &notice)).into_response()
}

fn no_link(state: &AppState, jar: PrivateCookieJar, headers: &HeaderMap) -> Response {
    let t = Lang::choose(None, headers).texts();
    let (jar, csrf) = csrf_token(state, jar);
    let notice = Notice::new(t, csrf, t.no_link_title, t.no_link_body);
    (jar, page(StatusCode::NOT_FOUND, &notice)).into_response()
}

/// An expired, forged or foreign link: offer to email a fresh one. The same page for every
/// kind of dead link but the one sentence, so it reveals nothing about other tickets.
fn dead_link(
    state: &AppState,
    jar: PrivateCookieJar,
    headers: &HeaderMap,
    ticket_id: &str,
    e: &CallError,
) -> Response {
    let t = Lang::choose(None, headers).texts();
    if e.code != Code::Unauthenticated && e.code != Code::InvalidArgument {
        return (jar, unavailable(t, e)).into_response();
    }
    let (body, status) = if e.is("LINK_EXPIRED") {
        (t.link_expired_body, StatusCode::GONE)
    } else {
        (t.link_invalid_body, StatusCode::NOT_FOUND)
    };
    let (jar, csrf) = csrf_token(state, jar);
    let mut notice = Notice::new(t, csrf, t.dead_link_title, body);
    notice.post_action = Some(format!("/guest/tickets/{ticket_id}/fresh-link"));
    notice.post_label = t.email_fresh_link;
    (jar, page(status, &notice)).into_response()
}

/// "Try again tomorrow", in the guest's language (the ticket's locale, which the link tells).
async fn locked(
    state: &AppState,
    jar: PrivateCookieJar,
    headers: &HeaderMap,
    caller: Caller<'_>,
    link: &LinkState,
    e: &CallError,
) -> Response {
    let locale = state
        .backend
        .describe_link(caller, &link.token)
        .await
        .ok()
        .map(|d| d.locale);
    let t = Lang::choose(locale.as_deref(), headers).texts();
    let secs = e.number("retry_after_secs").unwrap_or(86_400);
    let (jar, csrf) = csrf_token(state, jar);
    let mut notice = Notice::new(t, csrf, t.error_title, &t.locked(secs));
    notice.alert = true;
    let response = page(StatusCode::TOO_MANY_REQUESTS, &notice);
    (jar, with_retry_after(response, secs)).into_response()
}

/// `POST /guest/tickets/{id}/code`: "Send code".
pub async fn send_code(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
    CheckedForm(_): CheckedForm<ButtonForm>,
) -> Response {
    let t = Lang::choose(None, &headers).texts();
    let Some(mut link) = ticket_id_of(&raw_id).and_then(|id| link_of(&state, &jar, &id)) else {
        return no_link(&state, jar, &headers);
    };
    if let Err(secs) = state.limits.check(Limited::CodeRequest, client) {
        return slow_down(&state, jar, t, secs);
    }
    let caller = Caller {
        token: None,
        client,
    };
    match state.backend.request_code(caller, &link.token).await {
        Ok(sent) => {
            link.code_expires_at = sent.code_expires_at.map(|at| at.seconds);
            let jar = save_link(&state, jar, &link);
            let to = format!("/guest/tickets/{}", link.ticket_id);
            (jar, see_other(&to)).into_response()
        }
        Err(e) if e.is("RATE_LIMITED") => {
            let secs = e.number("retry_after_secs").unwrap_or(60);
            let error = (StatusCode::TOO_MANY_REQUESTS, VerifyError::Wait(secs));
            let response = verify_page(&state, jar, &headers, client, &link, Some(error)).await;
            with_retry_after(response, secs)
        }
        Err(e) if e.is("GUEST_ACCESS_LOCKED") => {
            locked(&state, jar, &headers, caller, &link, &e).await
        }
        Err(e) => dead_link(&state, jar, &headers, &link.ticket_id, &e),
    }
}

/// `POST /guest/tickets/{id}/verify`: the code from the email.
pub async fn verify_code(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
    CheckedForm(form): CheckedForm<CodeForm>,
) -> Response {
    let t = Lang::choose(None, &headers).texts();
    let Some(mut link) = ticket_id_of(&raw_id).and_then(|id| link_of(&state, &jar, &id)) else {
        return no_link(&state, jar, &headers);
    };
    let code: String = form.code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
        let error = (StatusCode::UNPROCESSABLE_ENTITY, VerifyError::NotSixDigits);
        return verify_page(&state, jar, &headers, client, &link, Some(error)).await;
    }
    if let Err(secs) = state.limits.check(Limited::CodeCheck, client) {
        return slow_down(&state, jar, t, secs);
    }
    let caller = Caller {
        token: None,
        client,
    };
    match state.backend.verify_code(caller, &link.token, &code).await {
        Ok(granted) if granted.ticket_id != link.ticket_id => {
            dead_link(&state, jar, &headers, &link.ticket_id, &foreign_link())
        }
        Ok(granted) => {
            let locale = match state.backend.describe_link(caller, &link.token).await {
                Ok(d) => d.locale,
                Err(_) => t.lang.to_owned(),
            };
            let session = GuestSession {
                ticket_id: link.ticket_id.clone(),
                token: granted.session_token,
                locale,
            };
            let lifetime = granted
                .session_expires_at
                .map_or(0, |at| at.seconds - Utc::now().timestamp())
                .max(60);
            let jar = jar
                .remove(state.cookies.removal(LINK))
                .add(state.cookies.make(
                    &guest_cookie(&link.ticket_id),
                    &session,
                    Some(time::Duration::seconds(lifetime)),
                ));
            let to = format!("/guest/tickets/{}", link.ticket_id);
            (jar, see_other(&to)).into_response()
        }
        Err(e) if e.is("CODE_REJECTED") && e.number("attempts_left") != Some(0) => {
            let left = e.metadata.get("attempts_left").cloned().unwrap_or_default();
            let error = (
                StatusCode::UNPROCESSABLE_ENTITY,
                VerifyError::Rejected(left),
            );
            verify_page(&state, jar, &headers, client, &link, Some(error)).await
        }
        Err(e)
            if e.is("CODE_REJECTED") || e.is("CODE_EXPIRED") || e.is("CODE_ATTEMPTS_EXHAUSTED") =>
        {
            // The code form goes; "Send code" is what is left to do.
            link.code_expires_at = None;
            let jar = save_link(&state, jar, &link);
            let error = if e.is("CODE_EXPIRED") {
                (StatusCode::GONE, VerifyError::Expired)
            } else {
                (StatusCode::TOO_MANY_REQUESTS, VerifyError::Exhausted)
            };
            verify_page(&state, jar, &headers, client, &link, Some(error)).await
        }
        Err(e) if e.is("GUEST_ACCESS_LOCKED") => {
            locked(&state, jar, &headers, caller, &link, &e).await
        }
        Err(e) if e.code == Code::InvalidArgument => {
            let error = (StatusCode::UNPROCESSABLE_ENTITY, VerifyError::NotSixDigits);
            verify_page(&state, jar, &headers, client, &link, Some(error)).await
        }
        Err(e) => dead_link(&state, jar, &headers, &link.ticket_id, &e),
    }
}

/// `POST /guest/tickets/{id}/reply`.
pub async fn reply(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
    CheckedForm(form): CheckedForm<ReplyForm>,
) -> Response {
    let Some(ticket_id) = ticket_id_of(&raw_id) else {
        return no_link(&state, jar, &headers);
    };
    let Some(session) = session_of(&state, &jar, &ticket_id) else {
        // Signed out or expired meanwhile: say so, and keep what they wrote.
        return session_ended(&state, jar, &headers, form.body);
    };
    let t = Lang::choose(Some(&session.locale), &headers).texts();
    if let Some((status, message)) = crate::pages::check_body(t, &form.body) {
        let error = Some((status, message, form.body));
        return render_current(&state, jar, &headers, client, &ticket_id, error).await;
    }
    let caller = Caller {
        token: Some(&session.token),
        client,
    };
    let request_id = crate::pages::request_id_of(&form.request_id);
    match state
        .backend
        .post_reply(caller, request_id, &ticket_id, &form.body)
        .await
    {
        Ok(_) => see_other(&format!("/guest/tickets/{ticket_id}#latest")),
        Err(e) if e.code == Code::Unauthenticated => {
            let jar = jar.remove(state.cookies.removal(&guest_cookie(&ticket_id)));
            session_ended(&state, jar, &headers, form.body)
        }
        Err(e) => match crate::pages::reply_refused(t, &e) {
            Some((status, message)) => {
                let error = Some((status, message, form.body));
                render_current(&state, jar, &headers, client, &ticket_id, error).await
            }
            None => unavailable(t, &e),
        },
    }
}

/// `POST /guest/tickets/{id}/fresh-link`: email a fresh link to the ticket's address. The
/// same answer whatever the link was.
pub async fn fresh_link(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
    CheckedForm(_): CheckedForm<ButtonForm>,
) -> Response {
    let t = Lang::choose(None, &headers).texts();
    let Some(link) = ticket_id_of(&raw_id).and_then(|id| link_of(&state, &jar, &id)) else {
        return no_link(&state, jar, &headers);
    };
    if let Err(secs) = state.limits.check(Limited::FreshLink, client) {
        return slow_down(&state, jar, t, secs);
    }
    let caller = Caller {
        token: None,
        client,
    };
    if let Err(e) = state.backend.send_fresh_link(caller, &link.token).await
        && e.code == Code::Unavailable
    {
        return unavailable(t, &e);
    }
    let jar = jar.remove(state.cookies.removal(LINK));
    let (jar, csrf) = csrf_token(&state, jar);
    let notice = Notice::new(t, csrf, t.fresh_link_sent_title, t.fresh_link_sent_body);
    (jar, page(StatusCode::OK, &notice)).into_response()
}

/// `POST /guest/sign-out`.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: PrivateCookieJar,
    CheckedForm(_): CheckedForm<ButtonForm>,
) -> Response {
    let t = Lang::choose(None, &headers).texts();
    // Every ticket's session in this browser.
    let jar = state
        .cookies
        .remove_all(jar, GUEST)
        .remove(state.cookies.removal(LINK));
    let (jar, csrf) = csrf_token(&state, jar);
    let notice = Notice::new(t, csrf, t.signed_out_title, t.signed_out_body);
    (jar, page(StatusCode::OK, &notice)).into_response()
}
