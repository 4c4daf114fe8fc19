//! Doubles of Apple's APNs provider API and Firebase Cloud Messaging HTTP v1, written from
//! their public documentation, for tests, `make run` and the benchmark — nothing public is
//! reachable from here. Both serve HTTP/2 (and HTTP/1.1) over TLS with a certificate from a
//! test CA generated at start; the dispatcher trusts that CA through its configuration, the
//! same way it would trust any other CA.
//!
//! - APNs: `POST /3/device/<token>`, validating the path, the provider token (ES256 JWT,
//!   checked against the public half of a key generated at start, `kid`, `iss`, age), the
//!   `apns-*` headers and the 4 KB payload limit; answers with Apple's status codes and
//!   `{"reason": …}` bodies.
//! - FCM: the OAuth2 token endpoint of a generated service account (JWT bearer grant, RS256)
//!   and `POST /v1/projects/<project>/messages:send`, validating the access token and the
//!   message shape; errors in Google's `{"error": {…, "details": [FcmError]}}` form.
//!
//! Failures are injected per device token (410/400/429 + Retry-After/5xx, FCM's
//! UNREGISTERED/INVALID_ARGUMENT/QUOTA_EXCEEDED/INTERNAL), optionally for the next n requests
//! only. Every attempt is recorded; accepted pushes are listed at `GET /pushes` (JSON).

mod apns;
mod fcm;
mod pki;
mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use pki::TestPki;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Apns,
    Fcm,
}

/// A failure to answer with, instead of accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// APNs 410 `Unregistered`; FCM 404 `UNREGISTERED`.
    Unregistered,
    /// APNs 400 `BadDeviceToken`; FCM 400 `INVALID_ARGUMENT`.
    BadToken,
    /// 429 with `Retry-After` (APNs `TooManyRequests`, FCM `QUOTA_EXCEEDED`).
    TooManyRequests { retry_after_secs: u64 },
    /// APNs 500 `InternalServerError`; FCM 500 `INTERNAL`.
    ServerError,
    /// APNs 503 `ServiceUnavailable`; FCM 503 `UNAVAILABLE`.
    Unavailable,
}

/// One request that reached a double, accepted or not.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub provider: Provider,
    pub token: String,
    pub status: u16,
    pub at: DateTime<Utc>,
}

/// An accepted push: the device, the headers that matter, the payload.
#[derive(Debug, Clone, Serialize)]
pub struct Push {
    pub provider: Provider,
    pub token: String,
    pub headers: HashMap<String, String>,
    pub body: serde_json::Value,
    pub at: DateTime<Utc>,
}

#[derive(Default)]
pub(crate) struct State {
    pub failures: HashMap<String, (Failure, Option<u32>)>,
    pub attempts: Vec<Attempt>,
    pub pushes: Vec<Push>,
    pub accepted: u64,
    pub token_grants: u64,
    /// Record bodies and attempts (off for benchmarks: counting only).
    pub record: bool,
}

impl State {
    /// The failure to inject for `token` now, if any (consuming one of a limited count).
    pub fn failure_for(&mut self, token: &str) -> Option<Failure> {
        let (failure, remaining) = self.failures.get_mut(token)?;
        let failure = *failure;
        match remaining {
            None => Some(failure),
            Some(0) => None,
            Some(n) => {
                *n -= 1;
                Some(failure)
            }
        }
    }

    pub fn attempt(&mut self, provider: Provider, token: &str, status: u16) {
        if self.record {
            self.attempts.push(Attempt {
                provider,
                token: token.to_owned(),
                status,
                at: Utc::now(),
            });
        }
    }
}

pub(crate) type Shared = Arc<Mutex<State>>;

pub struct Options {
    /// 0 picks a free port.
    pub apns_port: u16,
    pub fcm_port: u16,
    /// Where the CA certificate, the APNs key and the FCM service account are written.
    pub dir: PathBuf,
    /// Keep every push and attempt (tests, `make run`); off, only counts (benchmarks).
    pub record: bool,
}

/// Both doubles, running. Dropping it stops them.
pub struct Doubles {
    pub apns_url: String,
    pub fcm_url: String,
    /// The test CA's certificate (PEM), for the dispatcher's `*_CA_FILE`.
    pub ca_file: PathBuf,
    /// The APNs signing key (PKCS#8 PEM, like Apple's .p8 files) and its ids.
    pub apns_key_file: PathBuf,
    pub apns_key_id: String,
    pub apns_team_id: String,
    /// A service-account key file whose `token_uri` points at the FCM double.
    pub fcm_service_account_file: PathBuf,
    pub fcm_project_id: String,
    state: Shared,
    apns_connections: Arc<AtomicU64>,
    fcm_connections: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Doubles {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Doubles {
    pub async fn start(opts: Options) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&opts.dir)?;
        let pki = TestPki::generate()?;
        let ca_file = opts.dir.join("push-test-ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem)?;
        let state: Shared = Arc::new(Mutex::new(State {
            record: opts.record,
            ..State::default()
        }));

        let apns_key = apns::ProviderKey::generate()?;
        let apns_key_file = opts.dir.join("apns-auth-key.p8");
        std::fs::write(&apns_key_file, &apns_key.private_pem)?;
        let apns_connections = Arc::new(AtomicU64::new(0));
        let fcm_connections = Arc::new(AtomicU64::new(0));
        let (apns_addr, apns_task) = server::serve(
            opts.apns_port,
            pki.acceptor()?,
            apns_connections.clone(),
            apns::handler(apns_key.clone(), state.clone()),
        )
        .await?;

        let fcm_listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.fcm_port)).await?;
        let fcm_addr = fcm_listener.local_addr()?;
        let fcm_url = format!("https://127.0.0.1:{}", fcm_addr.port());
        let account = fcm::ServiceAccount::generate(&format!("{fcm_url}/token"))?;
        let fcm_service_account_file = opts.dir.join("fcm-service-account.json");
        std::fs::write(&fcm_service_account_file, account.key_file_json())?;
        let fcm_task = server::serve_on(
            fcm_listener,
            pki.acceptor()?,
            fcm_connections.clone(),
            fcm::handler(account.clone(), state.clone()),
        );

        Ok(Self {
            apns_url: format!("https://127.0.0.1:{}", apns_addr.port()),
            fcm_url,
            ca_file,
            apns_key_file,
            apns_key_id: apns_key.key_id.clone(),
            apns_team_id: apns_key.team_id.clone(),
            fcm_service_account_file,
            fcm_project_id: account.project_id.clone(),
            state,
            apns_connections,
            fcm_connections,
            tasks: vec![apns_task, fcm_task],
        })
    }

    /// Answers requests for `token` with `failure` — always, or for the next `times` only.
    pub fn fail(&self, token: &str, failure: Failure, times: Option<u32>) {
        self.state
            .lock()
            .expect("state")
            .failures
            .insert(token.to_owned(), (failure, times));
    }

    pub fn pushes(&self) -> Vec<Push> {
        self.state.lock().expect("state").pushes.clone()
    }

    pub fn pushes_to(&self, token: &str) -> Vec<Push> {
        self.pushes()
            .into_iter()
            .filter(|p| p.token == token)
            .collect()
    }

    pub fn attempts_for(&self, token: &str) -> Vec<Attempt> {
        self.state
            .lock()
            .expect("state")
            .attempts
            .iter()
            .filter(|a| a.token == token)
            .cloned()
            .collect()
    }

    /// Accepted pushes, counted even when not recorded.
    pub fn accepted(&self) -> u64 {
        self.state.lock().expect("state").accepted
    }

    /// TLS connections clients opened to the APNs and the FCM double.
    pub fn connections(&self) -> (u64, u64) {
        (
            self.apns_connections.load(Ordering::Relaxed),
            self.fcm_connections.load(Ordering::Relaxed),
        )
    }

    /// Access tokens the FCM double's token endpoint granted.
    pub fn token_grants(&self) -> u64 {
        self.state.lock().expect("state").token_grants
    }

    /// A valid APNs provider token, for clients other than the dispatcher (h2load).
    pub fn apns_provider_token(&self) -> anyhow::Result<String> {
        apns::ProviderKey::from_files(&self.apns_key_file, &self.apns_key_id, &self.apns_team_id)
            .and_then(|k| k.provider_token())
    }

    /// Writes the dispatcher's variables pointing at these doubles, one `KEY=value` a line.
    pub fn write_env(&self, path: &Path) -> std::io::Result<()> {
        let lines = [
            format!("TIDINGS_APNS_URL={}", self.apns_url),
            format!("TIDINGS_APNS_CA_FILE={}", self.ca_file.display()),
            format!("TIDINGS_APNS_KEY_FILE={}", self.apns_key_file.display()),
            format!("TIDINGS_APNS_KEY_ID={}", self.apns_key_id),
            format!("TIDINGS_APNS_TEAM_ID={}", self.apns_team_id),
            format!("TIDINGS_FCM_URL={}", self.fcm_url),
            format!("TIDINGS_FCM_CA_FILE={}", self.ca_file.display()),
            format!(
                "TIDINGS_FCM_SERVICE_ACCOUNT_FILE={}",
                self.fcm_service_account_file.display()
            ),
        ];
        std::fs::write(path, lines.join("\n") + "\n")
    }
}
