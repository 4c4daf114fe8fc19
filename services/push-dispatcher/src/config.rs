//! The push dispatcher's configuration, read from the environment and validated (every
//! problem reported at once) before anything connects or binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use tidings_auth::JwtSettings;
use tidings_delivery::Retry;
use tidings_kafka::{ConsumerSettings, KafkaSettings, TopicSettings};
use tidings_telemetry::RuntimeSettings;

use crate::registry::InvalidationGuard;
use tidings_config::{ConfigError, Env};

#[derive(Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub database_url: SecretString,
    pub db_schema: String,
    pub db_max_connections: u32,
    pub kafka: KafkaSettings,
    pub ticket_events_topic: String,
    pub notification_topic: String,
    pub dead_letter_topic: String,
    pub topics: TopicSettings,
    pub consumer: ConsumerSettings,
    pub jwt: JwtSettings,
    pub apns_url: String,
    pub apns_ca_file: Option<PathBuf>,
    pub apns_key_file: PathBuf,
    pub apns_key_id: String,
    pub apns_team_id: String,
    pub fcm_url: String,
    pub fcm_ca_file: Option<PathBuf>,
    pub fcm_service_account_file: PathBuf,
    pub provider_timeout: Duration,
    pub retry: Retry,
    pub hold_poll: Duration,
    /// How long a claim of held pushes lasts unless its claimer renews it.
    pub hold_lease: Duration,
    pub invalidation_guard: InvalidationGuard,
    /// How long send records and resolutions are kept (at least the ticket topic's retention).
    pub retention: Duration,
    /// How often expired rows are pruned.
    pub prune_interval: Duration,
    /// How long removed devices stay restorable.
    pub removed_device_retention: Duration,
    pub message_timeout: Duration,
    pub runtime: RuntimeSettings,
    pub ce_source: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("grpc_addr", &self.grpc_addr)
            .field("db_schema", &self.db_schema)
            .field("apns_url", &self.apns_url)
            .field("fcm_url", &self.fcm_url)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(Env::from_process())
    }

    pub fn load<F: Fn(&str) -> Option<String>>(mut env: Env<F>) -> Result<Self, ConfigError> {
        let grpc_addr = env.parse(
            "TIDINGS_PUSH_GRPC_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 50052)),
        );
        let admin_addr = env.optional_addr("TIDINGS_PUSH_ADMIN_ADDR", "127.0.0.1:9466");
        let database_url = env.required_secret("DATABASE_URL");
        let db_schema = env
            .schema("TIDINGS_PUSH_DB_SCHEMA")
            .unwrap_or_else(|| "tidings_push".into());
        let db_max_connections = env.parse("TIDINGS_PUSH_DB_MAX_CONNECTIONS", 16u32);
        let kafka = KafkaSettings::from_env(&mut env);
        let ticket_events_topic =
            env.string("TIDINGS_TICKET_EVENTS_TOPIC", "tidings.ticket-events.v1");
        let notification_topic = env.string(
            "TIDINGS_NOTIFICATION_EVENTS_TOPIC",
            "tidings.notification-events.v1",
        );
        let dead_letter_topic =
            env.string("TIDINGS_PUSH_DLQ_TOPIC", "tidings.push-dispatcher.dlq.v1");
        let topics = TopicSettings::from_env(&mut env);
        let consumer = ConsumerSettings::from_env(
            &mut env,
            "TIDINGS_PUSH",
            "tidings-push-dispatcher",
            (64, 2000),
        );
        let jwt = JwtSettings::from_env(&mut env);
        let apns_url = env.string("TIDINGS_APNS_URL", "https://api.push.apple.com");
        let apns_ca_file = env.raw("TIDINGS_APNS_CA_FILE").map(PathBuf::from);
        let apns_key_file = PathBuf::from(env.required("TIDINGS_APNS_KEY_FILE"));
        let apns_key_id = env.required("TIDINGS_APNS_KEY_ID");
        let apns_team_id = env.required("TIDINGS_APNS_TEAM_ID");
        let fcm_url = env.string("TIDINGS_FCM_URL", "https://fcm.googleapis.com");
        let fcm_ca_file = env.raw("TIDINGS_FCM_CA_FILE").map(PathBuf::from);
        let fcm_service_account_file =
            PathBuf::from(env.required("TIDINGS_FCM_SERVICE_ACCOUNT_FILE"));
        for (key, url) in [
            ("TIDINGS_APNS_URL", &apns_url),
            ("TIDINGS_FCM_URL", &fcm_url),
        ] {
            if !url.starts_with("https://") {
                env.error(format!("{key}={url:?}: must be an https:// URL"));
            }
        }
        let provider_timeout =
            Duration::from_secs(env.parse("TIDINGS_PUSH_PROVIDER_TIMEOUT_SECS", 10u64));
        let retry = Retry {
            first: Duration::from_millis(env.parse("TIDINGS_PUSH_RETRY_FIRST_MS", 200u64)),
            max: Duration::from_millis(env.parse("TIDINGS_PUSH_RETRY_MAX_MS", 30_000u64)),
            give_up_after: Duration::from_secs(env.parse("TIDINGS_PUSH_GIVE_UP_SECS", 300u64)),
        };
        let hold_poll = Duration::from_millis(env.parse("TIDINGS_PUSH_HOLD_POLL_MS", 1000u64));
        let hold_lease =
            Duration::from_secs(env.parse("TIDINGS_PUSH_HOLD_LEASE_SECS", 60u64).max(1));
        let invalidation_guard = InvalidationGuard {
            floor: env.parse("TIDINGS_PUSH_INVALIDATIONS_PER_HOUR", 100u64),
            share: env.parse("TIDINGS_PUSH_INVALIDATIONS_SHARE_PER_HOUR", 0.01f64),
        };
        if !(0.0..=1.0).contains(&invalidation_guard.share) {
            env.error("TIDINGS_PUSH_INVALIDATIONS_SHARE_PER_HOUR must be between 0 and 1");
        }
        let retention = env.days("TIDINGS_PUSH_RETENTION_DAYS", 30);
        let prune_interval =
            Duration::from_secs(env.parse("TIDINGS_PRUNE_INTERVAL_SECS", 3600u64).max(1));
        let removed_device_retention = env.days("TIDINGS_PUSH_REMOVED_DEVICE_DAYS", 30);
        let message_timeout =
            Duration::from_millis(env.parse("TIDINGS_KAFKA_MESSAGE_TIMEOUT_MS", 5000u64));
        let runtime = RuntimeSettings::from_env(&mut env);
        let ce_source = env.string("TIDINGS_PUSH_CE_SOURCE", "/tidings/push-dispatcher");
        env.finish()?;
        Ok(Config {
            grpc_addr,
            admin_addr,
            database_url,
            db_schema,
            db_max_connections,
            kafka,
            ticket_events_topic,
            notification_topic,
            dead_letter_topic,
            topics,
            consumer,
            jwt,
            apns_url,
            apns_ca_file,
            apns_key_file,
            apns_key_id,
            apns_team_id,
            fcm_url,
            fcm_ca_file,
            fcm_service_account_file,
            provider_timeout,
            retry,
            hold_poll,
            hold_lease,
            invalidation_guard,
            retention,
            prune_interval,
            removed_device_retention,
            message_timeout,
            runtime,
            ce_source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bad_values_are_all_reported() {
        let env = Env::with_lookup(|k| match k {
            "TIDINGS_APNS_URL" => Some("http://plain".into()),
            "TIDINGS_PUSH_OFFSET_RESET" => Some("middle".into()),
            _ => None,
        });
        let err = Config::load(env).unwrap_err().to_string();
        for needle in [
            "DATABASE_URL",
            "KAFKA_BROKERS",
            "TIDINGS_APNS_URL",
            "TIDINGS_APNS_KEY_FILE",
            "TIDINGS_APNS_KEY_ID",
            "TIDINGS_FCM_SERVICE_ACCOUNT_FILE",
            "TIDINGS_PUSH_OFFSET_RESET",
            "TIDINGS_JWT_HS256_SECRET",
        ] {
            assert!(err.contains(needle), "{needle} missing in {err}");
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
                ("TIDINGS_APNS_KEY_FILE", "/keys/apns.p8"),
                ("TIDINGS_APNS_KEY_ID", "KEYID"),
                ("TIDINGS_APNS_TEAM_ID", "TEAM"),
                ("TIDINGS_FCM_SERVICE_ACCOUNT_FILE", "/keys/fcm.json"),
            ],
            &["jwt-secret-3"],
        );
    }
}
