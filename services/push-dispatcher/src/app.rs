//! Building and running the dispatcher: everything `main` does, reusable by tests in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use secrecy::ExposeSecret;
use tidings_auth::Authenticator;
use tidings_delivery::{OutcomeEvents, SendLog};
use tidings_domain::clock::Clock;
use tidings_kafka::{Publisher, ensure_topics, retention_covering, spawn_consumer};
use tidings_proto::events::v1::Channel;
use tidings_proto::push::v1::device_service_server::DeviceServiceServer;
use tidings_proto::push::v1::preference_service_server::PreferenceServiceServer;
use tidings_store::retention::{Rule, prune_periodically};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::api::PushApi;
use crate::apns::{ApnsClient, ApnsConfig};
use crate::config::Config;
use crate::fcm::{FcmClient, FcmConfig};
use crate::handler::{DeadLetterTopic, Dispatch, TicketEvents, release_held_pushes};
use crate::registry::Registry;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Send-record batches written at once, on the shared runtime. More writers, as the email
/// dispatcher runs on its session thread, mean more, smaller statements competing with the
/// pushes for the same cores, and a slower fan-out (docs/performance.md).
const RECORD_WRITERS: usize = 1;

pub struct Application {
    grpc_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    /// Set when a consumer loop failed: the service stops with an error.
    failed: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Application {
    /// Validates the provider credentials, binds its ports, connects, migrates its own
    /// schema, creates the topics it uses if missing and starts consuming and serving.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let apns = ApnsClient::new(ApnsConfig {
            base_url: &config.apns_url,
            extra_ca: config.apns_ca_file.as_deref(),
            key_file: &config.apns_key_file,
            key_id: &config.apns_key_id,
            team_id: &config.apns_team_id,
            timeout: config.provider_timeout,
        })?;
        let fcm = FcmClient::new(FcmConfig {
            base_url: &config.fcm_url,
            extra_ca: config.fcm_ca_file.as_deref(),
            service_account_file: &config.fcm_service_account_file,
            timeout: config.provider_timeout,
        })?;
        let auth = Arc::new(Authenticator::new(&config.jwt, None).map_err(anyhow::Error::msg)?);

        // Bind first: a port that is taken must fail the start before anything is migrated
        // or any consumer joins its group. Until `build` returns, the guard stops what has
        // been spawned.
        let shutdown = CancellationToken::new();
        let started = shutdown.clone().drop_guard();
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding {}", config.grpc_addr))?;
        let grpc_addr = listener.local_addr()?;
        let mut tasks = Vec::new();
        let admin = tidings_telemetry::spawn_admin(config.admin_addr, shutdown.clone())
            .await
            .context("binding the admin endpoint")?;
        let admin_addr = admin.as_ref().map(|(a, _)| *a);
        tasks.extend(admin.map(|(_, t)| t));

        let pool = tidings_store::open(
            config.database_url.expose_secret(),
            &config.db_schema,
            config.db_max_connections,
            &MIGRATOR,
        )
        .await
        .context("opening the database")?;
        let topics: Vec<(String, i32)> = [
            &config.ticket_events_topic,
            &config.notification_topic,
            &config.dead_letter_topic,
        ]
        .into_iter()
        .map(|t| (t.clone(), config.topics.partitions))
        .collect();
        if let Err(e) = ensure_topics(&config.kafka, &topics, config.topics.replication).await {
            tracing::warn!(error = %e, "could not create topics now");
        }

        let failed = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(
            // Each lane waits for its outcome event before its next push, so the linger is
            // added to every push of a lane: 1 ms, not the email dispatcher's 5
            // (docs/performance.md).
            Publisher::new(
                &config.kafka,
                config.topics,
                config.message_timeout,
                std::time::Duration::from_millis(1),
            )
            .context("creating kafka producer")?,
        );

        tasks.push(tokio::spawn({
            let (pool, kafka, topic) = (
                pool.clone(),
                config.kafka.clone(),
                config.ticket_events_topic.clone(),
            );
            let (retention, removed, every) = (
                config.retention,
                config.removed_device_retention,
                config.prune_interval,
            );
            let stop = shutdown.clone();
            async move {
                let keep = retention_covering(&kafka, &topic, retention).await;
                let rules = vec![
                    Rule::new("push_sends", "recorded_at", keep),
                    Rule::new("resolutions", "recorded_at", keep),
                    Rule::new("removed_devices", "removed_at", removed),
                ];
                prune_periodically(pool, rules, every, stop).await;
            }
        }));

        let registry = Registry::new(pool.clone()).with_hold_lease(config.hold_lease);
        let dispatch = Arc::new(Dispatch {
            apns,
            fcm,
            registry: registry.clone(),
            sends: {
                let (sends, writer) =
                    SendLog::new(pool, "push_sends", outcomes.clone(), RECORD_WRITERS);
                tokio::spawn(writer);
                sends
            },
            outcomes: OutcomeEvents {
                topic: config.notification_topic.clone(),
                source: config.ce_source.clone(),
                channel: Channel::Push,
            },
            clock: clock.clone(),
            retry: config.retry.clone(),
            invalidation_guard: config.invalidation_guard,
            dead_letters: DeadLetterTopic {
                publisher: outcomes,
                topic: config.dead_letter_topic.clone(),
            },
            shutdown: shutdown.clone(),
        });
        let consumer = config.consumer.consumer(
            "push-ticket-events",
            None,
            vec![config.ticket_events_topic.clone()],
            &config.dead_letter_topic,
        );
        {
            let settings = config.kafka.clone();
            let stop = shutdown.clone();
            let handler = Arc::new(TicketEvents(dispatch.clone()));
            tasks.push(spawn_consumer(
                settings,
                consumer,
                handler,
                stop,
                failed.clone(),
            ));
        }
        tasks.push(tidings_telemetry::spawn_essential(
            "release-held-pushes",
            {
                let poll = config.hold_poll;
                async move {
                    release_held_pushes(dispatch, poll).await;
                    Ok::<(), std::convert::Infallible>(())
                }
            },
            shutdown.clone(),
            failed.clone(),
        ));

        let api = PushApi {
            registry,
            auth,
            clock,
        };
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<DeviceServiceServer<PushApi>>()
            .await;
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(DeviceServiceServer::new(api.clone()))
                .add_service(PreferenceServiceServer::new(api))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "grpc server ended with error");
            }
        }));

        started.disarm();
        tracing::info!(grpc = %grpc_addr, admin = ?admin_addr, "push dispatcher running");
        Ok(Self {
            grpc_addr,
            admin_addr,
            shutdown,
            failed,
            tasks,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Runs until `signal`, then stops taking calls and records, lets handlers finish the
    /// record they are on, commits what was handled, publishes pending outcomes — within
    /// `grace`.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
        grace: std::time::Duration,
    ) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => {},
            _ = self.shutdown.cancelled() => {},
        }
        self.shutdown.cancel();
        tidings_telemetry::join_within("push dispatcher", grace, self.tasks).await;
        if self.failed.load(Ordering::SeqCst) {
            anyhow::bail!("a consumer loop failed (see the log)");
        }
        Ok(())
    }
}
