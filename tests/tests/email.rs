//! The email dispatcher end to end: the ticket service and the dispatcher in-process, the real
//! broker, Postgres and MailDev (an SMTP double where a failure must be injected). Each test
//! has its own schemas, topics and consumer group, and its own addresses in the shared inbox.

use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tidings_proto::events::v1 as ev;
use tidings_proto::ticket::v1::*;
use tidings_tests::mail::*;
use tidings_tests::*;

async fn stack_with_smtp(smtp: String) -> (TestApp, TestDispatcher) {
    let app = spawn_app().await;
    let d = spawn_dispatcher(DispatcherOptions::new(smtp, &app)).await;
    (app, d)
}

async fn open_as_guest(app: &TestApp, email: &str, locale: &str, subject: &str) -> String {
    app.tickets()
        .await
        .open_ticket(tonic::Request::new(OpenTicketRequest {
            request_id: rid(),
            subject: subject.to_owned(),
            body: "I cannot log in since yesterday".into(),
            guest: Some(GuestRequester {
                email: email.to_owned(),
                locale: locale.to_owned(),
            }),
        }))
        .await
        .expect("guest opens a ticket")
        .into_inner()
        .ticket_id
}

/// The value of `name=` in a URL inside `text`.
fn query_param(text: &str, name: &str) -> String {
    let start = text
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name}= in {text}"))
        + name.len()
        + 1;
    text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '&')
        .collect()
}

#[tokio::test]
async fn agent_reply_on_a_customers_ticket_mails_the_account_address_and_their_own_reply_does_not()
{
    let (app, d) = stack_with_smtp(shared_smtp()).await;
    let inbox = shared_maildev();
    let sub = unique("ann");
    let address = format!("{sub}@example.com");
    let (ann, giulia) = (customer(&sub), agent("giulia"));
    let id = open_as(&app, &ann, "Prelievo bloccato").await.ticket_id;
    reply_as(
        &app,
        &giulia,
        &id,
        "We are checking the withdrawal with the payments team",
    )
    .await;
    reply_as(&app, &ann, &id, "My own words, not mailed back to me").await;
    // Same ticket, so handled after the customer's reply: when this arrives, that one was seen.
    app.tickets()
        .await
        .request_info(authed(
            &giulia,
            RequestInfoRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                body: "Please send the transaction id".into(),
            },
        ))
        .await
        .unwrap();

    let mails = inbox.wait_for(&address, 3, Duration::from_secs(30)).await;
    let subjects: Vec<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
    let n = app
        .tickets()
        .await
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
        .unwrap()
        .ticket_number;
    // The customer's locale is Italian (their token says so).
    assert_eq!(
        subjects,
        [
            format!("Abbiamo ricevuto la tua richiesta di assistenza {n}"),
            format!("Il tuo ticket di assistenza {n} è stato aggiornato"),
            format!("Ci servono altre informazioni per il tuo ticket di assistenza {n}"),
        ]
    );
    let reply = &mails[1];
    assert!(
        reply.text().contains("We are checking the withdrawal"),
        "{}",
        reply.text()
    );
    assert!(
        reply
            .text()
            .contains(&format!("http://help.test/tickets/{id}"))
    );
    assert!(
        reply
            .html()
            .contains(&format!("href=\"http://help.test/tickets/{id}\""))
    );
    assert!(mails.iter().all(|m| !m.text().contains("My own words")));

    // Well-formed, notification-only MIME: no-reply sender, Message-ID, Date, encoded subject.
    let source = inbox.source(&reply.id).await;
    for needle in [
        "From: \"Tidings Support\" <no-reply@tidings.example>",
        "Message-ID: <",
        "Date: ",
        "=?utf-8?b?", // the subject's non-ASCII letters, RFC 2047 encoded
        "Auto-Submitted: auto-generated",
        "multipart/alternative",
    ] {
        assert!(source.contains(needle), "{needle} not in\n{source}");
    }
    // Let the dispatcher see nothing more for this address (a bounded settle window).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(inbox.to(&address).await.len(), 3);
    // The crash window (acceptance → send record) is measured for every mail sent.
    assert!(
        d.metric("tidings_email_unrecorded_seconds_count").await >= 3.0,
        "the acceptance-to-record histogram counts the sends"
    );
}

#[tokio::test]
async fn a_guest_gets_english_mail_with_a_link_that_leads_to_an_emailed_code_and_their_ticket() {
    let (app, _d) = stack_with_smtp(shared_smtp()).await;
    let inbox = shared_maildev();
    let address = format!("{}@example.org", unique("guest"));
    // An unknown locale falls back to English.
    let id = open_as_guest(&app, &address, "de", "Cannot log in").await;
    reply_as(
        &app,
        &agent("giulia"),
        &id,
        "Please try resetting your password",
    )
    .await;
    let mails = inbox.wait_for(&address, 2, Duration::from_secs(30)).await;
    let reply = mails
        .iter()
        .find(|m| m.subject.ends_with("has been updated"))
        .expect("reply notification");
    assert!(
        reply.subject.starts_with("Your support ticket "),
        "{}",
        reply.subject
    );
    assert!(reply.text().contains("replies to this email are not read"));

    // The link carries a token the ticket service accepts for this ticket and address.
    let link = query_param(reply.text(), "link");
    assert!(
        reply
            .text()
            .contains(&format!("http://help.test/guest/tickets/{id}?link="))
    );
    let mut g = app.guests().await;
    g.request_access_code(RequestAccessCodeRequest {
        link_token: link.clone(),
    })
    .await
    .expect("the emailed link is accepted");
    // A token for the same ticket minted for another address is refused.
    let forged = keyring().mint_link(
        tidings_domain::TicketId::parse(&id).unwrap(),
        &tidings_domain::Email::parse("someone-else@example.org").unwrap(),
        chrono::Utc::now(),
    );
    let err = g
        .request_access_code(RequestAccessCodeRequest { link_token: forged })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // The code arrives by email, and it is the one the ticket service accepts.
    let code_mail = eventually(Duration::from_secs(30), "code email", || async {
        inbox
            .to(&address)
            .await
            .into_iter()
            .find(|m| m.subject.starts_with("Your verification code"))
    })
    .await;
    let code: String = code_mail
        .text()
        .split_whitespace()
        .find(|w| w.len() == 6 && w.chars().all(|c| c.is_ascii_digit()))
        .expect("a 6-digit code in the mail")
        .to_owned();
    let session = g
        .verify_access_code(VerifyAccessCodeRequest {
            link_token: link,
            code,
        })
        .await
        .expect("the emailed code verifies")
        .into_inner();
    let ticket = app
        .tickets()
        .await
        .get_ticket(authed(
            &session.session_token,
            GetTicketRequest { ticket_id: id },
        ))
        .await
        .expect("the guest session opens the ticket")
        .into_inner()
        .ticket
        .unwrap();
    assert_eq!(ticket.messages.len(), 2);
}

#[tokio::test]
async fn user_text_arrives_escaped_and_cannot_add_headers_or_recipients() {
    let (app, _d) = stack_with_smtp(shared_smtp()).await;
    let inbox = shared_maildev();
    let sub = unique("mallory");
    let address = format!("{sub}@example.com");
    let victim = format!("{}@example.com", unique("victim"));
    let ann = customer(&sub);
    let id = open_as(&app, &ann, "<script>alert('subject')</script>")
        .await
        .ticket_id;
    reply_as(
        &app,
        &agent("giulia"),
        &id,
        &format!("<img src=x onerror=alert(1)>\r\nBcc: {victim}\r\nSubject: you won"),
    )
    .await;
    let mails = inbox.wait_for(&address, 2, Duration::from_secs(30)).await;
    for m in &mails {
        assert!(!m.html().contains("<script"), "{}", m.html());
        assert!(!m.html().contains("<img"), "{}", m.html());
        assert!(m.to.iter().all(|a| a.address == address));
        let source = inbox.source(&m.id).await;
        let headers = source.split("\r\n\r\n").next().unwrap_or_default();
        assert!(!headers.contains("Bcc:"), "{headers}");
        assert!(!headers.contains("you won"), "{headers}");
    }
    assert!(
        mails[1]
            .html()
            .contains("&#60;img src=x onerror=alert(1)&#62;")
    );
    assert!(mails[0].html().contains("&#60;script&#62;"));
    assert!(inbox.to(&victim).await.is_empty());
}

#[tokio::test]
async fn the_same_event_delivered_twice_is_mailed_once() {
    let (app, d) = stack_with_smtp(shared_smtp()).await;
    let inbox = shared_maildev();
    let sub = unique("ann");
    let address = format!("{sub}@example.com");
    let ann = customer(&sub);
    let id = open_as(&app, &ann, "Card declined").await.ticket_id;
    reply_as(&app, &agent("giulia"), &id, "First answer").await;
    inbox.wait_for(&address, 2, Duration::from_secs(30)).await;

    // Redeliver the reply (same record, same ce_id) as an at-least-once producer may.
    let records = app.read_topic(2).await;
    let reply = records
        .iter()
        .find(|m| header(m, "ce_type") == Some("tidings.ticket.ReplyAdded.v1"))
        .expect("reply on the topic");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &app.brokers)
        .create()
        .unwrap();
    let mut headers = rdkafka::message::OwnedHeaders::new();
    for name in ["ce_id", "ce_type", "traceparent"] {
        headers = headers.insert(rdkafka::message::Header {
            key: name,
            value: header(reply, name),
        });
    }
    use rdkafka::Message as _;
    producer
        .send(
            FutureRecord::to(&app.topic)
                .key(reply.key().unwrap())
                .payload(reply.payload().unwrap())
                .headers(headers),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    // A later event of the same ticket comes after the duplicate: once it is mailed, the
    // duplicate was handled.
    reply_as(&app, &agent("giulia"), &id, "Second answer").await;
    let mails = inbox.wait_for(&address, 3, Duration::from_secs(30)).await;
    assert_eq!(
        mails.len(),
        3,
        "{:?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    assert_eq!(d.sent_records(3).await, 3);
    // The dispatcher counted three sent and one duplicate.
    eventually(Duration::from_secs(10), "email counters", || async {
        let sent = d
            .metric_where("tidings_emails_total", "outcome=\"sent\"")
            .await;
        let duplicate = d
            .metric_where("tidings_emails_total", "outcome=\"duplicate\"")
            .await;
        (sent == 3.0 && duplicate == 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn mail_waits_while_the_smtp_server_is_down_and_arrives_when_it_is_back() {
    let mut smtp = PrivateMailDev::start().await;
    let (app, d) = stack_with_smtp(smtp.smtp()).await;
    smtp.stop().await;
    let sub = unique("ann");
    let address = format!("{sub}@example.com");
    let ann = customer(&sub);
    let id = open_as(&app, &ann, "Locked out").await.ticket_id;
    reply_as(&app, &agent("giulia"), &id, "Try again now").await;
    // The dispatcher is retrying against the dead server...
    eventually(Duration::from_secs(30), "send retries", || async {
        (d.metric("tidings_email_retries_total").await >= 2.0).then_some(())
    })
    .await;
    // ...and delivers both once it is back (a restarted MailDev starts with an empty inbox).
    smtp.resume().await;
    let mails = smtp
        .inbox()
        .wait_for(&address, 2, Duration::from_secs(60))
        .await;
    assert_eq!(mails.len(), 2);
    assert_eq!(d.sent_records(2).await, 2);
}

#[tokio::test]
async fn a_rejected_address_and_a_garbage_record_go_to_the_dead_letter_topic_and_later_mail_flows()
{
    let rejected = format!("{}@example.com", unique("gone"));
    let double = SmtpDouble::start(vec![rejected.clone()], Duration::ZERO).await;
    let (app, d) = stack_with_smtp(double.addr.to_string()).await;
    let gone = customer(rejected.trim_end_matches("@example.com"));
    let gone_ticket = open_as(&app, &gone, "Please close my account")
        .await
        .ticket_id;

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &app.brokers)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&app.topic)
                .key("not-a-ticket")
                .payload(&b"\x08\x96\x01 definitely not a TicketEvent \xff"[..]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    let sub = unique("ann");
    let address = format!("{sub}@example.com");
    let ann = customer(&sub);
    let id = open_as(&app, &ann, "Card declined").await.ticket_id;
    reply_as(&app, &agent("giulia"), &id, "Fixed").await;
    eventually(Duration::from_secs(30), "later mail delivered", || async {
        (double.to(&address).len() == 2).then_some(())
    })
    .await;

    let dead = read_topic(
        &app.brokers,
        &d.dead_letter_topic,
        2,
        Duration::from_secs(30),
    )
    .await;
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            (
                header(m, "tidings_dlq_topic")
                    .unwrap_or_default()
                    .to_owned(),
                header(m, "tidings_dlq_reason")
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|(t, r)| t == &app.topic && r.contains("550")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(_, r)| r.starts_with("undecodable event")),
        "{reasons:?}"
    );
    assert!(double.to(&rejected).is_empty());

    // Outcomes are published: failed for the rejected address, sent for the others.
    let outcomes = read_topic(
        &app.brokers,
        &d.notification_topic,
        3,
        Duration::from_secs(30),
    )
    .await;
    let decoded: Vec<ev::NotificationEvent> = outcomes
        .iter()
        .map(|m| {
            use rdkafka::Message as _;
            ev::NotificationEvent::decode(m.payload().unwrap()).unwrap()
        })
        .collect();
    let failed = decoded
        .iter()
        .find(|e| e.recipient == rejected)
        .expect("an outcome for the rejected address");
    assert_eq!(failed.ticket_id, gone_ticket);
    assert_eq!(failed.channel, ev::Channel::Email as i32);
    assert!(matches!(
        &failed.outcome,
        Some(ev::notification_event::Outcome::Failed(f)) if f.permanent && f.reason.contains("550")
    ));
    assert_eq!(
        decoded
            .iter()
            .filter(|e| e.recipient == address
                && matches!(e.outcome, Some(ev::notification_event::Outcome::Sent(_))))
            .count(),
        2
    );
}

#[tokio::test]
async fn with_a_pipelining_server_a_rejected_recipient_fails_alone_and_later_mail_flows() {
    let rejected = format!("{}@example.com", unique("gone"));
    let double = SmtpDouble::pipelining(vec![rejected.clone()]).await;
    let (app, d) = stack_with_smtp(double.addr.to_string()).await;
    let gone = customer(rejected.trim_end_matches("@example.com"));
    let gone_ticket = open_as(&app, &gone, "Please close my account")
        .await
        .ticket_id;
    reply_as(&app, &agent("giulia"), &gone_ticket, "Done").await;

    let sub = unique("ann");
    let address = format!("{sub}@example.com");
    let id = open_as(&app, &customer(&sub), "Card declined")
        .await
        .ticket_id;
    reply_as(&app, &agent("giulia"), &id, "Fixed").await;
    reply_as(&app, &agent("giulia"), &id, "Anything else?").await;
    eventually(Duration::from_secs(30), "later mail delivered", || async {
        (double.to(&address).len() == 3).then_some(())
    })
    .await;
    // The commands really were pipelined, and the rejection (550 at RCPT, then 554 for the
    // DATA already sent) cost one dead letter, not the session's later mail.
    assert!(
        double.pipelined_count() >= 3,
        "{}",
        double.pipelined_count()
    );
    assert!(double.to(&rejected).is_empty());
    let dead = read_topic(
        &app.brokers,
        &d.dead_letter_topic,
        1,
        Duration::from_secs(30),
    )
    .await;
    let reason = header(&dead[0], "tidings_dlq_reason").unwrap_or_default();
    assert!(reason.contains("550"), "{reason}");
}

#[tokio::test]
async fn the_notification_outcome_continues_the_agents_trace() {
    let (app, d) = stack_with_smtp(shared_smtp()).await;
    let sub = unique("ann");
    let ann = customer(&sub);
    let id = open_as(&app, &ann, "Trace me").await.ticket_id;
    let mut req = authed(
        &agent("giulia"),
        PostReplyRequest {
            request_id: rid(),
            ticket_id: id,
            body: "Traced".into(),
        },
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    app.tickets().await.post_reply(req).await.unwrap();
    let outcomes = read_topic(
        &app.brokers,
        &d.notification_topic,
        2,
        Duration::from_secs(30),
    )
    .await;
    let traced = outcomes
        .iter()
        .find(|m| header(m, "traceparent").is_some_and(|tp| tp.contains(trace_id)));
    assert!(
        traced.is_some(),
        "{:?}",
        outcomes
            .iter()
            .map(|m| header(m, "traceparent"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_code_email_overtakes_a_backlog_of_ten_thousand_notifications() {
    // A slow SMTP server and four sessions: the backlog takes several seconds to drain.
    let double = SmtpDouble::start(vec![], Duration::from_millis(2)).await;
    let app = spawn_app().await;

    // 10,000 ordinary events (agent replies on 500 tickets) are waiting before the
    // dispatcher starts.
    produce_backlog(&app, 10_000, 500).await;
    let _d = spawn_dispatcher(DispatcherOptions::new(double.addr, &app)).await;
    eventually(Duration::from_secs(60), "backlog being mailed", || async {
        (double.accepted_count() > 100).then_some(())
    })
    .await;

    let address = format!("{}@example.org", unique("guest"));
    let id = open_as_guest(&app, &address, "it", "Accesso").await;
    let link = keyring().mint_link(
        tidings_domain::TicketId::parse(&id).unwrap(),
        &tidings_domain::Email::parse(&address).unwrap(),
        chrono::Utc::now(),
    );
    let mut g = app.guests().await;
    g.request_access_code(RequestAccessCodeRequest {
        link_token: link.clone(),
    })
    .await
    .unwrap();
    let code_mail = eventually(Duration::from_secs(10), "the code email", || async {
        double
            .to(&address)
            .into_iter()
            .find(|m| m.data.contains("Subject: Il tuo codice di verifica"))
    })
    .await;
    let mailed_so_far = double.accepted_count();
    assert!(
        mailed_so_far < 10_000,
        "the code only arrived after the backlog ({mailed_so_far} mails)"
    );
    // The text part shows the code on a line of its own.
    let code = code_mail
        .data
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 6 && l.chars().all(|c| c.is_ascii_digit()))
        .expect("a 6-digit code")
        .to_owned();
    g.verify_access_code(VerifyAccessCodeRequest {
        link_token: link,
        code,
    })
    .await
    .expect("the mailed code verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_and_a_rolling_restart_in_the_middle_of_a_backlog_mail_every_event_exactly_once()
{
    // A slow SMTP server: a replica's four sessions mail at most 400 a second, so the
    // backlog of 3,000 lasts through a scale-up and a rolling restart, each a rebalance.
    let double = SmtpDouble::start(vec![], Duration::from_millis(10)).await;
    let app = spawn_app().await;
    produce_backlog(&app, 3_000, 300).await;
    let opts = || DispatcherOptions::new(double.addr, &app);
    let mailed = |n: usize, what: &'static str| {
        let double = &double;
        async move {
            eventually(Duration::from_secs(60), what, || async {
                (double.accepted_count() >= n).then_some(())
            })
            .await
        }
    };

    let mut a = spawn_dispatcher(opts()).await;
    mailed(300, "replica a mailing the backlog").await;
    // Scale-up: a second replica joins the group.
    let mut b = spawn_dispatcher(opts().replica_of(&a)).await;
    mailed(900, "both replicas mailing").await;
    // Rolling restart: each replica in turn stops (as a deployment stops it) and a new one
    // takes its place.
    a.stop().await;
    let mut a2 = spawn_dispatcher(opts().replica_of(&a)).await;
    mailed(1_500, "the replacement of a mailing").await;
    b.stop().await;
    let mut b2 = spawn_dispatcher(opts().replica_of(&b)).await;
    assert!(
        double.accepted_count() < 3_000,
        "the restarts happened before the backlog was through"
    );
    mailed(3_000, "the whole backlog").await;

    // 0 missing, 0 duplicates: each of the 3,000 (event, recipient) pairs mailed once.
    assert_eq!(a2.sent_records(3_000).await, 3_000);
    let accepted = double.accepted();
    let ids: std::collections::HashSet<&str> = accepted
        .iter()
        .filter_map(|m| tidings_tests::pipeline::message_id(&m.data))
        .collect();
    assert_eq!(ids.len(), 3_000, "every event mailed");
    assert_eq!(accepted.len(), 3_000, "no event mailed twice");
    a2.stop().await;
    b2.stop().await;
}

/// Publishes [`backlog_records`] onto the app's ticket topic, batched as a producer with a
/// linger batches them (so a committed offset usually lies inside a batch).
async fn produce_backlog(app: &TestApp, n: usize, tickets: usize) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &app.brokers)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let backlog = backlog_records(n, tickets);
    for chunk in backlog.chunks(1000) {
        let sends = chunk.iter().map(|(key, value)| {
            producer.send(
                FutureRecord::to(&app.topic).key(key).payload(value),
                Duration::from_secs(30),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.expect("backlog record produced");
        }
    }
}

/// `n` agent replies spread over `tickets` signed-in customers' tickets, as the ticket service
/// would publish them.
fn backlog_records(n: usize, tickets: usize) -> Vec<(String, Vec<u8>)> {
    use tidings_domain::*;
    let now = chrono::Utc::now();
    let agent = Actor::Agent {
        account_id: AccountId::parse("giulia").unwrap(),
        display_name: DisplayName::parse("Giulia").ok(),
    };
    let body = Body::parse("We are looking into it").unwrap();
    let base: Vec<Ticket> = (0..tickets)
        .map(|i| Ticket {
            id: TicketId::new(),
            number: TicketNumber::parse(900_000 + i as i64).unwrap(),
            requester: Requester::Customer {
                account_id: AccountId::parse(&format!("backlog-{i}")).unwrap(),
                email: Email::parse(&format!("backlog-{i}@example.com")).unwrap(),
                locale: Locale::parse("en").unwrap(),
                display_name: None,
            },
            subject: Subject::parse("Backlog").unwrap(),
            status: TicketStatus::Open,
            created_at: now,
            last_activity_at: now,
            messages: vec![],
            version: 1,
            pending_code: None,
            last_code_requested_at: None,
            last_link_requested_at: None,
            guest_day: Default::default(),
        })
        .collect();
    (0..n)
        .map(|i| {
            let t = &base[i % tickets];
            let seq = 2 + (i / tickets) as u64;
            let wire = tidings_proto::event_to_wire(
                uuid::Uuid::now_v7(),
                t,
                seq,
                now,
                &agent,
                &TicketEvent::ReplyAdded { body: body.clone() },
            );
            (t.id.to_string(), wire.encode_to_vec())
        })
        .collect()
}

#[tokio::test]
async fn two_dispatcher_replicas_share_the_work_across_a_rebalance_and_mail_each_event_once() {
    let double = SmtpDouble::start(vec![], Duration::from_millis(5)).await;
    let app = spawn_app().await;
    let opts = || DispatcherOptions::new(double.addr, &app);
    let mut first = spawn_dispatcher(opts()).await;
    let giulia = agent("giulia");
    let customers: Vec<String> = (0..12).map(|i| unique(&format!("c{i}"))).collect();
    let mut tickets = Vec::new();
    for c in &customers {
        tickets.push(open_as(&app, &customer(c), "Help").await.ticket_id);
    }
    // A second replica joins while the first is mailing: the group rebalances.
    let mut second = spawn_dispatcher(opts().replica_of(&first)).await;
    for round in 0..3 {
        for t in &tickets {
            reply_as(&app, &giulia, t, &format!("answer {round}")).await;
        }
    }
    for c in &customers {
        let address = format!("{c}@example.com");
        eventually(
            Duration::from_secs(60),
            &format!("4 mails to {address}"),
            || async { (double.to(&address).len() >= 4).then_some(()) },
        )
        .await;
    }
    // Every event mailed exactly once, whichever replica handled it.
    for c in &customers {
        assert_eq!(double.to(&format!("{c}@example.com")).len(), 4);
    }
    assert_eq!(first.sent_records(48).await, 48);
    // Both leave the group the way a deployment stops them.
    second.stop().await;
    first.stop().await;
}
