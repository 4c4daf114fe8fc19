//! Bad input gets a clear status naming the field, and changes nothing.

use tidings_proto::ticket::v1::*;
use tidings_tests::*;
use tonic::Code;

async fn assert_nothing_written(app: &TestApp) {
    assert_eq!(app.count("SELECT count(*) FROM events").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM tickets").await, 0);
}

fn assert_invalid(e: tonic::Status, field: &str) {
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().starts_with(&format!("{field}:")),
        "expected field {field} in {:?}",
        e.message()
    );
}

#[tokio::test]
async fn opening_with_bad_fields_is_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    let mut c = app.tickets().await;
    let ann = customer("ann");
    let good = || OpenTicketRequest {
        request_id: rid(),
        subject: "Subject".into(),
        body: "Body".into(),
        guest: None,
    };
    let guest = |email: &str, locale: &str| {
        Some(GuestRequester {
            email: email.into(),
            locale: locale.into(),
        })
    };

    assert_invalid(
        c.open_ticket(authed(
            &ann,
            OpenTicketRequest {
                subject: "  ".into(),
                ..good()
            },
        ))
        .await
        .unwrap_err(),
        "subject",
    );
    assert_invalid(
        c.open_ticket(authed(
            &ann,
            OpenTicketRequest {
                subject: "x".repeat(201),
                ..good()
            },
        ))
        .await
        .unwrap_err(),
        "subject",
    );
    assert_invalid(
        c.open_ticket(authed(
            &ann,
            OpenTicketRequest {
                body: String::new(),
                ..good()
            },
        ))
        .await
        .unwrap_err(),
        "body",
    );
    let e = c
        .open_ticket(authed(
            &ann,
            OpenTicketRequest {
                body: "x".repeat(20_001),
                ..good()
            },
        ))
        .await
        .unwrap_err();
    assert_invalid(e.clone(), "body");
    assert!(e.message().contains("20000"), "{}", e.message());
    assert_invalid(
        c.open_ticket(authed(
            &ann,
            OpenTicketRequest {
                request_id: String::new(),
                ..good()
            },
        ))
        .await
        .unwrap_err(),
        "request_id",
    );
    assert_invalid(
        c.open_ticket(OpenTicketRequest {
            guest: guest("not-an-email", "en"),
            ..good()
        })
        .await
        .unwrap_err(),
        "guest.email",
    );
    assert_invalid(
        c.open_ticket(OpenTicketRequest {
            guest: guest("a@example.com", "klingon!"),
            ..good()
        })
        .await
        .unwrap_err(),
        "guest.locale",
    );
    assert_invalid(c.open_ticket(good()).await.unwrap_err(), "guest");
    assert_invalid(
        c.open_ticket(authed(
            &ann,
            OpenTicketRequest {
                guest: guest("a@example.com", "en"),
                ..good()
            },
        ))
        .await
        .unwrap_err(),
        "guest",
    );
    assert_eq!(
        c.open_ticket(authed(&agent("giulia"), good()))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        c.open_ticket(authed("garbage.jwt.here", good()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn replies_to_unknown_or_malformed_tickets_and_bad_list_queries_are_refused() {
    let app = spawn_app().await;
    let mut c = app.tickets().await;
    let giulia = agent("giulia");
    let reply = |ticket_id: &str, body: &str| PostReplyRequest {
        request_id: rid(),
        ticket_id: ticket_id.into(),
        body: body.into(),
    };

    let e = c
        .post_reply(authed(
            &giulia,
            reply(&uuid::Uuid::now_v7().to_string(), "hi"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_invalid(
        c.post_reply(authed(&giulia, reply("12345", "hi")))
            .await
            .unwrap_err(),
        "ticket_id",
    );
    assert_invalid(
        c.post_reply(authed(
            &giulia,
            reply(&uuid::Uuid::now_v7().to_string(), ""),
        ))
        .await
        .unwrap_err(),
        "body",
    );
    let e = c
        .post_reply(reply(&uuid::Uuid::now_v7().to_string(), "hi"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Unknown enum values are refused, not guessed.
    let e = c
        .list_tickets(authed(
            &giulia,
            ListTicketsRequest {
                statuses: vec![42],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_invalid(e, "statuses");
    let e = c
        .list_tickets(authed(
            &giulia,
            ListTicketsRequest {
                statuses: vec![0],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_invalid(e, "statuses");
    assert_invalid(
        c.list_tickets(authed(
            &giulia,
            ListTicketsRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err(),
        "page_size",
    );
    assert_invalid(
        c.list_tickets(authed(
            &giulia,
            ListTicketsRequest {
                page_token: "bogus".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err(),
        "page_token",
    );

    let mut g = app.guests().await;
    assert_invalid(
        g.request_access_code(RequestAccessCodeRequest {
            link_token: String::new(),
        })
        .await
        .unwrap_err(),
        "link_token",
    );
    assert_invalid(
        g.verify_access_code(VerifyAccessCodeRequest {
            link_token: "x".into(),
            code: "12ab".into(),
        })
        .await
        .unwrap_err(),
        "code",
    );
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn request_info_on_a_resolved_ticket_is_a_failed_precondition() {
    let app = spawn_app().await;
    let mut c = app.tickets().await;
    let (ann, giulia) = (customer("ann"), agent("giulia"));
    let id = c
        .open_ticket(authed(&ann, new_ticket("s")))
        .await
        .unwrap()
        .into_inner()
        .ticket_id;
    c.resolve_ticket(authed(
        &giulia,
        ResolveTicketRequest {
            request_id: rid(),
            ticket_id: id.clone(),
            note: String::new(),
        },
    ))
    .await
    .unwrap();
    let e = c
        .request_info(authed(
            &giulia,
            RequestInfoRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                body: "more?".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // ...but the customer's reply reopens it: they continue in the original ticket.
    let r = c
        .post_reply(authed(
            &ann,
            PostReplyRequest {
                request_id: rid(),
                ticket_id: id,
                body: "still broken".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, TicketStatus::Open as i32);
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_type = 'Reopened'")
            .await,
        1
    );
}
