//! The FCM double: a service account's OAuth2 token endpoint (JWT bearer grant, RFC 7523) and
//! the HTTP v1 send API.
//! <https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send>

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use chrono::Utc;
use hyper::body::Incoming;
use hyper::{Method, Request};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::server::{Reply, body, reply};
use crate::{Failure, Provider, Push, Shared};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

#[derive(Clone)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub token_uri: String,
    private_pem: String,
    public_pem: String,
}

impl ServiceAccount {
    pub fn generate(token_uri: &str) -> anyhow::Result<Self> {
        use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
        let project_id = "tidings-test".to_owned();
        Ok(Self {
            client_email: format!("push@{project_id}.iam.gserviceaccount.com"),
            project_id,
            token_uri: token_uri.to_owned(),
            private_pem: key.to_pkcs8_pem(LineEnding::LF)?.to_string(),
            public_pem: key.to_public_key().to_public_key_pem(LineEnding::LF)?,
        })
    }

    /// The key file as Google's console would download it.
    pub fn key_file_json(&self) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": "0123456789abcdef",
            "private_key": self.private_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000000",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        })
        .to_string()
    }
}

#[derive(Deserialize)]
struct GrantClaims {
    scope: String,
    iat: i64,
    exp: i64,
}

struct Inner {
    account: ServiceAccount,
    decoding: DecodingKey,
    /// Access tokens granted, with their expiry (unix seconds).
    tokens: Mutex<HashMap<String, i64>>,
}

fn google_error(code: u16, status: &str, message: &str, fcm: Option<&str>) -> Reply {
    let mut error = serde_json::json!({ "code": code, "message": message, "status": status });
    if let Some(fcm) = fcm {
        error["details"] = serde_json::json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": fcm,
        }]);
    }
    reply(code, serde_json::json!({ "error": error }).to_string())
}

pub fn handler(
    account: ServiceAccount,
    state: Shared,
) -> impl Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    let decoding = DecodingKey::from_rsa_pem(account.public_pem.as_bytes()).expect("generated key");
    let inner = Arc::new(Inner {
        account,
        decoding,
        tokens: Mutex::new(HashMap::new()),
    });
    move |req| {
        let inner = inner.clone();
        let state = state.clone();
        Box::pin(async move { handle(req, &inner, &state).await })
    }
}

async fn handle(req: Request<Incoming>, inner: &Inner, state: &Shared) -> Reply {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/pushes") => {
            let pushes = state.lock().expect("state").pushes.clone();
            reply(
                200,
                serde_json::to_string_pretty(&pushes).unwrap_or_default(),
            )
        }
        (Method::POST, "/token") => token(req, inner, state).await,
        (Method::POST, p) if p.starts_with("/v1/projects/") && p.ends_with("/messages:send") => {
            let project = &p["/v1/projects/".len()..p.len() - "/messages:send".len()];
            if project != inner.account.project_id {
                return google_error(404, "NOT_FOUND", "Requested entity was not found.", None);
            }
            send(req, inner, state).await
        }
        _ => google_error(404, "NOT_FOUND", "Not found.", None),
    }
}

fn oauth_error(description: &str) -> Reply {
    reply(
        400,
        serde_json::json!({ "error": "invalid_grant", "error_description": description })
            .to_string(),
    )
}

async fn token(req: Request<Incoming>, inner: &Inner, state: &Shared) -> Reply {
    let Some(bytes) = body(req, 16 * 1024).await else {
        return oauth_error("request too large");
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&bytes).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return reply(400, r#"{"error":"unsupported_grant_type"}"#);
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("missing assertion");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&inner.account.token_uri]);
    validation.set_issuer(&[&inner.account.client_email]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims = match jsonwebtoken::decode::<GrantClaims>(assertion, &inner.decoding, &validation)
    {
        Ok(d) => d.claims,
        Err(e) => return oauth_error(&format!("Invalid JWT Signature or claims: {e}")),
    };
    if claims.exp - claims.iat > 3600 {
        return oauth_error("JWT lifetime exceeds one hour");
    }
    if !claims.scope.split(' ').any(|s| s == SCOPE) {
        return oauth_error("scope does not include firebase.messaging");
    }
    let access = format!(
        "ya29.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
    );
    inner
        .tokens
        .lock()
        .expect("tokens")
        .insert(access.clone(), Utc::now().timestamp() + 3599);
    state.lock().expect("state").token_grants += 1;
    reply(
        200,
        serde_json::json!({ "access_token": access, "expires_in": 3599, "token_type": "Bearer" })
            .to_string(),
    )
}

/// The fields a v1 `Message` may have (a misspelt one is an error at Google too).
const MESSAGE_FIELDS: &[&str] = &[
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "token",
    "topic",
    "condition",
];

async fn send(req: Request<Incoming>, inner: &Inner, state: &Shared) -> Reply {
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let valid = bearer.as_ref().is_some_and(|b| {
        inner
            .tokens
            .lock()
            .expect("tokens")
            .get(b)
            .is_some_and(|exp| *exp > Utc::now().timestamp())
    });
    if !valid {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            None,
        );
    }
    let invalid = |m: &str| google_error(400, "INVALID_ARGUMENT", m, Some("INVALID_ARGUMENT"));
    let Some(bytes) = body(req, 64 * 1024).await else {
        return invalid("request too large");
    };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return invalid("Invalid JSON payload received.");
    };
    let Some(message) = doc.get("message").and_then(|m| m.as_object()) else {
        return invalid("message is required");
    };
    if let Some(unknown) = message
        .keys()
        .find(|k| !MESSAGE_FIELDS.contains(&k.as_str()))
    {
        return invalid(&format!(
            "Invalid JSON payload received. Unknown name \"{unknown}\""
        ));
    }
    let Some(token) = message
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
    else {
        return invalid("message.token is required");
    };
    if let Some(data) = message.get("data") {
        let all_strings = data
            .as_object()
            .is_some_and(|d| d.values().all(|v| v.is_string()));
        if !all_strings {
            return invalid("message.data values must be strings");
        }
    }
    let token = token.to_owned();
    let mut st = state.lock().expect("state");
    if let Some(failure) = st.failure_for(&token) {
        let (code, status, fcm, text) = match failure {
            Failure::Unregistered => (
                404,
                "NOT_FOUND",
                "UNREGISTERED",
                "Requested entity was not found.",
            ),
            Failure::BadToken => (
                400,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
            ),
            Failure::TooManyRequests { .. } => (
                429,
                "RESOURCE_EXHAUSTED",
                "QUOTA_EXCEEDED",
                "Quota exceeded.",
            ),
            Failure::ServerError => (500, "INTERNAL", "INTERNAL", "Internal error."),
            Failure::Unavailable => (
                503,
                "UNAVAILABLE",
                "UNAVAILABLE",
                "The service is currently unavailable.",
            ),
        };
        st.attempt(Provider::Fcm, &token, code);
        drop(st);
        let mut r = google_error(code, status, text, Some(fcm));
        if let Failure::TooManyRequests { retry_after_secs } = failure {
            r.headers_mut().insert(
                "retry-after",
                hyper::header::HeaderValue::from(retry_after_secs),
            );
        }
        return r;
    }
    st.attempt(Provider::Fcm, &token, 200);
    st.accepted += 1;
    let id = uuid::Uuid::new_v4().simple().to_string();
    if st.record {
        let title = doc["message"]["notification"]["title"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        tracing::info!(provider = "fcm", token = %token.chars().take(8).collect::<String>(), %title, "push accepted");
        st.pushes.push(Push {
            provider: Provider::Fcm,
            token,
            headers: HashMap::new(),
            body: doc,
            at: Utc::now(),
        });
    }
    drop(st);
    reply(
        200,
        serde_json::json!({ "name": format!("projects/{}/messages/{id}", inner.account.project_id) })
            .to_string(),
    )
}
