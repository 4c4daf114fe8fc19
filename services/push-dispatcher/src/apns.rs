//! APNs over HTTP/2 with token-based authentication: one provider token (ES256 JWT signed
//! with the .p8 key, `kid`, `iss` = team id) shared by all requests and renewed before Apple's
//! one-hour limit, and one multiplexed connection carrying many concurrent streams.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tidings_notify::Device;

use crate::payload::PushMessage;
use crate::transport::{
    HttpClient, PushResult, Transport, TransportSetupError, https_client, retry_after,
};

/// Apple accepts a token for an hour and refuses refreshing more than every 20 minutes.
const TOKEN_TTL: Duration = Duration::from_secs(50 * 60);

pub struct ApnsConfig<'a> {
    pub base_url: &'a str,
    pub extra_ca: Option<&'a Path>,
    pub key_file: &'a Path,
    pub key_id: &'a str,
    pub team_id: &'a str,
    pub timeout: Duration,
}

pub struct ApnsClient {
    http: HttpClient,
    base: String,
    key: EncodingKey,
    key_id: String,
    team_id: String,
    token: Mutex<Option<(String, Instant)>>,
    timeout: Duration,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: i64,
}

impl ApnsClient {
    pub fn new(c: ApnsConfig<'_>) -> Result<Self, TransportSetupError> {
        let pem = std::fs::read(c.key_file).map_err(|e| TransportSetupError::File {
            what: "TIDINGS_APNS_KEY_FILE",
            error: format!("{}: {e}", c.key_file.display()),
        })?;
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| TransportSetupError::File {
            what: "TIDINGS_APNS_KEY_FILE",
            error: format!("not a PKCS#8 P-256 key (.p8): {e}"),
        })?;
        Ok(Self {
            http: https_client(c.extra_ca, true, c.timeout)?,
            base: c.base_url.trim_end_matches('/').to_owned(),
            key,
            key_id: c.key_id.to_owned(),
            team_id: c.team_id.to_owned(),
            token: Mutex::new(None),
            timeout: c.timeout,
        })
    }

    fn provider_token(&self) -> Result<String, String> {
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, made)) = cached.as_ref()
            && made.elapsed() < TOKEN_TTL
        {
            return Ok(token.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: &self.team_id,
            iat: chrono::Utc::now().timestamp(),
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[derive(serde::Deserialize)]
struct AppleError {
    reason: String,
}

impl Transport for ApnsClient {
    async fn send(&self, device: &Device, push: &PushMessage) -> PushResult {
        let token = match self.provider_token() {
            Ok(t) => t,
            Err(e) => {
                return PushResult::Rejected {
                    reason: format!("provider token: {e}"),
                };
            }
        };
        let body = Bytes::from(push.apns_payload().to_string());
        let request =
            http::Request::post(format!("{}/3/device/{}", self.base, device.token.as_str()))
                .header("authorization", format!("bearer {token}"))
                .header("apns-topic", &device.app_id)
                .header("apns-push-type", "alert")
                .header("apns-priority", "10")
                .header("apns-expiration", push.expires_at.timestamp().to_string())
                .header("apns-collapse-id", &push.ticket_id)
                .header("apns-id", push.id.to_string())
                .header("content-type", "application/json")
                .body(Full::new(body));
        let request = match request {
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
                    reason: "APNs timed out".into(),
                };
            }
            Ok(Err(e)) => {
                return PushResult::Transient {
                    reason: format!("APNs: {e}"),
                };
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if status == 200 {
            let id = headers
                .get("apns-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            return PushResult::Sent { id };
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let reason = serde_json::from_slice::<AppleError>(&body)
            .map(|e| e.reason)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        let reason = format!("APNs {status} {reason}");
        match status {
            // Only Apple's "this token is no longer active" removes the device.
            // `BadDeviceToken` is also what a sandbox token sent to production (or the
            // reverse) gets, and `DeviceTokenNotForTopic` a wrong bundle id: configuration
            // mistakes that must not delete every customer's devices. They fail with the
            // reason (dead letter) and the device stays.
            410 => PushResult::Invalid { reason },
            429 => PushResult::Throttled {
                retry_after: retry_after(&headers),
                reason,
            },
            403 if reason.ends_with("ExpiredProviderToken")
                || reason.ends_with("InvalidProviderToken") =>
            {
                // Make a new token and try again.
                self.forget_token();
                PushResult::Transient { reason }
            }
            500..=599 => PushResult::Transient { reason },
            _ => PushResult::Rejected { reason },
        }
    }
}
