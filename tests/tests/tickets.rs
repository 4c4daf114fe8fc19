//! Ticket lifecycle over gRPC against the real Postgres and broker: what callers get back,
//! and what reaches the topic.

use std::collections::HashSet;

use tidings_proto::events::v1::ticket_event::Kind;
use tidings_proto::ticket::v1::*;
use tidings_tests::*;
use tonic::Code;

#[tokio::test]
async fn open_reply_request_info_resolve_is_visible_in_get_ticket_and_on_the_topic_in_order() {
    let app = spawn_app().await;
    let ann = customer("ann");
    let giulia = agent("giulia");
    let mut c = app.tickets().await;

    let opened = open_as(&app, &ann, "Withdrawal stuck").await;
    assert!(opened.ticket_number >= 10001);
    let id = opened.ticket_id.clone();

    let reply = c
        .post_reply(authed(
            &giulia,
            PostReplyRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                body: "We are looking into it".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.sequence, reply.status),
        (2, TicketStatus::Open as i32)
    );
    let info = c
        .request_info(authed(
            &giulia,
            RequestInfoRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                body: "Please send the transaction id".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.status, TicketStatus::AwaitingCustomer as i32);
    c.post_reply(authed(
        &ann,
        PostReplyRequest {
            request_id: rid(),
            ticket_id: id.clone(),
            body: "It is 0xabc".into(),
        },
    ))
    .await
    .unwrap();
    let resolved = c
        .resolve_ticket(authed(
            &giulia,
            ResolveTicketRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                note: "Refunded".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.status, TicketStatus::Resolved as i32);

    let t = c
        .get_ticket(authed(
            &ann,
            GetTicketRequest {
                ticket_id: id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap();
    assert_eq!(t.status, TicketStatus::Resolved as i32);
    let kinds: Vec<_> = t.messages.iter().map(|m| (m.kind, m.author_kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (MessageKind::Initial as i32, AuthorKind::Customer as i32),
            (MessageKind::Reply as i32, AuthorKind::Agent as i32),
            (MessageKind::InfoRequest as i32, AuthorKind::Agent as i32),
            (MessageKind::Reply as i32, AuthorKind::Customer as i32),
            (MessageKind::Resolution as i32, AuthorKind::Agent as i32),
        ]
    );
    assert_eq!(t.messages[1].author_display_name, "Giulia (support)");
    assert_eq!(t.messages[3].body, "It is 0xabc");
    assert!(
        t.requester_email.is_empty(),
        "customers do not get the agent view"
    );

    let records = app.read_topic(5).await;
    let events: Vec<_> = records.iter().map(decode).collect();
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(matches!(events[0].kind, Some(Kind::TicketOpened(_))));
    assert!(
        matches!(&events[1].kind, Some(Kind::ReplyAdded(r)) if r.excerpt == "We are looking into it")
    );
    assert!(
        matches!(&events[2].kind, Some(Kind::InfoRequested(r)) if r.excerpt == "Please send the transaction id")
    );
    assert!(matches!(events[3].kind, Some(Kind::ReplyAdded(_))));
    assert!(matches!(events[4].kind, Some(Kind::Resolved(_))));
    for (m, e) in records.iter().zip(&events) {
        assert_eq!(rdkafka::message::Message::key(m), Some(id.as_bytes()));
        assert_eq!(e.ticket_id, id);
        assert_eq!(e.ticket_number, opened.ticket_number);
        assert_eq!(header(m, "ce_specversion"), Some("1.0"));
        assert_eq!(header(m, "ce_id"), Some(e.event_id.as_str()));
        assert_eq!(header(m, "ce_subject"), Some(id.as_str()));
        assert_eq!(header(m, "ce_source"), Some("/tidings/ticket-service"));
        assert_eq!(header(m, "content-type"), Some("application/protobuf"));
        assert!(header(m, "ce_time").is_some_and(|t| t.ends_with('Z')));
        assert!(header(m, "traceparent").is_some_and(|t| t.starts_with("00-")));
        // Dispatchers notify without calling back: the requester travels with every event.
        let req = e.requester.as_ref().and_then(|r| r.kind.as_ref()).unwrap();
        assert!(
            matches!(req, tidings_proto::events::v1::requester::Kind::Customer(c)
            if c.email == "ann@example.com" && c.locale == "it" && c.account_id == "ann")
        );
    }
    assert_eq!(
        header(&records[1], "ce_type"),
        Some("tidings.ticket.ReplyAdded.v1")
    );
    assert_eq!(
        header(&records[2], "ce_type"),
        Some("tidings.ticket.InfoRequested.v1")
    );
}

#[tokio::test]
async fn the_callers_trace_continues_into_the_stored_event_and_kafka_headers() {
    let app = spawn_app().await;
    let mut req = authed(&customer("ann"), new_ticket("s"));
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    req.metadata_mut()
        .insert("traceparent", incoming.parse().unwrap());
    app.tickets().await.open_ticket(req).await.unwrap();
    let records = app.read_topic(1).await;
    let tp = header(&records[0], "traceparent").unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert_ne!(tp, incoming, "our span is a child of the caller's");
    let stored = app.count("SELECT count(*) FROM events WHERE traceparent LIKE '00-4bf92f3577b34da6a3ce929d0e0e4736-%'").await;
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn a_retried_reply_with_the_same_request_id_creates_one_event_and_the_same_answer() {
    let app = spawn_app().await;
    let ann = customer("ann");
    let id = open_as(&app, &ann, "Card declined").await.ticket_id;
    let mut c = app.tickets().await;
    let req = PostReplyRequest {
        request_id: "retry-me-1".into(),
        ticket_id: id.clone(),
        body: "Any update?".into(),
    };
    let first = c
        .post_reply(authed(&ann, req.clone()))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .post_reply(authed(&ann, req.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_type = 'ReplyAdded'")
            .await,
        1
    );

    let other = PostReplyRequest {
        body: "Something else".into(),
        ..req
    };
    let err = c.post_reply(authed(&ann, other)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("request_id:"),
        "{}",
        err.message()
    );
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_type = 'ReplyAdded'")
            .await,
        1
    );

    // The same key from another caller is another request.
    let giulia = agent("giulia");
    c.post_reply(authed(
        &giulia,
        PostReplyRequest {
            request_id: "retry-me-1".into(),
            ticket_id: id,
            body: "Hello".into(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_type = 'ReplyAdded'")
            .await,
        2
    );
}

#[tokio::test]
async fn twenty_concurrent_replies_to_one_ticket_make_twenty_events_with_a_gap_free_sequence() {
    let app = spawn_app().await;
    let ann = customer("ann");
    let id = open_as(&app, &ann, "Busy ticket").await.ticket_id;
    let giulia = agent("giulia");
    let calls = (0..20).map(|i| {
        let id = id.clone();
        let giulia = giulia.clone();
        let app = &app;
        async move {
            app.tickets()
                .await
                .post_reply(authed(
                    &giulia,
                    PostReplyRequest {
                        request_id: format!("r-{i}"),
                        ticket_id: id,
                        body: format!("reply {i}"),
                    },
                ))
                .await
                .map(|r| r.into_inner().sequence)
        }
    });
    let results = futures::future::join_all(calls).await;
    let seqs: HashSet<u64> = results
        .into_iter()
        .map(|r| r.expect("every reply succeeds"))
        .collect();
    assert_eq!(seqs, (2..=21).collect::<HashSet<u64>>());
    let stored: Vec<i64> = sqlx::query_scalar("SELECT sequence FROM events ORDER BY sequence")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, (1..=21).collect::<Vec<i64>>());
    let on_topic: Vec<u64> = app
        .read_topic(21)
        .await
        .iter()
        .map(|m| decode(m).sequence)
        .collect();
    assert_eq!(
        on_topic,
        (1..=21).collect::<Vec<u64>>(),
        "per-ticket order on the topic"
    );
}

#[tokio::test]
async fn customers_see_only_their_own_tickets_and_only_agents_act_as_agents() {
    let app = spawn_app().await;
    let (ann, bob, giulia) = (customer("ann"), customer("bob"), agent("giulia"));
    let mut c = app.tickets().await;
    let ann_ticket = open_as(&app, &ann, "Ann's").await.ticket_id;
    let bob_ticket = open_as(&app, &bob, "Bob's").await.ticket_id;

    // Foreign tickets are indistinguishable from unknown ones.
    let e = c
        .get_ticket(authed(
            &bob,
            GetTicketRequest {
                ticket_id: ann_ticket.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .post_reply(authed(
            &bob,
            PostReplyRequest {
                request_id: rid(),
                ticket_id: ann_ticket.clone(),
                body: "hi".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let unknown = uuid::Uuid::now_v7().to_string();
    let e = c
        .get_ticket(authed(&bob, GetTicketRequest { ticket_id: unknown }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Customers cannot do agents' work, even on their own ticket.
    let e = c
        .resolve_ticket(authed(
            &ann,
            ResolveTicketRequest {
                request_id: rid(),
                ticket_id: ann_ticket.clone(),
                note: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .request_info(authed(
            &ann,
            RequestInfoRequest {
                request_id: rid(),
                ticket_id: ann_ticket.clone(),
                body: "?".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Agents can, and see the requester.
    let t = c
        .get_ticket(authed(
            &giulia,
            GetTicketRequest {
                ticket_id: ann_ticket.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap();
    assert_eq!(
        (t.requester_email.as_str(), t.requester_account_id.as_str()),
        ("ann@example.com", "ann")
    );

    // Lists: own tickets for customers; all (or filtered) for agents.
    let list = |token: &str, account: &str| {
        let mut c = c.clone();
        let req = authed(
            token,
            ListTicketsRequest {
                requester_account_id: account.into(),
                ..Default::default()
            },
        );
        async move { c.list_tickets(req).await }
    };
    let ids = |r: ListTicketsResponse| {
        r.tickets
            .into_iter()
            .map(|t| t.ticket_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(list(&ann, "").await.unwrap().into_inner()),
        vec![ann_ticket.clone()]
    );
    assert_eq!(
        ids(list(&giulia, "").await.unwrap().into_inner()),
        vec![bob_ticket.clone(), ann_ticket.clone()]
    );
    assert_eq!(
        ids(list(&giulia, "bob").await.unwrap().into_inner()),
        vec![bob_ticket]
    );
    assert_eq!(
        list(&ann, "bob").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        app.count("SELECT count(*) FROM events").await,
        2,
        "refused calls wrote nothing"
    );
}

#[tokio::test]
async fn missing_expired_and_badly_signed_tokens_are_unauthenticated() {
    let app = spawn_app().await;
    let mut c = app.tickets().await;
    let expired = token(&tidings_auth::Claims {
        exp: chrono::Utc::now().timestamp() - 3600,
        ..customer_claims("ann")
    });
    let forged = tidings_auth::mint_hs256(
        &secrecy::SecretString::from("not-the-secret-not-the-secret!!".to_owned()),
        &customer_claims("ann"),
    );
    let req = || GetTicketRequest {
        ticket_id: uuid::Uuid::now_v7().to_string(),
    };
    assert_eq!(
        c.get_ticket(req()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    for bad in [expired, forged, "not.a.jwt".to_owned()] {
        let e = c.get_ticket(authed(&bad, req())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    }
    let mut raw = tonic::Request::new(req());
    raw.metadata_mut().insert(
        "authorization",
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l".parse().unwrap(),
    );
    assert_eq!(
        c.get_ticket(raw).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn list_is_newest_activity_first_filters_by_status_and_pages_with_a_cursor() {
    let app = spawn_app().await;
    let (ann, giulia) = (customer("ann"), agent("giulia"));
    let mut c = app.tickets().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(open_as(&app, &ann, &format!("ticket {i}")).await.ticket_id);
        app.clock.advance(chrono::Duration::seconds(1));
    }
    // Activity on the oldest moves it to the top; resolving one lets us filter.
    c.post_reply(authed(
        &giulia,
        PostReplyRequest {
            request_id: rid(),
            ticket_id: ids[0].clone(),
            body: "bump".into(),
        },
    ))
    .await
    .unwrap();
    app.clock.advance(chrono::Duration::seconds(1));
    c.resolve_ticket(authed(
        &giulia,
        ResolveTicketRequest {
            request_id: rid(),
            ticket_id: ids[1].clone(),
            note: String::new(),
        },
    ))
    .await
    .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_tickets(authed(
                &ann,
                ListTicketsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.tickets.len() <= 2);
        seen.extend(page.tickets.into_iter().map(|t| t.ticket_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        vec![
            ids[1].clone(),
            ids[0].clone(),
            ids[4].clone(),
            ids[3].clone(),
            ids[2].clone()
        ]
    );

    let resolved = c
        .list_tickets(authed(
            &ann,
            ListTicketsRequest {
                statuses: vec![TicketStatus::Resolved as i32],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resolved
            .tickets
            .iter()
            .map(|t| t.ticket_id.clone())
            .collect::<Vec<_>>(),
        vec![ids[1].clone()]
    );
}

#[tokio::test]
async fn the_read_model_rebuilt_from_events_matches_the_live_one() {
    let mut app = spawn_app().await;
    let (ann, giulia) = (customer("ann"), agent("giulia"));
    let a = open_as(&app, &ann, "one").await.ticket_id;
    open_as(&app, &ann, "two").await;
    app.tickets()
        .await
        .resolve_ticket(authed(
            &giulia,
            ResolveTicketRequest {
                request_id: rid(),
                ticket_id: a,
                note: String::new(),
            },
        ))
        .await
        .unwrap();
    // The write path's snapshots must equal what replaying the events gives.
    let snapshot = "SELECT string_agg(ticket_id::text || ticket_number::text || subject || requester::text || status || version::text || created_at::text || last_activity_at::text || snapshot::text, ',' ORDER BY ticket_id) FROM tickets";
    let before: String = sqlx::query_scalar(snapshot)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    app.stop().await;
    // A damaged row is repaired from the events.
    sqlx::query("UPDATE tickets SET subject = 'damaged', ticket_number = ticket_number + 1000, created_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    let store = tidings_store::EventStore::new(app.pool.clone());
    assert_eq!(store.rebuild_read_model().await.unwrap(), 2);
    let after: String = sqlx::query_scalar(snapshot)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_retried_resolve_gets_the_first_answer_not_a_refusal() {
    // The retry's state (cached after the first call) says "already resolved"; the stored
    // answer of the first call must win over deciding again.
    let app = spawn_app().await;
    let id = open_as(&app, &customer("ann"), "Card declined")
        .await
        .ticket_id;
    let giulia = agent("giulia");
    let mut c = app.tickets().await;
    let req = ResolveTicketRequest {
        request_id: "resolve-once".into(),
        ticket_id: id.clone(),
        note: "Refunded".into(),
    };
    let first = c
        .resolve_ticket(authed(&giulia, req.clone()))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .resolve_ticket(authed(&giulia, req))
        .await
        .expect("a retry of a successful resolve succeeds")
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_type = 'Resolved'")
            .await,
        1
    );
}

async fn reply(app: &TestApp, who: &str, ticket: &str, body: &str) -> Result<(), tonic::Status> {
    app.tickets()
        .await
        .post_reply(authed(
            who,
            PostReplyRequest {
                request_id: rid(),
                ticket_id: ticket.to_owned(),
                body: body.into(),
            },
        ))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_damaged_or_older_snapshot_is_replayed_from_the_events_and_rewritten() {
    // No state cache: every write reads the stored snapshot.
    let app = spawn_app_with(SpawnOptions {
        vars: vec![("TIDINGS_STATE_CACHE_CAPACITY", "0".into())],
        ..Default::default()
    })
    .await;
    let ann = customer("ann");
    let ticket = open_as(&app, &ann, "Snapshots").await.ticket_id;
    let set_snapshot = |sql: &'static str| {
        let (pool, ticket) = (app.pool.clone(), ticket.clone());
        async move {
            sqlx::query(sql)
                .bind(uuid::Uuid::parse_str(&ticket).unwrap())
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let snapshot_version = || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT (snapshot->>'snapshot_version')::bigint FROM tickets",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(
        snapshot_version().await,
        Some(tidings_store::SNAPSHOT_VERSION as i64)
    );

    // Undecodable: the write replays the events instead of failing, and rewrites it.
    set_snapshot(
        "UPDATE tickets SET snapshot = '{\"snapshot_version\": 2, \"status\": 7}' WHERE ticket_id = $1",
    )
    .await;
    reply(&app, &ann, &ticket, "after a damaged snapshot")
        .await
        .expect("the write succeeds");
    assert_eq!(
        snapshot_version().await,
        Some(tidings_store::SNAPSHOT_VERSION as i64)
    );

    // An older shape (version 1 had neither the version field nor the guest access day).
    set_snapshot(
        "UPDATE tickets SET snapshot = snapshot - 'snapshot_version' - 'guest_day' WHERE ticket_id = $1",
    )
    .await;
    reply(&app, &ann, &ticket, "after an old snapshot")
        .await
        .expect("the write succeeds");
    assert_eq!(
        snapshot_version().await,
        Some(tidings_store::SNAPSHOT_VERSION as i64)
    );
    let got = app
        .tickets()
        .await
        .get_ticket(authed(
            &ann,
            GetTicketRequest {
                ticket_id: ticket.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let t = got.ticket.unwrap();
    assert_eq!(t.messages.len(), 3, "{:?}", t.messages);
    assert_eq!(
        app.count("SELECT max(sequence) FROM events").await,
        3,
        "the sequence continued without a gap"
    );
}

#[tokio::test]
async fn rebuilding_the_read_model_alongside_writers_leaves_every_row_in_step_with_its_events() {
    let app = spawn_app().await;
    let ann = customer("ann");
    let mut tickets = Vec::new();
    for i in 0..20 {
        tickets.push(open_as(&app, &ann, &format!("t{i}")).await.ticket_id);
    }
    let store = tidings_store::EventStore::new(app.pool.clone());
    let rebuild = tokio::spawn(async move { store.rebuild_read_model().await });
    // Writes during the rebuild succeed (each waits at most for its own ticket's replay).
    for (i, t) in tickets.iter().enumerate() {
        reply(&app, &ann, t, &format!("during the rebuild {i}"))
            .await
            .expect("a write during the rebuild");
    }
    assert_eq!(rebuild.await.unwrap().unwrap(), 20);
    // Every ticket's row agrees with its events, whichever came first.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM tickets t
             WHERE t.version = (SELECT max(sequence) FROM events e WHERE e.ticket_id = t.ticket_id)"
        )
        .await,
        20
    );
}
