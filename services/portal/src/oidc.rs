//! Sign-in with OpenID Connect: the authorization code flow with PKCE (S256) against
//! `TIDINGS_OIDC_ISSUER`, with the `openidconnect` crate (discovery, JWKS, ID-token checks:
//! signature, issuer, audience, expiry, nonce). The provider's **access token** is what the
//! portal then sends to the ticket service: the deployment configures the ticket service to
//! accept that provider's tokens (`TIDINGS_JWT_*`: its key, issuer and API audience).
//!
//! The provider's metadata (discovery document and keys) is fetched on the first sign-in and
//! kept for an hour, so the portal starts and serves guests while the provider is away.

use std::time::{Duration, Instant};

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

const METADATA_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// `{TIDINGS_PORTAL_PUBLIC_URL}/oidc/callback`.
    pub redirect_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider's answer was refused: {0}")]
    Refused(String),
}

/// A sign-in under way, kept in a short-lived cookie between the redirect to the provider
/// and the callback.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pending {
    pub state: String,
    nonce: String,
    verifier: String,
    /// A path on the portal to return to (never another site).
    pub return_to: String,
}

/// A signed-in customer, as the portal's session cookie keeps them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedIn {
    /// The provider's access token, sent to the ticket service as the bearer token.
    pub token: String,
    pub expires_at: i64,
    /// The page language (the ID token's `locale`).
    pub locale: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The HTTP client openidconnect runs on: hyper with rustls (ring, the webpki roots), as the
/// push transports use. It follows no redirect, so an endpoint cannot send the portal
/// elsewhere; it is an owned handle, so its futures are `Send` for any caller.
#[derive(Clone)]
struct Http(hyper_util::client::legacy::Client<Connector, http_body_util::Full<bytes::Bytes>>);

impl Http {
    fn new() -> Result<Self, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Http(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector),
        ))
    }
}

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move {
            use http_body_util::BodyExt as _;
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, http_body_util::Full::from(body));
            let call = async {
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| HttpError(e.to_string()))?;
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| HttpError(e.to_string()))?
                    .to_bytes();
                Ok(http::Response::from_parts(parts, body.to_vec()))
            };
            tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .map_err(|_| HttpError("timed out after 10 s".into()))?
        })
    }
}

pub struct Oidc {
    settings: OidcSettings,
    http: Http,
    metadata: tokio::sync::Mutex<Option<(CoreProviderMetadata, Instant)>>,
}

impl Oidc {
    pub fn new(settings: OidcSettings) -> anyhow::Result<Self> {
        IssuerUrl::new(settings.issuer.clone())?;
        RedirectUrl::new(settings.redirect_url.clone())?;
        Ok(Oidc {
            settings,
            http: Http::new()?,
            metadata: tokio::sync::Mutex::new(None),
        })
    }

    async fn metadata(&self, refresh: bool) -> Result<CoreProviderMetadata, OidcError> {
        let mut cached = self.metadata.lock().await;
        if !refresh
            && let Some((metadata, at)) = cached.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer = IssuerUrl::new(self.settings.issuer.clone())
            .map_err(|e| OidcError::Refused(e.to_string()))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Unreachable(e.to_string()))?;
        *cached = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    fn client(
        &self,
        metadata: CoreProviderMetadata,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        OidcError,
    > {
        let redirect = RedirectUrl::new(self.settings.redirect_url.clone())
            .map_err(|e| OidcError::Refused(e.to_string()))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(
                self.settings.client_secret.expose_secret().to_owned(),
            )),
        )
        .set_redirect_uri(redirect))
    }

    /// Where to send the browser to sign in, and what to keep until it comes back.
    pub async fn begin(&self, return_to: String) -> Result<(String, Pending), OidcError> {
        let client = self.client(self.metadata(false).await?)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".to_owned()))
            .add_scope(Scope::new("profile".to_owned()))
            .set_pkce_challenge(challenge)
            .url();
        let pending = Pending {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            return_to,
        };
        Ok((url.to_string(), pending))
    }

    /// Exchanges the callback's code (with the PKCE verifier) and checks the ID token.
    pub async fn finish(&self, code: &str, pending: Pending) -> Result<SignedIn, OidcError> {
        let client = self.client(self.metadata(false).await?)?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Refused(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Refused(e.to_string()))?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| OidcError::Refused("no ID token in the token response".into()))?;
        let nonce = Nonce::new(pending.nonce);
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims.clone(),
            Err(first) => {
                // The provider may have rotated its keys since the metadata was cached.
                let client = self.client(self.metadata(true).await?)?;
                id_token
                    .claims(&client.id_token_verifier(), &nonce)
                    .map_err(|_| OidcError::Refused(first.to_string()))?
                    .clone()
            }
        };
        let lifetime = tokens
            .expires_in()
            .unwrap_or(Duration::from_secs(3600))
            .as_secs();
        Ok(SignedIn {
            token: tokens.access_token().secret().clone(),
            expires_at: chrono::Utc::now().timestamp() + i64::try_from(lifetime).unwrap_or(3600),
            locale: claims
                .locale()
                .map(|l| l.as_str().to_owned())
                .unwrap_or_default(),
        })
    }
}
