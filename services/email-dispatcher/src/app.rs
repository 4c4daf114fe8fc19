//! Building and running the dispatcher: everything `main` does, reusable by tests in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use secrecy::ExposeSecret;
use tidings_kafka::{Publisher, ensure_topics, retention_covering, spawn_consumer};
use tidings_store::retention::{Rule, prune_periodically};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::handler::{AccessCodes, Dispatch, Links, TicketEvents};
use crate::mailer::SmtpMailer;
use tidings_delivery::{OutcomeEvents, SendLog};
use tidings_domain::clock::Clock;
use tidings_proto::events::v1::Channel;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Send-record batches written at once, on the SMTP session thread. With one, a record queues
/// behind the batch in flight and the crash window grows by that batch's commit; with several
/// it commits about one write after it was queued, and a slow statement holds back only its
/// own batch (docs/delivery.md, "The crash window", has the measurements for four and eight).
const RECORD_WRITERS: usize = 8;

/// Lanes of the access-codes consumer, at most.
const CODE_LANES: usize = 64;

pub struct Application {
    admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    /// Set when a consumer loop failed: the service stops with an error.
    failed: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Application {
    /// Binds its admin port, connects, migrates its own schema, creates the topics it reads
    /// and writes if missing (best effort: a broker outage must not keep it from starting),
    /// and starts consuming.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // Bind first: a port that is taken must fail the start before anything is migrated
        // or any consumer joins its group. Until `build` returns, the guard stops what has
        // been spawned.
        let shutdown = CancellationToken::new();
        let started = shutdown.clone().drop_guard();
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
            &config.access_codes_topic,
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
            // Fewer, larger produce requests: at thousands of outcome events a second a 1 ms
            // linger makes the producer's broker thread a sizeable share of a core. The wait
            // holds a lane, never an SMTP session, so it does not slow the sending
            // (docs/performance.md).
            Publisher::new(
                &config.kafka,
                config.topics,
                config.message_timeout,
                std::time::Duration::from_millis(5),
            )
            .context("creating kafka producer")?,
        );

        tasks.push(tokio::spawn({
            let (pool, kafka, topic) = (
                pool.clone(),
                config.kafka.clone(),
                config.ticket_events_topic.clone(),
            );
            let (retention, every, stop) =
                (config.retention, config.prune_interval, shutdown.clone());
            async move {
                let keep = retention_covering(&kafka, &topic, retention).await;
                let rules = vec![Rule::new("email_sends", "recorded_at", keep)];
                prune_periodically(pool, rules, every, stop).await;
            }
        }));

        let (sends, record_writer) = SendLog::new(pool, "email_sends", outcomes, RECORD_WRITERS);
        let mailer = SmtpMailer::new(
            config.smtp.clone(),
            config.from.clone(),
            config.smtp_pool_size,
            vec![record_writer],
        )?;
        let dispatch = Arc::new(Dispatch {
            message_id_domain: mailer.from_domain(),
            mailer,
            sends,
            links: Links {
                customer_url: config.customer_url.clone(),
                guest_url: config.guest_url.clone(),
                keys: config.keys.clone(),
            },
            sealer: config.sealer.clone(),
            outcomes: OutcomeEvents {
                topic: config.notification_topic.clone(),
                source: config.ce_source.clone(),
                channel: Channel::Email,
            },
            retry: config.retry.clone(),
            clock,
            shutdown: shutdown.clone(),
        });
        let dlq = &config.dead_letter_topic;
        let events = config.consumer.consumer(
            "ticket-events",
            None,
            vec![config.ticket_events_topic.clone()],
            dlq,
        );
        // Codes have their own group and loop: never behind a backlog of notifications.
        let mut codes = config.consumer.consumer(
            "access-codes",
            Some(format!("{}.codes", config.consumer.group_id)),
            vec![config.access_codes_topic.clone()],
            dlq,
        );
        // At most one code a minute per ticket (the ticket service's limit): a few lanes
        // keep up, and idle lanes are memory.
        codes.lanes = codes.lanes.min(CODE_LANES);
        codes.max_in_flight = codes.max_in_flight.min(4 * CODE_LANES);
        tasks.push(spawn_consumer(
            config.kafka.clone(),
            events,
            Arc::new(TicketEvents(dispatch.clone())),
            shutdown.clone(),
            failed.clone(),
        ));
        tasks.push(spawn_consumer(
            config.kafka.clone(),
            codes,
            Arc::new(AccessCodes(dispatch)),
            shutdown.clone(),
            failed.clone(),
        ));

        started.disarm();
        tracing::info!(admin = ?admin_addr, smtp_pool = config.smtp_pool_size, "email dispatcher running");
        Ok(Self {
            admin_addr,
            shutdown,
            failed,
            tasks,
        })
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Runs until `signal`, then stops consuming, lets handlers finish the record they are on,
    /// commits what was handled, publishes pending outcomes and returns — within `grace`.
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
        tidings_telemetry::join_within("email dispatcher", grace, self.tasks).await;
        if self.failed.load(Ordering::SeqCst) {
            anyhow::bail!("a consumer loop failed (see the log)");
        }
        Ok(())
    }
}
