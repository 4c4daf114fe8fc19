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
    let mailer = spawn_mailer(&app, &portal).await;
    PortalStack {
        app,
        portal,
        mailer,
    }
}

pub const OIDC_CLIENT_ID: &str = "tidings-portal";
pub const OIDC_CLIENT_SECRET: &str = "portal-client-secret";
pub const API_AUDIENCE: &str = "tidings-api";

/// The stack with customer sign-in, wired as a deployment would be: an OpenID Connect
/// provider (the double) issues RS256 access tokens for the API, the ticket service accepts
/// exactly those (`TIDINGS_JWT_ALGORITHM=RS256` with the provider's key, issuer and audience),
/// and the portal signs customers in against the provider.
pub struct SignInStack {
    pub app: TestApp,
    pub portal: TestPortal,
    pub mailer: TestDispatcher,
    pub oidc: tidings_oidc_double::OidcDouble,
    _key_dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("tidings-oidc-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl SignInStack {
    /// An access token for an agent, from the same provider.
    pub fn agent_token(&self, sub: &str, name: &str) -> String {
        self.oidc.access_token(&tidings_oidc_double::Identity {
            sub: sub.to_owned(),
            email: format!("{sub}@support.example"),
            name: name.to_owned(),
            locale: "en".to_owned(),
            role: "agent".to_owned(),
        })
    }
}

pub async fn sign_in_stack() -> SignInStack {
    let port = crate::free_port();
    let public_url = format!("http://127.0.0.1:{port}");
    let oidc = tidings_oidc_double::OidcDouble::start(
        "127.0.0.1:0".parse().unwrap(),
        tidings_oidc_double::Settings {
            client_id: OIDC_CLIENT_ID.to_owned(),
            client_secret: OIDC_CLIENT_SECRET.to_owned(),
            redirect_uris: vec![format!("{public_url}/oidc/callback")],
            api_audience: API_AUDIENCE.to_owned(),
            access_token_key: tidings_oidc_double::AccessTokenKey::Rs256,
            token_ttl: Duration::from_secs(3600),
        },
    )
    .await
    .expect("oidc double starts");
    let key_dir = tempdir::Dir::new();
    let pem = key_dir.0.join("idp.pem");
    std::fs::write(&pem, oidc.public_key_pem()).expect("write the provider's key");
    let app = crate::spawn_app_with(crate::SpawnOptions {
        vars: vec![
            ("TIDINGS_JWT_ALGORITHM", "RS256".to_owned()),
            ("TIDINGS_JWT_PUBLIC_KEY_FILE", pem.display().to_string()),
            ("TIDINGS_JWT_ISSUER", oidc.issuer().to_owned()),
            ("TIDINGS_JWT_AUDIENCE", API_AUDIENCE.to_owned()),
        ],
        ..Default::default()
    })
    .await;
    let portal = spawn_portal(
        &app,
        vec![
            ("TIDINGS_PORTAL_ADDR", format!("127.0.0.1:{port}")),
            ("TIDINGS_PORTAL_PUBLIC_URL", public_url),
            ("TIDINGS_OIDC_ISSUER", oidc.issuer().to_owned()),
            ("TIDINGS_OIDC_CLIENT_ID", OIDC_CLIENT_ID.to_owned()),
            ("TIDINGS_OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET.to_owned()),
        ],
    )
    .await;
    let mailer = spawn_mailer(&app, &portal).await;
    SignInStack {
        app,
        portal,
        mailer,
        oidc,
        _key_dir: key_dir,
    }
}

/// An email dispatcher for `app` mailing to the shared MailDev, its links to `portal`.
async fn spawn_mailer(app: &TestApp, portal: &TestPortal) -> TestDispatcher {
    let mut options = DispatcherOptions::new(shared_smtp(), app);
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
    spawn_dispatcher(options).await
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

    /// Signs in through the provider's "sign in as" form, starting from `path` (a page that
    /// needs a customer); returns the page the portal then shows.
    pub async fn sign_in_from(&self, path: &str, who: &tidings_oidc_double::Identity) -> Page {
        let to_sign_in = self.get(path).await;
        assert_eq!(to_sign_in.status, 303, "{path} asks for a sign-in");
        let to_provider = self.follow(&to_sign_in).await;
        let signed_in = self.sign_in_at_provider(&to_provider, who).await;
        assert_eq!(
            signed_in.status, 303,
            "the callback signs in: {}",
            signed_in.body
        );
        self.follow(&signed_in).await
    }

    /// From the portal's redirect to the provider, through its form, to the portal's
    /// callback; returns the callback's answer.
    pub async fn sign_in_at_provider(
        &self,
        to_provider: &Page,
        who: &tidings_oidc_double::Identity,
    ) -> Page {
        assert_eq!(to_provider.status, 303, "{}", to_provider.body);
        let form = self.follow(to_provider).await;
        assert_eq!(form.status, 200, "{}", form.body);
        let authorize = to_provider
            .location()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        let mut fields: Vec<(&str, String)> = [
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
        ]
        .iter()
        .map(|name| (*name, html_unescape(&form.hidden(name))))
        .collect();
        fields.extend([
            ("sub", who.sub.clone()),
            ("email", who.email.clone()),
            ("name", who.name.clone()),
            ("locale", who.locale.clone()),
        ]);
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let back = self.post(&authorize, &fields).await;
        assert_eq!(back.status, 303, "{}", back.body);
        self.follow(&back).await
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

fn html_unescape(raw: &str) -> String {
    raw.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A customer of the provider.
pub fn customer_identity(sub: &str, email: &str, locale: &str) -> tidings_oidc_double::Identity {
    tidings_oidc_double::Identity {
        sub: sub.to_owned(),
        email: email.to_owned(),
        name: format!("{sub} (customer)"),
        locale: locale.to_owned(),
        role: String::new(),
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
