//! Publishing one record at a time and waiting for the broker's acknowledgement: for records
//! whose sender must know they are on the broker before it moves on (the dispatchers'
//! outcome events, written before their send record). librdkafka batches what many callers
//! publish at once.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaSettings, TopicSettings, ensure_topics, owned_headers};

pub struct Publisher {
    producer: FutureProducer,
    settings: KafkaSettings,
    topics: TopicSettings,
    timeout: Duration,
}

impl Publisher {
    /// An idempotent producer (see [`KafkaSettings::producer`]) that waits up to `linger`
    /// to batch records; a topic the broker does not know is created with `topics` (a
    /// broker that lost its topics, like a restarted tansu with memory storage) and the
    /// publish fails, for the caller to retry.
    pub fn new(
        settings: &KafkaSettings,
        topics: TopicSettings,
        message_timeout: Duration,
        linger: Duration,
    ) -> Result<Self, KafkaError> {
        let producer = settings
            .producer_config(message_timeout)
            .set("linger.ms", linger.as_millis().to_string())
            .create()?;
        Ok(Self {
            producer,
            settings: settings.clone(),
            topics,
            timeout: message_timeout,
        })
    }

    /// Returns once the broker acknowledged the record.
    pub async fn publish(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: &[(String, String)],
    ) -> Result<(), KafkaError> {
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(value)
            .headers(owned_headers(headers));
        match self
            .producer
            .send(record, rdkafka::util::Timeout::After(self.timeout))
            .await
        {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    )
                ) {
                    let topics = [(topic.to_owned(), self.topics.partitions)];
                    if let Err(err) =
                        ensure_topics(&self.settings, &topics, self.topics.replication).await
                    {
                        tracing::warn!(topic, error = %err, "could not create the topic");
                    }
                }
                Err(e)
            }
        }
    }
}
