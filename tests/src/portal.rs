//! Portal test helpers: the portal in-process on port 0 in front of a test's ticket service,
//! and a cookie-keeping browser stand-in (reqwest) that does not follow redirects, so a test
//! sees every redirect target.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION};
use reqwest::redirect::Policy;

use crate::TestApp;
use crate::mail::{
    DispatcherOptions, Received, TestDispatcher, shared_maildev, shared_smtp, spawn_dispatcher,
};

pub const COOKIE_KEY: &str = "cG9ydGFsLWNvb2tpZS1rZXktcG9ydGFsLWNvb2tpZS1rZXktcG9ydGFsLWNvb2tpZS1rZXktcG9ydGFsLWNvb2tpZS1rZXkt";

pub struct TestPortal {
    pub app: Option<portal::Application>,
    pub base: String,
}

/// The portal's environment for a test: what an operator would set.
pub fn portal_vars(ticket_service: std::net::SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("TIDINGS_PORTAL_ADDR", "127.0.0.1:0".to_owned()),
        ("TIDINGS_PORTAL_ADMIN_ADDR", "off".to_owned()),
        (
            "TIDINGS_TICKET_SERVICE_URL",
            format!("http://{ticket_service}"),
        ),
        ("TIDINGS_PORTAL_COOKIE_KEY", COOKIE_KEY.to_owned()),
        // Tests post many forms from one address; the limit tests set their own.
        ("TIDINGS_PORTAL_CODE_REQUESTS_PER_HOUR", "10000".to_owned()),
        ("TIDINGS_PORTAL_CODE_CHECKS_PER_HOUR", "10000".to_owned()),
        ("TIDINGS_PORTAL_GUEST_TICKETS_PER_HOUR", "10000".to_owned()),
        ("TIDINGS_PORTAL_FRESH_LINKS_PER_HOUR", "10000".to_owned()),
    ]
}

pub async fn spawn_portal(app: &TestApp, extra: Vec<(&'static str, String)>) -> TestPortal {
    tidings_telemetry::init_tracing(false);
    let mut vars: HashMap<&str, String> = portal_vars(app.addr).into_iter().collect();
    vars.extend(extra);
    let env = tidings_config::Env::with_lookup(move |k| vars.get(k).cloned());
    let config = portal::Config::load(env).expect("test portal configuration is valid");
    let portal = portal::Application::build(config)
        .await
        .expect("portal starts");
    let base = format!("http://{}", portal.http_addr());
    TestPortal {
        app: Some(portal),
        base,
    }
}

/// The whole customer-facing stack of a test: ticket service, portal, and an email
/// dispatcher mailing to the shared MailDev with links to this portal.
pub struct PortalStack {
    pub app: TestApp,
    pub portal: TestPortal,
    pub mailer: TestDispatcher,
}

pub async fn portal_stack() -> PortalStack {
    let app = crate::spawn_app().await;
    let portal = spawn_portal(&app, vec![]).await;
    let mut options = DispatcherOptions::new(shared_smtp(), &app);
    options.extra = vec![
        (
            "TIDINGS_GUEST_TICKET_URL",
            format!("{}/guest/tickets/{{ticket_id}}?link={{token}}", portal.base),
        ),
        (
            "TIDINGS_CUSTOMER_TICKET_URL",
            format!("{}/tickets/{{ticket_id}}", portal.base),
        ),
    ];
    let mailer = spawn_dispatcher(options).await;
    PortalStack {
        app,
        portal,
        mailer,
    }
}

/// One response, read whole.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> Option<&str> {
        self.headers.get(LOCATION)?.to_str().ok()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The value of the hidden input `name` (the first one).
    pub fn hidden(&self, name: &str) -> String {
        let needle = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&needle)
            .unwrap_or_else(|| panic!("no hidden {name} in:\n{}", self.body))
            + needle.len();
        let end = self.body[start..].find('"').expect("closing quote") + start;
        self.body[start..end].to_owned()
    }

    pub fn assert_contains(&self, text: &str) {
        assert!(
            self.body.contains(text),
            "{text:?} not on the page ({}):\n{}",
            self.status,
            self.body
        );
    }
}

/// A browser stand-in: keeps cookies, follows nothing by itself.
pub struct Visitor {
    pub http: reqwest::Client,
    pub base: String,
}

impl Visitor {
    pub fn new(portal: &TestPortal) -> Self {
        Self::with_language(portal, "en")
    }

    pub fn with_language(portal: &TestPortal, accept_language: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT_LANGUAGE,
            accept_language.parse().expect("header value"),
        );
        Visitor {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(Policy::none())
                .default_headers(headers)
                .timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
            base: portal.base.clone(),
        }
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        }
    }

    async fn read(response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("response body");
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path_or_url: &str) -> Page {
        Self::read(
            self.http
                .get(self.url(path_or_url))
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        Self::read(
            self.http
                .post(self.url(path))
                .form(form)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    /// The browser's CSRF token, as any form of the portal carries it.
    pub async fn csrf(&self) -> String {
        self.get("/requests/new").await.hidden("csrf")
    }

    /// Follows a redirect (303 after a POST, or the link's move to a clean URL).
    pub async fn follow(&self, page: &Page) -> Page {
        let to = page
            .location()
            .unwrap_or_else(|| panic!("expected a redirect, got {}:\n{}", page.status, page.body));
        self.get(to).await
    }
}

/// The guest link in a notification mail.
pub fn link_in(mail: &Received) -> String {
    let text = mail.text();
    let start = text.find("http").expect("a link in the mail");
    text[start..]
        .split_whitespace()
        .next()
        .expect("link")
        .trim_end_matches(['>', ')', '.'])
        .to_owned()
}

/// The 6-digit code in a code mail.
pub fn code_in(mail: &Received) -> String {
    mail.text()
        .split_whitespace()
        .find(|w| w.len() == 6 && w.chars().all(|c| c.is_ascii_digit()))
        .expect("a 6-digit code in the mail")
        .to_owned()
}

/// The newest mail to `address` whose subject starts with `subject`, waiting for it.
pub async fn mail_starting(address: &str, subject: &str, nth: usize) -> Received {
    crate::eventually(
        Duration::from_secs(30),
        &format!("mail {nth} {subject:?} to {address}"),
        || async {
            let mut found: Vec<Received> = shared_maildev()
                .to(address)
                .await
                .into_iter()
                .filter(|m| m.subject.starts_with(subject))
                .collect();
            (found.len() >= nth).then(|| found.swap_remove(nth - 1))
        },
    )
    .await
}
