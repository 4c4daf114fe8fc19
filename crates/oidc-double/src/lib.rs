//! An OpenID Connect provider double: what the portal's sign-in talks to in tests and
//! `make run`, reached only through `TIDINGS_OIDC_ISSUER`, as a real provider would be.
//!
//! - `GET /.well-known/openid-configuration`: the discovery document (OpenID Connect
//!   Discovery 1.0), `GET /jwks`: the RSA signing key as a JWK set.
//! - `GET /authorize`: checks the request (response type `code`, a known client and redirect
//!   URI, a PKCE S256 challenge) and shows a "sign in as" form; `POST /authorize` issues a
//!   one-time code bound to all of that and redirects back with `code` and `state`.
//! - `POST /token`: authorization-code grant with client authentication (Basic or form) and
//!   the PKCE verifier; answers an ID token (RS256, `aud` = the client, the nonce) and an
//!   access token for the API (`aud` = the API audience; RS256, or HS256 with the development
//!   secret so that `make run`'s ticket service and CLI keep one key).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const KEY_ID: &str = "oidc-double-1";
const CODE_TTL: Duration = Duration::from_secs(60);

/// How the access token for the API is signed.
#[derive(Clone)]
pub enum AccessTokenKey {
    /// With the provider's RSA key, as production providers do.
    Rs256,
    /// With a shared secret (development: the ticket service's `TIDINGS_JWT_HS256_SECRET`).
    Hs256(String),
}

#[derive(Clone)]
pub struct Settings {
    pub client_id: String,
    pub client_secret: String,
    /// Exact redirect URIs the client may use.
    pub redirect_uris: Vec<String>,
    /// `aud` of the access tokens.
    pub api_audience: String,
    pub access_token_key: AccessTokenKey,
    pub token_ttl: Duration,
}

/// The identity a sign-in asserts.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Identity {
    pub sub: String,
    pub email: String,
    pub name: String,
    pub locale: String,
    /// `agent` marks a support agent (the API's `TIDINGS_JWT_AGENT_ROLE`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
}

struct Grant {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: String,
    identity: Identity,
    issued: Instant,
}

struct Inner {
    issuer: String,
    settings: Settings,
    encoding: EncodingKey,
    public_pem: String,
    jwk: serde_json::Value,
    codes: Mutex<HashMap<String, Grant>>,
}

pub struct OidcDouble {
    inner: Arc<Inner>,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for OidcDouble {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl OidcDouble {
    /// Generates a fresh RSA key and serves on `addr` (port 0 for any).
    pub async fn start(addr: SocketAddr, settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let issuer = format!("http://{addr}");
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
        let private_pem = key.to_pkcs8_pem(LineEnding::LF)?.to_string();
        let public = key.to_public_key();
        let public_pem = public.to_public_key_pem(LineEnding::LF)?;
        let jwk = serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": KEY_ID,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        let inner = Arc::new(Inner {
            issuer,
            settings,
            encoding: EncodingKey::from_rsa_pem(private_pem.as_bytes())?,
            public_pem,
            jwk,
            codes: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize_form).post(authorize))
            .route("/token", axum::routing::post(token))
            .with_state(inner.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "oidc double stopped");
            }
        });
        Ok(OidcDouble {
            inner,
            addr,
            shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The signing key's public half (PEM), for an API configured with
    /// `TIDINGS_JWT_PUBLIC_KEY_FILE`.
    pub fn public_key_pem(&self) -> &str {
        &self.inner.public_pem
    }

    /// An access token for `identity`, as the token endpoint would issue it (agents, who
    /// have no portal, get theirs this way in tests).
    pub fn access_token(&self, identity: &Identity) -> String {
        self.inner.access_token(identity)
    }
}

#[derive(Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    email: &'a str,
    email_verified: bool,
    name: &'a str,
    locale: &'a str,
}

#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    email: &'a str,
    name: &'a str,
    locale: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    role: &'a str,
    scope: &'a str,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Inner {
    fn rs256_header() -> Header {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KEY_ID.to_owned());
        header
    }

    fn access_token(&self, who: &Identity) -> String {
        let iat = now_secs();
        let claims = AccessClaims {
            iss: &self.issuer,
            sub: &who.sub,
            aud: &self.settings.api_audience,
            exp: iat + self.settings.token_ttl.as_secs(),
            iat,
            email: &who.email,
            name: &who.name,
            locale: &who.locale,
            role: &who.role,
            scope: "openid email profile",
        };
        match &self.settings.access_token_key {
            AccessTokenKey::Rs256 => {
                jsonwebtoken::encode(&Self::rs256_header(), &claims, &self.encoding)
            }
            AccessTokenKey::Hs256(secret) => jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            ),
        }
        .expect("claims encode")
    }

    fn id_token(&self, grant: &Grant) -> String {
        let iat = now_secs();
        let who = &grant.identity;
        let claims = IdClaims {
            iss: &self.issuer,
            sub: &who.sub,
            aud: &grant.client_id,
            exp: iat + self.settings.token_ttl.as_secs(),
            iat,
            nonce: grant.nonce.as_deref(),
            email: &who.email,
            email_verified: true,
            name: &who.name,
            locale: &who.locale,
        };
        jsonwebtoken::encode(&Self::rs256_header(), &claims, &self.encoding).expect("claims encode")
    }
}

async fn discovery(State(s): State<Arc<Inner>>) -> Json<serde_json::Value> {
    let base = &s.issuer;
    Json(serde_json::json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "email", "email_verified", "name", "locale"],
        "grant_types_supported": ["authorization_code"],
    }))
}

async fn jwks(State(s): State<Arc<Inner>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "keys": [s.jwk] }))
}

/// The authorization request's parameters (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC §3.1.2.1).
#[derive(Deserialize, Default)]
struct AuthorizeParams {
    #[serde(default)]
    response_type: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, message.to_owned()).into_response()
}

/// What is wrong with an authorization request.
type Refusal = &'static str;

impl Inner {
    fn check(&self, p: &AuthorizeParams) -> Result<(), Refusal> {
        if p.client_id != self.settings.client_id {
            return Err("unknown client_id");
        }
        // An unknown redirect URI is never redirected to (RFC 6749 §4.1.2.1).
        if !self.settings.redirect_uris.contains(&p.redirect_uri) {
            return Err("redirect_uri is not registered for this client");
        }
        if p.response_type != "code" {
            return Err("response_type must be code");
        }
        if !p.scope.split(' ').any(|s| s == "openid") {
            return Err("scope must include openid");
        }
        if p.code_challenge_method != "S256" || p.code_challenge.len() < 43 {
            return Err("a PKCE S256 code_challenge is required");
        }
        Ok(())
    }
}

fn escape(raw: &str) -> String {
    raw.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

async fn authorize_form(State(s): State<Arc<Inner>>, Query(p): Query<AuthorizeParams>) -> Response {
    if let Err(refusal) = s.check(&p) {
        return bad_request(refusal);
    }
    let hidden: String = [
        ("response_type", &p.response_type),
        ("client_id", &p.client_id),
        ("redirect_uri", &p.redirect_uri),
        ("scope", &p.scope),
        ("state", &p.state),
        ("nonce", &p.nonce),
        ("code_challenge", &p.code_challenge),
        ("code_challenge_method", &p.code_challenge_method),
    ]
    .iter()
    .map(|(k, v)| format!(r#"<input type="hidden" name="{k}" value="{}">"#, escape(v)))
    .collect();
    Html(format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Identity provider (test double)</title></head>
<body><main><h1>Sign in</h1>
<p>Test identity provider: sign in as anyone.</p>
<form method="post" action="/authorize">{hidden}
<p><label for="sub">Account id</label> <input id="sub" name="sub" value="ann" required></p>
<p><label for="email">Email</label> <input id="email" name="email" type="email" value="ann@example.com" required></p>
<p><label for="name">Name</label> <input id="name" name="name" value="Ann"></p>
<p><label for="locale">Locale</label> <input id="locale" name="locale" value="en"></p>
<p><button type="submit">Sign in</button></p>
</form></main></body></html>"#
    ))
    .into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(flatten)]
    params: AuthorizeParams,
    #[serde(flatten)]
    identity: Identity,
}

async fn authorize(State(s): State<Arc<Inner>>, Form(f): Form<SignInForm>) -> Response {
    if let Err(refusal) = s.check(&f.params) {
        return bad_request(refusal);
    }
    if f.identity.sub.trim().is_empty() {
        return bad_request("sub is required");
    }
    let code = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
    let p = f.params;
    let mut identity = f.identity;
    // Customers sign in here; an agent role is never granted through the form.
    identity.role.clear();
    let mut codes = s.codes.lock().expect("codes lock");
    codes.retain(|_, g| g.issued.elapsed() < CODE_TTL);
    codes.insert(
        code.clone(),
        Grant {
            client_id: p.client_id,
            redirect_uri: p.redirect_uri.clone(),
            nonce: (!p.nonce.is_empty()).then_some(p.nonce),
            challenge: p.code_challenge,
            identity,
            issued: Instant::now(),
        },
    );
    let sep = if p.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let state = url_encode(&p.state);
    Redirect::to(&format!("{}{sep}code={code}&state={state}", p.redirect_uri)).into_response()
}

/// Percent-encoding for a query value: everything but the unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn url_encode(raw: &str) -> String {
    percent_encoding::utf8_percent_encode(raw, QUERY_VALUE).to_string()
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    grant_type: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    code_verifier: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
}

fn token_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

/// `Authorization: Basic base64(id:secret)` (RFC 6749 §2.3.1), or the form's fields.
fn client_credentials(headers: &HeaderMap, form: &TokenForm) -> (String, String) {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            Some((url_decode(id), url_decode(secret)))
        });
    basic.unwrap_or_else(|| (form.client_id.clone(), form.client_secret.clone()))
}

/// Basic credentials are form-encoded before base64 (RFC 6749 §2.3.1).
fn url_decode(raw: &str) -> String {
    percent_encoding::percent_decode_str(&raw.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

async fn token(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(f): Form<TokenForm>,
) -> Response {
    let (client_id, client_secret) = client_credentials(&headers, &f);
    if client_id != s.settings.client_id || client_secret != s.settings.client_secret {
        return token_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if f.grant_type != "authorization_code" {
        return token_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    // A code is used once, whatever the outcome.
    let Some(grant) = s.codes.lock().expect("codes lock").remove(&f.code) else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(f.code_verifier.as_bytes()));
    if grant.issued.elapsed() >= CODE_TTL
        || grant.client_id != client_id
        || grant.redirect_uri != f.redirect_uri
        || challenge != grant.challenge
    {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let body = serde_json::json!({
        "access_token": s.access_token(&grant.identity),
        "token_type": "Bearer",
        "expires_in": s.settings.token_ttl.as_secs(),
        "id_token": s.id_token(&grant),
        "scope": "openid email profile",
    });
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(url_decode("tidings%3Aportal"), "tidings:portal");
        assert_eq!(url_decode("a+b"), "a b");
        assert_eq!(url_decode("plain"), "plain");
        assert_eq!(url_decode("bad%zz"), "bad%zz");
    }

    #[test]
    fn state_is_url_encoded() {
        assert_eq!(url_encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
