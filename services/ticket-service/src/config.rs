//! Ticket service configuration, read from the environment and validated as a whole before
//! anything binds a port. docs/configuration.md has the table of every variable.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tidings_auth::JwtSettings;
use tidings_config::{ConfigError, Env};
use tidings_guest_access::{CodeSealer, Keyring};
use tidings_kafka::{KafkaSettings, TopicSettings};
use tidings_telemetry::RuntimeSettings;

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    /// `None` disables the admin (metrics) endpoint.
    pub admin_addr: Option<SocketAddr>,
    pub database_url: SecretString,
    pub db_schema: Option<String>,
    pub db_max_connections: u32,
    /// Decision states kept in memory for one-round-trip writes (0 disables).
    pub state_cache_capacity: usize,
    /// How long a command's idempotency record answers a retried call.
    pub idempotency_retention: Duration,
    /// How often expired rows are pruned.
    pub prune_interval: Duration,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub outbox: OutboxSettings,
    pub jwt: JwtSettings,
    pub guest: GuestSettings,
    pub runtime: RuntimeSettings,
    pub ce_source: String,
}

#[derive(Debug, Clone)]
pub struct Topics {
    pub ticket_events: String,
    pub access_codes: String,
    pub partitions: i32,
    pub replication: i32,
}

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub poll_interval: Duration,
    pub batch_size: i64,
    pub message_timeout: Duration,
}

#[derive(Clone)]
pub struct GuestSettings {
    pub keys: Arc<Keyring>,
    pub sealer: Arc<CodeSealer>,
    pub link_ttl: chrono::Duration,
    pub session_ttl: chrono::Duration,
    pub code_ttl: chrono::Duration,
    pub code_min_interval: chrono::Duration,
    /// Between two fresh links mailed for one ticket.
    pub fresh_link_min_interval: chrono::Duration,
    /// Guest tickets an hour, per calling address and per target email address.
    pub opens_per_client: NonZeroU32,
    pub opens_per_email: NonZeroU32,
    /// Peers whose `x-forwarded-for` is believed (the portal's address).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl std::fmt::Debug for GuestSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSettings")
            .field("keys", &self.keys)
            .field("link_ttl", &self.link_ttl)
            .field("session_ttl", &self.session_ttl)
            .field("code_ttl", &self.code_ttl)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(Env::from_process())
    }

    pub fn load<F: Fn(&str) -> Option<String>>(mut env: Env<F>) -> Result<Self, ConfigError> {
        let grpc_addr = env.parse(
            "TIDINGS_GRPC_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 50051)),
        );
        let admin_addr = env.optional_addr("TIDINGS_ADMIN_ADDR", "127.0.0.1:9464");
        let database_url = env.required_secret("DATABASE_URL");
        let db_schema = env.schema("TIDINGS_DB_SCHEMA");
        let db_max_connections = env.parse("TIDINGS_DB_MAX_CONNECTIONS", 16u32);
        let state_cache_capacity = env.parse("TIDINGS_STATE_CACHE_CAPACITY", 10_000usize);
        let idempotency_retention = env.days("TIDINGS_IDEMPOTENCY_RETENTION_DAYS", 30);
        let prune_interval =
            Duration::from_secs(env.parse("TIDINGS_PRUNE_INTERVAL_SECS", 3600u64).max(1));
        let kafka = KafkaSettings::from_env(&mut env);
        let topic_settings = TopicSettings::from_env(&mut env);
        let topics = Topics {
            ticket_events: env.string("TIDINGS_TICKET_EVENTS_TOPIC", "tidings.ticket-events.v1"),
            access_codes: env.string(
                "TIDINGS_ACCESS_CODES_TOPIC",
                "tidings.guest-access-codes.v1",
            ),
            partitions: topic_settings.partitions,
            replication: topic_settings.replication,
        };
        let outbox = OutboxSettings {
            poll_interval: Duration::from_millis(env.parse("TIDINGS_OUTBOX_POLL_MS", 500u64)),
            batch_size: env.parse("TIDINGS_OUTBOX_BATCH_SIZE", 500i64),
            message_timeout: Duration::from_millis(
                env.parse("TIDINGS_KAFKA_MESSAGE_TIMEOUT_MS", 5000u64),
            ),
        };
        if outbox.batch_size < 1 {
            env.error("TIDINGS_OUTBOX_BATCH_SIZE must be at least 1");
        }

        let jwt = JwtSettings::from_env(&mut env);

        let keys = env.secret_with(
            "TIDINGS_GUEST_KEYS",
            "kid:base64 of >= 32 random bytes",
            Keyring::parse,
        );
        let sealer = env.secret_with(
            "TIDINGS_CODE_SEAL_KEY",
            "base64 of 32 random bytes",
            CodeSealer::parse,
        );
        let link_ttl = chrono::Duration::days(env.parse("TIDINGS_GUEST_LINK_TTL_DAYS", 30i64));
        let session_ttl =
            chrono::Duration::hours(env.parse("TIDINGS_GUEST_SESSION_TTL_HOURS", 24i64));
        let code_ttl = chrono::Duration::seconds(env.parse("TIDINGS_ACCESS_CODE_TTL_SECS", 600i64));
        let code_min_interval =
            chrono::Duration::seconds(env.parse("TIDINGS_ACCESS_CODE_MIN_INTERVAL_SECS", 60i64));
        let fresh_link_min_interval = chrono::Duration::seconds(
            env.parse("TIDINGS_GUEST_FRESH_LINK_MIN_INTERVAL_SECS", 600i64),
        );
        let opens = |env: &mut Env<F>, key: &str, default: u32| {
            NonZeroU32::new(env.parse(key, default)).unwrap_or_else(|| {
                env.error(format!("{key} must be at least 1"));
                NonZeroU32::MIN
            })
        };
        let opens_per_client = opens(&mut env, "TIDINGS_GUEST_OPENS_PER_CLIENT_PER_HOUR", 30);
        let opens_per_email = opens(&mut env, "TIDINGS_GUEST_OPENS_PER_EMAIL_PER_HOUR", 5);
        let trusted_proxies = env
            .string("TIDINGS_TRUSTED_PROXIES", "")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                p.parse()
                    .map_err(|e| env.error(format!("TIDINGS_TRUSTED_PROXIES: {p:?}: {e}")))
                    .ok()
            })
            .collect();
        let runtime = RuntimeSettings::from_env(&mut env);
        let ce_source = env.string("TIDINGS_CE_SOURCE", "/tidings/ticket-service");
        env.finish()?;

        Ok(Config {
            grpc_addr,
            admin_addr,
            database_url,
            db_schema,
            db_max_connections,
            state_cache_capacity,
            idempotency_retention,
            prune_interval,
            kafka,
            topics,
            outbox,
            jwt,
            guest: GuestSettings {
                keys: Arc::new(keys.expect("checked by finish")),
                sealer: Arc::new(sealer.expect("checked by finish")),
                link_ttl,
                session_ttl,
                code_ttl,
                code_min_interval,
                fresh_link_min_interval,
                opens_per_client,
                opens_per_email,
                trusted_proxies,
            },
            runtime,
            ce_source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_KEYS: &str = "t1:dGVzdC1ndWVzdC1rZXktdGVzdC1ndWVzdC1rZXktdGVzdA==";
    const SEAL_KEY: &str = "c2VhbC1rZXktc2VhbC1rZXktc2VhbC1rZXktc2VhbC0=";

    #[test]
    fn missing_and_bad_values_are_all_reported() {
        let env = Env::with_lookup(|k| match k {
            "TIDINGS_GRPC_ADDR" => Some("nowhere".into()),
            "TIDINGS_GUEST_KEYS" => Some("k1:short".into()),
            _ => None,
        });
        let err = Config::load(env).unwrap_err().to_string();
        for needle in [
            "TIDINGS_GRPC_ADDR",
            "DATABASE_URL",
            "KAFKA_BROKERS",
            "TIDINGS_JWT_HS256_SECRET",
            "TIDINGS_GUEST_KEYS",
            "TIDINGS_CODE_SEAL_KEY",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn debug_output_carries_no_secret() {
        tidings_config::assert_debug_hides_secrets(
            Config::load,
            &[
                (
                    "TIDINGS_JWT_HS256_SECRET",
                    "jwt-secret-3-jwt-secret-3-jwt-secret-3",
                ),
                ("TIDINGS_GUEST_KEYS", GUEST_KEYS),
                ("TIDINGS_CODE_SEAL_KEY", SEAL_KEY),
            ],
            &["jwt-secret-3", &GUEST_KEYS[3..40], &SEAL_KEY[..40]],
        );
    }
}
