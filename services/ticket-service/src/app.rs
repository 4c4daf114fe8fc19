//! Building and running the service: everything `main` does, reusable by tests on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use secrecy::ExposeSecret;
use tidings_auth::Authenticator;
use tidings_kafka::ensure_topics;
use tidings_outbox::{OutboxRelay, RelayConfig};
use tidings_proto::ticket::v1::guest_access_service_server::GuestAccessServiceServer;
use tidings_proto::ticket::v1::ticket_service_server::TicketServiceServer;
use tidings_store::EventStore;
use tidings_store::retention::{Rule, prune_periodically};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::api::guest::GuestApi;
use crate::api::throttle::GuestOpenLimits;
use crate::api::ticket::TicketApi;
use crate::clock::Clock;
use crate::commands::Executor;
use crate::config::Config;

pub struct Application {
    grpc_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    /// Set when the relay failed: the service stops with an error.
    failed: Arc<AtomicBool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    relay: JoinHandle<()>,
    pruning: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    store: EventStore,
}

impl Application {
    /// Binds the listeners, connects, migrates, creates topics (best effort: a broker outage
    /// must not stop the service taking writes) and starts serving.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // Bind first: a port that is taken must fail the start before anything is migrated
        // or relayed. Until `build` returns, the guard stops what has been spawned.
        let shutdown = CancellationToken::new();
        let started = shutdown.clone().drop_guard();
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding {}", config.grpc_addr))?;
        let grpc_addr = listener.local_addr()?;
        let admin = tidings_telemetry::spawn_admin(config.admin_addr, shutdown.clone())
            .await
            .context("binding the admin endpoint")?;
        let admin_addr = admin.as_ref().map(|(a, _)| *a);
        let admin = admin.map(|(_, t)| t);

        let pool = tidings_store::connect(
            config.database_url.expose_secret(),
            config.db_schema.as_deref(),
            config.db_max_connections,
        )
        .await
        .context("connecting to postgres")?;
        tidings_store::migrate(&pool, config.db_schema.as_deref())
            .await
            .context("applying migrations")?;
        let store = EventStore::new(pool.clone()).with_state_cache(config.state_cache_capacity);

        let topics = vec![
            (
                config.topics.ticket_events.clone(),
                config.topics.partitions,
            ),
            (config.topics.access_codes.clone(), config.topics.partitions),
        ];
        if let Err(e) = ensure_topics(&config.kafka, &topics, config.topics.replication).await {
            tracing::warn!(error = %e, "could not create topics now; the relay will retry");
        }

        let auth = Arc::new(
            Authenticator::new(&config.jwt, Some(config.guest.keys.clone()))
                .map_err(|e| anyhow::anyhow!(e))?,
        );
        let outbox_wake = Arc::new(tokio::sync::Notify::new());
        let exec = Arc::new(Executor {
            outbox_wake: outbox_wake.clone(),
            store: store.clone(),
            clock: clock.clone(),
            topics: config.topics.clone(),
            ce_source: config.ce_source.clone(),
        });

        let relay = OutboxRelay::new(
            pool.clone(),
            config.kafka.clone(),
            RelayConfig {
                batch_size: config.outbox.batch_size,
                poll_interval: config.outbox.poll_interval,
                message_timeout: config.outbox.message_timeout,
                topics,
                replication: config.topics.replication,
                wake: outbox_wake.clone(),
            },
        )
        .context("creating kafka producer")?;
        let failed = Arc::new(AtomicBool::new(false));
        let pruning = tokio::spawn(prune_periodically(
            pool.clone(),
            vec![Rule::new(
                "idempotency_keys",
                "created_at",
                config.idempotency_retention,
            )],
            config.prune_interval,
            shutdown.clone(),
        ));
        let relay = {
            let stop = shutdown.clone();
            tidings_telemetry::spawn_essential(
                "outbox-relay",
                async move {
                    relay.run(stop).await;
                    Ok::<(), std::convert::Infallible>(())
                },
                shutdown.clone(),
                failed.clone(),
            )
        };

        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<TicketServiceServer<TicketApi>>()
            .await;
        health_reporter
            .set_serving::<GuestAccessServiceServer<GuestApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tidings_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building reflection service")?;

        let ticket_api = TicketApi {
            exec: exec.clone(),
            auth,
            clock: clock.clone(),
            guest_opens: Arc::new(GuestOpenLimits::new(
                config.guest.opens_per_client,
                config.guest.opens_per_email,
                config.guest.trusted_proxies.clone(),
            )),
        };
        let guest_api = GuestApi {
            exec,
            guest: config.guest.clone(),
            clock,
        };
        let stop = shutdown.clone();
        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(reflection)
                .add_service(TicketServiceServer::new(ticket_api))
                .add_service(GuestAccessServiceServer::new(guest_api))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                ),
        );

        started.disarm();
        tracing::info!(grpc = %grpc_addr, admin = ?admin_addr, "ticket service listening");
        Ok(Self {
            grpc_addr,
            admin_addr,
            shutdown,
            failed,
            grpc,
            relay,
            pruning,
            admin,
            store,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// A handle that stops the service when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until `signal` resolves, then stops taking calls, lets in-flight calls finish,
    /// flushes the outbox and returns — all within `grace`.
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
        let drain = async {
            if let Ok(Err(e)) = self.grpc.await {
                tracing::warn!(error = %e, "grpc server ended with error");
            }
            let _ = self.relay.await;
            let _ = self.pruning.await;
            if let Some(a) = self.admin {
                let _ = a.await;
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "shutdown grace period elapsed; exiting anyway"
            );
        }
        tracing::info!("ticket service stopped");
        if self.failed.load(Ordering::SeqCst) {
            anyhow::bail!("the outbox relay failed (see the log)");
        }
        Ok(())
    }
}
