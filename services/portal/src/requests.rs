//! "Submit a request" without signing in: a guest ticket, whose first mail carries the link.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::PrivateCookieJar;
use serde::Deserialize;
use tidings_proto::ticket::v1 as pb;
use tonic::Code;

use crate::backend::Caller;
use crate::i18n::{Lang, Texts};
use crate::pages::{
    BODY_MAX_CHARS, HomePage, NewTicketPage, Notice, SUBJECT_MAX_CHARS, check_body, request_id_of,
    slow_down, unavailable,
};
use crate::web::{AppState, CheckedForm, Chrome, ClientAddr, Limited, csrf_token, page, see_other};

#[derive(Deserialize, Default)]
pub struct NewTicketForm {
    #[serde(default)]
    pub(crate) csrf: String,
    #[serde(default)]
    pub(crate) request_id: String,
    #[serde(default)]
    pub(crate) subject: String,
    #[serde(default)]
    pub(crate) body: String,
    #[serde(default)]
    pub(crate) email: String,
    #[serde(default)]
    pub(crate) language: String,
    /// The honeypot: hidden from people, filled in by form-filling bots.
    #[serde(default)]
    pub(crate) website: String,
}

impl crate::web::CsrfForm for NewTicketForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    fn draft(&self) -> Option<&str> {
        Some(&self.body)
    }
}

/// `GET /`.
pub async fn home(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Response {
    let session = crate::customer::signed_in(&state, &jar);
    let locale = session.as_ref().map(|s| s.locale.as_str());
    let t = Lang::choose(locale, &headers).texts();
    let (jar, csrf) = csrf_token(&state, jar);
    let body = HomePage {
        chrome: Chrome {
            t,
            csrf,
            sign_out: session.is_some().then_some("/sign-out"),
        },
        title: t.home_title,
        signed_in: session.is_some(),
        sign_in_enabled: state.oidc.is_some(),
    };
    (jar, page(StatusCode::OK, &body)).into_response()
}

/// The new-ticket form: a guest's ("Submit a request") or a signed-in customer's.
pub(crate) fn form_page(
    state: &AppState,
    jar: PrivateCookieJar,
    t: &'static Texts,
    status: StatusCode,
    form: NewTicketForm,
    errors: [Option<&'static str>; 3],
    guest: bool,
) -> Response {
    let (jar, csrf) = csrf_token(state, jar);
    let [subject_error, body_error, email_error] = errors;
    let language = Lang::of_locale(&form.language)
        .unwrap_or_else(|| Lang::of_locale(t.lang).unwrap_or(Lang::En))
        .texts()
        .lang
        .to_owned();
    let body = NewTicketPage {
        chrome: Chrome {
            t,
            csrf,
            sign_out: (!guest).then_some("/sign-out"),
        },
        title: if guest {
            t.new_ticket_title
        } else {
            t.new_ticket
        },
        guest,
        action: if guest {
            "/requests/new"
        } else {
            "/tickets/new"
        },
        submit_label: if guest { t.submit_request } else { t.send },
        has_errors: errors.iter().any(Option::is_some),
        subject: form.subject,
        subject_error,
        body: form.body,
        body_error,
        email: form.email,
        email_error,
        language,
        request_id: form.request_id,
        subject_max: SUBJECT_MAX_CHARS,
        body_max: BODY_MAX_CHARS,
    };
    (jar, page(status, &body)).into_response()
}

/// `GET /requests/new`.
pub async fn new_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Response {
    let t = Lang::choose(None, &headers).texts();
    let form = NewTicketForm {
        request_id: uuid::Uuid::new_v4().to_string(),
        ..NewTicketForm::default()
    };
    form_page(&state, jar, t, StatusCode::OK, form, [None; 3], true)
}

/// A plausible address: one `@`, something on both sides, a dot in the domain. The ticket
/// service decides; this only gives the field's message without a round trip.
fn plausible_email(raw: &str) -> bool {
    let raw = raw.trim();
    match raw.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !raw.chars().any(char::is_whitespace)
                && !domain.contains('@')
        }
        None => false,
    }
}

/// The form's problems, field by field (subject, description, address), and the status to
/// answer with; `None` when it can be sent.
pub(crate) fn invalid(
    t: &'static Texts,
    form: &NewTicketForm,
    guest: bool,
) -> Option<(StatusCode, [Option<&'static str>; 3])> {
    let subject_error = if form.subject.trim().is_empty() {
        Some(t.subject_empty)
    } else if form.subject.chars().count() > SUBJECT_MAX_CHARS {
        Some(t.too_long)
    } else {
        None
    };
    let body_check = check_body(t, &form.body);
    let email_error = (guest && !plausible_email(&form.email)).then_some(t.email_invalid);
    if subject_error.is_none() && body_check.is_none() && email_error.is_none() {
        return None;
    }
    let status = body_check.map_or(StatusCode::UNPROCESSABLE_ENTITY, |(s, _)| s);
    Some((
        status,
        [subject_error, body_check.map(|(_, m)| m), email_error],
    ))
}

/// `POST /requests/new`.
pub async fn submit(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    jar: PrivateCookieJar,
    CheckedForm(form): CheckedForm<NewTicketForm>,
) -> Response {
    let t = Lang::choose(None, &headers).texts();
    if !form.website.is_empty() {
        // A bot: answer as if it worked, open nothing.
        tracing::info!(%client, "honeypot field filled; request dropped");
        return see_other("/requests/sent");
    }
    if let Some((status, errors)) = invalid(t, &form, true) {
        return form_page(&state, jar, t, status, form, errors, true);
    }
    if let Err(secs) = state.limits.check(Limited::GuestTicket, client) {
        return slow_down(&state, jar, t, secs);
    }
    let locale = Lang::of_locale(&form.language)
        .unwrap_or(Lang::En)
        .texts()
        .lang;
    let request = pb::OpenTicketRequest {
        request_id: request_id_of(&form.request_id),
        subject: form.subject.trim().to_owned(),
        body: form.body.clone(),
        guest: Some(pb::GuestRequester {
            email: form.email.trim().to_owned(),
            locale: locale.to_owned(),
        }),
    };
    let caller = Caller {
        token: None,
        client,
    };
    match state.backend.open_ticket(caller, request).await {
        Ok(_) => see_other("/requests/sent"),
        Err(e) if e.code == Code::InvalidArgument => {
            // The service names the field: `email: …`, `subject: …`, `body: …`.
            let errors = match e.message.split(':').next() {
                Some("subject") => [Some(t.subject_empty), None, None],
                Some("body") => [None, Some(t.reply_empty), None],
                _ => [None, None, Some(t.email_invalid)],
            };
            form_page(
                &state,
                jar,
                t,
                StatusCode::UNPROCESSABLE_ENTITY,
                form,
                errors,
                true,
            )
        }
        Err(e) if e.code == Code::ResourceExhausted => {
            // The ticket service's throttle says how long in its `retry-after`.
            let secs = e.number("retry_after_secs").unwrap_or(3600);
            slow_down(&state, jar, t, secs)
        }
        Err(e) => unavailable(t, &e),
    }
}

/// `GET /requests/sent`: "Check your email".
pub async fn sent(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Response {
    let t = Lang::choose(None, &headers).texts();
    let (jar, csrf) = csrf_token(&state, jar);
    let notice = Notice::new(t, csrf, t.check_email_title, t.check_email_body);
    (jar, page(StatusCode::OK, &notice)).into_response()
}

#[cfg(test)]
mod tests {
    use super::plausible_email;

    #[test]
    fn plausible_addresses() {
        // Given typed addresses, then only plausible ones pass the form's own check.
        for ok in ["a@b.example", "giulia.rossi+x@example.com"] {
            assert!(plausible_email(ok), "{ok}");
        }
        for bad in [
            "",
            "nobody",
            "a@b",
            "@b.example",
            "a@.example",
            "a b@c.example",
            "a@b@c.example",
        ] {
            assert!(!plausible_email(bad), "{bad}");
        }
    }
}
