//! What every page shares: the state, cookies, CSRF tokens, the client's address, rate
//! limits, rendering, and the security headers of every response.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, Key, PrivateCookieJar, SameSite};
use base64::Engine;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Serialize, de::DeserializeOwned};
use subtle::ConstantTimeEq;

use crate::backend::Backend;
use crate::config::{Config, LimitSettings};
use crate::i18n::Texts;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub backend: Backend,
    pub key: Key,
    pub cookies: CookieNames,
    pub limits: Limits,
    pub trust_forwarded_for: bool,
    /// Customer sign-in, when configured.
    pub oidc: Option<crate::oidc::Oidc>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Key {
        state.key.clone()
    }
}

impl AppState {
    pub fn new(config: &Config, backend: Backend) -> anyhow::Result<Self> {
        let oidc = config
            .oidc
            .clone()
            .map(crate::oidc::Oidc::new)
            .transpose()?;
        Ok(AppState(Arc::new(Shared {
            backend,
            key: Key::from(&config.cookie_key_bytes()),
            cookies: CookieNames {
                secure: config.secure_cookies(),
            },
            limits: Limits::new(config.limits),
            trust_forwarded_for: config.trust_forwarded_for,
            oidc,
        })))
    }
}

// ---- cookies ----

/// Cookie names and attributes. Every cookie is encrypted and authenticated (the private jar,
/// AES-256-GCM), HttpOnly, SameSite=Lax and `Path=/`; over TLS also `Secure` with the
/// `__Host-` prefix, which a subdomain or plain-HTTP page cannot set or overwrite.
pub struct CookieNames {
    secure: bool,
}

/// The CSRF token of a browser.
pub const CSRF: &str = "tidings_csrf";
/// The guest's link token, moved out of the URL: short-lived.
pub const LINK: &str = "tidings_link";
/// The guest sessions, one cookie per ticket (`tidings_guest_<ticket>`), each for its session
/// token's lifetime.
pub const GUEST: &str = "tidings_guest";
/// A sign-in under way (state, nonce, PKCE verifier): ten minutes.
pub const SIGN_IN: &str = "tidings_sign_in";
/// A signed-in customer: the provider's access token, for its lifetime.
pub const CUSTOMER: &str = "tidings_customer";

impl CookieNames {
    pub fn name(&self, base: &str) -> String {
        if self.secure {
            format!("__Host-{base}")
        } else {
            base.to_owned()
        }
    }

    /// A cookie holding `value` as JSON, for `max_age` (a browser-session cookie if `None`).
    pub fn make<T: Serialize>(
        &self,
        base: &str,
        value: &T,
        max_age: Option<time::Duration>,
    ) -> Cookie<'static> {
        let json = serde_json::to_string(value).expect("cookie values serialize");
        let mut cookie = Cookie::build((self.name(base), json))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax);
        if let Some(age) = max_age {
            cookie = cookie.max_age(age);
        }
        cookie.build()
    }

    pub fn read<T: DeserializeOwned>(&self, jar: &PrivateCookieJar, base: &str) -> Option<T> {
        serde_json::from_str(jar.get(&self.name(base))?.value()).ok()
    }

    /// The cookie that removes `base`: with the same attributes, or a browser ignores it (a
    /// `__Host-` cookie is only ever set, and so only removed, with `Secure`).
    /// Removes every cookie named `base` or `base_<suffix>` (the guest sessions of several
    /// tickets).
    pub fn remove_all(&self, jar: PrivateCookieJar, base: &str) -> PrivateCookieJar {
        let name = self.name(base);
        let names: Vec<String> = jar
            .iter()
            .map(|c| c.name().to_owned())
            .filter(|n| *n == name || n.starts_with(&format!("{name}_")))
            .collect();
        names.into_iter().fold(jar, |jar, n| {
            let base = n.strip_prefix("__Host-").unwrap_or(&n).to_owned();
            jar.remove(self.removal(&base))
        })
    }

    pub fn removal(&self, base: &str) -> Cookie<'static> {
        Cookie::build((self.name(base), ""))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .build()
    }
}

/// The browser's CSRF token, created on the first page: the page's forms carry it, and a
/// POST whose form token differs from the cookie's is refused. The cookie is encrypted, so
/// another site can neither read it nor forge a matching pair.
pub fn csrf_token(state: &AppState, jar: PrivateCookieJar) -> (PrivateCookieJar, String) {
    if let Some(token) = state.cookies.read::<String>(&jar, CSRF) {
        return (jar, token);
    }
    let bytes: [u8; 32] = rand::random();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jar = jar.add(state.cookies.make(CSRF, &token, None));
    (jar, token)
}

pub fn csrf_ok(state: &AppState, jar: &PrivateCookieJar, submitted: &str) -> bool {
    state
        .cookies
        .read::<String>(jar, CSRF)
        .is_some_and(|token| bool::from(token.as_bytes().ct_eq(submitted.as_bytes())))
}

/// A form that carries the page's CSRF token.
pub trait CsrfForm {
    fn csrf(&self) -> &str;
    /// Text the visitor wrote, shown again if the form is refused.
    fn draft(&self) -> Option<&str> {
        None
    }
}

/// A POSTed form, read and checked: an unreadable form (too large, not a form) is answered
/// with a page and its 4xx status, and one whose CSRF token is missing or wrong with a 403
/// page, before the handler runs — so no handler can forget either check.
pub struct CheckedForm<T>(pub T);

impl<T> axum::extract::FromRequest<AppState> for CheckedForm<T>
where
    T: DeserializeOwned + CsrfForm + Send,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let jar = match PrivateCookieJar::<Key>::from_request_parts(&mut parts, state).await {
            Ok(jar) => jar,
            Err(never) => match never {},
        };
        let headers = parts.headers.clone();
        let req = axum::extract::Request::from_parts(parts, body);
        let form = axum::Form::<T>::from_request(req, state)
            .await
            .map_err(|rejection| {
                crate::pages::form_rejected(
                    crate::i18n::Lang::choose(None, &headers).texts(),
                    &rejection,
                )
            })?;
        if !csrf_ok(state, &jar, form.0.csrf()) {
            let draft = form.0.draft().unwrap_or_default().to_owned();
            return Err(crate::pages::form_expired(state, jar, &headers, draft));
        }
        Ok(CheckedForm(form.0))
    }
}

// ---- the client ----

/// The visitor's address: the TCP peer, or behind a trusted proxy the last address of
/// `X-Forwarded-For` (the one the proxy appended; earlier ones are the client's to forge).
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
        if !state.trust_forwarded_for {
            return Ok(ClientAddr(peer));
        }
        // The last address of the last header line: a proxy that adds a line of its own
        // leaves the client's (forgeable) line first.
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok());
        Ok(ClientAddr(forwarded.unwrap_or(peer)))
    }
}

// ---- rate limits ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    CodeRequest,
    CodeCheck,
    GuestTicket,
    FreshLink,
    SignIn,
}

/// Per client address (GCRA, `governor`), per replica; the ticket service bounds each ticket
/// and each email address on top of these.
pub struct Limits {
    code_requests: DefaultKeyedRateLimiter<IpAddr>,
    code_checks: DefaultKeyedRateLimiter<IpAddr>,
    guest_tickets: DefaultKeyedRateLimiter<IpAddr>,
    fresh_links: DefaultKeyedRateLimiter<IpAddr>,
    sign_ins: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    checks: std::sync::atomic::AtomicU64,
}

/// Checks between two sweeps of the limiters' full buckets.
const RETAIN_EVERY: u64 = 10_000;

impl Limits {
    fn new(s: LimitSettings) -> Self {
        let keyed = |n: NonZeroU32| RateLimiter::keyed(Quota::per_hour(n));
        Limits {
            code_requests: keyed(s.code_requests),
            code_checks: keyed(s.code_checks),
            guest_tickets: keyed(s.guest_tickets),
            fresh_links: keyed(s.fresh_links),
            sign_ins: keyed(s.sign_ins),
            clock: DefaultClock::default(),
            checks: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Takes one request, or says how many seconds to wait.
    pub fn check(&self, what: Limited, client: IpAddr) -> Result<(), u64> {
        let limiter = match what {
            Limited::CodeRequest => &self.code_requests,
            Limited::CodeCheck => &self.code_checks,
            Limited::GuestTicket => &self.guest_tickets,
            Limited::FreshLink => &self.fresh_links,
            Limited::SignIn => &self.sign_ins,
        };
        // A client whose bucket is full again holds no information: forget such clients every
        // so many checks (a scan of all keys, so never on every check).
        if self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(RETAIN_EVERY)
        {
            for l in [
                &self.code_requests,
                &self.code_checks,
                &self.guest_tickets,
                &self.fresh_links,
                &self.sign_ins,
            ] {
                l.retain_recent();
            }
        }
        limiter.check_key(&client).map_err(|not_until| {
            tracing::info!(?what, %client, "portal rate limit reached");
            not_until.wait_time_from(self.clock.now()).as_secs().max(1)
        })
    }
}

// ---- rendering ----

/// What the page frame needs: the language, the CSRF token, and where "Sign out" posts.
pub struct Chrome {
    pub t: &'static Texts,
    pub csrf: String,
    pub sign_out: Option<&'static str>,
}

/// A rendered page. Every page is `no-store`: they show tickets, codes and forms with
/// tokens, none of which may stay in a shared or back/forward cache.
pub fn page(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Post → redirect → get.
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

pub fn with_retry_after(mut response: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

// ---- security headers ----

/// No inline script or style, nothing from elsewhere, no framing, forms post only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// The headers every response carries.
pub fn security_headers() -> [(HeaderName, HeaderValue); 4] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_host_prefixed_and_secure_over_tls_and_always_http_only_and_lax() {
        // Given the portal served over TLS, when a session cookie is made, then it carries
        // the `__Host-` prefix, Secure, Path=/, HttpOnly and SameSite=Lax.
        let tls = CookieNames { secure: true };
        let c = tls.make(GUEST, &"token", Some(time::Duration::hours(24)));
        assert_eq!(c.name(), "__Host-tidings_guest");
        assert_eq!(c.secure(), Some(true));
        assert_eq!(c.path(), Some("/"));
        assert_eq!(c.http_only(), Some(true));
        assert_eq!(c.same_site(), Some(SameSite::Lax));
        assert_eq!(c.max_age(), Some(time::Duration::hours(24)));
        // Given plain HTTP (development), then no prefix and no Secure, the rest the same.
        let plain = CookieNames { secure: false };
        let c = plain.make(CSRF, &"t", None);
        assert_eq!(c.name(), "tidings_csrf");
        assert_eq!(c.secure(), Some(false));
        assert_eq!(c.http_only(), Some(true));
        assert_eq!(c.same_site(), Some(SameSite::Lax));
        assert_eq!(c.max_age(), None, "a browser-session cookie");
    }

    #[test]
    fn a_removal_carries_the_attributes_the_cookie_was_set_with() {
        // Given TLS, when a session is removed (sign-out), then the removal is a `__Host-`
        // cookie with Secure and Path=/ — without them a browser would keep the session.
        let removal = CookieNames { secure: true }.removal(GUEST);
        assert_eq!(removal.name(), "__Host-tidings_guest");
        assert_eq!(removal.secure(), Some(true));
        assert_eq!(removal.path(), Some("/"));
        assert_eq!(removal.same_site(), Some(SameSite::Lax));
    }
}
