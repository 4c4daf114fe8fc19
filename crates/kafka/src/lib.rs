//! Kafka for Tidings: producer and admin settings, idempotent topic creation, the
//! CloudEvents binary-binding headers, the transactional-outbox relay, publishing with an
//! awaited acknowledgement, and the dispatchers' at-least-once consumer loop.

mod consumer;
mod publish;

pub use consumer::{
    ConsumerConfig, ConsumerSettings, Delivery, Handler, Unhandled, run_consumer, spawn_consumer,
};
pub use publish::Publisher;
pub use rdkafka::error::KafkaError;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use tidings_config::Env;

/// How topics are created when missing: `TIDINGS_TOPIC_PARTITIONS`, `TIDINGS_TOPIC_REPLICATION`.
#[derive(Debug, Clone, Copy)]
pub struct TopicSettings {
    pub partitions: i32,
    pub replication: i32,
}

impl TopicSettings {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &mut Env<F>) -> Self {
        let partitions = env.parse("TIDINGS_TOPIC_PARTITIONS", 6i32);
        if partitions < 1 {
            env.error("TIDINGS_TOPIC_PARTITIONS must be at least 1");
        }
        Self {
            partitions,
            replication: env.parse("TIDINGS_TOPIC_REPLICATION", 1i32),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Connection settings shared by producers, consumers and admin clients.
#[derive(Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    /// Extra librdkafka properties (e.g. security.protocol, sasl.*) for production clusters.
    pub extra: Vec<(String, String)>,
}

/// librdkafka properties whose values are secrets (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `ssl.key.pem`, …).
fn is_secret_property(key: &str) -> bool {
    [
        "password",
        "secret",
        ".pem",
        "sasl.jaas",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|s| key.contains(s))
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let extra: Vec<_> = self
            .extra
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    "<redacted>"
                } else {
                    v
                };
                format!("{k}={v}")
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("extra", &extra)
            .finish()
    }
}

impl KafkaSettings {
    /// `KAFKA_BROKERS` and `TIDINGS_KAFKA_PROPERTIES` (`key=value;…` for librdkafka).
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &mut Env<F>) -> Self {
        Self {
            brokers: env.required("KAFKA_BROKERS"),
            extra: env.kv_list("TIDINGS_KAFKA_PROPERTIES"),
        }
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    /// Idempotent, fully acknowledged, low-latency producer: ordering per partition survives
    /// retries, and nothing counts as sent until all in-sync replicas have it.
    pub fn producer(&self, message_timeout: Duration) -> Result<FutureProducer, KafkaError> {
        self.producer_config(message_timeout).create()
    }

    /// The configuration [`KafkaSettings::producer`] creates, to adjust before creating.
    pub fn producer_config(&self, message_timeout: Duration) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                message_timeout.as_millis().to_string(),
            );
        c
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        self.client_config().create()
    }
}

/// `configured`, or `topic`'s `retention.ms` if the broker says it is longer: a record that
/// deduplicates redeliveries must live as long as the record it was made for can come back.
/// A broker that cannot say (or keeps the topic forever) leaves `configured`, with a warning.
pub async fn retention_covering(
    settings: &KafkaSettings,
    topic: &str,
    configured: Duration,
) -> Duration {
    use rdkafka::admin::ResourceSpecifier;
    let topic_ms = async {
        let admin = settings.admin().ok()?;
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
        let described = admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
            .await
            .ok()?;
        let resource = described.into_iter().next()?.ok()?;
        let entry = resource.entries.iter().find(|e| e.name == "retention.ms")?;
        entry.value.as_deref()?.parse::<i64>().ok()
    }
    .await;
    match topic_ms {
        Some(ms) if ms > 0 && Duration::from_millis(ms as u64) > configured => {
            let topic_retention = Duration::from_millis(ms as u64);
            tracing::warn!(
                topic,
                configured_days = configured.as_secs() / 86_400,
                topic_days = topic_retention.as_secs() / 86_400,
                "retention raised to the topic's: records must outlive possible redeliveries"
            );
            topic_retention
        }
        Some(ms) if ms > 0 => configured,
        _ => {
            tracing::warn!(
                topic,
                "the topic's retention is unknown or unlimited; keeping records for the configured retention"
            );
            configured
        }
    }
}

/// String headers (CloudEvents attributes, `traceparent`) as librdkafka takes them.
pub fn owned_headers(headers: &[(String, String)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        },
    )
}

/// Creates topics that are missing; existing ones are left as they are.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[(String, i32)],
    replication: i32,
) -> Result<(), KafkaSetupError> {
    let admin = settings.admin()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// CloudEvents 1.0 Kafka protocol binding, binary mode: event attributes travel as `ce_*`
/// headers and the record value is the event data itself. A W3C `traceparent` rides along
/// so consumers continue the producer's trace.
pub struct CloudEvent<'a> {
    pub id: &'a str,
    pub ce_type: &'a str,
    pub source: &'a str,
    pub subject: &'a str,
    pub time: DateTime<Utc>,
    pub content_type: &'a str,
    pub traceparent: Option<&'a str>,
}

impl CloudEvent<'_> {
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            ("ce_specversion".to_owned(), "1.0".to_owned()),
            ("ce_id".to_owned(), self.id.to_owned()),
            ("ce_type".to_owned(), self.ce_type.to_owned()),
            ("ce_source".to_owned(), self.source.to_owned()),
            (
                "ce_time".to_owned(),
                self.time.to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
            ("ce_subject".to_owned(), self.subject.to_owned()),
            ("content-type".to_owned(), self.content_type.to_owned()),
        ];
        if let Some(tp) = self.traceparent {
            h.push(("traceparent".to_owned(), tp.to_owned()));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudevent_headers_follow_the_binary_binding() {
        let h = CloudEvent {
            id: "e1",
            ce_type: "tidings.ticket.ReplyAdded.v1",
            source: "/tidings/ticket-service",
            subject: "t1",
            time: DateTime::from_timestamp(0, 0).unwrap(),
            content_type: "application/protobuf",
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        }
        .headers();
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ce_specversion"), Some("1.0"));
        assert_eq!(get("ce_time"), Some("1970-01-01T00:00:00.000000Z"));
        assert_eq!(get("content-type"), Some("application/protobuf"));
        assert!(get("traceparent").is_some());
    }

    #[test]
    fn debug_output_hides_secret_properties() {
        let settings = KafkaSettings {
            brokers: "kafka:9093".into(),
            extra: vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.username".into(), "tidings".into()),
                ("sasl.password".into(), "sasl-pass".into()),
                ("ssl.key.password".into(), "key-pass".into()),
            ],
        };
        let shown = format!("{settings:?}");
        assert!(
            shown.contains("SASL_SSL") && shown.contains("tidings"),
            "{shown}"
        );
        assert!(
            !shown.contains("sasl-pass") && !shown.contains("key-pass"),
            "{shown}"
        );
    }
}
