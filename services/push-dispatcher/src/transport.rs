//! The providers behind one small interface: what became of one push to one device. The
//! real clients reach Apple and Google — or anything else — only through their configured
//! base URL and trusted CA.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::payload::PushMessage;
use tidings_notify::Device;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// Accepted; the provider's id for it (apns-id, FCM message name).
    Sent { id: String },
    /// The provider says the token is gone (APNs 410, FCM `UNREGISTERED`): delete the
    /// device.
    Invalid { reason: String },
    /// 429: try again, not before `retry_after` when the provider said so.
    Throttled {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// 5xx, timeouts, connection trouble: try again with backoff.
    Transient { reason: String },
    /// Anything else the provider refused; retrying will not help.
    Rejected { reason: String },
}

pub trait Transport: Send + Sync + 'static {
    fn send(&self, device: &Device, push: &PushMessage) -> impl Future<Output = PushResult> + Send;
}

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum TransportSetupError {
    #[error("{what}: {error}")]
    File { what: &'static str, error: String },
    #[error("TLS: {0}")]
    Tls(String),
}

/// An HTTPS client trusting the public web PKI and, if given, one more CA (a private
/// gateway, or the doubles' test CA). `http2_only` for APNs, which speaks nothing else.
pub fn https_client(
    extra_ca: Option<&Path>,
    http2_only: bool,
    timeout: Duration,
) -> Result<HttpClient, TransportSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|e| TransportSetupError::File {
            what: "CA file",
            error: format!("{}: {e}", path.display()),
        })?;
        use rustls_pki_types::pem::PemObject as _;
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| TransportSetupError::Tls(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TransportSetupError::Tls(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(TransportSetupError::File {
                what: "CA file",
                error: format!("{}: no certificate in it", path.display()),
            });
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TransportSetupError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if http2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_all_versions().wrap_connector(http)
    };
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_only(http2_only)
        // One connection carries many concurrent streams; keep it alive between bursts.
        .http2_keep_alive_interval(Some(Duration::from_secs(30)))
        .pool_idle_timeout(Duration::from_secs(300))
        .build(connector))
}

/// `Retry-After` in seconds (the only form APNs and FCM use).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
