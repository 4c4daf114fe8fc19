//! A broker outage never fails or blocks writes; rows wait in the outbox and go out, in
//! order per ticket, once the broker is back (a restarted tansu is empty: topics come back).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tidings_proto::ticket::v1::*;
use tidings_tests::broker::Broker;
use tidings_tests::*;

#[tokio::test]
async fn replies_posted_while_the_broker_is_down_all_succeed_and_are_published_in_order_when_it_returns()
 {
    let mut broker = Broker::start().await;
    let app = spawn_app_with(SpawnOptions {
        brokers: broker.address(),
        ..Default::default()
    })
    .await;
    let (ann, giulia) = (customer("ann"), agent("giulia"));
    let mut c = app.tickets().await;
    let mut tickets = Vec::new();
    for s in ["first", "second"] {
        let r = c.open_ticket(authed(&ann, new_ticket(s))).await.unwrap();
        tickets.push(r.into_inner().ticket_id);
    }
    app.outbox_drained(Duration::from_secs(20), "opening events published")
        .await;

    broker.stop().await;
    let started = Instant::now();
    for i in 0..10 {
        let ticket_id = tickets[i % 2].clone();
        c.post_reply(authed(
            &giulia,
            PostReplyRequest {
                request_id: rid(),
                ticket_id,
                body: format!("reply {i}"),
            },
        ))
        .await
        .expect("writes succeed while the broker is down");
    }
    // Writes never wait for the broker (bounded generously: this is not a latency test).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "writes were blocked: {:?}",
        started.elapsed()
    );
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 10);

    broker.resume().await;
    app.outbox_drained(
        Duration::from_secs(60),
        "outbox drained after the broker returned",
    )
    .await;

    let expected: HashSet<String> =
        sqlx::query_scalar("SELECT event_id::text FROM events WHERE event_type = 'ReplyAdded'")
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let records = read_topic(&app.brokers, &app.topic, 10, Duration::from_secs(20)).await;
    // At-least-once: dedupe by ce_id, then every row is there, and per-ticket order holds.
    let (seen, per_ticket) = first_deliveries(&records);
    assert_eq!(seen, expected);
    for seqs in per_ticket.values() {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order: {seqs:?}"
        );
        assert_eq!(seqs.len(), 5);
    }
}
