//! Two ticket-service replicas share one database schema and topic. Writes go through both
//! at once; one relay leads (the publish lock) and the other forwards wake-ups, so every event reaches the topic
//! exactly once, complete and in per-ticket order.

use std::collections::HashMap;
use std::time::Duration;

use tidings_proto::ticket::v1::*;
use tidings_tests::*;

#[tokio::test]
async fn two_replicas_publish_every_event_exactly_once_in_ticket_order() {
    // One row per relay batch: without the publish lock, the two relays would be sending
    // consecutive rows of one ticket at the same time.
    let a = spawn_app_with(SpawnOptions {
        outbox_batch_size: Some(1),
        ..Default::default()
    })
    .await;
    let b = spawn_app_with(SpawnOptions {
        schema: Some(a.schema.clone()),
        topic: Some(a.topic.clone()),
        outbox_batch_size: Some(1),
        ..Default::default()
    })
    .await;
    let giulia = agent("giulia");
    let mut tickets = Vec::new();
    for i in 0..3 {
        tickets.push(
            open_as(&a, &customer("ann"), &format!("t{i}"))
                .await
                .ticket_id,
        );
    }
    let calls = (0..60).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let ticket_id = tickets[i % 3].clone();
        let giulia = giulia.clone();
        async move {
            app.tickets()
                .await
                .post_reply(authed(
                    &giulia,
                    PostReplyRequest {
                        request_id: rid(),
                        ticket_id,
                        body: format!("r{i}"),
                    },
                ))
                .await
                .map(|_| ())
        }
    });
    for r in futures::future::join_all(calls).await {
        r.expect("every reply succeeds on either replica");
    }
    a.outbox_drained(Duration::from_secs(30), "both relays drained the outbox")
        .await;

    let stored = a.count("SELECT count(*) FROM events").await as usize;
    assert_eq!(stored, 63);
    let records = read_topic_exactly(&a.brokers, &a.topic, stored, Duration::from_secs(1)).await;
    let mut per_ticket: HashMap<String, Vec<u64>> = HashMap::new();
    for m in &records {
        let e = decode(m);
        per_ticket.entry(e.ticket_id).or_default().push(e.sequence);
    }
    for (ticket, seqs) in &per_ticket {
        assert_eq!(
            seqs,
            &(1..=21).collect::<Vec<u64>>(),
            "ticket {ticket}: complete, in order, no duplicates"
        );
    }
}

#[tokio::test]
async fn a_replica_with_a_stale_view_decides_again_on_the_stored_state() {
    // Replica `a` remembers the ticket as open after its own write; replica `b` resolves it.
    // `a`'s next command is decided on the stored state, not on what it remembered.
    let a = spawn_app().await;
    let b = spawn_app_with(SpawnOptions {
        schema: Some(a.schema.clone()),
        topic: Some(a.topic.clone()),
        ..Default::default()
    })
    .await;
    let giulia = agent("giulia");
    let id = open_as(&a, &customer("ann"), "Locked out").await.ticket_id;
    a.tickets()
        .await
        .post_reply(authed(
            &giulia,
            PostReplyRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                body: "Looking".into(),
            },
        ))
        .await
        .unwrap();
    b.tickets()
        .await
        .resolve_ticket(authed(
            &giulia,
            ResolveTicketRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                note: "Unlocked".into(),
            },
        ))
        .await
        .unwrap();

    let err = a
        .tickets()
        .await
        .request_info(authed(
            &giulia,
            RequestInfoRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                body: "Which device?".into(),
            },
        ))
        .await
        .expect_err("request info on a resolved ticket is refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    // A reply through `a` lands after `b`'s event with the next sequence and reopens.
    let reply = a
        .tickets()
        .await
        .post_reply(authed(
            &giulia,
            PostReplyRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                body: "One more thing".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE ticket_id = $1::uuid ORDER BY sequence",
    )
    .bind(&id)
    .fetch_all(&a.pool)
    .await
    .unwrap();
    assert_eq!(
        types,
        [
            "TicketOpened",
            "ReplyAdded",
            "Resolved",
            "Reopened",
            "ReplyAdded"
        ]
    );
    assert_eq!(reply.sequence, 5);
}
