//! Portal configuration, read from the environment and validated as a whole before anything
//! binds a port. docs/configuration.md has the table of every variable.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use tidings_config::{ConfigError, Env};
use tidings_telemetry::RuntimeSettings;

/// The cookie key must hold 64 bytes: 32 to sign and 32 to encrypt (the `cookie` crate's
/// private jar uses AES-256-GCM).
const COOKIE_KEY_BYTES: usize = 64;

#[derive(Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    /// `None` disables the admin (metrics) endpoint.
    pub admin_addr: Option<SocketAddr>,
    /// The ticket service's gRPC endpoint, e.g. `http://127.0.0.1:50051`.
    pub ticket_service_url: String,
    /// Where browsers reach the portal; `https://` makes every cookie `Secure` and
    /// `__Host-` prefixed.
    pub public_url: String,
    pub cookie_key: SecretString,
    /// Believe the last `X-Forwarded-For` address (the portal runs behind a proxy).
    pub trust_forwarded_for: bool,
    pub limits: LimitSettings,
    /// Sign-in for customers; `None` when `TIDINGS_OIDC_ISSUER` is unset (guests only).
    pub oidc: Option<crate::oidc::OidcSettings>,
    pub runtime: RuntimeSettings,
}

/// Requests per client address an hour, by kind; each allowed as a burst.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub code_requests: NonZeroU32,
    pub code_checks: NonZeroU32,
    pub guest_tickets: NonZeroU32,
    pub fresh_links: NonZeroU32,
    pub sign_ins: NonZeroU32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("admin_addr", &self.admin_addr)
            .field("ticket_service_url", &self.ticket_service_url)
            .field("public_url", &self.public_url)
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .field("limits", &self.limits)
            .field("oidc_issuer", &self.oidc.as_ref().map(|o| &o.issuer))
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(Env::from_process())
    }

    pub fn load<F: Fn(&str) -> Option<String>>(mut env: Env<F>) -> Result<Self, ConfigError> {
        let http_addr = env.parse(
            "TIDINGS_PORTAL_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 8080)),
        );
        let admin_addr = env.optional_addr("TIDINGS_PORTAL_ADMIN_ADDR", "127.0.0.1:9467");
        let ticket_service_url = env.string("TIDINGS_TICKET_SERVICE_URL", "http://127.0.0.1:50051");
        let public_url = env
            .string("TIDINGS_PORTAL_PUBLIC_URL", "http://127.0.0.1:8080")
            .trim_end_matches('/')
            .to_owned();
        if !public_url.starts_with("http://") && !public_url.starts_with("https://") {
            env.error(format!(
                "TIDINGS_PORTAL_PUBLIC_URL={public_url:?}: expected an http:// or https:// URL"
            ));
        }
        let cookie_key = env.secret_with(
            "TIDINGS_PORTAL_COOKIE_KEY",
            "base64 of 64 random bytes",
            |raw: &SecretString| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(raw.expose_secret().trim())
                    .map_err(|e| format!("not base64: {e}"))?;
                if bytes.len() < COOKIE_KEY_BYTES {
                    return Err(format!(
                        "{} bytes; the key must have at least {COOKIE_KEY_BYTES}",
                        bytes.len()
                    ));
                }
                Ok(raw.clone())
            },
        );
        let trust_forwarded_for = env.flag("TIDINGS_PORTAL_TRUST_FORWARDED_FOR", false);
        let mut per_hour = |key: &str, default: u32| {
            NonZeroU32::new(env.parse(key, default)).unwrap_or_else(|| {
                env.error(format!("{key} must be at least 1"));
                NonZeroU32::MIN
            })
        };
        let limits = LimitSettings {
            code_requests: per_hour("TIDINGS_PORTAL_CODE_REQUESTS_PER_HOUR", 20),
            code_checks: per_hour("TIDINGS_PORTAL_CODE_CHECKS_PER_HOUR", 60),
            guest_tickets: per_hour("TIDINGS_PORTAL_GUEST_TICKETS_PER_HOUR", 10),
            fresh_links: per_hour("TIDINGS_PORTAL_FRESH_LINKS_PER_HOUR", 10),
            sign_ins: per_hour("TIDINGS_PORTAL_SIGN_INS_PER_HOUR", 30),
        };
        let issuer = env.raw("TIDINGS_OIDC_ISSUER");
        let client_id = env.string("TIDINGS_OIDC_CLIENT_ID", "tidings-portal");
        let client_secret = env.secret("TIDINGS_OIDC_CLIENT_SECRET");
        let oidc = match (issuer, client_secret) {
            (None, _) => None,
            (Some(issuer), Some(client_secret)) => Some(crate::oidc::OidcSettings {
                issuer: issuer.trim_end_matches('/').to_owned(),
                client_id,
                client_secret,
                redirect_url: format!("{public_url}/oidc/callback"),
            }),
            (Some(_), None) => {
                env.error("TIDINGS_OIDC_CLIENT_SECRET is required when TIDINGS_OIDC_ISSUER is set");
                None
            }
        };
        let runtime = RuntimeSettings::from_env(&mut env);
        env.finish()?;
        Ok(Config {
            http_addr,
            admin_addr,
            ticket_service_url,
            public_url,
            cookie_key: cookie_key.expect("checked by finish"),
            trust_forwarded_for,
            limits,
            oidc,
            runtime,
        })
    }

    /// Served over TLS: cookies get `Secure` and the `__Host-` prefix.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    pub fn cookie_key_bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(self.cookie_key.expose_secret().trim())
            .expect("checked by load")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cG9ydGFsLWNvb2tpZS1rZXktcG9ydGFsLWNvb2tpZS1rZXktcG9ydGFsLWNvb2tpZS1rZXktcG9ydGFsLWNvb2tpZS1rZXkt";

    #[test]
    fn missing_and_bad_values_are_all_reported() {
        // Given a bad address, a short key and a relative public URL, when loaded, then
        // every problem is named at once.
        let env = Env::with_lookup(|k| match k {
            "TIDINGS_PORTAL_ADDR" => Some("nowhere".into()),
            "TIDINGS_PORTAL_COOKIE_KEY" => Some("c2hvcnQ=".into()),
            "TIDINGS_PORTAL_PUBLIC_URL" => Some("portal.example".into()),
            "TIDINGS_PORTAL_CODE_CHECKS_PER_HOUR" => Some("0".into()),
            "TIDINGS_OIDC_ISSUER" => Some("http://idp.example".into()),
            _ => None,
        });
        let err = Config::load(env).unwrap_err().to_string();
        for needle in [
            "TIDINGS_PORTAL_ADDR",
            "TIDINGS_PORTAL_COOKIE_KEY",
            "TIDINGS_PORTAL_PUBLIC_URL",
            "TIDINGS_PORTAL_CODE_CHECKS_PER_HOUR",
            "TIDINGS_OIDC_CLIENT_SECRET",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn https_makes_cookies_secure() {
        // Given the public URL, when loaded, then cookies are secure exactly over TLS.
        for (url, secure) in [
            ("https://help.example", true),
            ("http://127.0.0.1:8080", false),
        ] {
            let env = Env::with_lookup(|k| match k {
                "TIDINGS_PORTAL_COOKIE_KEY" => Some(KEY.into()),
                "TIDINGS_PORTAL_PUBLIC_URL" => Some(url.into()),
                _ => None,
            });
            assert_eq!(Config::load(env).unwrap().secure_cookies(), secure, "{url}");
        }
    }

    #[test]
    fn debug_output_carries_no_secret() {
        tidings_config::assert_debug_hides_secrets(
            Config::load,
            &[
                ("TIDINGS_PORTAL_COOKIE_KEY", KEY),
                ("TIDINGS_OIDC_ISSUER", "http://idp.example"),
                ("TIDINGS_OIDC_CLIENT_SECRET", "oidc-client-secret-1"),
            ],
            &[&KEY[..40], "oidc-client-secret-1"],
        );
    }
}
