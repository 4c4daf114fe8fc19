//! Publishing one record at a time and waiting for the broker's acknowledgement: for records
//! whose sender must know they are on the broker before it moves on (the dispatchers'
//! outcome events, written before their send record). librdkafka batches what many callers
//! publish at once.

use std::sync::RwLock;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaSettings, TopicSettings, ensure_topics, owned_headers};

pub struct Publisher {
    producer: RenewingProducer,
    settings: KafkaSettings,
    topics: TopicSettings,
    timeout: Duration,
}

/// A producer that is replaced when its producer id is no good any more. An idempotent
/// producer fails for good when the broker no longer knows its id and sequence numbers (a
/// broker that lost its data answers `OutOfOrderSequenceNumber`), or gave the same id to a
/// newer producer (after losing its data it counts ids from the start again:
/// `ProducerFenced`). Records the failed one still held fail; their senders retry on the new
/// one, which gets an id of its own.
pub(crate) struct RenewingProducer {
    current: RwLock<FutureProducer>,
    make: Box<dyn Fn() -> Result<FutureProducer, KafkaError> + Send + Sync>,
}

impl RenewingProducer {
    pub(crate) fn new(
        make: impl Fn() -> Result<FutureProducer, KafkaError> + Send + Sync + 'static,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            current: RwLock::new(make()?),
            make: Box::new(make),
        })
    }

    pub(crate) fn get(&self) -> FutureProducer {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After a send on `used` failed with `error`: replaces it if it cannot send again.
    pub(crate) fn renew_if_fatal(&self, used: &FutureProducer, error: &KafkaError) {
        let reason = match used.client().fatal_error() {
            Some((code, text)) => format!("{code:?}: {text}"),
            None if matches!(
                error.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::OutOfOrderSequenceNumber
                        | RDKafkaErrorCode::InvalidProducerEpoch
                        | RDKafkaErrorCode::UnknownProducerId
                )
            ) =>
            {
                error.to_string()
            }
            None => return,
        };
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.client().native_ptr() != used.client().native_ptr() {
            return; // another sender replaced it already
        }
        match (self.make)() {
            Ok(fresh) => {
                tracing::warn!(error = %reason, "producer cannot send again; replaced");
                *current = fresh;
            }
            Err(e) => tracing::warn!(error = %e, "replacing a failed producer failed"),
        }
    }
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
        let make = {
            let settings = settings.clone();
            move || {
                settings
                    .producer_config(message_timeout)
                    .set("linger.ms", linger.as_millis().to_string())
                    .create()
            }
        };
        Ok(Self {
            producer: RenewingProducer::new(make)?,
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
        let producer = self.producer.get();
        match producer
            .send(record, rdkafka::util::Timeout::After(self.timeout))
            .await
        {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                self.producer.renew_if_fatal(&producer, &e);
                // A record for a topic the broker does not know waits in the producer for
                // the topic's metadata and times out, or fails with an unknown topic.
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::UnknownTopic
                            | RDKafkaErrorCode::MessageTimedOut
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
