//! Signed-in customers: sign-in with OpenID Connect, "My tickets", their ticket pages (the
//! address their emails link to), replies and new tickets. Every call to the ticket service
//! carries the customer's access token from the provider.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::PrivateCookieJar;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use serde::Deserialize;
use tidings_proto::ticket::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::backend::Caller;
use crate::i18n::{Lang, Texts};
use crate::oidc::{Pending, SignedIn};
use crate::pages::{
    Notice, TicketRow, TicketsPage, check_body, request_id_of, slow_down, status_badge,
    ticket_page, times, unavailable,
};
use crate::requests::{NewTicketForm, form_page, invalid};
use crate::web::{
    AppState, CUSTOMER, CheckedForm, Chrome, ClientAddr, GUEST, LINK, Limited, SIGN_IN, csrf_token,
    page, see_other,
};

const SIGN_OUT: &str = "/sign-out";
const SIGN_IN_MINUTES: i64 = 10;
const PAGE_SIZE: u32 = 20;

pub(crate) fn signed_in(state: &AppState, jar: &PrivateCookieJar) -> Option<SignedIn> {
    state
        .cookies
        .read::<SignedIn>(jar, CUSTOMER)
        .filter(|s| s.expires_at > Utc::now().timestamp())
}

fn lang_of(session: &SignedIn, headers: &HeaderMap) -> &'static Texts {
    Lang::choose(Some(&session.locale), headers).texts()
}

/// A path of ours to come back to after signing in; anything else (another site, a scheme,
/// `//host`) becomes "My tickets".
fn local_path(raw: Option<&str>) -> String {
    match raw {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.chars().any(char::is_control) =>
        {
            p.to_owned()
        }
        _ => "/tickets".to_owned(),
    }
}

/// Not signed in (or the session ran out): to the sign-in, and back here afterwards.
fn to_sign_in(return_to: &str) -> Response {
    see_other(&sign_in_href(return_to))
}

/// Characters a path keeps in a query value: the unreserved ones and `/`.
const PATH_IN_QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The sign-in that comes back to `return_to`.
fn sign_in_href(return_to: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(return_to, PATH_IN_QUERY);
    format!("/sign-in?return_to={encoded}")
}

fn notice(
    state: &AppState,
    jar: PrivateCookieJar,
    t: &'static Texts,
    status: StatusCode,
    title: &str,
    body: &str,
) -> Response {
    let (jar, csrf) = csrf_token(state, jar);
    let mut notice = Notice::new(t, csrf, title, body);
    notice.alert = status.is_client_error() || status.is_server_error();
    (jar, page(status, &notice)).into_response()
}

#[derive(Deserialize)]
pub struct SignInQuery {
    return_to: Option<String>,
}

/// `GET /sign-in`: to the provider, with state, nonce and a PKCE challenge.
pub async fn sign_in(
    State(state): State<AppState>,
    Query(query): Query<SignInQuery>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Response {
    let t = Lang::choose(None, &headers).texts();
    let Some(oidc) = &state.oidc else {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        return notice(&state, jar, t, status, t.error_title, t.sign_in_unavailable);
    };
    if let Err(secs) = state.limits.check(Limited::SignIn, client) {
        return slow_down(&state, jar, t, secs);
    }
    match oidc.begin(local_path(query.return_to.as_deref())).await {
        Ok((url, pending)) => {
            let cookie = state.cookies.make(
                SIGN_IN,
                &pending,
                Some(time::Duration::minutes(SIGN_IN_MINUTES)),
            );
            (jar.add(cookie), see_other(&url)).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "sign-in could not start");
            let status = StatusCode::SERVICE_UNAVAILABLE;
            notice(&state, jar, t, status, t.error_title, t.sign_in_unavailable)
        }
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /oidc/callback`: the provider's answer. The state must be the one this browser was
/// sent with; the code is exchanged with the PKCE verifier and the ID token checked.
pub async fn callback(
    State(state): State<AppState>,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Response {
    let t = Lang::choose(None, &headers).texts();
    let pending = state.cookies.read::<Pending>(&jar, SIGN_IN);
    let jar = jar.remove(state.cookies.removal(SIGN_IN));
    let failed = |jar, why: &str| {
        tracing::info!(reason = why, "sign-in failed");
        notice(
            &state,
            jar,
            t,
            StatusCode::BAD_REQUEST,
            t.error_title,
            t.sign_in_failed,
        )
    };
    let (Some(oidc), Some(pending)) = (&state.oidc, pending) else {
        return failed(jar, "no sign-in under way in this browser");
    };
    if let Some(error) = query.error {
        return failed(jar, &format!("the provider answered {error}"));
    }
    let (Some(code), Some(returned)) = (query.code, query.state) else {
        return failed(jar, "no code or state");
    };
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        returned.as_bytes(),
        pending.state.as_bytes(),
    )) {
        return failed(jar, "the state differs");
    }
    let return_to = pending.return_to.clone();
    match oidc.finish(&code, pending).await {
        Ok(session) => {
            let lifetime = (session.expires_at - Utc::now().timestamp()).max(60);
            let cookie =
                state
                    .cookies
                    .make(CUSTOMER, &session, Some(time::Duration::seconds(lifetime)));
            // A guest session in the same browser is not the customer's: drop it.
            let jar = state
                .cookies
                .remove_all(jar, GUEST)
                .remove(state.cookies.removal(LINK))
                .add(cookie);
            (jar, see_other(&return_to)).into_response()
        }
        Err(e) => failed(jar, &e.to_string()),
    }
}

/// `POST /sign-out`.
pub async fn sign_out(
    State(state): State<AppState>,
    jar: PrivateCookieJar,
    CheckedForm(_): CheckedForm<crate::guest::ButtonForm>,
) -> Response {
    let jar = jar.remove(state.cookies.removal(CUSTOMER));
    see_other_with(jar, "/")
}

fn see_other_with(jar: PrivateCookieJar, to: &str) -> Response {
    (jar, see_other(to)).into_response()
}

#[derive(Deserialize)]
pub struct ListQuery {
    page: Option<String>,
}

/// `GET /tickets`: My tickets, open and closed, newest activity first, 20 a page.
pub async fn my_tickets(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Response {
    let Some(session) = signed_in(&state, &jar) else {
        return to_sign_in("/tickets");
    };
    let t = lang_of(&session, &headers);
    // Page tokens travel base64url-encoded, so they are safe in a query string.
    let page_token = query
        .page
        .as_deref()
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .unwrap_or_default();
    let caller = Caller {
        token: Some(&session.token),
        client,
    };
    let listed = state
        .backend
        .list_tickets(caller, PAGE_SIZE, page_token.clone())
        .await;
    let listed = match listed {
        Ok(listed) => listed,
        Err(e) if e.code == Code::Unauthenticated => {
            return (
                jar.remove(state.cookies.removal(CUSTOMER)),
                to_sign_in("/tickets"),
            )
                .into_response();
        }
        Err(e) if e.code == Code::InvalidArgument => {
            // A stale or edited page token: start from the newest.
            return see_other("/tickets");
        }
        Err(e) => return unavailable(t, &e),
    };
    let tickets = listed
        .tickets
        .iter()
        .map(|ticket| {
            let (status_label, status_class) = status_badge(t, ticket.status);
            let (time_iso, time_text) = times(ticket.last_activity_at.as_ref());
            TicketRow {
                id: ticket.ticket_id.clone(),
                subject: ticket.subject.clone(),
                number_label: t.ticket_number(ticket.ticket_number),
                status_label,
                status_class,
                time_iso,
                time_text,
            }
        })
        .collect();
    let (jar, csrf) = csrf_token(&state, jar);
    let body = TicketsPage {
        chrome: Chrome {
            t,
            csrf,
            sign_out: Some(SIGN_OUT),
        },
        title: t.my_tickets,
        tickets,
        paged: !page_token.is_empty(),
        next_page: (!listed.next_page_token.is_empty())
            .then(|| URL_SAFE_NO_PAD.encode(listed.next_page_token.as_bytes())),
    };
    (jar, page(StatusCode::OK, &body)).into_response()
}

/// `GET /tickets/{id}`: the page a customer's email links to.
pub async fn show(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Response {
    let Ok(id) = Uuid::parse_str(&raw_id).map(|id| id.to_string()) else {
        return crate::pages::not_found(headers).await;
    };
    render(&state, jar, &headers, client, &id, None).await
}

async fn render(
    state: &AppState,
    jar: PrivateCookieJar,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    ticket_id: &str,
    reply_error: Option<(StatusCode, &'static str, String)>,
) -> Response {
    let here = format!("/tickets/{ticket_id}");
    let Some(session) = signed_in(state, &jar) else {
        return to_sign_in(&here);
    };
    let t = lang_of(&session, headers);
    let caller = Caller {
        token: Some(&session.token),
        client,
    };
    match state.backend.get_ticket(caller, ticket_id).await {
        Ok(ticket) => {
            let (jar, csrf) = csrf_token(state, jar);
            let chrome = Chrome {
                t,
                csrf,
                sign_out: Some(SIGN_OUT),
            };
            let (status, error, draft) = match reply_error {
                Some((status, message, draft)) => (status, Some(message), draft),
                None => (StatusCode::OK, None, String::new()),
            };
            let action = format!("{here}/reply");
            (
                jar,
                ticket_page(status, chrome, &ticket, action, error, draft),
            )
                .into_response()
        }
        Err(e) if e.code == Code::Unauthenticated => (
            jar.remove(state.cookies.removal(CUSTOMER)),
            to_sign_in(&here),
        )
            .into_response(),
        // Unknown and someone else's look the same.
        Err(e) if matches!(e.code, Code::NotFound | Code::PermissionDenied) => notice(
            state,
            jar,
            t,
            StatusCode::NOT_FOUND,
            t.error_title,
            t.not_found,
        ),
        Err(e) => unavailable(t, &e),
    }
}

/// `POST /tickets/{id}/reply`.
pub async fn reply(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
    CheckedForm(form): CheckedForm<crate::guest::ReplyForm>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&raw_id).map(|id| id.to_string()) else {
        return crate::pages::not_found(headers).await;
    };
    let here = format!("/tickets/{id}");
    let Some(session) = signed_in(&state, &jar) else {
        // A POST is never redirected to the provider (the CSP's form-action would stop it
        // there): say so, with a way to sign in, and keep the text.
        return signed_out_post(&state, jar, &headers, &here, form.body);
    };
    let t = lang_of(&session, &headers);
    if let Some((status, message)) = check_body(t, &form.body) {
        let error = Some((status, message, form.body));
        return render(&state, jar, &headers, client, &id, error).await;
    }
    let caller = Caller {
        token: Some(&session.token),
        client,
    };
    let request_id = request_id_of(&form.request_id);
    match state
        .backend
        .post_reply(caller, request_id, &id, &form.body)
        .await
    {
        Ok(_) => see_other(&format!("{here}#latest")),
        Err(e) if e.code == Code::Unauthenticated => {
            let jar = jar.remove(state.cookies.removal(CUSTOMER));
            signed_out_post(&state, jar, &headers, &here, form.body)
        }
        Err(e) if matches!(e.code, Code::NotFound | Code::PermissionDenied) => notice(
            &state,
            jar,
            t,
            StatusCode::NOT_FOUND,
            t.error_title,
            t.not_found,
        ),
        Err(e) => match crate::pages::reply_refused(t, &e) {
            Some((status, message)) => {
                let error = Some((status, message, form.body));
                render(&state, jar, &headers, client, &id, error).await
            }
            None => unavailable(t, &e),
        },
    }
}

/// A form posted by a customer whose session ended: 401, a link to sign in and come back,
/// and what they wrote.
fn signed_out_post(
    state: &AppState,
    jar: PrivateCookieJar,
    headers: &HeaderMap,
    back_to: &str,
    draft: String,
) -> Response {
    let t = Lang::choose(None, headers).texts();
    let (jar, csrf) = csrf_token(state, jar);
    let mut notice = Notice::new(t, csrf, t.error_title, t.session_ended_customer);
    notice.alert = true;
    notice.draft = draft;
    notice.link_href = Some(sign_in_href(back_to));
    notice.link_label = t.sign_in_again;
    (jar, page(StatusCode::UNAUTHORIZED, &notice)).into_response()
}

/// `GET /tickets/new`.
pub async fn new_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Response {
    let Some(session) = signed_in(&state, &jar) else {
        return to_sign_in("/tickets/new");
    };
    let t = lang_of(&session, &headers);
    let form = NewTicketForm {
        request_id: Uuid::new_v4().to_string(),
        ..NewTicketForm::default()
    };
    form_page(&state, jar, t, StatusCode::OK, form, [None; 3], false)
}

/// `POST /tickets/new`: a ticket as the signed-in customer, then its page.
pub async fn submit(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
    CheckedForm(form): CheckedForm<NewTicketForm>,
) -> Response {
    let Some(session) = signed_in(&state, &jar) else {
        return signed_out_post(&state, jar, &headers, "/tickets/new", form.body);
    };
    let t = lang_of(&session, &headers);
    if let Some((status, errors)) = invalid(t, &form, false) {
        return form_page(&state, jar, t, status, form, errors, false);
    }
    let request = pb::OpenTicketRequest {
        request_id: request_id_of(&form.request_id),
        subject: form.subject.trim().to_owned(),
        body: form.body.clone(),
        guest: None,
    };
    let caller = Caller {
        token: Some(&session.token),
        client,
    };
    match state.backend.open_ticket(caller, request).await {
        Ok(opened) => see_other(&format!("/tickets/{}", opened.ticket_id)),
        Err(e) if e.code == Code::InvalidArgument => {
            let errors = match e.message.split(':').next() {
                Some("body") => [None, Some(t.reply_empty), None],
                _ => [Some(t.subject_empty), None, None],
            };
            form_page(
                &state,
                jar,
                t,
                StatusCode::UNPROCESSABLE_ENTITY,
                form,
                errors,
                false,
            )
        }
        Err(e) if e.code == Code::Unauthenticated => {
            let jar = jar.remove(state.cookies.removal(CUSTOMER));
            signed_out_post(&state, jar, &headers, "/tickets/new", form.body)
        }
        Err(e) => unavailable(t, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn only_local_paths_are_returned_to() {
        // Given return targets, then only paths on the portal are kept.
        assert_eq!(local_path(Some("/tickets/abc")), "/tickets/abc");
        for bad in [
            None,
            Some("https://evil.example/"),
            Some("//evil.example/x"),
            Some("/\\evil.example"),
            Some("tickets"),
            Some("/a\nb"),
        ] {
            assert_eq!(local_path(bad), "/tickets", "{bad:?}");
        }
    }
}
