//! Test helpers: start the ticket service in-process on port 0 against the real Postgres and
//! broker, each test with its own schema and topics; read what reached Kafka; run a private
//! broker for outage tests. Connection settings come from the same variables as the service
//! (`DATABASE_URL`, `KAFKA_BROKERS`), which `make test` exports.

pub mod broker;
pub mod mail;
pub mod pipeline;
pub mod portal;
pub mod processes;
pub mod push;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use secrecy::SecretString;
use ticket_service::config::Config;
use ticket_service::{Application, ManualClock};
use tidings_auth::{Claims, mint_hs256};
use tidings_guest_access::{CodeSealer, Keyring};
use tidings_proto::ticket::v1::guest_access_service_client::GuestAccessServiceClient;
use tidings_proto::ticket::v1::ticket_service_client::TicketServiceClient;
use tonic::transport::Channel;
use uuid::Uuid;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret";
pub const GUEST_KEYS: &str = "t1:dGVzdC1ndWVzdC1rZXktdGVzdC1ndWVzdC1rZXktdGVzdA==";
pub const SEAL_KEY: &str = "c2VhbC1rZXktc2VhbC1rZXktc2VhbC1rZXktc2VhbC0=";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

pub fn keyring() -> Keyring {
    Keyring::parse(&SecretString::from(GUEST_KEYS.to_owned())).expect("test keys")
}

pub fn sealer() -> CodeSealer {
    CodeSealer::parse(&SecretString::from(SEAL_KEY.to_owned())).expect("test seal key")
}

/// The service's environment for a test: what an operator would set.
pub fn service_vars(
    schema: &str,
    ticket_topic: &str,
    codes_topic: &str,
    brokers: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("TIDINGS_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("TIDINGS_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("DATABASE_URL", database_url()),
        ("TIDINGS_DB_SCHEMA", schema.to_owned()),
        ("TIDINGS_DB_MAX_CONNECTIONS", "8".to_owned()),
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("TIDINGS_TICKET_EVENTS_TOPIC", ticket_topic.to_owned()),
        ("TIDINGS_ACCESS_CODES_TOPIC", codes_topic.to_owned()),
        ("TIDINGS_TOPIC_PARTITIONS", "3".to_owned()),
        ("TIDINGS_OUTBOX_POLL_MS", "200".to_owned()),
        ("TIDINGS_KAFKA_MESSAGE_TIMEOUT_MS", "3000".to_owned()),
        ("TIDINGS_JWT_HS256_SECRET", JWT_SECRET.to_owned()),
        ("TIDINGS_GUEST_KEYS", GUEST_KEYS.to_owned()),
        ("TIDINGS_CODE_SEAL_KEY", SEAL_KEY.to_owned()),
        // Tests open many guest tickets from one address; the throttling test sets its own.
        (
            "TIDINGS_GUEST_OPENS_PER_CLIENT_PER_HOUR",
            "100000".to_owned(),
        ),
        (
            "TIDINGS_GUEST_OPENS_PER_EMAIL_PER_HOUR",
            "100000".to_owned(),
        ),
    ]
}

/// Builds the service configuration the way production does: from variables.
pub fn config_for(schema: &str, ticket_topic: &str, codes_topic: &str, brokers: &str) -> Config {
    config_with(schema, ticket_topic, codes_topic, brokers, vec![])
}

/// `config_for` with `extra` variables set over the test defaults.
pub fn config_with(
    schema: &str,
    ticket_topic: &str,
    codes_topic: &str,
    brokers: &str,
    extra: Vec<(&'static str, String)>,
) -> Config {
    let vars: HashMap<&str, String> = service_vars(schema, ticket_topic, codes_topic, brokers)
        .into_iter()
        .chain(extra)
        .collect();
    let env = tidings_config::Env::with_lookup(move |k| vars.get(k).cloned());
    Config::load(env).expect("test configuration is valid")
}

pub struct TestApp {
    pub app: Option<Application>,
    pub addr: std::net::SocketAddr,
    pub schema: String,
    pub topic: String,
    pub codes_topic: String,
    pub clock: ManualClock,
    pub pool: sqlx::PgPool,
    pub brokers: String,
}

pub struct SpawnOptions {
    pub brokers: String,
    pub schema: Option<String>,
    pub topic: Option<String>,
    /// `TIDINGS_OUTBOX_BATCH_SIZE`; small batches make relay races likelier.
    pub outbox_batch_size: Option<i64>,
    /// Variables set over the test defaults.
    pub vars: Vec<(&'static str, String)>,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        Self {
            brokers: kafka_brokers(),
            schema: None,
            topic: None,
            outbox_batch_size: None,
            vars: vec![],
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(SpawnOptions::default()).await
}

pub async fn spawn_app_with(opts: SpawnOptions) -> TestApp {
    // Logs show up in a failing test's output (nextest captures them per test).
    tidings_telemetry::init_tracing(false);
    let id = Uuid::new_v4().simple().to_string();
    let schema = opts.schema.unwrap_or_else(|| format!("t_{id}"));
    let topic = opts
        .topic
        .unwrap_or_else(|| format!("test.ticket-events.{id}"));
    let codes_topic = format!("{topic}.codes");
    let mut config = config_with(&schema, &topic, &codes_topic, &opts.brokers, opts.vars);
    if let Some(n) = opts.outbox_batch_size {
        config.outbox.batch_size = n;
    }
    let clock = ManualClock::new(Utc::now());
    let app = Application::build(config, Arc::new(clock.clone()))
        .await
        .expect("service starts");
    let addr = app.grpc_addr();
    let pool = tidings_store::connect(&database_url(), Some(&schema), 2)
        .await
        .expect("test pool");
    TestApp {
        app: Some(app),
        addr,
        schema,
        topic,
        codes_topic,
        clock,
        pool,
        brokers: opts.brokers,
    }
}

impl TestApp {
    pub fn clock_now(&self) -> chrono::DateTime<Utc> {
        use ticket_service::Clock;
        self.clock.now()
    }

    pub async fn tickets(&self) -> TicketServiceClient<Channel> {
        TicketServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("grpc connect")
    }

    pub async fn guests(&self) -> GuestAccessServiceClient<Channel> {
        GuestAccessServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("grpc connect")
    }

    /// Stops the service gracefully (drains the relay).
    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.run_until(async {}, Duration::from_secs(10))
                .await
                .expect("clean stop");
        }
    }

    /// Waits until the relay has published every outbox row of this schema.
    pub async fn outbox_drained(&self, within: Duration, what: &str) {
        eventually(within, what, || async {
            (self.count("SELECT count(*) FROM outbox").await == 0).then_some(())
        })
        .await;
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }

    /// Reads the ticket topic until `n` records arrived (or panics at the deadline).
    pub async fn read_topic(&self, n: usize) -> Vec<OwnedMessage> {
        read_topic(&self.brokers, &self.topic, n, Duration::from_secs(20)).await
    }
}

pub fn customer_claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        email: Some(format!("{sub}@example.com")),
        locale: Some("it".into()),
        name: Some(format!("{sub} Rossi")),
        exp: Utc::now().timestamp() + 3600,
        ..Default::default()
    }
}

pub fn token(claims: &Claims) -> String {
    mint_hs256(&SecretString::from(JWT_SECRET.to_owned()), claims)
}

pub fn customer(sub: &str) -> String {
    token(&customer_claims(sub))
}

pub fn agent(sub: &str) -> String {
    token(&Claims {
        role: Some("agent".into()),
        email: None,
        name: Some("Giulia (support)".into()),
        ..customer_claims(sub)
    })
}

/// Wraps a message with a bearer token.
pub fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req
}

/// A signed-in customer's new-ticket request with a fresh idempotency key.
pub fn new_ticket(subject: impl Into<String>) -> tidings_proto::ticket::v1::OpenTicketRequest {
    tidings_proto::ticket::v1::OpenTicketRequest {
        request_id: rid(),
        subject: subject.into(),
        body: "My withdrawal 0xabc has been pending since 09:12".into(),
        guest: None,
    }
}

/// Opens a ticket as the customer holding `token`.
pub async fn open_as(
    app: &TestApp,
    token: &str,
    subject: &str,
) -> tidings_proto::ticket::v1::OpenTicketResponse {
    app.tickets()
        .await
        .open_ticket(authed(token, new_ticket(subject)))
        .await
        .expect("open ticket")
        .into_inner()
}

/// Posts a reply as the holder of `token` (a fresh request id).
pub async fn reply_as(app: &TestApp, token: &str, ticket_id: &str, body: &str) {
    app.tickets()
        .await
        .post_reply(authed(
            token,
            tidings_proto::ticket::v1::PostReplyRequest {
                request_id: rid(),
                ticket_id: ticket_id.to_owned(),
                body: body.to_owned(),
            },
        ))
        .await
        .expect("reply");
}

pub fn rid() -> String {
    Uuid::new_v4().to_string()
}

/// Consumes `topic` from the beginning of every partition until `n` records or the deadline.
pub async fn read_topic(
    brokers: &str,
    topic: &str,
    n: usize,
    within: Duration,
) -> Vec<OwnedMessage> {
    let consumer = assigned_reader(brokers, topic, within).await;
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    read_n(&consumer, topic, n, deadline, &mut out).await;
    out
}

/// Reads exactly `n` records, then asserts that no further record arrives within `settle`
/// (a bounded window: absence cannot be awaited any other way). Use it after the outbox is
/// drained: every send is acknowledged before its row is marked, so a duplicate would
/// already be on the topic.
pub async fn read_topic_exactly(
    brokers: &str,
    topic: &str,
    n: usize,
    settle: Duration,
) -> Vec<OwnedMessage> {
    let consumer = assigned_reader(brokers, topic, Duration::from_secs(20)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut out = Vec::with_capacity(n);
    read_n(&consumer, topic, n, deadline, &mut out).await;
    if let Ok(Ok(extra)) = tokio::time::timeout(settle, consumer.recv()).await {
        panic!(
            "more than {n} records on {topic}: another at offset {}",
            extra.offset()
        );
    }
    out
}

/// Appends records to `out` until it holds `n`, or panics at the deadline.
async fn read_n(
    consumer: &StreamConsumer,
    topic: &str,
    n: usize,
    deadline: tokio::time::Instant,
    out: &mut Vec<OwnedMessage>,
) {
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("kafka error while reading {topic}: {e}"),
            Err(_) => panic!("only {} of {n} records arrived on {topic}", out.len()),
        }
    }
}

/// Event ids seen and, per ticket, the sequences in order of first appearance: duplicates
/// (same `ce_id`) are skipped, as an at-least-once consumer does.
pub fn first_deliveries(records: &[OwnedMessage]) -> (HashSet<String>, HashMap<String, Vec<u64>>) {
    let mut seen = HashSet::new();
    let mut per_ticket: HashMap<String, Vec<u64>> = HashMap::new();
    for m in records {
        if seen.insert(header(m, "ce_id").expect("ce_id header").to_owned()) {
            let e = decode(m);
            per_ticket.entry(e.ticket_id).or_default().push(e.sequence);
        }
    }
    (seen, per_ticket)
}

/// A consumer assigned to every partition of `topic` from the beginning: no group
/// coordination, so it is fast and independent of other tests.
async fn assigned_reader(brokers: &str, topic: &str, within: Duration) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let deadline = tokio::time::Instant::now() + within;
    let partitions = loop {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))
            && let Some(t) = md.topics().iter().find(|t| t.name() == topic)
            && !t.partitions().is_empty()
        {
            break t.partitions().len() as i32;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "topic {topic} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

pub fn header<'a>(m: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

pub fn decode(m: &OwnedMessage) -> tidings_proto::events::v1::TicketEvent {
    use prost::Message as _;
    tidings_proto::events::v1::TicketEvent::decode(m.payload().expect("payload"))
        .expect("protobuf event")
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port nothing listens on now, for a server that must keep its port across
/// restarts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A metric's value from the admin endpoint at `admin`, summed over the label sets whose line
/// contains `labels` (`""`: all of them).
pub async fn metric(admin: std::net::SocketAddr, name: &str, labels: &str) -> f64 {
    let body = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    body.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether a schema exists: a service that failed its start must not have created one.
pub async fn schema_exists(pool: &sqlx::PgPool, schema: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await
        .expect("schema query")
}
