//! Push-side test helpers: the APNs and FCM doubles (real HTTP/2 + TLS from a fresh test CA)
//! and the push dispatcher in-process against a test's topics, with a clock the test moves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use push_dispatcher::{Application, Config};
use tidings_domain::clock::ManualClock;
use tidings_proto::push::v1::device_service_client::DeviceServiceClient;
use tidings_proto::push::v1::preference_service_client::PreferenceServiceClient;
use tidings_push_doubles::{Doubles, Options};
use tonic::transport::Channel;
use uuid::Uuid;

use crate::{JWT_SECRET, TestApp, database_url};

pub struct PushStack {
    /// Shared by replicas (`spawn_push_replica`).
    pub doubles: Arc<Doubles>,
    pub app: Option<Application>,
    pub grpc: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub clock: ManualClock,
    pub schema: String,
    pub group_id: String,
    pub notification_topic: String,
    pub dead_letter_topic: String,
    pub pool: sqlx::PgPool,
}

/// Starts the doubles and a push dispatcher consuming `app`'s ticket topic; `extra`
/// overrides variables (e.g. a short give-up time).
pub async fn spawn_push(app: &TestApp, extra: Vec<(&'static str, String)>) -> PushStack {
    try_spawn_push(app, extra, None)
        .await
        .expect("push dispatcher starts")
}

/// A second replica of `first`: the same doubles, schema and consumer group, its own clock.
pub async fn spawn_push_replica(
    first: &PushStack,
    app: &TestApp,
    extra: Vec<(&'static str, String)>,
) -> PushStack {
    try_spawn_push(app, extra, Some(first))
        .await
        .expect("push dispatcher replica starts")
}

/// Starts a push dispatcher — a replica of `first` if given — or says why it did not.
pub async fn try_spawn_push(
    app: &TestApp,
    extra: Vec<(&'static str, String)>,
    first: Option<&PushStack>,
) -> anyhow::Result<PushStack> {
    tidings_telemetry::init_tracing(false);
    let id = Uuid::new_v4().simple().to_string();
    let doubles = match first {
        Some(first) => first.doubles.clone(),
        None => Arc::new(
            Doubles::start(Options {
                apns_port: 0,
                fcm_port: 0,
                dir: std::env::temp_dir().join(format!("tidings-push-{id}")),
                record: true,
            })
            .await
            .expect("push doubles start"),
        ),
    };
    let (schema, group_id) = match first {
        Some(first) => (first.schema.clone(), first.group_id.clone()),
        None => (format!("t_{id}"), format!("test-push-{id}")),
    };
    let mut vars: HashMap<&str, String> =
        push_vars(&doubles, &app.topic, &app.brokers, &schema, &group_id)
            .into_iter()
            .collect();
    let notification_topic = vars["TIDINGS_NOTIFICATION_EVENTS_TOPIC"].clone();
    let dead_letter_topic = vars["TIDINGS_PUSH_DLQ_TOPIC"].clone();
    for (k, v) in extra {
        vars.insert(k, v);
    }
    let schema = vars["TIDINGS_PUSH_DB_SCHEMA"].clone();
    let env = tidings_config::Env::with_lookup(move |k| vars.get(k).cloned());
    let config = Config::load(env).expect("test push configuration is valid");
    let clock = ManualClock::new(chrono::Utc::now());
    let app = Application::build(config, Arc::new(clock.clone())).await?;
    let pool = tidings_store::connect(&database_url(), Some(&schema), 2)
        .await
        .expect("test pool");
    Ok(PushStack {
        grpc: app.grpc_addr(),
        admin: app.admin_addr().expect("admin port"),
        app: Some(app),
        doubles,
        clock,
        schema,
        group_id,
        notification_topic,
        dead_letter_topic,
        pool,
    })
}

/// The push dispatcher's environment for a test: what an operator would set, with `doubles`
/// as APNs and FCM.
pub fn push_vars(
    doubles: &Doubles,
    ticket_topic: &str,
    brokers: &str,
    schema: &str,
    group: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url()),
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("TIDINGS_PUSH_DB_SCHEMA", schema.to_owned()),
        ("TIDINGS_PUSH_DB_MAX_CONNECTIONS", "4".into()),
        ("TIDINGS_PUSH_GRPC_ADDR", "127.0.0.1:0".into()),
        ("TIDINGS_PUSH_ADMIN_ADDR", "127.0.0.1:0".into()),
        ("TIDINGS_TICKET_EVENTS_TOPIC", ticket_topic.to_owned()),
        (
            "TIDINGS_NOTIFICATION_EVENTS_TOPIC",
            format!("{ticket_topic}.notifications"),
        ),
        ("TIDINGS_PUSH_DLQ_TOPIC", format!("{ticket_topic}.push-dlq")),
        ("TIDINGS_PUSH_GROUP_ID", group.to_owned()),
        ("TIDINGS_TOPIC_PARTITIONS", "3".into()),
        ("TIDINGS_OUTBOX_POLL_MS", "200".into()),
        ("TIDINGS_KAFKA_MESSAGE_TIMEOUT_MS", "3000".into()),
        ("TIDINGS_JWT_HS256_SECRET", JWT_SECRET.into()),
        ("TIDINGS_APNS_URL", doubles.apns_url.clone()),
        (
            "TIDINGS_APNS_CA_FILE",
            doubles.ca_file.display().to_string(),
        ),
        (
            "TIDINGS_APNS_KEY_FILE",
            doubles.apns_key_file.display().to_string(),
        ),
        ("TIDINGS_APNS_KEY_ID", doubles.apns_key_id.clone()),
        ("TIDINGS_APNS_TEAM_ID", doubles.apns_team_id.clone()),
        ("TIDINGS_FCM_URL", doubles.fcm_url.clone()),
        ("TIDINGS_FCM_CA_FILE", doubles.ca_file.display().to_string()),
        (
            "TIDINGS_FCM_SERVICE_ACCOUNT_FILE",
            doubles.fcm_service_account_file.display().to_string(),
        ),
        ("TIDINGS_PUSH_RETRY_FIRST_MS", "100".into()),
        ("TIDINGS_PUSH_RETRY_MAX_MS", "500".into()),
        ("TIDINGS_PUSH_HOLD_POLL_MS", "100".into()),
    ]
}

impl PushStack {
    pub async fn devices(&self) -> DeviceServiceClient<Channel> {
        DeviceServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("grpc connect")
    }

    pub async fn preferences(&self) -> PreferenceServiceClient<Channel> {
        PreferenceServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("grpc connect")
    }

    /// A metric's value summed over the label sets whose line contains `labels`.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        crate::metric(self.admin, name, labels).await
    }

    /// Waits until the dispatcher has handled `n` ticket events.
    pub async fn consumed(&self, n: usize, within: Duration) {
        crate::eventually(within, &format!("{n} events consumed"), || async {
            (self
                .metric("tidings_consumed_total", "push-ticket-events")
                .await
                >= n as f64)
                .then_some(())
        })
        .await;
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }
}
