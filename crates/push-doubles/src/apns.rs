//! The APNs double: Apple's provider API, token-based authentication.
//! <https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns>

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use hyper::body::Incoming;
use hyper::{Method, Request};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::server::{Reply, body, reply};
use crate::{Failure, Provider, Push, Shared};

/// Apple's payload limit for alert notifications.
const MAX_PAYLOAD: usize = 4096;

/// An APNs authentication key as Apple issues it: a P-256 key (.p8, PKCS#8), its 10-character
/// key id, and the team it belongs to.
#[derive(Clone)]
pub struct ProviderKey {
    pub key_id: String,
    pub team_id: String,
    pub private_pem: String,
    public_pem: String,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
}

fn ten_chars() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::thread_rng();
    (0..10)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

impl ProviderKey {
    pub fn generate() -> anyhow::Result<Self> {
        let pair = rcgen::KeyPair::generate()?;
        Ok(Self {
            key_id: ten_chars(),
            team_id: ten_chars(),
            private_pem: pair.serialize_pem(),
            public_pem: pair.public_key_pem(),
        })
    }

    pub fn from_files(path: &Path, key_id: &str, team_id: &str) -> anyhow::Result<Self> {
        let private_pem = std::fs::read_to_string(path)?;
        let pair = rcgen::KeyPair::from_pem(&private_pem)?;
        Ok(Self {
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            public_pem: pair.public_key_pem(),
            private_pem,
        })
    }

    /// A provider token as a client would make it (for h2load in the benchmark).
    pub fn provider_token(&self) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: self.team_id.clone(),
            iat: Utc::now().timestamp(),
        };
        Ok(jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ec_pem(self.private_pem.as_bytes())?,
        )?)
    }
}

struct Verifier {
    key: ProviderKey,
    decoding: DecodingKey,
    /// Tokens already verified, with their `iat`: Apple, too, expects one token to be reused
    /// for up to an hour, so checking a signature once per token is what it does.
    verified: Mutex<HashMap<String, i64>>,
}

impl Verifier {
    /// `Ok(())` or the `reason` Apple would answer with (all 403).
    fn check(&self, authorization: Option<&str>) -> Result<(), &'static str> {
        let token = authorization
            .and_then(|a| {
                a.strip_prefix("bearer ")
                    .or_else(|| a.strip_prefix("Bearer "))
            })
            .ok_or("MissingProviderToken")?;
        let now = Utc::now().timestamp();
        let cached = self.verified.lock().expect("cache").get(token).copied();
        let iat = match cached {
            Some(iat) => iat,
            None => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|_| "InvalidProviderToken")?;
                if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(&self.key.key_id)
                {
                    return Err("InvalidProviderToken");
                }
                let mut validation = Validation::new(Algorithm::ES256);
                // Provider tokens carry `iss` and `iat` only; age is checked below.
                validation.required_spec_claims.clear();
                validation.validate_exp = false;
                let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
                    .map_err(|_| "InvalidProviderToken")?;
                if data.claims.iss != self.key.team_id {
                    return Err("InvalidProviderToken");
                }
                self.verified
                    .lock()
                    .expect("cache")
                    .insert(token.to_owned(), data.claims.iat);
                data.claims.iat
            }
        };
        if now - iat > 3600 {
            return Err("ExpiredProviderToken");
        }
        if iat > now + 60 {
            return Err("InvalidProviderToken");
        }
        Ok(())
    }
}

/// A header, what makes its value valid, and Apple's reason when it is not.
type HeaderCheck = (&'static str, fn(&str) -> bool, &'static str);

fn apple_error(status: u16, reason: &str) -> Reply {
    reply(
        status,
        serde_json::json!({ "reason": reason, "timestamp": Utc::now().timestamp_millis() })
            .to_string(),
    )
}

pub fn handler(
    key: ProviderKey,
    state: Shared,
) -> impl Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    let decoding = DecodingKey::from_ec_pem(key.public_pem.as_bytes()).expect("generated key");
    let verifier = Arc::new(Verifier {
        key,
        decoding,
        verified: Mutex::new(HashMap::new()),
    });
    move |req| {
        let verifier = verifier.clone();
        let state = state.clone();
        Box::pin(async move { handle(req, &verifier, &state).await })
    }
}

async fn handle(req: Request<Incoming>, verifier: &Verifier, state: &Shared) -> Reply {
    if req.method() == Method::GET && req.uri().path() == "/pushes" {
        let pushes = state.lock().expect("state").pushes.clone();
        return reply(
            200,
            serde_json::to_string_pretty(&pushes).unwrap_or_default(),
        );
    }
    let Some(token) = req
        .uri()
        .path()
        .strip_prefix("/3/device/")
        .map(str::to_owned)
    else {
        return apple_error(404, "BadPath");
    };
    if req.method() != Method::POST {
        return apple_error(405, "MethodNotAllowed");
    }
    let status = |s: u16| {
        state
            .lock()
            .expect("state")
            .attempt(Provider::Apns, &token, s);
    };
    if token.len() != 64 || !token.chars().all(|c| c.is_ascii_hexdigit()) {
        status(400);
        return apple_error(400, "BadDeviceToken");
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Err(reason) = verifier.check(header("authorization").as_deref()) {
        status(403);
        return apple_error(403, reason);
    }
    let checks: [HeaderCheck; 6] = [
        ("apns-topic", |v| !v.is_empty(), "MissingTopic"),
        (
            "apns-push-type",
            |v| v == "alert" || v == "background",
            "InvalidPushType",
        ),
        ("apns-priority", |v| v == "10" || v == "5", "BadPriority"),
        (
            "apns-expiration",
            |v| v.parse::<u64>().is_ok(),
            "BadExpirationDate",
        ),
        ("apns-collapse-id", |v| v.len() <= 64, "BadCollapseId"),
        (
            "apns-id",
            |v| uuid::Uuid::parse_str(v).is_ok(),
            "BadMessageId",
        ),
    ];
    let mut kept = HashMap::new();
    // Kept so tests can see one provider token serve many requests.
    if let Some(auth) = header("authorization") {
        kept.insert("authorization".to_owned(), auth);
    }
    for (name, ok, reason) in checks {
        match header(name) {
            Some(v) if ok(&v) => {
                kept.insert(name.to_owned(), v);
            }
            // Required by this double: a client that omits them is not production-ready.
            None if matches!(name, "apns-topic" | "apns-push-type") => {
                status(400);
                return apple_error(400, reason);
            }
            None => {}
            Some(_) => {
                status(400);
                return apple_error(400, reason);
            }
        }
    }
    let apns_id = kept
        .get("apns-id")
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string().to_uppercase());
    let Some(bytes) = body(req, MAX_PAYLOAD).await else {
        status(413);
        return apple_error(413, "PayloadTooLarge");
    };
    let payload: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) if bytes.is_empty() => {
            status(400);
            return apple_error(400, "PayloadEmpty");
        }
        Err(_) => {
            status(400);
            return apple_error(400, "BadPayload");
        }
    };
    if !payload.get("aps").is_some_and(|a| a.is_object()) {
        status(400);
        return apple_error(400, "PayloadEmpty");
    }

    let mut st = state.lock().expect("state");
    if let Some(failure) = st.failure_for(&token) {
        let (code, reason) = match failure {
            Failure::Unregistered => (410, "Unregistered"),
            Failure::BadToken => (400, "BadDeviceToken"),
            Failure::TooManyRequests { .. } => (429, "TooManyRequests"),
            Failure::ServerError => (500, "InternalServerError"),
            Failure::Unavailable => (503, "ServiceUnavailable"),
        };
        st.attempt(Provider::Apns, &token, code);
        drop(st);
        let mut r = apple_error(code, reason);
        if let Failure::TooManyRequests { retry_after_secs } = failure {
            r.headers_mut().insert(
                "retry-after",
                hyper::header::HeaderValue::from(retry_after_secs),
            );
        }
        return r;
    }
    st.attempt(Provider::Apns, &token, 200);
    st.accepted += 1;
    if st.record {
        let title = payload["aps"]["alert"]["title"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        tracing::info!(provider = "apns", token = %&token[..8], %title, "push accepted");
        st.pushes.push(Push {
            provider: Provider::Apns,
            token,
            headers: kept,
            body: payload,
            at: Utc::now(),
        });
    }
    drop(st);
    let mut r = reply(200, "");
    if let Ok(v) = hyper::header::HeaderValue::from_str(&apns_id) {
        r.headers_mut().insert("apns-id", v);
    }
    r
}
