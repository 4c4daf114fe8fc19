//! FCM HTTP v1: `POST {base}/v1/projects/{project}/messages:send` with an OAuth2 access token
//! from the service-account key (a JWT bearer grant to the key file's `token_uri`), cached
//! until shortly before it expires and shared by all requests.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tidings_notify::Device;

use crate::payload::PushMessage;
use crate::transport::{
    HttpClient, PushResult, Transport, TransportSetupError, https_client, retry_after,
};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

pub struct FcmConfig<'a> {
    pub base_url: &'a str,
    pub extra_ca: Option<&'a Path>,
    pub service_account_file: &'a Path,
    pub timeout: Duration,
}

#[derive(serde::Deserialize)]
struct KeyFile {
    project_id: String,
    client_email: String,
    private_key: String,
    token_uri: String,
}

pub struct FcmClient {
    http: HttpClient,
    send_url: String,
    token_uri: String,
    client_email: String,
    key: EncodingKey,
    /// Single-flight: one refresh at a time, everybody else waits for its result.
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    timeout: Duration,
}

#[derive(serde::Serialize)]
struct GrantClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

impl FcmClient {
    pub fn new(c: FcmConfig<'_>) -> Result<Self, TransportSetupError> {
        let file_error = |error: String| TransportSetupError::File {
            what: "TIDINGS_FCM_SERVICE_ACCOUNT_FILE",
            error,
        };
        let raw = std::fs::read(c.service_account_file)
            .map_err(|e| file_error(format!("{}: {e}", c.service_account_file.display())))?;
        let key_file: KeyFile = serde_json::from_slice(&raw)
            .map_err(|e| file_error(format!("not a service-account key file: {e}")))?;
        let key = EncodingKey::from_rsa_pem(key_file.private_key.as_bytes())
            .map_err(|e| file_error(format!("private_key: {e}")))?;
        Ok(Self {
            http: https_client(c.extra_ca, false, c.timeout)?,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                c.base_url.trim_end_matches('/'),
                key_file.project_id
            ),
            token_uri: key_file.token_uri,
            client_email: key_file.client_email,
            key,
            token: tokio::sync::Mutex::new(None),
            timeout: c.timeout,
        })
    }

    async fn access_token(&self) -> Result<String, PushResult> {
        let mut cached = self.token.lock().await;
        if let Some((token, valid_until)) = cached.as_ref()
            && Instant::now() < *valid_until
        {
            return Ok(token.clone());
        }
        let now = chrono::Utc::now().timestamp();
        let assertion = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &GrantClaims {
                iss: &self.client_email,
                scope: SCOPE,
                aud: &self.token_uri,
                iat: now,
                exp: now + 3600,
            },
            &self.key,
        )
        .map_err(|e| PushResult::Rejected {
            reason: format!("token assertion: {e}"),
        })?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let request = http::Request::post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| PushResult::Rejected {
                reason: format!("token request: {e}"),
            })?;
        let response = tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| PushResult::Transient {
                reason: "FCM token endpoint timed out".into(),
            })?
            .map_err(|e| PushResult::Transient {
                reason: format!("FCM token endpoint: {e}"),
            })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status != 200 {
            let reason = format!(
                "FCM token endpoint {status}: {}",
                String::from_utf8_lossy(&body)
            );
            return Err(if status >= 500 {
                PushResult::Transient { reason }
            } else {
                PushResult::Rejected { reason }
            });
        }
        let granted: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| PushResult::Transient {
                reason: format!("FCM token response: {e}"),
            })?;
        // Renew a minute early so no request goes out with a token about to lapse.
        let valid_for = Duration::from_secs(granted.expires_in.saturating_sub(60));
        *cached = Some((granted.access_token.clone(), Instant::now() + valid_for));
        Ok(granted.access_token)
    }
}

#[derive(serde::Deserialize)]
struct GoogleError {
    error: GoogleErrorBody,
}

#[derive(serde::Deserialize)]
struct GoogleErrorBody {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

impl Transport for FcmClient {
    async fn send(&self, device: &Device, push: &PushMessage) -> PushResult {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(failure) => return failure,
        };
        let body = Bytes::from(push.fcm_message(device.token.as_str()).to_string());
        let request = match http::Request::post(&self.send_url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
        {
            Ok(r) => r,
            Err(e) => {
                return PushResult::Rejected {
                    reason: format!("request: {e}"),
                };
            }
        };
        let response = match tokio::time::timeout(self.timeout, self.http.request(request)).await {
            Err(_) => {
                return PushResult::Transient {
                    reason: "FCM timed out".into(),
                };
            }
            Ok(Err(e)) => {
                return PushResult::Transient {
                    reason: format!("FCM: {e}"),
                };
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status == 200 {
            let name = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["name"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return PushResult::Sent { id: name };
        }
        let error = serde_json::from_slice::<GoogleError>(&body)
            .ok()
            .map(|e| e.error);
        let fcm_code = error
            .as_ref()
            .and_then(|e| {
                e.details
                    .iter()
                    .find_map(|d| d["errorCode"].as_str().map(str::to_owned))
            })
            .unwrap_or_default();
        let reason = match &error {
            Some(e) => format!("FCM {status} {} {fcm_code}: {}", e.status, e.message),
            None => format!("FCM {status}"),
        };
        match (status, fcm_code.as_str()) {
            // Only FCM's `UNREGISTERED` error code removes the device. A bare 404 is also
            // what a wrong TIDINGS_FCM_URL or a proxy answers, and INVALID_ARGUMENT any
            // malformed message: they fail with the reason (dead letter), the device stays.
            (_, "UNREGISTERED") => PushResult::Invalid { reason },
            (401, _) => {
                // The cached token was refused: get a new one on the retry.
                *self.token.lock().await = None;
                PushResult::Transient { reason }
            }
            (429, _) => PushResult::Throttled {
                retry_after: retry_after(&headers),
                reason,
            },
            (500..=599, _) => PushResult::Transient { reason },
            _ => PushResult::Rejected { reason },
        }
    }
}
