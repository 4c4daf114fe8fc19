//! The push dispatcher end to end: the ticket service and the dispatcher in-process, the real
//! broker and Postgres, and the APNs and FCM doubles over real HTTP/2 + TLS (a test CA the
//! dispatcher trusts through its configuration).

use std::time::Duration;

use prost::Message as _;
use rdkafka::Message as _;
use tidings_proto::events::v1 as ev;
use tidings_proto::push::v1 as pb;
use tidings_proto::ticket::v1::*;
use tidings_push_doubles::Failure;
use tidings_tests::mail::unique;
use tidings_tests::push::*;
use tidings_tests::*;

fn apns_token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}")
}

fn fcm_token() -> String {
    format!("fcm:{}", uuid::Uuid::new_v4().simple())
}

async fn register(
    push: &PushStack,
    who: &str,
    platform: pb::Platform,
    token: &str,
    locale: &str,
) -> pb::Device {
    push.devices()
        .await
        .register_device(authed(
            who,
            pb::RegisterDeviceRequest {
                platform: platform as i32,
                token: token.to_owned(),
                app_id: "com.tidings.app".into(),
                locale: locale.to_owned(),
            },
        ))
        .await
        .expect("device registers")
        .into_inner()
        .device
        .expect("device")
}

async fn listed_devices(push: &PushStack, who: &str) -> Vec<pb::Device> {
    push.devices()
        .await
        .list_devices(authed(who, pb::ListDevicesRequest {}))
        .await
        .expect("devices listed")
        .into_inner()
        .devices
}

/// Quiet hours for `who` around the dispatcher's "now", in UTC: from an hour ago to an hour
/// ahead.
async fn quiet_hours_around_now(push: &PushStack, who: &str) {
    let now = {
        use tidings_domain::clock::Clock as _;
        push.clock.now()
    };
    let hhmm = |t: chrono::DateTime<chrono::Utc>| t.format("%H:%M").to_string();
    push.preferences()
        .await
        .update_preferences(authed(
            who,
            pb::UpdatePreferencesRequest {
                preferences: Some(pb::Preferences {
                    push_enabled: true,
                    agent_replies: true,
                    info_requests: true,
                    resolutions: true,
                    quiet_hours: Some(pb::QuietHours {
                        start: hhmm(now - chrono::Duration::hours(1)),
                        end: hhmm(now + chrono::Duration::hours(1)),
                        time_zone: "Etc/UTC".into(),
                    }),
                }),
            },
        ))
        .await
        .unwrap();
}

async fn agent_does(app: &TestApp, ticket: &str, what: &str) {
    let giulia = agent("giulia");
    let mut c = app.tickets().await;
    match what {
        "reply" => c
            .post_reply(authed(
                &giulia,
                PostReplyRequest {
                    request_id: rid(),
                    ticket_id: ticket.to_owned(),
                    body: "We found your transfer".into(),
                },
            ))
            .await
            .map(|_| ()),
        "resolve" => c
            .resolve_ticket(authed(
                &giulia,
                ResolveTicketRequest {
                    request_id: rid(),
                    ticket_id: ticket.to_owned(),
                    note: "Refunded".into(),
                },
            ))
            .await
            .map(|_| ()),
        other => panic!("unknown action {other}"),
    }
    .expect("agent action");
}

#[tokio::test]
async fn an_agent_reply_reaches_the_customers_iphone_and_android_phone_and_guests_get_nothing() {
    let app = spawn_app().await;
    let push = spawn_push(&app, vec![]).await;
    let sub = unique("ann");
    let ann = customer(&sub);
    let (ios, android) = (apns_token(), fcm_token());
    register(&push, &ann, pb::Platform::Ios, &ios, "it").await;
    register(&push, &ann, pb::Platform::Android, &android, "en").await;
    let ticket = open_as(&app, &ann, "Withdrawal").await.ticket_id;
    agent_does(&app, &ticket, "reply").await;

    let apns = eventually(Duration::from_secs(30), "the APNs push", || async {
        push.doubles.pushes_to(&ios).pop()
    })
    .await;
    let fcm = eventually(Duration::from_secs(30), "the FCM push", || async {
        push.doubles.pushes_to(&android).pop()
    })
    .await;
    let number = app
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
        .into_inner()
        .ticket
        .unwrap()
        .ticket_number;
    // APNs: the headers Apple requires, one thread per ticket, Italian for this device.
    assert_eq!(apns.headers["apns-topic"], "com.tidings.app");
    assert_eq!(apns.headers["apns-push-type"], "alert");
    assert_eq!(apns.headers["apns-priority"], "10");
    assert_eq!(apns.headers["apns-collapse-id"], ticket);
    assert!(uuid::Uuid::parse_str(&apns.headers["apns-id"]).is_ok());
    assert!(apns.headers.contains_key("apns-expiration"));
    assert_eq!(
        apns.body["aps"]["alert"]["title"],
        format!("Ticket {number}: nuova risposta dall'assistenza")
    );
    assert_eq!(apns.body["aps"]["thread-id"], ticket);
    assert_eq!(apns.body["ticket_id"], ticket);
    // FCM: English, the ticket as data for the deep link, a collapse key per ticket.
    let message = &fcm.body["message"];
    assert_eq!(
        message["notification"]["title"],
        format!("Ticket {number}: new reply from support")
    );
    assert_eq!(message["data"]["ticket_id"], ticket);
    assert_eq!(message["data"]["ticket_number"], number.to_string());
    assert_eq!(message["android"]["collapse_key"], ticket);
    assert_eq!(
        push.doubles.pushes_to(&ios).len() + push.doubles.pushes_to(&android).len(),
        2
    );

    // A guest's ticket: its events are consumed, nothing is pushed anywhere.
    let before = push.doubles.pushes().len();
    let guest = app
        .tickets()
        .await
        .open_ticket(tonic::Request::new(OpenTicketRequest {
            request_id: rid(),
            subject: "Guest".into(),
            body: "No account".into(),
            guest: Some(GuestRequester {
                email: "g@example.org".into(),
                locale: "it".into(),
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .ticket_id;
    agent_does(&app, &guest, "reply").await;
    push.consumed(4, Duration::from_secs(30)).await;
    assert_eq!(push.doubles.pushes().len(), before);
}

#[tokio::test]
async fn replies_can_be_switched_off_while_resolutions_still_push() {
    let app = spawn_app().await;
    let push = spawn_push(&app, vec![]).await;
    let sub = unique("ann");
    let ann = customer(&sub);
    let ios = apns_token();
    register(&push, &ann, pb::Platform::Ios, &ios, "en").await;
    push.preferences()
        .await
        .update_preferences(authed(
            &ann,
            pb::UpdatePreferencesRequest {
                preferences: Some(pb::Preferences {
                    push_enabled: true,
                    agent_replies: false,
                    info_requests: true,
                    resolutions: true,
                    quiet_hours: None,
                }),
            },
        ))
        .await
        .unwrap();
    let ticket = open_as(&app, &ann, "Card").await.ticket_id;
    agent_does(&app, &ticket, "reply").await;
    agent_does(&app, &ticket, "resolve").await;
    let pushed = eventually(Duration::from_secs(30), "the resolution push", || async {
        push.doubles.pushes_to(&ios).pop()
    })
    .await;
    assert!(
        pushed.body["aps"]["alert"]["title"]
            .as_str()
            .unwrap()
            .ends_with("has been resolved")
    );
    push.consumed(3, Duration::from_secs(30)).await;
    assert_eq!(
        push.doubles.pushes_to(&ios).len(),
        1,
        "no push for the reply"
    );
}

#[tokio::test]
async fn quiet_hours_hold_pushes_until_the_window_ends_and_drop_replies_of_tickets_resolved_meanwhile()
 {
    let app = spawn_app().await;
    let push = spawn_push(&app, vec![]).await;
    let sub = unique("ann");
    let ann = customer(&sub);
    let ios = apns_token();
    register(&push, &ann, pb::Platform::Ios, &ios, "en").await;
    quiet_hours_around_now(&push, &ann).await;
    let first = open_as(&app, &ann, "First").await.ticket_id;
    let second = open_as(&app, &ann, "Second").await.ticket_id;
    agent_does(&app, &first, "reply").await;
    agent_does(&app, &second, "reply").await;
    agent_does(&app, &second, "resolve").await;
    push.consumed(5, Duration::from_secs(30)).await;
    assert_eq!(push.count("SELECT count(*) FROM held_pushes").await, 3);
    assert!(
        push.doubles.pushes_to(&ios).is_empty(),
        "nothing during quiet hours"
    );

    // The window ends: the first ticket's reply goes out; the second ticket's reply is dropped
    // (resolved since), its resolution goes out.
    push.clock.advance(chrono::Duration::hours(2));
    let pushes = eventually(Duration::from_secs(30), "held pushes released", || async {
        let p = push.doubles.pushes_to(&ios);
        (p.len() >= 2).then_some(p)
    })
    .await;
    let mut released: Vec<(String, bool)> = pushes
        .iter()
        .map(|p| {
            let title = p.body["aps"]["alert"]["title"].as_str().unwrap().to_owned();
            (
                p.body["ticket_id"].as_str().unwrap().to_owned(),
                title.ends_with("has been resolved"),
            )
        })
        .collect();
    released.sort();
    let mut expected = vec![(first, false), (second, true)];
    expected.sort();
    assert_eq!(released, expected);
    eventually(Duration::from_secs(10), "holds cleared", || async {
        (push.count("SELECT count(*) FROM held_pushes").await == 0).then_some(())
    })
    .await;
    assert_eq!(push.doubles.pushes_to(&ios).len(), 2);
}

#[tokio::test]
async fn an_unregistered_token_removes_the_device_and_publishes_its_invalidation() {
    let app = spawn_app().await;
    let push = spawn_push(&app, vec![]).await;
    let sub = unique("ann");
    let ann = customer(&sub);
    let (gone, live) = (apns_token(), apns_token());
    let gone_device = register(&push, &ann, pb::Platform::Ios, &gone, "en").await;
    register(&push, &ann, pb::Platform::Ios, &live, "en").await;
    push.doubles.fail(&gone, Failure::Unregistered, None);
    let ticket = open_as(&app, &ann, "Phone").await.ticket_id;
    agent_does(&app, &ticket, "reply").await;

    let records = read_topic(
        &app.brokers,
        &push.notification_topic,
        2,
        Duration::from_secs(30),
    )
    .await;
    let events: Vec<ev::NotificationEvent> = records
        .iter()
        .map(|m| ev::NotificationEvent::decode(m.payload().unwrap()).unwrap())
        .collect();
    let invalidated = events
        .iter()
        .find(|e| e.recipient == gone_device.device_id)
        .expect("an outcome for the dead device");
    assert!(matches!(
        &invalidated.outcome,
        Some(ev::notification_event::Outcome::DeviceTokenInvalidated(d)) if d.platform == "ios" && d.reason.contains("410")
    ));
    assert_eq!(invalidated.channel, ev::Channel::Push as i32);
    let listed = listed_devices(&push, &ann).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].token, live);

    // The next event goes to the live device only; the dead one is never tried again.
    agent_does(&app, &ticket, "resolve").await;
    eventually(
        Duration::from_secs(30),
        "two pushes to the live device",
        || async { (push.doubles.pushes_to(&live).len() == 2).then_some(()) },
    )
    .await;
    assert_eq!(push.doubles.attempts_for(&gone).len(), 1);
}

#[tokio::test]
async fn answers_that_may_mean_misconfiguration_fail_the_push_and_keep_the_device() {
    // A sandbox/production mix-up is answered with APNs 400 BadDeviceToken; a wrong
    // TIDINGS_FCM_URL (or a proxy) with a bare 404. Neither says the token is gone.
    let app = spawn_app().await;
    // FCM traffic goes to another stack's double (its CA, its service account), under a
    // path that is not FCM's: the double answers 404 NOT_FOUND, as a wrong URL would.
    let other = spawn_push(&app, vec![]).await;
    let push = spawn_push(
        &app,
        vec![
            (
                "TIDINGS_FCM_URL",
                format!("{}/not-fcm", other.doubles.fcm_url),
            ),
            (
                "TIDINGS_FCM_CA_FILE",
                other.doubles.ca_file.display().to_string(),
            ),
            (
                "TIDINGS_FCM_SERVICE_ACCOUNT_FILE",
                other.doubles.fcm_service_account_file.display().to_string(),
            ),
        ],
    )
    .await;
    let sub = unique("ann");
    let ann = customer(&sub);
    let (ios, android) = (apns_token(), fcm_token());
    register(&push, &ann, pb::Platform::Ios, &ios, "en").await;
    register(&push, &ann, pb::Platform::Android, &android, "en").await;
    push.doubles.fail(&ios, Failure::BadToken, None);
    let ticket = open_as(&app, &ann, "Phone").await.ticket_id;
    agent_does(&app, &ticket, "reply").await;

    // The event is dead-lettered with both devices' reasons.
    let dead = read_topic(
        &app.brokers,
        &push.dead_letter_topic,
        1,
        Duration::from_secs(30),
    )
    .await;
    let reason = header(&dead[0], "tidings_dlq_reason").unwrap();
    assert!(reason.contains("APNs 400 BadDeviceToken"), "{reason}");
    assert!(reason.contains("FCM 404"), "{reason}");
    let listed = listed_devices(&push, &ann).await;
    assert_eq!(listed.len(), 2, "both devices are kept");
    assert_eq!(
        push.metric("tidings_pushes_total", "outcome=\"invalidated\"")
            .await,
        0.0
    );
}

#[tokio::test]
async fn throttling_is_retried_after_retry_after_and_a_500_storm_ends_in_the_dead_letter_topic() {
    let app = spawn_app().await;
    let push = spawn_push(&app, vec![("TIDINGS_PUSH_GIVE_UP_SECS", "2".into())]).await;
    let sub = unique("ann");
    let ann = customer(&sub);
    let (throttled, stormy) = (fcm_token(), apns_token());
    register(&push, &ann, pb::Platform::Android, &throttled, "en").await;
    register(&push, &ann, pb::Platform::Ios, &stormy, "en").await;
    push.doubles.fail(
        &throttled,
        Failure::TooManyRequests {
            retry_after_secs: 1,
        },
        Some(1),
    );
    push.doubles.fail(&stormy, Failure::ServerError, None);
    let ticket = open_as(&app, &ann, "Busy").await.ticket_id;
    agent_does(&app, &ticket, "reply").await;

    // FCM said 429, retry after 1 s: the retry comes no earlier, then succeeds.
    eventually(Duration::from_secs(30), "the throttled push", || async {
        (push.doubles.pushes_to(&throttled).len() == 1).then_some(())
    })
    .await;
    let attempts = push.doubles.attempts_for(&throttled);
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        [429, 200]
    );
    assert!(attempts[1].at - attempts[0].at >= chrono::Duration::milliseconds(1000));

    // APNs keeps answering 500: retried with backoff, then the record is dead-lettered.
    let dead = read_topic(
        &app.brokers,
        &push.dead_letter_topic,
        1,
        Duration::from_secs(30),
    )
    .await;
    let reason = header(&dead[0], "tidings_dlq_reason").unwrap();
    assert!(reason.contains("APNs 500"), "{reason}");
    assert!(
        push.doubles.attempts_for(&stormy).len() >= 2,
        "retried before giving up"
    );

    // Later events are still delivered (the storm is over).
    push.doubles.fail(&stormy, Failure::ServerError, Some(0));
    agent_does(&app, &ticket, "resolve").await;
    eventually(Duration::from_secs(30), "the next push", || async {
        (push.doubles.pushes_to(&stormy).len() == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_redelivered_event_pushes_once_and_fcm_tokens_are_reused() {
    let app = spawn_app().await;
    let push = spawn_push(&app, vec![]).await;
    let sub = unique("ann");
    let ann = customer(&sub);
    let android = fcm_token();
    register(&push, &ann, pb::Platform::Android, &android, "en").await;
    let ticket = open_as(&app, &ann, "Twice").await.ticket_id;
    agent_does(&app, &ticket, "reply").await;
    eventually(Duration::from_secs(30), "the push", || async {
        (push.doubles.pushes_to(&android).len() == 1).then_some(())
    })
    .await;
    // Produce the same reply record again (same ce_id), then a later event of the ticket.
    let records = app.read_topic(2).await;
    let reply = records
        .iter()
        .find(|m| header(m, "ce_type") == Some("tidings.ticket.ReplyAdded.v1"))
        .unwrap();
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &app.brokers)
        .create()
        .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&app.topic)
                .key(reply.key().unwrap())
                .payload(reply.payload().unwrap()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    agent_does(&app, &ticket, "resolve").await;
    eventually(Duration::from_secs(30), "the resolution push", || async {
        (push.doubles.pushes_to(&android).len() >= 2).then_some(())
    })
    .await;
    push.consumed(4, Duration::from_secs(30)).await;
    assert_eq!(push.doubles.pushes_to(&android).len(), 2);
    assert_eq!(
        push.doubles.token_grants(),
        1,
        "one access token for every send"
    );
    // The redelivered reply's outcome is published again under the same event id: had a
    // crash come between its record and its first publication, it is on the topic now.
    let outcomes = read_topic(
        &app.brokers,
        &push.notification_topic,
        3,
        Duration::from_secs(30),
    )
    .await;
    let ids: Vec<String> = outcomes
        .iter()
        .map(|m| {
            ev::NotificationEvent::decode(m.payload().unwrap())
                .unwrap()
                .event_id
        })
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        2,
        "the copy carries the first one's id: {ids:?}"
    );
}

#[tokio::test]
async fn bad_device_and_preference_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let app = spawn_app().await;
    let push = spawn_push(&app, vec![]).await;
    let ann = customer(&unique("ann"));
    let mut d = push.devices().await;
    let good = || pb::RegisterDeviceRequest {
        platform: pb::Platform::Ios as i32,
        token: apns_token(),
        app_id: "com.tidings.app".into(),
        locale: "it".into(),
    };
    let cases = [
        (
            pb::RegisterDeviceRequest {
                platform: 0,
                ..good()
            },
            "platform",
        ),
        (
            pb::RegisterDeviceRequest {
                platform: 7,
                ..good()
            },
            "platform",
        ),
        (
            pb::RegisterDeviceRequest {
                token: "abc".into(),
                ..good()
            },
            "token",
        ),
        (
            pb::RegisterDeviceRequest {
                token: "z".repeat(64),
                ..good()
            },
            "token",
        ),
        (
            pb::RegisterDeviceRequest {
                platform: pb::Platform::Android as i32,
                token: "x".repeat(5000),
                ..good()
            },
            "token",
        ),
        (
            pb::RegisterDeviceRequest {
                app_id: "not an app".into(),
                ..good()
            },
            "app_id",
        ),
        (
            pb::RegisterDeviceRequest {
                locale: "english please".into(),
                ..good()
            },
            "locale",
        ),
    ];
    for (req, field) in cases {
        let err = d.register_device(authed(&ann, req)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            err.message()
        );
    }
    let mut p = push.preferences().await;
    let prefs = |q: Option<pb::QuietHours>| pb::UpdatePreferencesRequest {
        preferences: Some(pb::Preferences {
            push_enabled: true,
            agent_replies: true,
            info_requests: true,
            resolutions: true,
            quiet_hours: q,
        }),
    };
    let quiet = |start: &str, end: &str, tz: &str| pb::QuietHours {
        start: start.into(),
        end: end.into(),
        time_zone: tz.into(),
    };
    for (req, field) in [
        (
            pb::UpdatePreferencesRequest { preferences: None },
            "preferences",
        ),
        (
            prefs(Some(quiet("25:00", "07:00", "Europe/Rome"))),
            "preferences.quiet_hours.start",
        ),
        (
            prefs(Some(quiet("22:00", "22:00", "Europe/Rome"))),
            "preferences.quiet_hours.end",
        ),
        (
            prefs(Some(quiet("22:00", "07:00", "Mars/Olympus"))),
            "preferences.quiet_hours.time_zone",
        ),
    ] {
        let err = p.update_preferences(authed(&ann, req)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            err.message()
        );
    }
    assert_eq!(push.count("SELECT count(*) FROM devices").await, 0);
    assert_eq!(push.count("SELECT count(*) FROM preferences").await, 0);

    // Who may call: customers only, with a valid token.
    let err = d
        .list_devices(tonic::Request::new(pb::ListDevicesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = d
        .list_devices(authed(&agent("giulia"), pb::ListDevicesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn re_registering_a_token_is_idempotent_and_moves_it_to_the_current_user() {
    let app = spawn_app().await;
    let push = spawn_push(&app, vec![]).await;
    let (ann, bob) = (customer(&unique("ann")), customer(&unique("bob")));
    let token = apns_token();
    let first = register(&push, &ann, pb::Platform::Ios, &token, "it").await;
    let again = register(&push, &ann, pb::Platform::Ios, &token.to_uppercase(), "it").await;
    assert_eq!(first.device_id, again.device_id);
    let moved = register(&push, &bob, pb::Platform::Ios, &token, "en").await;
    assert_eq!(moved.device_id, first.device_id);
    let list = |who: String| {
        let push = &push;
        async move { listed_devices(push, &who).await }
    };
    assert!(list(ann.clone()).await.is_empty());
    assert_eq!(list(bob.clone()).await.len(), 1);
    // Ann cannot remove Bob's device; Bob can.
    let err = push
        .devices()
        .await
        .unregister_device(authed(
            &ann,
            pb::UnregisterDeviceRequest {
                device_id: first.device_id.clone(),
                token: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    push.devices()
        .await
        .unregister_device(authed(
            &bob,
            pb::UnregisterDeviceRequest {
                device_id: String::new(),
                token: token.clone(),
            },
        ))
        .await
        .unwrap();
    assert!(list(bob).await.is_empty());
}

#[tokio::test]
async fn pushes_to_many_devices_share_one_http2_connection_and_one_provider_token() {
    let app = spawn_app().await;
    let push = spawn_push(&app, vec![]).await;
    let customers: Vec<String> = (0..4)
        .map(|i| customer(&unique(&format!("c{i}"))))
        .collect();
    let mut tokens = Vec::new();
    for c in &customers {
        for _ in 0..3 {
            let t = apns_token();
            register(&push, c, pb::Platform::Ios, &t, "en").await;
            tokens.push(t);
        }
    }
    let mut tickets = Vec::new();
    for c in &customers {
        tickets.push(open_as(&app, c, "Many").await.ticket_id);
    }
    // Twelve devices, pushed concurrently (three per event, four events in parallel lanes).
    for t in &tickets {
        agent_does(&app, t, "reply").await;
    }
    eventually(
        Duration::from_secs(30),
        "a push on every device",
        || async {
            tokens
                .iter()
                .all(|t| push.doubles.pushes_to(t).len() == 1)
                .then_some(())
        },
    )
    .await;
    let (apns_connections, _) = push.doubles.connections();
    assert_eq!(
        apns_connections, 1,
        "one multiplexed connection, not one per request"
    );
    let provider_tokens: std::collections::HashSet<String> = push
        .doubles
        .pushes()
        .into_iter()
        .map(|p| p.headers["authorization"].clone())
        .collect();
    assert_eq!(
        provider_tokens.len(),
        1,
        "one provider token for every request"
    );
}

#[tokio::test]
async fn a_release_that_outlasts_its_lease_of_retries_is_not_sent_again_by_another_replica() {
    let app = spawn_app().await;
    // A one-second lease, renewed while the provider makes the release retry for longer.
    let lease = || vec![("TIDINGS_PUSH_HOLD_LEASE_SECS", "1".to_owned())];
    let a = spawn_push(&app, lease()).await;
    let b = spawn_push_replica(&a, &app, lease()).await;
    let sub = unique("ann");
    let ann = customer(&sub);
    let ios = apns_token();
    register(&a, &ann, pb::Platform::Ios, &ios, "en").await;
    quiet_hours_around_now(&a, &ann).await;
    let ticket = open_as(&app, &ann, "Held").await.ticket_id;
    for _ in 0..3 {
        agent_does(&app, &ticket, "reply").await;
    }
    eventually(Duration::from_secs(30), "three pushes held", || async {
        (a.count("SELECT count(*) FROM held_pushes").await == 3).then_some(())
    })
    .await;

    // APNs is unavailable for a while: the replica that claims the holds keeps retrying.
    a.doubles.fail(&ios, Failure::Unavailable, Some(30));
    a.clock.advance(chrono::Duration::hours(2));
    eventually(Duration::from_secs(30), "replica a is retrying", || async {
        (!a.doubles.attempts_for(&ios).is_empty()).then_some(())
    })
    .await;
    // On replica b's clock the quiet hours are over too; a's lease is renewed, so b never
    // claims them while a retries (several seconds: 30 answers of 503 with backoff).
    b.clock.advance(chrono::Duration::hours(2));

    eventually(Duration::from_secs(60), "the holds released", || async {
        (a.count("SELECT count(*) FROM held_pushes").await == 0).then_some(())
    })
    .await;
    let pushes = a.doubles.pushes_to(&ios);
    let mut ids: Vec<_> = pushes
        .iter()
        .map(|p| p.headers.get("apns-id").cloned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (pushes.len(), ids.len()),
        (3, 3),
        "each held push once: {ids:?}"
    );
    assert!(
        a.doubles.attempts_for(&ios).len() > 3,
        "the provider failed first"
    );
}

#[tokio::test]
async fn a_hold_that_can_never_be_sent_is_dead_lettered_once_and_not_claimed_again() {
    let app = spawn_app().await;
    let push = spawn_push(&app, vec![]).await;
    let due = {
        use tidings_domain::clock::Clock as _;
        push.clock.now() - chrono::Duration::minutes(1)
    };
    for (kind, event) in [
        ("shouted_from_the_rooftops", vec![]),
        ("agent_replied", b"not a ticket event".to_vec()),
    ] {
        sqlx::query(
            "INSERT INTO held_pushes (event_id, device_id, ticket_id, sequence, kind, held_at,
                                      release_at, event)
             VALUES ($1, $2, $3, 1, $4, $5, $5, $6)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(uuid::Uuid::new_v4())
        .bind(uuid::Uuid::new_v4())
        .bind(kind)
        .bind(due)
        .bind(event)
        .execute(&push.pool)
        .await
        .unwrap();
    }

    let dead = read_topic_exactly(
        &app.brokers,
        &push.dead_letter_topic,
        2,
        Duration::from_secs(2),
    )
    .await;
    let mut reasons: Vec<_> = dead
        .iter()
        .map(|m| header(m, "tidings_dlq_reason").unwrap().to_owned())
        .collect();
    reasons.sort();
    assert!(reasons[0].contains("unknown push kind"), "{reasons:?}");
    assert!(reasons[1].contains("unreadable held event"), "{reasons:?}");
    assert_eq!(push.count("SELECT count(*) FROM held_pushes").await, 0);
}

#[tokio::test]
async fn a_taken_port_fails_the_start_before_anything_is_migrated() {
    let app = spawn_app().await;
    let first = spawn_push(&app, vec![]).await;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let err = try_spawn_push(
        &app,
        vec![
            ("TIDINGS_PUSH_GRPC_ADDR", first.grpc.to_string()),
            ("TIDINGS_PUSH_DB_SCHEMA", schema.clone()),
        ],
        None,
    )
    .await
    .err()
    .expect("a taken gRPC port fails the start");
    assert!(format!("{err:#}").contains("binding"), "{err:#}");
    assert!(
        !schema_exists(&first.pool, &schema).await,
        "no schema created for a dispatcher that did not start"
    );
}

#[tokio::test]
async fn a_spike_of_gone_tokens_keeps_the_devices_and_removed_ones_can_be_restored() {
    let app = spawn_app().await;
    let push = spawn_push(
        &app,
        vec![
            ("TIDINGS_PUSH_INVALIDATIONS_PER_HOUR", "2".into()),
            ("TIDINGS_PUSH_INVALIDATIONS_SHARE_PER_HOUR", "0".into()),
        ],
    )
    .await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let sub = unique("ann");
    let ann = customer(&sub);
    // A provider that says "gone" for every token: what a wrong URL or a sandbox/production
    // mix-up looks like.
    let tokens: Vec<String> = (0..4).map(|_| apns_token()).collect();
    for token in &tokens {
        register(&push, &ann, pb::Platform::Ios, token, "en").await;
        push.doubles.fail(token, Failure::Unregistered, None);
    }
    let ticket = open_as(&app, &ann, "Phones").await.ticket_id;
    agent_does(&app, &ticket, "reply").await;

    // Two removals reach the hourly limit; the other two devices stay, and the event goes
    // to the dead-letter topic saying why.
    let dead = read_topic(
        &app.brokers,
        &push.dead_letter_topic,
        1,
        Duration::from_secs(30),
    )
    .await;
    let reason = header(&dead[0], "tidings_dlq_reason").unwrap();
    assert!(reason.contains("device kept"), "{reason}");
    assert_eq!(listed_devices(&push, &ann).await.len(), 2);
    assert_eq!(push.count("SELECT count(*) FROM removed_devices").await, 2);
    assert_eq!(
        push.metric("tidings_push_invalidations_withheld_total", "ios")
            .await,
        2.0
    );

    // The operator fixes the configuration and brings the removed devices back.
    let restored = push_dispatcher::Registry::new(push.pool.clone())
        .restore_removed(before)
        .await
        .unwrap();
    assert_eq!(restored, 2);
    let mut listed: Vec<String> = listed_devices(&push, &ann)
        .await
        .into_iter()
        .map(|d| d.token)
        .collect();
    listed.sort();
    let mut expected = tokens.clone();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(push.count("SELECT count(*) FROM removed_devices").await, 0);
}

#[tokio::test]
async fn expired_send_records_resolutions_and_removed_devices_are_pruned() {
    let app = spawn_app().await;
    let push = spawn_push(
        &app,
        vec![
            ("TIDINGS_PUSH_RETENTION_DAYS", "7".into()),
            ("TIDINGS_PUSH_REMOVED_DEVICE_DAYS", "1".into()),
            ("TIDINGS_PRUNE_INTERVAL_SECS", "1".into()),
        ],
    )
    .await;
    for (age_days, tag) in [(8, "old"), (2, "recent")] {
        let at = chrono::Utc::now() - chrono::Duration::days(age_days);
        sqlx::query(
            "INSERT INTO push_sends (event_id, recipient, kind, message_id, outcome, recorded_at)
             VALUES ($1, $2, 'resolved', 'm', 'sent', $3)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(tag)
        .bind(at)
        .execute(&push.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO resolutions (ticket_id, sequence, recorded_at) VALUES ($1, 1, $2)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(at)
        .execute(&push.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO removed_devices (device_id, account_id, platform, token, app_id, locale,
                                          registered_at, removed_at, reason)
             VALUES ($1, $2, 'ios', $2, 'app', 'en', $3, $3, 'gone')",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(tag)
        .bind(at)
        .execute(&push.pool)
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(30), "expired rows pruned", || async {
        let left = push
            .count(
                "SELECT (SELECT count(*) FROM push_sends) * 100
                      + (SELECT count(*) FROM resolutions) * 10
                      + (SELECT count(*) FROM removed_devices)",
            )
            .await;
        (left == 110).then_some(())
    })
    .await;
    let kept: Vec<String> = sqlx::query_scalar("SELECT recipient FROM push_sends")
        .fetch_all(&push.pool)
        .await
        .unwrap();
    assert_eq!(kept, ["recent"]);
}
