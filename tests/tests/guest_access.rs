//! Guest access: an emailed link bound to (ticket, email) -> a one-time code by email -> a
//! session for that one ticket. The code reaches the mailer sealed; it is never stored or
//! published in plaintext.

use std::time::Duration;

use chrono::Utc;
use tidings_domain::{Email, TicketId};
use tidings_proto::events::v1::ticket_event::Kind;
use tidings_proto::ticket::v1::*;
use tidings_tests::*;
use tonic::Code;

async fn open_guest_ticket(app: &TestApp, email: &str) -> TicketId {
    let r = app
        .tickets()
        .await
        .open_ticket(OpenTicketRequest {
            request_id: rid(),
            subject: "Cannot log in".into(),
            body: "I filed this without an account".into(),
            guest: Some(GuestRequester {
                email: email.into(),
                locale: "it".into(),
            }),
        })
        .await
        .expect("guest opens a ticket without a token")
        .into_inner();
    TicketId::parse(&r.ticket_id).unwrap()
}

/// What the email dispatcher does: mint the link that goes in the notification email.
fn link_for(ticket: TicketId, email: &str) -> String {
    keyring().mint_link(ticket, &Email::parse(email).unwrap(), Utc::now())
}

/// What the email dispatcher does with a code request: read it from the codes topic and
/// open the sealed code. Returns the n-th code requested on this app.
async fn emailed_code(app: &TestApp, ticket: TicketId, nth: usize) -> String {
    let records = read_topic(&app.brokers, &app.codes_topic, nth, Duration::from_secs(20)).await;
    let event = decode(&records[nth - 1]);
    let Some(Kind::AccessCodeRequested(req)) = event.kind else {
        panic!("not a code request: {event:?}")
    };
    sealer()
        .open(ticket, &req.sealed_code)
        .expect("sealed with the shared key")
}

#[tokio::test]
async fn guest_gets_a_session_for_exactly_their_ticket_after_entering_the_emailed_code() {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let other = open_guest_ticket(&app, "someone@example.com").await;
    let link = link_for(ticket, "guest@example.com");
    let mut g = app.guests().await;

    let requested = g
        .request_access_code(RequestAccessCodeRequest {
            link_token: link.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let expires = requested.code_expires_at.unwrap();
    assert_eq!(
        expires.seconds,
        (app.clock_now() + chrono::Duration::minutes(10)).timestamp()
    );
    let code = emailed_code(&app, ticket, 1).await;
    assert_eq!(code.len(), 6);

    let session = g
        .verify_access_code(VerifyAccessCodeRequest {
            link_token: link.clone(),
            code: code.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session.ticket_id, ticket.to_string());

    let mut c = app.tickets().await;
    let t = c
        .get_ticket(authed(
            &session.session_token,
            GetTicketRequest {
                ticket_id: ticket.to_string(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap();
    assert_eq!(t.messages[0].body, "I filed this without an account");
    let reply = c
        .post_reply(authed(
            &session.session_token,
            PostReplyRequest {
                request_id: rid(),
                ticket_id: ticket.to_string(),
                body: "Here is a screenshot description".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.sequence > 1);
    let e = c
        .get_ticket(authed(
            &session.session_token,
            GetTicketRequest {
                ticket_id: other.to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let listed = c
        .list_tickets(authed(
            &session.session_token,
            ListTicketsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .tickets
            .iter()
            .map(|t| t.ticket_id.clone())
            .collect::<Vec<_>>(),
        vec![ticket.to_string()]
    );
    // Guests cannot do agents' work either.
    let e = c
        .resolve_ticket(authed(
            &session.session_token,
            ResolveTicketRequest {
                request_id: rid(),
                ticket_id: ticket.to_string(),
                note: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A code is single-use.
    let e = g
        .verify_access_code(VerifyAccessCodeRequest {
            link_token: link,
            code,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Guest access is audited as events on the ticket.
    assert_eq!(app.count("SELECT count(*) FROM events WHERE event_type IN ('AccessCodeRequested', 'GuestAccessGranted')").await, 2);
}

#[tokio::test]
async fn a_link_only_works_for_the_ticket_and_email_it_was_minted_for() {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let customer_ticket = app
        .tickets()
        .await
        .open_ticket(authed(&customer("ann"), new_ticket("s")))
        .await
        .unwrap()
        .into_inner()
        .ticket_id;
    let mut g = app.guests().await;
    let attempts = [
        link_for(ticket, "other@example.com"),
        link_for(TicketId::new(), "guest@example.com"),
        link_for(
            TicketId::parse(&customer_ticket).unwrap(),
            "ann@example.com",
        ),
        "gl1.t1.garbage.garbage".to_owned(),
    ];
    let mut messages = Vec::new();
    for link in attempts {
        let e = g
            .request_access_code(RequestAccessCodeRequest { link_token: link })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        messages.push(e.message().to_owned());
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "every bad link gets the same answer: {messages:?}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_type = 'AccessCodeRequested'")
            .await,
        0
    );

    // An old link has expired (30 days).
    let old = keyring().mint_link(
        ticket,
        &Email::parse("guest@example.com").unwrap(),
        Utc::now() - chrono::Duration::days(31),
    );
    let e = g
        .request_access_code(RequestAccessCodeRequest { link_token: old })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());
}

#[tokio::test]
async fn a_code_expires_after_ten_minutes() {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let link = link_for(ticket, "guest@example.com");
    let mut g = app.guests().await;
    g.request_access_code(RequestAccessCodeRequest {
        link_token: link.clone(),
    })
    .await
    .unwrap();
    let code = emailed_code(&app, ticket, 1).await;
    app.clock.advance(chrono::Duration::minutes(10));
    let e = g
        .verify_access_code(VerifyAccessCodeRequest {
            link_token: link,
            code,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("expired"), "{}", e.message());
}

#[tokio::test]
async fn five_wrong_codes_burn_the_code_even_for_the_right_one_after() {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let link = link_for(ticket, "guest@example.com");
    let mut g = app.guests().await;
    g.request_access_code(RequestAccessCodeRequest {
        link_token: link.clone(),
    })
    .await
    .unwrap();
    let code = emailed_code(&app, ticket, 1).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (0..5).rev() {
        let e = g
            .verify_access_code(VerifyAccessCodeRequest {
                link_token: link.clone(),
                code: wrong.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(
            e.message().contains(&format!("{left} attempt")),
            "{}",
            e.message()
        );
    }
    let e = g
        .verify_access_code(VerifyAccessCodeRequest {
            link_token: link,
            code,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn code_requests_are_rate_limited_to_one_a_minute_per_ticket() {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let link = link_for(ticket, "guest@example.com");
    let mut g = app.guests().await;
    g.request_access_code(RequestAccessCodeRequest {
        link_token: link.clone(),
    })
    .await
    .unwrap();
    app.clock.advance(chrono::Duration::seconds(30));
    let e = g
        .request_access_code(RequestAccessCodeRequest {
            link_token: link.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(
        e.metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("30")
    );
    app.clock.advance(chrono::Duration::seconds(31));
    g.request_access_code(RequestAccessCodeRequest {
        link_token: link.clone(),
    })
    .await
    .unwrap();
    // The newest code is the one that counts.
    let code = emailed_code(&app, ticket, 2).await;
    g.verify_access_code(VerifyAccessCodeRequest {
        link_token: link,
        code,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_code_is_never_in_plaintext_in_the_events_the_outbox_or_either_topic() {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let link = link_for(ticket, "guest@example.com");
    app.guests()
        .await
        .request_access_code(RequestAccessCodeRequest { link_token: link })
        .await
        .unwrap();
    let code = emailed_code(&app, ticket, 1).await;

    let in_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'")
            .bind(&code)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let in_outbox: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE position(convert_to($1, 'UTF8') IN value) > 0 OR headers::text LIKE '%' || $1 || '%'",
    )
    .bind(&code)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((in_events, in_outbox), (0, 0));
    for topic in [&app.topic, &app.codes_topic] {
        let n = if topic == &app.topic { 2 } else { 1 };
        for m in read_topic(&app.brokers, topic, n, Duration::from_secs(20)).await {
            let value = rdkafka::message::Message::payload(&m).unwrap();
            assert!(
                !value.windows(6).any(|w| w == code.as_bytes()),
                "plaintext code on {topic}"
            );
        }
    }
}

#[tokio::test]
async fn twenty_wrong_codes_across_codes_lock_the_ticket_for_the_day_and_the_lock_is_an_event() {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let link = link_for(ticket, "guest@example.com");
    let mut g = app.guests().await;
    let mut last = None;
    // Four codes, five wrong guesses each: each new code does not reset the count.
    for round in 0..4 {
        if round > 0 {
            app.clock.advance(chrono::Duration::seconds(61));
        }
        g.request_access_code(RequestAccessCodeRequest {
            link_token: link.clone(),
        })
        .await
        .expect("a code while under the daily bound");
        for _ in 0..5 {
            last = Some(
                g.verify_access_code(VerifyAccessCodeRequest {
                    link_token: link.clone(),
                    code: "000000".into(),
                })
                .await
                .unwrap_err(),
            );
        }
    }
    // The odds that one of four random codes is 000000 are 4 in a million; then the test
    // would see a session instead, and fail loudly rather than pass by chance.
    let locked = last.unwrap();
    assert_eq!(
        locked.code(),
        Code::ResourceExhausted,
        "{}",
        locked.message()
    );
    assert!(locked.message().contains("today"), "{}", locked.message());
    assert!(locked.metadata().get("retry-after").is_some());

    // No further code is sent, however long one waits within the day.
    app.clock.advance(chrono::Duration::hours(2));
    let e = g
        .request_access_code(RequestAccessCodeRequest {
            link_token: link.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("try again"), "{}", e.message());

    // The lock is on the ticket's stream, for audit, like the other access events.
    let records = read_topic(&app.brokers, &app.topic, 26, Duration::from_secs(30)).await;
    assert!(
        records
            .iter()
            .any(|m| matches!(decode(m).kind, Some(Kind::GuestAccessLocked(_)))),
        "GuestAccessLocked on the topic"
    );

    // A day after the first attempt, access works again.
    app.clock.advance(chrono::Duration::hours(22));
    g.request_access_code(RequestAccessCodeRequest {
        link_token: link.clone(),
    })
    .await
    .expect("a new day");
    let code = emailed_code(&app, ticket, 5).await;
    g.verify_access_code(VerifyAccessCodeRequest {
        link_token: link,
        code,
    })
    .await
    .expect("the right code opens a session");
}

#[tokio::test]
async fn opening_guest_tickets_is_throttled_per_email_address_and_per_client() {
    let app = spawn_app_with(SpawnOptions {
        vars: vec![
            ("TIDINGS_GUEST_OPENS_PER_EMAIL_PER_HOUR", "2".into()),
            ("TIDINGS_GUEST_OPENS_PER_CLIENT_PER_HOUR", "4".into()),
        ],
        ..Default::default()
    })
    .await;
    let open = |email: &'static str, request_id: String| {
        let app = &app;
        async move {
            app.tickets()
                .await
                .open_ticket(OpenTicketRequest {
                    request_id,
                    subject: "Cannot log in".into(),
                    body: "I filed this without an account".into(),
                    guest: Some(GuestRequester {
                        email: email.into(),
                        locale: "en".into(),
                    }),
                })
                .await
        }
    };
    let first = rid();
    open("victim@example.com", first.clone()).await.unwrap();
    open("victim@example.com", rid()).await.unwrap();
    let e = open("Victim@Example.com", rid()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("email address"), "{}", e.message());
    assert!(e.metadata().get("retry-after").is_some());
    // A retry of a call that succeeded is answered, not counted.
    open("victim@example.com", first).await.expect("a retry");

    // The same caller, other addresses: bounded per client (the refused call above counted
    // against the caller, never against an address it did not get to mail).
    open("a@example.com", rid()).await.unwrap();
    let e = open("b@example.com", rid()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("client"), "{}", e.message());
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_type = 'TicketOpened'")
            .await,
        3,
        "refused calls write nothing"
    );
}

#[tokio::test]
async fn describing_a_link_shows_the_masked_address_and_uses_nothing_up() {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let mut g = app.guests().await;
    let described = g
        .describe_link(DescribeLinkRequest {
            link_token: link_for(ticket, "guest@example.com"),
        })
        .await
        .expect("a valid link is described")
        .into_inner();
    assert_eq!(described.ticket_id, ticket.to_string());
    assert_eq!(described.masked_email, "g•••@example.com");
    assert_eq!(described.locale, "it");
    assert!(described.ticket_number > 0);
    // Nothing was written: no code requested, nothing audited.
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_type <> 'TicketOpened'")
            .await,
        0
    );

    // A link for another address and an expired link carry the reasons a client acts on.
    let cases = [
        (link_for(ticket, "other@example.com"), "LINK_INVALID"),
        (
            keyring().mint_link(
                ticket,
                &Email::parse("guest@example.com").unwrap(),
                Utc::now() - chrono::Duration::days(31),
            ),
            "LINK_EXPIRED",
        ),
    ];
    for (link, reason) in cases {
        let e = g
            .describe_link(DescribeLinkRequest { link_token: link })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let (got, _) = tidings_proto::reason_of(&e).expect("an ErrorInfo");
        assert_eq!(got, reason);
    }
    let e = g
        .describe_link(DescribeLinkRequest {
            link_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("link_token:"), "{}", e.message());
}

#[tokio::test]
async fn a_fresh_link_is_recorded_for_an_expired_link_only_once_in_ten_minutes_and_never_for_a_forged_one()
 {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let expired = keyring().mint_link(
        ticket,
        &Email::parse("guest@example.com").unwrap(),
        Utc::now() - chrono::Duration::days(31),
    );
    let forged = link_for(ticket, "attacker@example.com");
    let mut g = app.guests().await;
    let requests = || async {
        app.count("SELECT count(*) FROM events WHERE event_type = 'GuestLinkRequested'")
            .await
    };
    // Every answer is the same OK; only the first real request is recorded.
    for link in [&expired, &forged, &expired, &"gl1.nonsense".to_owned()] {
        g.send_fresh_link(SendFreshLinkRequest {
            link_token: link.clone(),
        })
        .await
        .expect("the same answer whatever the link");
    }
    assert_eq!(requests().await, 1);
    // Ten minutes later, another one.
    app.clock.advance(chrono::Duration::minutes(11));
    g.send_fresh_link(SendFreshLinkRequest {
        link_token: expired.clone(),
    })
    .await
    .unwrap();
    assert_eq!(requests().await, 2);
    // The event reaches the ticket-events topic for the email dispatcher.
    app.outbox_drained(Duration::from_secs(20), "fresh link events")
        .await;
    let records = read_topic(&app.brokers, &app.topic, 3, Duration::from_secs(20)).await;
    assert!(
        records
            .iter()
            .any(|r| matches!(decode(r).kind, Some(Kind::GuestLinkRequested(_))))
    );
}

#[tokio::test]
async fn a_wrong_code_names_the_attempts_left_in_its_error_info() {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let link = link_for(ticket, "guest@example.com");
    let mut g = app.guests().await;
    g.request_access_code(RequestAccessCodeRequest {
        link_token: link.clone(),
    })
    .await
    .unwrap();
    let code = emailed_code(&app, ticket, 1).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let e = g
        .verify_access_code(VerifyAccessCodeRequest {
            link_token: link.clone(),
            code: wrong.into(),
        })
        .await
        .unwrap_err();
    let (reason, metadata) = tidings_proto::reason_of(&e).expect("an ErrorInfo");
    assert_eq!(reason, "CODE_REJECTED");
    assert_eq!(metadata["attempts_left"], "4");
    // A second code request within the minute: RATE_LIMITED with the wait.
    let e = g
        .request_access_code(RequestAccessCodeRequest { link_token: link })
        .await
        .unwrap_err();
    let (reason, metadata) = tidings_proto::reason_of(&e).expect("an ErrorInfo");
    assert_eq!(reason, "RATE_LIMITED");
    assert!(metadata["retry_after_secs"].parse::<u64>().unwrap() <= 60);
}

/// A guest ticket opened with `x-forwarded-for: forwarded`.
async fn open_forwarded(app: &TestApp, forwarded: &str, email: &str) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(OpenTicketRequest {
        request_id: rid(),
        subject: "Cannot log in".into(),
        body: "through the portal".into(),
        guest: Some(GuestRequester {
            email: email.into(),
            locale: "en".into(),
        }),
    });
    req.metadata_mut()
        .insert("x-forwarded-for", forwarded.parse().unwrap());
    app.tickets().await.open_ticket(req).await.map(drop)
}

#[tokio::test]
async fn the_client_throttle_believes_x_forwarded_for_from_a_trusted_proxy_only() {
    // Given the portal's address trusted, each visitor it forwards has a bucket of their own.
    let trusting = spawn_app_with(SpawnOptions {
        vars: vec![
            ("TIDINGS_GUEST_OPENS_PER_CLIENT_PER_HOUR", "1".into()),
            ("TIDINGS_TRUSTED_PROXIES", "127.0.0.1".into()),
        ],
        ..Default::default()
    })
    .await;
    open_forwarded(&trusting, "203.0.113.1", "a@example.com")
        .await
        .unwrap();
    open_forwarded(&trusting, "203.0.113.2", "b@example.com")
        .await
        .unwrap();
    let e = open_forwarded(&trusting, "203.0.113.1", "c@example.com")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let (reason, _) = tidings_proto::reason_of(&e).expect("an ErrorInfo");
    assert_eq!(reason, "THROTTLED");

    // Given no trusted proxy, a caller cannot dodge its bucket by naming other clients.
    let strict = spawn_app_with(SpawnOptions {
        vars: vec![("TIDINGS_GUEST_OPENS_PER_CLIENT_PER_HOUR", "1".into())],
        ..Default::default()
    })
    .await;
    open_forwarded(&strict, "203.0.113.1", "a@example.com")
        .await
        .unwrap();
    let e = open_forwarded(&strict, "203.0.113.2", "b@example.com")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn the_eleventh_code_request_of_a_day_is_refused_and_recorded_as_a_lock() {
    let app = spawn_app().await;
    let ticket = open_guest_ticket(&app, "guest@example.com").await;
    let link = link_for(ticket, "guest@example.com");
    let mut g = app.guests().await;
    for _ in 0..10 {
        g.request_access_code(RequestAccessCodeRequest {
            link_token: link.clone(),
        })
        .await
        .expect("ten codes a day");
        app.clock.advance(chrono::Duration::seconds(61));
    }
    let e = g
        .request_access_code(RequestAccessCodeRequest {
            link_token: link.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let (reason, _) = tidings_proto::reason_of(&e).expect("an ErrorInfo");
    assert_eq!(reason, "GUEST_ACCESS_LOCKED");
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_type = 'GuestAccessLocked'")
            .await,
        1,
        "the lock is on the ticket's event stream"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_type = 'AccessCodeRequested'")
            .await,
        10
    );
}
