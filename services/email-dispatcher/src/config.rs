//! The dispatcher's configuration, read from the environment and validated (every problem
//! reported at once) before anything connects or binds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tidings_config::{ConfigError, Env};
use tidings_guest_access::{CodeSealer, Keyring};
use tidings_kafka::{ConsumerSettings, KafkaSettings, TopicSettings};
use tidings_telemetry::RuntimeSettings;

use lettre::message::Mailbox;
use tidings_delivery::Retry;

use crate::mailer::Endpoint;

#[derive(Clone)]
pub struct Config {
    pub admin_addr: Option<SocketAddr>,
    pub database_url: SecretString,
    pub db_schema: String,
    pub db_max_connections: u32,
    pub kafka: KafkaSettings,
    pub ticket_events_topic: String,
    pub access_codes_topic: String,
    pub notification_topic: String,
    pub dead_letter_topic: String,
    pub topics: TopicSettings,
    pub consumer: ConsumerSettings,
    pub smtp: Endpoint,
    pub smtp_pool_size: u32,
    pub from: Mailbox,
    pub customer_url: String,
    pub guest_url: String,
    pub keys: Arc<Keyring>,
    pub sealer: Arc<CodeSealer>,
    pub retry: Retry,
    /// How long send records are kept (at least the ticket topic's retention).
    pub retention: Duration,
    /// How often expired rows are pruned.
    pub prune_interval: Duration,
    pub message_timeout: Duration,
    pub runtime: RuntimeSettings,
    pub ce_source: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The database and SMTP URLs may carry passwords, the Kafka properties SASL
        // secrets; the keys are secrets.
        f.debug_struct("Config")
            .field("db_schema", &self.db_schema)
            .field("kafka", &self.kafka)
            .field("smtp", &self.smtp)
            .field("group_id", &self.consumer.group_id)
            .field("ticket_events_topic", &self.ticket_events_topic)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(Env::from_process())
    }

    pub fn load<F: Fn(&str) -> Option<String>>(mut env: Env<F>) -> Result<Self, ConfigError> {
        let admin_addr = env.optional_addr("TIDINGS_EMAIL_ADMIN_ADDR", "127.0.0.1:9465");
        let database_url = env.required_secret("DATABASE_URL");
        let db_schema = env
            .schema("TIDINGS_EMAIL_DB_SCHEMA")
            .unwrap_or_else(|| "tidings_email".into());
        let db_max_connections = env.parse("TIDINGS_EMAIL_DB_MAX_CONNECTIONS", 16u32);
        let kafka = KafkaSettings::from_env(&mut env);
        let ticket_events_topic =
            env.string("TIDINGS_TICKET_EVENTS_TOPIC", "tidings.ticket-events.v1");
        let access_codes_topic = env.string(
            "TIDINGS_ACCESS_CODES_TOPIC",
            "tidings.guest-access-codes.v1",
        );
        let notification_topic = env.string(
            "TIDINGS_NOTIFICATION_EVENTS_TOPIC",
            "tidings.notification-events.v1",
        );
        let dead_letter_topic =
            env.string("TIDINGS_EMAIL_DLQ_TOPIC", "tidings.email-dispatcher.dlq.v1");
        let topics = TopicSettings::from_env(&mut env);
        let consumer = ConsumerSettings::from_env(
            &mut env,
            "TIDINGS_EMAIL",
            "tidings-email-dispatcher",
            // Each lane waits on the send log, an SMTP session and the broker in turn, and
            // the sessions must never wait for a lane, so a backlog needs about a thousand
            // lanes; more buy little and cost memory (docs/performance.md has the measured
            // alternatives).
            (1024, 2000),
        );
        let smtp_url = env.secret("TIDINGS_SMTP_URL");
        let smtp_pool_size = env.parse("TIDINGS_SMTP_POOL_SIZE", 16u32);
        if smtp_pool_size == 0 {
            env.error("TIDINGS_SMTP_POOL_SIZE must be at least 1");
        }
        let smtp_timeout = Duration::from_secs(env.parse("TIDINGS_SMTP_TIMEOUT_SECS", 10u64));
        let smtp = match smtp_url.map(|u| Endpoint::parse(u.expose_secret(), smtp_timeout)) {
            Some(Ok(endpoint)) => Some(endpoint),
            Some(Err(e)) => {
                env.error(e.to_string());
                None
            }
            None => {
                env.error("TIDINGS_SMTP_URL is required");
                None
            }
        };
        let from_raw = env.string(
            "TIDINGS_EMAIL_FROM",
            "Tidings Support <no-reply@tidings.example>",
        );
        let from = from_raw
            .parse::<Mailbox>()
            .map_err(|e| env.error(format!("TIDINGS_EMAIL_FROM={from_raw:?}: {e}")))
            .ok();
        let customer_url = env.string(
            "TIDINGS_CUSTOMER_TICKET_URL",
            "http://127.0.0.1:8080/tickets/{ticket_id}",
        );
        let guest_url = env.string(
            "TIDINGS_GUEST_TICKET_URL",
            "http://127.0.0.1:8080/guest/tickets/{ticket_id}?link={token}",
        );
        if !guest_url.contains("{token}") {
            env.error("TIDINGS_GUEST_TICKET_URL must contain {token} (the guest link)");
        }
        let keys = env.secret_with(
            "TIDINGS_GUEST_KEYS",
            "the ticket service's, to mint links",
            Keyring::parse,
        );
        let sealer = env.secret_with(
            "TIDINGS_CODE_SEAL_KEY",
            "the ticket service's, to open codes",
            CodeSealer::parse,
        );
        let retry = Retry {
            first: Duration::from_millis(env.parse("TIDINGS_EMAIL_RETRY_FIRST_MS", 200u64)),
            max: Duration::from_millis(env.parse("TIDINGS_EMAIL_RETRY_MAX_MS", 30_000u64)),
            give_up_after: Duration::from_secs(env.parse("TIDINGS_EMAIL_GIVE_UP_SECS", 900u64)),
        };
        let retention = env.days("TIDINGS_EMAIL_RETENTION_DAYS", 30);
        let prune_interval =
            Duration::from_secs(env.parse("TIDINGS_PRUNE_INTERVAL_SECS", 3600u64).max(1));
        let message_timeout =
            Duration::from_millis(env.parse("TIDINGS_KAFKA_MESSAGE_TIMEOUT_MS", 5000u64));
        let runtime = RuntimeSettings::from_env(&mut env);
        let ce_source = env.string("TIDINGS_EMAIL_CE_SOURCE", "/tidings/email-dispatcher");
        env.finish()?;
        Ok(Config {
            admin_addr,
            database_url,
            db_schema,
            db_max_connections,
            kafka,
            ticket_events_topic,
            access_codes_topic,
            notification_topic,
            dead_letter_topic,
            topics,
            consumer,
            smtp: smtp.expect("checked by finish"),
            smtp_pool_size,
            from: from.expect("checked by finish"),
            customer_url,
            guest_url,
            keys: Arc::new(keys.expect("checked by finish")),
            sealer: Arc::new(sealer.expect("checked by finish")),
            retry,
            retention,
            prune_interval,
            message_timeout,
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
            "TIDINGS_GUEST_TICKET_URL" => Some("http://x/guest".into()),
            "TIDINGS_SMTP_POOL_SIZE" => Some("0".into()),
            _ => None,
        });
        let err = Config::load(env).unwrap_err().to_string();
        for needle in [
            "DATABASE_URL",
            "KAFKA_BROKERS",
            "TIDINGS_SMTP_URL",
            "TIDINGS_SMTP_POOL_SIZE",
            "TIDINGS_GUEST_TICKET_URL",
            "TIDINGS_GUEST_KEYS",
            "TIDINGS_CODE_SEAL_KEY",
        ] {
            assert!(err.contains(needle), "{needle} missing in {err}");
        }
    }

    #[test]
    fn smtp_url_and_sender_are_checked_with_the_rest() {
        let env = Env::with_lookup(|k| match k {
            "TIDINGS_SMTP_URL" => Some("smtp://mailer:hunter2@smtp.example.com".into()),
            "TIDINGS_EMAIL_FROM" => Some("not an address".into()),
            _ => None,
        });
        let err = Config::load(env).unwrap_err().to_string();
        assert!(err.contains("encrypted connection"), "{err}");
        assert!(err.contains("TIDINGS_EMAIL_FROM"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_carries_no_secret() {
        tidings_config::assert_debug_hides_secrets(
            Config::load,
            &[
                (
                    "TIDINGS_SMTP_URL",
                    "smtps://mailer:smtp-pass-3@smtp.example.com",
                ),
                ("TIDINGS_GUEST_KEYS", GUEST_KEYS),
                ("TIDINGS_CODE_SEAL_KEY", SEAL_KEY),
            ],
            &["smtp-pass-3", &GUEST_KEYS[3..40], &SEAL_KEY[..40]],
        );
    }
}
