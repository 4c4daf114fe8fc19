//! The dispatchers' consumer loop: at-least-once, in order per key, concurrent across keys.
//!
//! One task polls the consumer group. A record whose key (the ticket id) has nothing in
//! progress starts a *lane* of its own: a task that handles it and then whatever records of
//! that key arrived meanwhile, one after another, and ends when the key has none left. So
//! one ticket's records are handled in order while other tickets' records proceed in other
//! lanes — a ticket whose handler is retrying does not hold up the partition for everybody
//! else, and no ticket waits behind another that merely shares a lane, as it would with a
//! fixed set of lanes chosen by a hash of the key (at the end of a backlog, the last records
//! would wait behind unrelated tickets; docs/performance.md has the measurement).
//!
//! Offsets are committed only up to the oldest record of a partition that is not yet handled
//! (a watermark), so nothing is committed before it was handled: every `commit_interval`, at
//! revocation and at shutdown — by this loop, never by librdkafka on its own. A record the
//! handler refuses, or whose handler panics, goes to the dead-letter topic with the reason in
//! headers; the loop never stops for one bad record.
//!
//! Rebalances: records of a partition being revoked stop starting, the revocation waits for
//! those in a handler, then commits — so the next owner starts exactly after what was
//! handled and never handles a record at the same time as this process. An assignment that
//! was *lost* (the coordinator forgot this member) commits nothing; if the assignment that
//! follows is empty, the loop subscribes again once the topics exist (see
//! [`rejoin_after_loss`]).
//!
//! Shutdown: stop polling, let every lane finish the record it is on (handlers stop retrying),
//! synchronously commit what was handled, leave the group. Records that were queued but not
//! handled are delivered again to whoever owns the partition next.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::KafkaSettings;
use crate::publish::RenewingProducer;

/// How long a revocation waits for the handlers in progress on the partitions it takes away
/// (a send takes milliseconds; a handler retrying a failing provider stops at shutdown only).
/// Apache Kafka waits for a rejoining member up to `max.poll.interval.ms` (5 minutes).
const REVOKE_WAIT: Duration = Duration::from_secs(10);

/// How long a stopping loop waits for its consumer to leave the group. Leaving needs the
/// broker: when it is unreachable librdkafka's close never finishes, and the group notices
/// the member gone after its session instead.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The group consumer, shared by the loop and its helper tasks. Whoever drops the last
/// handle — the loop at shutdown, or a runtime dropping its tasks — does not close it
/// there: closing polls librdkafka until the group has been left, which never ends while
/// the broker is unreachable, and a tokio worker stuck there stops every task on it (a
/// runtime shutting down after the broker is gone would hang that way). The close
/// runs on a thread of its own, and `closed` says when it is done.
struct GroupConsumer {
    inner: Option<StreamConsumer<TrackingContext>>,
    closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::ops::Deref for GroupConsumer {
    type Target = StreamConsumer<TrackingContext>;

    fn deref(&self) -> &Self::Target {
        self.inner.as_ref().expect("only taken when dropped")
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        let (Some(consumer), closed) = (self.inner.take(), self.closed.take()) else {
            return;
        };
        let close = move || {
            drop(consumer);
            if let Some(closed) = closed {
                let _ = closed.send(());
            }
        };
        // Without a thread (none can be created) the close runs here, on the dropping one.
        let _ = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(close);
    }
}

/// Runs `f`, which blocks on librdkafka (a synchronous commit, a subscription change),
/// without holding up the other tasks of a multi-thread runtime's worker. A synchronous
/// commit waits for the coordinator's answer: up to `socket.timeout.ms` (60 s) while the
/// broker is unreachable.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

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
    /// How often the loop commits the handled offsets.
    pub commit_interval: Duration,
    /// Where a group without committed offsets starts: `earliest` (nothing published before
    /// the first start is missed) or `latest` (a new deployment does not notify the past).
    pub offset_reset: String,
    /// How long the broker may hold a fetch waiting for data. Apache Kafka answers as soon as
    /// a record arrives, so a low value only adds idle fetches; tansu holds every fetch for
    /// the whole wait, so it sits directly in the notification latency (docs/performance.md,
    /// push dispatcher).
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
        env: &mut tidings_config::Env<F>,
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

/// Per-partition progress under one assignment: which polled offsets are still being
/// handled, and whether the partition is being taken away.
#[derive(Default)]
struct Progress {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset handed to a lane.
    next: i64,
    /// Which assignment of the partition this is: a partition revoked and assigned again
    /// starts a new one, and records polled under the old one are not handled.
    epoch: u64,
    /// Being revoked: records not yet started stay unhandled (the next owner reads them
    /// again); the revocation waits for those already in a handler.
    revoked: bool,
    /// Records of the partition in a handler right now.
    running: usize,
    /// The offset last committed (or handed to a commit) for it.
    committed: i64,
}

impl Progress {
    /// The offset to commit: everything before it has been handled.
    fn watermark(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

type PartitionKey = (String, i32);

#[derive(Default)]
struct Tracker {
    partitions: HashMap<PartitionKey, Progress>,
    epochs: u64,
}

impl Tracker {
    /// A record was polled; returns the assignment it belongs to.
    fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> u64 {
        let epochs = &mut self.epochs;
        let p = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| {
                *epochs += 1;
                Progress {
                    epoch: *epochs,
                    ..Progress::default()
                }
            });
        p.in_flight.insert(offset);
        p.next = p.next.max(offset + 1);
        p.epoch
    }

    /// A lane is about to hand a record to its handler: only if its partition is still
    /// ours, under the same assignment, and not being revoked.
    fn start(&mut self, topic: &str, partition: i32, epoch: u64) -> bool {
        match self.partitions.get_mut(&(topic.to_owned(), partition)) {
            Some(p) if p.epoch == epoch && !p.revoked => {
                p.running += 1;
                true
            }
            _ => false,
        }
    }

    /// The handler is done with a started record (`handled`: it may be committed). Returns
    /// the new watermark if it moved.
    fn finish(
        &mut self,
        topic: &str,
        partition: i32,
        epoch: u64,
        offset: i64,
        handled: bool,
    ) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        if p.epoch != epoch {
            return None;
        }
        p.running -= 1;
        if !handled {
            return None;
        }
        let before = p.watermark();
        if !p.in_flight.remove(&offset) {
            return None;
        }
        let after = p.watermark();
        (after != before).then_some(after)
    }

    /// Starts revoking `keys`: no record of theirs starts any more.
    fn revoke(&mut self, keys: &[PartitionKey]) {
        for k in keys {
            if let Some(p) = self.partitions.get_mut(k) {
                p.revoked = true;
            }
        }
    }

    /// Whether a record of one of `keys` is still in a handler.
    fn busy(&self, keys: &[PartitionKey]) -> bool {
        keys.iter()
            .any(|k| self.partitions.get(k).is_some_and(|p| p.running > 0))
    }

    /// Forgets `keys`; returns what was handled of them, to commit.
    fn forget(&mut self, keys: &[PartitionKey]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for k in keys {
            if let Some(p) = self.partitions.remove(k) {
                let _ = tpl.add_partition_offset(&k.0, k.1, Offset::Offset(p.watermark()));
            }
        }
        tpl
    }

    /// What was handled since the last call, of the partitions still owned: the periodic
    /// commit.
    fn committable(&mut self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), p) in &mut self.partitions {
            let watermark = p.watermark();
            if !p.revoked && watermark > p.committed {
                p.committed = watermark;
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(watermark));
            }
        }
        tpl
    }

    fn watermarks(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), p) in &self.partitions {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(p.watermark()));
        }
        tpl
    }
}

/// The tracker, and a signal for a revocation waiting for handlers to finish.
#[derive(Default)]
struct Tracking {
    tracker: Mutex<Tracker>,
    finished: Condvar,
}

impl Tracking {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until no record of `keys` is in a handler, or `within` has passed. The
    /// handlers run on the runtime's other workers: in a multi-thread runtime this worker
    /// hands its tasks over while it waits; a current-thread runtime cannot run them
    /// meanwhile, so there it does not wait.
    fn wait_idle(&self, keys: &[PartitionKey], within: Duration) -> bool {
        let wait = || {
            let deadline = std::time::Instant::now() + within;
            let mut tracker = self.lock();
            while tracker.busy(keys) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return false;
                }
                tracker = self
                    .finished
                    .wait_timeout(tracker, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            true
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            Ok(_) => !self.lock().busy(keys),
            Err(_) => wait(),
        }
    }
}

/// Makes a rebalance hand the next owner an exact starting point: records of a partition
/// being taken away stop starting, those in a handler finish, and what was handled is
/// committed — unless the assignment was lost (the group moved on without us, or the broker
/// forgot the group): then our offsets may belong to a log that no longer exists, and
/// committing them would make the next owner skip records.
struct TrackingContext {
    tracking: Arc<Tracking>,
    /// Set when an assignment was lost, until the next assignment.
    lost_pending: std::sync::atomic::AtomicBool,
    /// Signalled when the assignment after a lost one is empty (see [`rejoin_after_loss`]).
    lost: Arc<tokio::sync::Notify>,
    name: &'static str,
}

impl ClientContext for TrackingContext {}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => {
                let lost = consumer.assignment_lost();
                let keys: Vec<PartitionKey> = revoked
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                self.tracking.lock().revoke(&keys);
                if !self.tracking.wait_idle(&keys, REVOKE_WAIT) {
                    tracing::warn!(
                        consumer = self.name,
                        "handlers still running at revocation; their records go to the next owner"
                    );
                }
                let tpl = self.tracking.lock().forget(&keys);
                if lost {
                    tracing::warn!(
                        consumer = self.name,
                        partitions = %partition_list(revoked),
                        "assignment lost; nothing committed"
                    );
                    self.lost_pending
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                if tpl.count() > 0
                    && let Err(e) = blocking(|| consumer.commit(&tpl, CommitMode::Sync))
                {
                    tracing::warn!(consumer = self.name, error = %e, "commit on revoke failed");
                }
                tracing::info!(
                    consumer = self.name,
                    partitions = %partition_list(revoked),
                    "partitions revoked"
                );
            }
            Rebalance::Assign(assigned) => {
                let after_loss = self
                    .lost_pending
                    .swap(false, std::sync::atomic::Ordering::SeqCst);
                if after_loss && assigned.count() == 0 {
                    self.lost.notify_one();
                }
                tracing::info!(
                    consumer = self.name,
                    partitions = %partition_list(assigned),
                    "partitions assigned"
                );
            }
            Rebalance::Error(e) => {
                tracing::warn!(consumer = self.name, error = %e, "rebalance error")
            }
        }
    }
}

/// `topic[0,2] other[1]`, for logs; `-` when empty.
fn partition_list(tpl: &TopicPartitionList) -> String {
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for e in tpl.elements() {
        by_topic
            .entry(e.topic().to_owned())
            .or_default()
            .push(e.partition());
    }
    if by_topic.is_empty() {
        return "-".into();
    }
    by_topic
        .iter()
        .map(|(t, ps)| {
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{t}[{}]", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A polled record, the assignment it was polled under, and its place in the in-flight
/// budget.
type Polled = (Delivery, u64, OwnedSemaphorePermit);

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
    let tracking = Arc::new(Tracking::default());
    let lost = Arc::new(tokio::sync::Notify::new());
    let mut client = settings.client_config();
    // Group membership defaults an operator may override in TIDINGS_KAFKA_PROPERTIES:
    // - a member that died (kill -9) is noticed after its session: librdkafka's default is
    //   45 s of no notifications; 6 s is Apache Kafka's smallest allowed session;
    // - a subscribed topic that was deleted and created again (a broker that lost its
    //   data, then the relay's first publish) is noticed at the next metadata refresh:
    //   5 minutes by default, 5 s here.
    for (key, value) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "1500"),
        ("topic.metadata.refresh.interval.ms", "5000"),
    ] {
        if client.get(key).is_none() {
            client.set(key, value);
        }
    }
    let (closed, left_group) = tokio::sync::oneshot::channel();
    let consumer = Arc::new(GroupConsumer {
        inner: Some(
            client
                .set("group.id", &config.group_id)
                // We commit (periodically, at revocation, at shutdown) what was handled, and
                // nothing else: librdkafka's own commits would also run when an assignment was
                // lost — offsets of a log the broker no longer has, which make the next owner
                // of the new log skip records.
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
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
                // bound): otherwise the last records of a backlog trickle in for up to a second.
                .set("fetch.queue.backoff.ms", "20")
                .create_with_context(TrackingContext {
                    tracking: tracking.clone(),
                    lost_pending: Default::default(),
                    lost: lost.clone(),
                    name: config.name,
                })?,
        ),
        closed: Some(closed),
    });
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let dead_letters = DeadLetters {
        producer: {
            let settings = settings.clone();
            RenewingProducer::new(move || settings.producer(Duration::from_secs(10)))?
        },
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
        tracking: tracking.clone(),
        lanes: lanes.clone(),
        shutdown: shutdown.clone(),
        name: config.name,
    });
    tracing::info!(consumer = config.name, group = %config.group_id, topics = ?config.topics, "consuming");
    let committer = tokio::spawn(commit_periodically(
        consumer.clone(),
        tracking.clone(),
        config.commit_interval,
        shutdown.clone(),
    ));
    let rejoiner = tokio::spawn(rejoin_after_loss(
        consumer.clone(),
        config.topics.clone(),
        lost,
        config.name,
        shutdown.clone(),
    ));

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
        let epoch = tracking
            .lock()
            .begin(&delivery.topic, delivery.partition, delivery.offset);
        let key = LaneKey::of(&delivery);
        let admitted = lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&key, (delivery, epoch, permit));
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
    let _ = committer.await;
    let _ = rejoiner.await;
    let handled = tracking.lock().watermarks();
    if handled.count() > 0 {
        match blocking(|| consumer.commit(&handled, CommitMode::Sync)) {
            Ok(()) => tracing::info!(consumer = config.name, "offsets committed at shutdown"),
            Err(e) => tracing::warn!(consumer = config.name, error = %e, "final commit failed"),
        }
    }
    blocking(|| consumer.unsubscribe());
    // Serve the revocation that leaving triggers before the consumer is dropped: librdkafka
    // can hang forever when a rebalance is still pending as the consumer closes (it asks
    // its main thread for the rebalance protocol, which no longer answers; librdkafka
    // #4041, rust-rdkafka #509); stopping two replicas mid-rebalance is enough to hit it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while consumer.assignment().is_ok_and(|a| a.count() > 0)
        && tokio::time::Instant::now() < deadline
    {
        // Records that still arrive are neither handled nor stored.
        let _ = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await;
    }
    drop(consumer);
    match tokio::time::timeout(CLOSE_WAIT, left_group).await {
        Ok(_) => tracing::info!(consumer = config.name, "left the group"),
        Err(_) => tracing::warn!(
            consumer = config.name,
            "the consumer did not close within {CLOSE_WAIT:?} (broker unreachable?); the group \
             notices after its session"
        ),
    }
    Ok(())
}

/// Runs the loop as a task of its own. A loop that fails or panics stops the process: it
/// sets `failed` and cancels `shutdown`, so the service exits with an error and its
/// orchestrator restarts it, rather than staying up, healthy-looking, consuming nothing.
pub fn spawn_consumer<H: Handler>(
    settings: KafkaSettings,
    config: ConsumerConfig,
    handler: Arc<H>,
    shutdown: CancellationToken,
    failed: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let name = config.name;
    let stop = shutdown.clone();
    tidings_telemetry::spawn_essential(
        name,
        async move { run_consumer(&settings, config, handler, stop).await },
        shutdown,
        failed,
    )
}

/// Commits what was handled every `interval`, until shutdown (whose final commit is
/// synchronous).
async fn commit_periodically(
    consumer: Arc<GroupConsumer>,
    tracking: Arc<Tracking>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let tpl = tracking.lock().committable();
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(error = %e, "periodic commit failed");
        }
    }
}

/// After the group lost our assignment — the coordinator forgot us: a broker that lost its
/// data, or a session that expired — librdkafka rejoins at once, often before the topics
/// are back (an empty broker has them only once a producer recreates them). When that
/// assignment covers no partition, librdkafka never rejoins by itself: its cached view of
/// the subscribed topics (names and partition counts) did not change. So then wait until
/// every subscribed topic exists again, and subscribe afresh, which rejoins with them.
async fn rejoin_after_loss(
    consumer: Arc<GroupConsumer>,
    topics: Vec<String>,
    lost: Arc<tokio::sync::Notify>,
    name: &'static str,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lost.notified() => {}
        }
        loop {
            let c = consumer.clone();
            let wanted = topics.clone();
            let present = tokio::task::spawn_blocking(move || {
                wanted.iter().all(|t| {
                    c.fetch_metadata(Some(t), Duration::from_secs(5))
                        .is_ok_and(|m| {
                            m.topics().iter().any(|mt| {
                                mt.name() == t
                                    && mt.error().is_none()
                                    && !mt.partitions().is_empty()
                            })
                        })
                })
            })
            .await
            .unwrap_or(false);
            if present {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        match blocking(|| {
            consumer.unsubscribe();
            consumer.subscribe(&names)
        }) {
            Ok(()) => tracing::info!(consumer = name, "subscribed again after a lost assignment"),
            Err(e) => tracing::warn!(consumer = name, error = %e, "subscribing again failed"),
        }
    }
}

/// What every lane of one consumer shares.
struct LaneShared<H> {
    handler: Arc<H>,
    dead_letters: Arc<DeadLetters>,
    tracking: Arc<Tracking>,
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
    while let Some((d, epoch, permit)) = next.take() {
        if s.shutdown.is_cancelled() {
            // Stopped early: what waits for this key is neither handled nor committed.
            s.lanes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .close(&key);
            return;
        }
        // A record of a partition taken away meanwhile is left to its next owner.
        if s.tracking.lock().start(&d.topic, d.partition, epoch) {
            let outcome = handle_one(&d, &s).await;
            s.tracking
                .lock()
                .finish(&d.topic, d.partition, epoch, d.offset, outcome.is_ok());
            s.tracking.finished.notify_all();
            if outcome.is_err() {
                s.lanes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .close(&key);
                return;
            }
        }
        drop(permit);
        // `None` closed the lane: the key's next record opens another, so this one must
        // not touch the key again.
        next = s.lanes.lock().unwrap_or_else(|p| p.into_inner()).next(&key);
    }
}

/// Hands one record to the handler (or its reason to the dead-letter topic). A handler that
/// panics dead-letters the record like one that refuses it: the lane, the partition and the
/// loop go on. Fails only when shutdown interrupted it.
async fn handle_one<H: Handler>(d: &Delivery, s: &LaneShared<H>) -> Result<(), ()> {
    let name = s.name;
    // Boxed: a lane waiting for records need not hold the space of a handler's future,
    // which across a thousand lanes is megabytes of idle memory.
    let outcome = std::panic::AssertUnwindSafe(Box::pin(s.handler.handle(d)))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            metrics::counter!("tidings_handler_panics_total", "consumer" => name).increment(1);
            Err(Unhandled::DeadLetter(format!(
                "handler panicked: {}",
                tidings_telemetry::panic_message(panic.as_ref())
            )))
        });
    match outcome {
        Ok(()) => {}
        Err(Unhandled::DeadLetter(reason)) => {
            metrics::counter!("tidings_dead_letters_total", "consumer" => name).increment(1);
            tracing::warn!(consumer = name, topic = %d.topic, partition = d.partition, offset = d.offset, %reason, "dead-lettered");
            s.dead_letters.publish(d, &reason, &s.shutdown).await?;
        }
        Err(Unhandled::Interrupted) => return Err(()),
    }
    metrics::counter!("tidings_consumed_total", "consumer" => name).increment(1);
    Ok(())
}

struct DeadLetters {
    producer: RenewingProducer,
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
            let producer = self.producer.get();
            match producer
                .send(
                    record,
                    rdkafka::util::Timeout::After(Duration::from_secs(10)),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err((e, _)) => {
                    self.producer.renew_if_fatal(&producer, &e);
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
        let epoch = t.begin("t", 0, 10);
        for o in 11..13 {
            assert_eq!(t.begin("t", 0, o), epoch, "one assignment, one epoch");
        }
        for _ in 10..13 {
            assert!(t.start("t", 0, epoch));
        }
        // 11 and 12 finish first: nothing before 10 is known handled, so nothing moves.
        assert_eq!(t.finish("t", 0, epoch, 11, true), None);
        assert_eq!(t.finish("t", 0, epoch, 12, true), None);
        // 10 finishes: everything up to 12 is handled, commit from 13.
        assert_eq!(t.finish("t", 0, epoch, 10, true), Some(13));
        // A record of a partition that was revoked meanwhile is ignored.
        assert_eq!(t.finish("t", 1, epoch, 5, true), None);
    }

    #[test]
    fn an_interrupted_record_holds_the_watermark() {
        let mut t = Tracker::default();
        let epoch = t.begin("t", 0, 0);
        t.begin("t", 0, 1);
        assert!(t.start("t", 0, epoch) && t.start("t", 0, epoch));
        assert_eq!(t.finish("t", 0, epoch, 0, false), None);
        assert_eq!(t.finish("t", 0, epoch, 1, true), None);
        assert_eq!(t.watermarks().elements()[0].offset(), Offset::Offset(0));
        assert!(!t.busy(&[("t".into(), 0)]));
    }

    #[test]
    fn a_revoked_partition_starts_nothing_and_commits_what_its_handlers_finished() {
        // Given a partition with records 0..3 polled, 0 in a handler
        let mut t = Tracker::default();
        let key = [("t".to_owned(), 0)];
        let epoch = t.begin("t", 0, 0);
        t.begin("t", 0, 1);
        t.begin("t", 0, 2);
        assert!(t.start("t", 0, epoch));
        // When it is revoked
        t.revoke(&key);
        // Then the queued records do not start, and the revocation waits for record 0
        assert!(!t.start("t", 0, epoch));
        assert!(t.busy(&key));
        assert_eq!(t.finish("t", 0, epoch, 0, true), Some(1));
        assert!(!t.busy(&key));
        // And commits from the first record not handled
        let tpl = t.forget(&key);
        assert_eq!(tpl.elements()[0].offset(), Offset::Offset(1));
        // A later assignment of the same partition is a new one: the old records stay out
        let again = t.begin("t", 0, 1);
        assert_ne!(again, epoch);
        assert!(!t.start("t", 0, epoch));
        assert!(t.start("t", 0, again));
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
