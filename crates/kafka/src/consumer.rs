//! The dispatchers' consumer loop: at-least-once, in order per key, concurrent across keys.
//!
//! One task polls the consumer group. A record whose key (the ticket id) has nothing in
//! progress starts a *lane* of its own: a task that handles it and then whatever records of
//! that key arrived meanwhile, one after another, and ends when the key has none left. So
//! one ticket's records are handled in order while other tickets' records proceed in other
//! lanes — a ticket whose handler is retrying does not hold up the partition for everybody
//! else, and no ticket waits behind another that merely shares a lane (lanes used to be a
//! fixed set chosen by a hash of the key: at the end of a 50,000-record backlog the last
//! few hundred records waited behind unrelated tickets for ~300 ms).
//!
//! Offsets are stored only up to the oldest record of a partition that is not yet handled (a
//! watermark), and librdkafka commits what is stored, so nothing is committed before it was
//! handled. A record the handler refuses goes to the dead-letter topic with the reason in
//! headers; the loop never stops for one bad record.
//!
//! Shutdown: stop polling, let every lane finish the record it is on (handlers stop retrying),
//! store and synchronously commit what was handled, leave the group. Records that were queued
//! but not handled are delivered again to whoever owns the partition next.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::KafkaSettings;

/// One record, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Delivery {
    /// A header's value as UTF-8 (CloudEvents attributes, `traceparent`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Why a record was not handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhandled {
    /// It can never be handled (undecodable, permanently rejected, retries exhausted): it
    /// goes to the dead-letter topic with this reason, and the loop moves on.
    DeadLetter(String),
    /// Shutdown interrupted the handler; the record is not committed and comes back later.
    Interrupted,
}

/// What a dispatcher does with one record. Called once per record, in order per key; may be
/// called again for the same record after a crash or rebalance (at-least-once).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Result<(), Unhandled>> + Send;
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// For logs and metrics, e.g. `ticket-events`.
    pub name: &'static str,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Lanes at most: keys handled at once, each by one handler.
    pub lanes: usize,
    /// Records polled but not yet handled; polling pauses at this bound.
    pub max_in_flight: usize,
    pub dead_letter_topic: String,
    /// How often librdkafka commits the stored offsets.
    pub commit_interval: Duration,
    /// Where a group without committed offsets starts: `earliest` (nothing published before
    /// the first start is missed) or `latest` (a new deployment does not notify the past).
    pub offset_reset: String,
    /// How long the broker may hold a fetch waiting for data. Apache Kafka answers as soon as
    /// a record arrives, so a low value only adds idle fetches; tansu holds every fetch for
    /// the whole wait, so it sits directly in the notification latency (100 ms: p50 160 ms
    /// end to end; 5 ms: 12 ms).
    pub fetch_wait: Duration,
}

/// A dispatcher's consumer tuning, from `<prefix>_GROUP_ID`, `<prefix>_OFFSET_RESET`,
/// `<prefix>_LANES`, `<prefix>_MAX_IN_FLIGHT`, `<prefix>_COMMIT_INTERVAL_MS` and the shared
/// `TIDINGS_KAFKA_FETCH_WAIT_MS`.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group_id: String,
    pub offset_reset: String,
    pub lanes: usize,
    pub max_in_flight: usize,
    pub commit_interval: Duration,
    pub fetch_wait: Duration,
}

impl ConsumerSettings {
    /// `defaults` holds the lanes and in-flight bound to use when the environment says
    /// nothing.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &mut tidings_telemetry::config::Env<F>,
        prefix: &str,
        default_group: &str,
        defaults: (usize, usize),
    ) -> Self {
        let key = |k: &str| format!("{prefix}_{k}");
        let offset_reset = env.string(&key("OFFSET_RESET"), "earliest");
        if offset_reset != "earliest" && offset_reset != "latest" {
            env.error(format!(
                "{}={offset_reset:?}: expected earliest or latest",
                key("OFFSET_RESET")
            ));
        }
        let lanes = env.parse(&key("LANES"), defaults.0);
        let max_in_flight = env.parse(&key("MAX_IN_FLIGHT"), defaults.1);
        if lanes == 0 || max_in_flight == 0 {
            env.error(format!(
                "{} and {} must be at least 1",
                key("LANES"),
                key("MAX_IN_FLIGHT")
            ));
        }
        Self {
            group_id: env.string(&key("GROUP_ID"), default_group),
            offset_reset,
            lanes,
            max_in_flight,
            commit_interval: Duration::from_millis(env.parse(&key("COMMIT_INTERVAL_MS"), 500u64)),
            fetch_wait: Duration::from_millis(env.parse("TIDINGS_KAFKA_FETCH_WAIT_MS", 5u64)),
        }
    }

    /// A loop over `topics` in `group_id` (the settings' group unless given).
    pub fn consumer(
        &self,
        name: &'static str,
        group_id: Option<String>,
        topics: Vec<String>,
        dead_letter_topic: &str,
    ) -> ConsumerConfig {
        ConsumerConfig {
            name,
            group_id: group_id.unwrap_or_else(|| self.group_id.clone()),
            topics,
            lanes: self.lanes,
            max_in_flight: self.max_in_flight,
            dead_letter_topic: dead_letter_topic.to_owned(),
            commit_interval: self.commit_interval,
            offset_reset: self.offset_reset.clone(),
            fetch_wait: self.fetch_wait,
        }
    }
}

/// Per-partition progress: which polled offsets are still being handled.
#[derive(Default)]
struct Progress {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset handed to a lane.
    next: i64,
}

impl Progress {
    /// The offset to commit: everything before it has been handled.
    fn watermark(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

#[derive(Default)]
struct Tracker {
    partitions: HashMap<(String, i32), Progress>,
}

impl Tracker {
    fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        p.in_flight.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// Marks a record handled; returns the new watermark if it moved.
    fn complete(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        let before = p.watermark();
        if !p.in_flight.remove(&offset) {
            return None;
        }
        let after = p.watermark();
        (after != before).then_some(after)
    }

    fn watermarks(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), p) in &self.partitions {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(p.watermark()));
        }
        tpl
    }
}

/// Commits what was handled of partitions that are being taken away, and forgets them, so a
/// rebalance hands the next owner an exact starting point.
struct TrackingContext {
    tracker: Arc<Mutex<Tracker>>,
    name: &'static str,
}

impl ClientContext for TrackingContext {}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => {
                let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                let mut tpl = TopicPartitionList::new();
                for e in revoked.elements() {
                    if let Some(p) = tracker
                        .partitions
                        .remove(&(e.topic().to_owned(), e.partition()))
                    {
                        let _ = tpl.add_partition_offset(
                            e.topic(),
                            e.partition(),
                            Offset::Offset(p.watermark()),
                        );
                    }
                }
                if tpl.count() > 0
                    && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
                {
                    tracing::warn!(consumer = self.name, error = %e, "commit on revoke failed");
                }
                tracing::info!(
                    consumer = self.name,
                    partitions = revoked.count(),
                    "partitions revoked"
                );
            }
            Rebalance::Assign(assigned) => {
                tracing::info!(
                    consumer = self.name,
                    partitions = assigned.count(),
                    "partitions assigned"
                );
            }
            Rebalance::Error(e) => {
                tracing::warn!(consumer = self.name, error = %e, "rebalance error")
            }
        }
    }
}

/// A polled record and its place in the in-flight budget.
type Polled = (Delivery, OwnedSemaphorePermit);

/// Which records must be handled one after another: a record's key, or for a keyless record
/// its partition (whose order it then keeps).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LaneKey {
    Key(Vec<u8>),
    Partition(String, i32),
}

impl LaneKey {
    fn of(d: &Delivery) -> Self {
        match &d.key {
            Some(k) => Self::Key(k.clone()),
            None => Self::Partition(d.topic.clone(), d.partition),
        }
    }
}

/// The keys that have a lane, each with the records waiting for it.
struct Lanes<T> {
    waiting: HashMap<LaneKey, VecDeque<T>>,
}

impl<T> Lanes<T> {
    fn new() -> Self {
        Self {
            waiting: HashMap::new(),
        }
    }

    /// Queues `item` behind its key's lane, or, when the key has none, opens one and gives
    /// `item` back for a new lane to start with.
    fn admit(&mut self, key: &LaneKey, item: T) -> Option<T> {
        match self.waiting.get_mut(key) {
            Some(queue) => {
                queue.push_back(item);
                None
            }
            None => {
                self.waiting.insert(key.clone(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// The lane of `key` is done with its record: its next one, or `None` and the lane is
    /// closed (the key's next record opens a new one).
    fn next(&mut self, key: &LaneKey) -> Option<T> {
        let next = self.waiting.get_mut(key).and_then(VecDeque::pop_front);
        if next.is_none() {
            self.waiting.remove(key);
        }
        next
    }

    /// Closes the lane of `key` and drops what waits in it (shutdown).
    fn close(&mut self, key: &LaneKey) {
        self.waiting.remove(key);
    }
}

/// Runs the loop until `shutdown`; returns when the group has been left.
pub async fn run_consumer<H: Handler>(
    settings: &KafkaSettings,
    config: ConsumerConfig,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), KafkaError> {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let consumer: Arc<StreamConsumer<TrackingContext>> = Arc::new(
        settings
            .client_config()
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "true")
            // Only offsets we store (handled records) are ever committed.
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                config.commit_interval.as_millis().to_string(),
            )
            .set("auto.offset.reset", &config.offset_reset)
            .set(
                "fetch.wait.max.ms",
                config.fetch_wait.as_millis().to_string(),
            )
            // librdkafka prefetches up to 64 MB per consumer by default; the lanes hold at
            // most `max_in_flight` records anyway, so a few MB keep them fed.
            .set("queued.max.messages.kbytes", "8192")
            // When that queue is full librdkafka postpones the partition's next fetch by this
            // much (1 s by default; its documentation says to lower it with a low queue
            // bound): the last records of a backlog trickled in for up to a second.
            .set("fetch.queue.backoff.ms", "20")
            .create_with_context(TrackingContext {
                tracker: tracker.clone(),
                name: config.name,
            })?,
    );
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let dead_letters = DeadLetters {
        producer: settings.producer(Duration::from_secs(10))?,
        topic: config.dead_letter_topic.clone(),
        group: config.group_id.clone(),
    };
    let dead_letters = Arc::new(dead_letters);

    let budget = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let lane_count = config.lanes.clamp(1, Semaphore::MAX_PERMITS);
    // A lane holds one of these while it runs; at shutdown, taking them all waits for every
    // lane to finish the record it is on.
    let lane_slots = Arc::new(Semaphore::new(lane_count));
    let lanes = Arc::new(Mutex::new(Lanes::new()));
    let shared = Arc::new(LaneShared {
        handler,
        dead_letters,
        tracker: tracker.clone(),
        consumer: consumer.clone(),
        lanes: lanes.clone(),
        shutdown: shutdown.clone(),
        name: config.name,
    });
    tracing::info!(consumer = config.name, group = %config.group_id, topics = ?config.topics, "consuming");

    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = budget.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                // Transport errors are retried inside librdkafka; keep polling.
                tracing::warn!(consumer = config.name, error = %e, "consume error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let delivery = Delivery {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        drop(message);
        tracker.lock().unwrap_or_else(|p| p.into_inner()).begin(
            &delivery.topic,
            delivery.partition,
            delivery.offset,
        );
        let key = LaneKey::of(&delivery);
        let admitted = lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&key, (delivery, permit));
        if let Some(first) = admitted {
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                s = lane_slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            };
            tokio::spawn(lane(key, first, slot, shared.clone()));
        }
    }

    // Lanes finish the record they are on and drop the rest (not handled, not committed).
    drop(shared);
    let _ = lane_slots.acquire_many(lane_count as u32).await;
    let handled = tracker
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .watermarks();
    if handled.count() > 0 {
        let _ = consumer.store_offsets(&handled);
        match consumer.commit(&handled, CommitMode::Sync) {
            Ok(()) => tracing::info!(consumer = config.name, "offsets committed at shutdown"),
            Err(e) => tracing::warn!(consumer = config.name, error = %e, "final commit failed"),
        }
    }
    consumer.unsubscribe();
    // Serve the revocation that leaving triggers before the consumer is dropped: librdkafka
    // can hang forever when a rebalance is still pending as the consumer closes (it asks
    // its main thread for the rebalance protocol, which no longer answers; librdkafka
    // #4041, rust-rdkafka #509). Seen once, in the two-replica email test.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while consumer.assignment().is_ok_and(|a| a.count() > 0)
        && tokio::time::Instant::now() < deadline
    {
        // Records that still arrive are neither handled nor stored.
        let _ = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await;
    }
    Ok(())
}

/// What every lane of one consumer shares.
struct LaneShared<H> {
    handler: Arc<H>,
    dead_letters: Arc<DeadLetters>,
    tracker: Arc<Mutex<Tracker>>,
    consumer: Arc<StreamConsumer<TrackingContext>>,
    lanes: Arc<Mutex<Lanes<Polled>>>,
    shutdown: CancellationToken,
    name: &'static str,
}

/// Handles `first`, then the records of `key` that arrived meanwhile, in order, until there
/// are none (or shutdown, or a dead letter that cannot be published before it).
async fn lane<H: Handler>(
    key: LaneKey,
    first: Polled,
    _slot: OwnedSemaphorePermit,
    s: Arc<LaneShared<H>>,
) {
    let mut next = Some(first);
    while let Some((d, permit)) = next.take() {
        if s.shutdown.is_cancelled() || handle_one(&d, &s).await.is_err() {
            // Stopped early: what waits for this key is neither handled nor committed.
            s.lanes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .close(&key);
            return;
        }
        drop(permit);
        // `None` closed the lane: the key's next record opens another, so this one must
        // not touch the key again.
        next = s.lanes.lock().unwrap_or_else(|p| p.into_inner()).next(&key);
    }
}

/// Hands one record to the handler (or its reason to the dead-letter topic) and moves its
/// partition's watermark. Fails only when shutdown interrupted it.
async fn handle_one<H: Handler>(d: &Delivery, s: &LaneShared<H>) -> Result<(), ()> {
    let name = s.name;
    // Boxed: a lane waiting for records need not hold the space of a handler's future
    // (the email dispatcher's idle RSS fell by ~4 MiB).
    match Box::pin(s.handler.handle(d)).await {
        Ok(()) => {}
        Err(Unhandled::DeadLetter(reason)) => {
            metrics::counter!("tidings_dead_letters_total", "consumer" => name).increment(1);
            tracing::warn!(consumer = name, topic = %d.topic, partition = d.partition, offset = d.offset, %reason, "dead-lettered");
            s.dead_letters.publish(d, &reason, &s.shutdown).await?;
        }
        Err(Unhandled::Interrupted) => return Err(()),
    }
    metrics::counter!("tidings_consumed_total", "consumer" => name).increment(1);
    let moved = s
        .tracker
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .complete(&d.topic, d.partition, d.offset);
    if let Some(watermark) = moved {
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition_offset(&d.topic, d.partition, Offset::Offset(watermark));
        // Fails only for a partition revoked meanwhile; its next owner starts from the
        // offset committed at revocation and the handler's dedupe absorbs the overlap.
        let _ = s.consumer.store_offsets(&tpl);
    }
    Ok(())
}

struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    group: String,
}

impl DeadLetters {
    /// Publishes until the broker acknowledges (a dead letter must not be lost), or until
    /// shutdown, in which case the record stays uncommitted and comes back.
    async fn publish(
        &self,
        d: &Delivery,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), ()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(d.headers.len() + 5);
            for (k, v) in &d.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let partition = d.partition.to_string();
            let offset = d.offset.to_string();
            for (k, v) in [
                ("tidings_dlq_reason", reason),
                ("tidings_dlq_topic", d.topic.as_str()),
                ("tidings_dlq_partition", partition.as_str()),
                ("tidings_dlq_offset", offset.as_str()),
                ("tidings_dlq_group", self.group.as_str()),
            ] {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
            if let Some(k) = &d.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = &d.payload {
                record = record.payload(p.as_slice());
            }
            match self
                .producer
                .send(
                    record,
                    rdkafka::util::Timeout::After(Duration::from_secs(10)),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err((e, _)) => {
                    tracing::warn!(error = %e, topic = %self.topic, "dead-letter publish failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_waits_for_the_oldest_unhandled_record() {
        let mut t = Tracker::default();
        for o in 10..13 {
            t.begin("t", 0, o);
        }
        // 11 and 12 finish first: nothing before 10 is known handled, so nothing moves.
        assert_eq!(t.complete("t", 0, 11), None);
        assert_eq!(t.complete("t", 0, 12), None);
        // 10 finishes: everything up to 12 is handled, commit from 13.
        assert_eq!(t.complete("t", 0, 10), Some(13));
        // A record of a partition that was revoked meanwhile is ignored.
        assert_eq!(t.complete("t", 1, 5), None);
    }

    #[test]
    fn a_keys_records_queue_behind_its_lane_and_other_keys_open_their_own() {
        let a = LaneKey::Key(b"ticket-a".to_vec());
        let b = LaneKey::Key(b"ticket-b".to_vec());
        let mut lanes = Lanes::new();
        // Given a record of ticket a: it opens a lane and is handed back to start it
        assert_eq!(lanes.admit(&a, 1), Some(1));
        // When more of a arrive while it runs, they wait; b opens a lane of its own
        assert_eq!(lanes.admit(&a, 2), None);
        assert_eq!(lanes.admit(&a, 3), None);
        assert_eq!(lanes.admit(&b, 10), Some(10));
        // Then a's lane takes them in order, and closes when none is left
        assert_eq!(lanes.next(&a), Some(2));
        assert_eq!(lanes.next(&a), Some(3));
        assert_eq!(lanes.next(&a), None);
        // So a's next record opens a new lane
        assert_eq!(lanes.admit(&a, 4), Some(4));
        // A lane closed at shutdown drops what waits in it
        assert_eq!(lanes.admit(&b, 11), None);
        lanes.close(&b);
        assert_eq!(lanes.admit(&b, 12), Some(12));
    }

    #[test]
    fn keyless_records_share_their_partitions_lane() {
        let d = |key: Option<&str>, partition| Delivery {
            topic: "t".into(),
            partition,
            offset: 0,
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: None,
            headers: vec![],
        };
        assert_eq!(LaneKey::of(&d(None, 1)), LaneKey::of(&d(None, 1)));
        assert_ne!(LaneKey::of(&d(None, 1)), LaneKey::of(&d(None, 2)));
        assert_eq!(
            LaneKey::of(&d(Some("ticket-1"), 0)),
            LaneKey::Key(b"ticket-1".to_vec())
        );
    }
}
