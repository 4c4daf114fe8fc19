//! Reading configuration from the environment with every problem reported together, before
//! anything binds a port.

use std::str::FromStr;

use secrecy::SecretString;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// For configuration tests: loads a configuration from `vars` plus a database URL and Kafka
/// properties that carry passwords, and asserts that its `Debug` output shows none of
/// `secrets` nor those passwords.
pub fn assert_debug_hides_secrets<T: std::fmt::Debug>(
    load: impl FnOnce(Env<Box<dyn Fn(&str) -> Option<String>>>) -> Result<T, ConfigError>,
    vars: &[(&str, &str)],
    secrets: &[&str],
) {
    let mut all: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", "postgres://app:db-pass-1@db/tidings"),
        ("KAFKA_BROKERS", "127.0.0.1:9092"),
        (
            "TIDINGS_KAFKA_PROPERTIES",
            "security.protocol=SASL_SSL;sasl.username=u;sasl.password=sasl-pass-2",
        ),
    ]
    .into_iter()
    .chain(vars.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    all.retain(|_, v| !v.is_empty());
    let config = load(Env::with_lookup(Box::new(move |k| all.get(k).cloned())))
        .expect("the test configuration is valid");
    let shown = format!("{config:?}");
    for secret in ["db-pass-1", "sasl-pass-2"].iter().chain(secrets) {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}

/// Collects values and errors; `finish` fails with all errors at once.
pub struct Env<F: Fn(&str) -> Option<String>> {
    lookup: F,
    errors: Vec<String>,
}

impl Env<fn(&str) -> Option<String>> {
    pub fn from_process() -> Self {
        fn get(k: &str) -> Option<String> {
            std::env::var(k).ok().filter(|v| !v.trim().is_empty())
        }
        Env {
            lookup: get,
            errors: Vec::new(),
        }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn with_lookup(lookup: F) -> Self {
        Env {
            lookup,
            errors: Vec::new(),
        }
    }

    pub fn raw(&self, key: &str) -> Option<String> {
        (self.lookup)(key)
    }

    pub fn error(&mut self, msg: impl Into<String>) {
        self.errors.push(msg.into());
    }

    pub fn string(&mut self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_owned())
    }

    pub fn required(&mut self, key: &str) -> String {
        self.raw(key).unwrap_or_else(|| {
            self.errors.push(format!("{key} is required"));
            String::new()
        })
    }

    pub fn secret(&mut self, key: &str) -> Option<SecretString> {
        self.raw(key).map(SecretString::from)
    }

    /// A required value that may hold a secret (a database URL with its password): it stays
    /// out of `Debug` output and logs.
    pub fn required_secret(&mut self, key: &str) -> SecretString {
        self.secret(key).unwrap_or_else(|| {
            self.errors.push(format!("{key} is required"));
            SecretString::from(String::new())
        })
    }

    pub fn parse<T: FromStr>(&mut self, key: &str, default: T) -> T
    where
        T::Err: std::fmt::Display,
    {
        match self.raw(key) {
            None => default,
            Some(v) => v.trim().parse().unwrap_or_else(|e| {
                self.errors.push(format!("{key}={v:?}: {e}"));
                default
            }),
        }
    }

    pub fn flag(&mut self, key: &str, default: bool) -> bool {
        match self
            .raw(key)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None => default,
            Some("1" | "true" | "yes" | "on") => true,
            Some("0" | "false" | "no" | "off") => false,
            Some(v) => {
                self.errors
                    .push(format!("{key}={v:?}: expected true or false"));
                default
            }
        }
    }

    /// A required secret, parsed; a missing or unparsable one is reported with `hint`.
    pub fn secret_with<T, E: std::fmt::Display>(
        &mut self,
        key: &str,
        hint: &str,
        parse: impl FnOnce(&SecretString) -> Result<T, E>,
    ) -> Option<T> {
        match self.secret(key).map(|s| parse(&s)) {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                self.errors.push(format!("{key}: {e}"));
                None
            }
            None => {
                self.errors.push(format!("{key} is required ({hint})"));
                None
            }
        }
    }

    /// A retention in whole days, at least one.
    pub fn days(&mut self, key: &str, default: u32) -> std::time::Duration {
        let days = self.parse(key, default);
        if days == 0 {
            self.errors.push(format!("{key} must be at least 1 (days)"));
        }
        std::time::Duration::from_secs(u64::from(days) * 86_400)
    }

    /// A listen address, or `None` when set to `off`.
    pub fn optional_addr(&mut self, key: &str, default: &str) -> Option<std::net::SocketAddr> {
        let raw = self.string(key, default);
        if raw == "off" {
            return None;
        }
        raw.parse()
            .map_err(|e| self.errors.push(format!("{key}={raw:?}: {e}")))
            .ok()
    }

    /// A Postgres schema name (letters, digits and `_`, so it is safe to quote).
    pub fn schema(&mut self, key: &str) -> Option<String> {
        let s = self.raw(key)?;
        if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.errors
                .push(format!("{key}={s:?}: use letters, digits and _"));
        }
        Some(s)
    }

    /// `key=value;key=value` — semicolons, because librdkafka values may contain commas.
    pub fn kv_list(&mut self, key: &str) -> Vec<(String, String)> {
        let Some(raw) = self.raw(key) else {
            return vec![];
        };
        raw.split(';')
            .filter(|p| !p.trim().is_empty())
            .filter_map(|p| match p.split_once('=') {
                Some((k, v)) => Some((k.trim().to_owned(), v.trim().to_owned())),
                None => {
                    self.errors.push(format!("{key}: {p:?} is not key=value"));
                    None
                }
            })
            .collect()
    }

    /// `TIDINGS_LOG_FORMAT`: `text` (default) or `json`; true for JSON.
    pub fn log_json(&mut self) -> bool {
        match self.string("TIDINGS_LOG_FORMAT", "text").as_str() {
            "text" => false,
            "json" => true,
            other => {
                self.errors.push(format!(
                    "TIDINGS_LOG_FORMAT={other:?}: expected text or json"
                ));
                false
            }
        }
    }

    pub fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_errors_are_reported_together() {
        let mut env = Env::with_lookup(|k| match k {
            "PORT" => Some("eighty".into()),
            "FLAG" => Some("maybe".into()),
            _ => None,
        });
        let _: u16 = env.parse("PORT", 1);
        let _ = env.flag("FLAG", false);
        let _ = env.required("URL");
        let err = env.finish().unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }
}
