//! The real binary is killed (SIGKILL) while its relay has a batch in flight: rows read,
//! records handed to the producer, acknowledgements pending. A restarted service
//! publishes every event, in per-ticket order. (Records the broker took but we had not yet
//! marked may appear twice; consumers dedupe by `ce_id`, so the test does the same.)

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use tidings_proto::ticket::v1::ticket_service_client::TicketServiceClient;
use tidings_proto::ticket::v1::*;
use tidings_tests::broker::Broker;
use tidings_tests::*;
use tokio::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_relay_killed_with_a_batch_in_flight_loses_nothing_after_restart() {
    let mut broker = Broker::start().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (schema, topic) = (format!("t_{id}"), format!("test.ticket-events.{id}"));
    let codes = format!("{topic}.codes");
    let port = free_port();
    let mut vars = service_vars(&schema, &topic, &codes, &broker.address());
    vars.retain(|(k, _)| *k != "TIDINGS_GRPC_ADDR" && *k != "TIDINGS_ADMIN_ADDR");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ticket-service"))
        .envs(vars)
        .env("TIDINGS_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("TIDINGS_ADMIN_ADDR", "off")
        .env("TIDINGS_OUTBOX_BATCH_SIZE", "10")
        // Long enough that the batch is surely still waiting when we kill it.
        .env("TIDINGS_KAFKA_MESSAGE_TIMEOUT_MS", "60000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ticket-service binary starts");

    // Serving, not merely bound: the port is bound before the service connects and migrates.
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut c = eventually(Duration::from_secs(30), "service serving", || {
        let endpoint = endpoint.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint)
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let check = health.check(tonic_health::pb::HealthCheckRequest {
                service: "tidings.ticket.v1.TicketService".into(),
            });
            let status = tokio::time::timeout(Duration::from_secs(1), check)
                .await
                .ok()?
                .ok()?
                .into_inner()
                .status;
            (status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
                .then(|| TicketServiceClient::new(channel))
        }
    })
    .await;
    let pool = tidings_store::connect(&database_url(), Some(&schema), 2)
        .await
        .unwrap();

    // A backlog builds while the broker is away; the relay picks up a batch and waits.
    broker.stop().await;
    let (ann, giulia) = (customer("ann"), agent("giulia"));
    let mut tickets = Vec::new();
    for i in 0..4 {
        let r = c
            .open_ticket(authed(
                &ann,
                OpenTicketRequest {
                    request_id: rid(),
                    subject: format!("t{i}"),
                    body: "b".into(),
                    guest: None,
                },
            ))
            .await
            .unwrap();
        tickets.push(r.into_inner().ticket_id);
    }
    for i in 0..40 {
        let ticket_id = tickets[i % 4].clone();
        c.post_reply(authed(
            &giulia,
            PostReplyRequest {
                request_id: rid(),
                ticket_id,
                body: format!("r{i}"),
            },
        ))
        .await
        .unwrap();
    }
    // The leader relay (the connection holding this schema's advisory lock) has read a batch
    // and waits for its acknowledgements: its last statement is the batch read.
    eventually(
        Duration::from_secs(30),
        "relay holding a batch in flight",
        || async {
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted
                   AND l.objid::bigint = (hashtext($1 || '.tidings_outbox')::bigint & 4294967295)
                   AND a.state = 'idle' AND a.query LIKE 'SELECT id, topic, key, value%'",
            )
            .bind(&schema)
            .fetch_one(&pool)
            .await
            .unwrap();
            (held > 0).then_some(())
        },
    )
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 44, "the killed batch was not deleted");

    // Broker back, service restarted on the same schema and topic: it finishes the job.
    broker.resume().await;
    let app = spawn_app_with(SpawnOptions {
        brokers: broker.address(),
        schema: Some(schema.clone()),
        topic: Some(topic.clone()),
        ..Default::default()
    })
    .await;
    app.outbox_drained(Duration::from_secs(60), "outbox drained after restart")
        .await;

    let expected: HashSet<String> = sqlx::query_scalar("SELECT event_id::text FROM events")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let records = read_topic(&app.brokers, &topic, 44, Duration::from_secs(30)).await;
    let (seen, per_ticket) = first_deliveries(&records);
    assert_eq!(seen, expected, "every stored event reached the topic");
    for seqs in per_ticket.values() {
        assert_eq!(seqs, &(1..=11).collect::<Vec<u64>>(), "per-ticket order");
    }
}
