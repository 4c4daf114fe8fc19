//! The dispatchers' consumer loop on its own, with a handler that panics on one record: the
//! record goes to the dead-letter topic with the panic as its reason, the same ticket's later
//! records and every other ticket's are handled, and the partition's offset moves on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::producer::FutureRecord;
use tidings_kafka::{ConsumerConfig, Delivery, Handler, KafkaSettings, Unhandled, spawn_consumer};
use tidings_tests::*;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Panicky {
    handled: Mutex<Vec<String>>,
}

impl Handler for Panicky {
    async fn handle(&self, d: &Delivery) -> Result<(), Unhandled> {
        let body = String::from_utf8_lossy(d.payload.as_deref().unwrap_or_default()).into_owned();
        if body == "boom" {
            // What a `Row::get` on an unexpected NULL does.
            panic!("unexpected NULL in column outcome");
        }
        self.handled.lock().unwrap().push(body);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_dead_letters_its_record_and_the_lane_goes_on() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (topic, dlq) = (format!("test.loop.{id}"), format!("test.loop.{id}.dlq"));
    let settings = KafkaSettings {
        brokers: kafka_brokers(),
        extra: vec![],
    };
    tidings_kafka::ensure_topics(&settings, &[(topic.clone(), 1), (dlq.clone(), 1)], 1)
        .await
        .expect("topics");
    let producer = settings
        .producer(Duration::from_secs(10))
        .expect("producer");
    // One ticket's records, in order; the second makes the handler panic.
    for body in ["first", "boom", "third"] {
        producer
            .send(
                FutureRecord::to(&topic).key("ticket-1").payload(body),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    let handler = Arc::new(Panicky::default());
    let shutdown = CancellationToken::new();
    let group = format!("test-loop-{id}");
    let failed = Arc::new(AtomicBool::new(false));
    let consumer = spawn_consumer(
        settings.clone(),
        ConsumerConfig {
            name: "test-loop",
            group_id: group.clone(),
            topics: vec![topic.clone()],
            lanes: 4,
            max_in_flight: 16,
            dead_letter_topic: dlq.clone(),
            commit_interval: Duration::from_millis(100),
            offset_reset: "earliest".into(),
            fetch_wait: Duration::from_millis(5),
        },
        handler.clone(),
        shutdown.clone(),
        failed.clone(),
    );

    let dead = read_topic(&settings.brokers, &dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1, "the panicking record is dead-lettered");
    assert_eq!(dead[0].payload(), Some(&b"boom"[..]));
    assert_eq!(
        header(&dead[0], "tidings_dlq_reason"),
        Some("handler panicked: unexpected NULL in column outcome")
    );
    eventually(
        Duration::from_secs(30),
        "the later record handled",
        || async { (handler.handled.lock().unwrap().len() == 2).then_some(()) },
    )
    .await;
    assert_eq!(*handler.handled.lock().unwrap(), ["first", "third"]);

    shutdown.cancel();
    consumer.await.expect("the loop stops");
    assert!(
        !failed.load(Ordering::SeqCst),
        "the loop itself never failed"
    );
    // All three are committed: the partition is not stuck behind the panic.
    let reader: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    let committed =
        rdkafka::consumer::Consumer::committed_offsets(&reader, tpl, Duration::from_secs(10))
            .expect("committed offsets");
    assert_eq!(committed.elements()[0].offset(), rdkafka::Offset::Offset(3));
}
