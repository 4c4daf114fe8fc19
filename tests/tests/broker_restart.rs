//! The whole pipeline across a broker restart: the ticket service, both dispatchers, the
//! SMTP double and the APNs double on a private broker that is killed and started again.
//! Every agent reply reaches the customer once by mail and once by push — whether the
//! broker comes back with its data (durable storage, killed in the middle of a backlog) or
//! empty (its topics and the groups' offsets gone).

use std::collections::HashSet;
use std::time::Duration;

use tidings_proto::push::v1 as pb;
use tidings_proto::ticket::v1::*;
use tidings_tests::broker::Broker;
use tidings_tests::mail::*;
use tidings_tests::push::*;
use tidings_tests::*;

struct Pipeline {
    broker: Broker,
    app: TestApp,
    smtp: SmtpDouble,
    email: TestDispatcher,
    push: PushStack,
    address: String,
    device: String,
    tickets: Vec<String>,
}

async fn pipeline(broker: Broker, smtp_delay: Duration) -> Pipeline {
    let app = spawn_app_with(SpawnOptions {
        brokers: broker.address(),
        ..Default::default()
    })
    .await;
    let smtp = SmtpDouble::start(vec![], smtp_delay).await;
    let email = spawn_dispatcher(DispatcherOptions {
        smtp: smtp.addr.to_string(),
        ticket_topic: app.topic.clone(),
        codes_topic: app.codes_topic.clone(),
        brokers: broker.address(),
        schema: None,
        group: None,
        extra: vec![(
            "TIDINGS_KAFKA_PROPERTIES",
            "debug=cgrp,fetch,consumer,topic".to_owned(),
        )],
    })
    .await;
    let push = spawn_push(&app, vec![]).await;
    let sub = unique("ann");
    let ann = customer(&sub);
    let device = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    push.devices()
        .await
        .register_device(authed(
            &ann,
            pb::RegisterDeviceRequest {
                platform: pb::Platform::Ios as i32,
                token: device.clone(),
                app_id: "com.tidings.app".into(),
                locale: "it".into(),
            },
        ))
        .await
        .expect("device registers");
    let mut tickets = Vec::new();
    for i in 0..4 {
        tickets.push(open_as(&app, &ann, &format!("Order {i}")).await.ticket_id);
    }
    let p = Pipeline {
        broker,
        app,
        smtp,
        email,
        push,
        address: format!("{sub}@example.com"),
        device,
        tickets,
    };
    // Both dispatchers have handled the four openings before anything else happens.
    p.mails_at_least(4).await;
    p.push.consumed(4, Duration::from_secs(30)).await;
    p
}

impl Pipeline {
    async fn reply(&self, i: usize) {
        self.app
            .tickets()
            .await
            .post_reply(authed(
                &agent("giulia"),
                PostReplyRequest {
                    request_id: rid(),
                    ticket_id: self.tickets[i % self.tickets.len()].clone(),
                    body: format!("Answer {i}"),
                },
            ))
            .await
            .expect("the reply is stored whatever the broker does");
    }

    async fn mails_at_least(&self, n: usize) {
        eventually(
            Duration::from_secs(90),
            &format!("{n} mails to the customer"),
            || async { (self.smtp.to(&self.address).len() >= n).then_some(()) },
        )
        .await;
    }

    /// Waits until every event was handled by both dispatchers, then checks that each reply
    /// arrived exactly once by mail and by push.
    async fn every_reply_arrived_once(&self, replies: usize) {
        let events = 4 + replies;
        self.mails_at_least(events).await;
        eventually(
            Duration::from_secs(90),
            &format!("{replies} pushes"),
            || async { (self.push.doubles.pushes_to(&self.device).len() >= replies).then_some(()) },
        )
        .await;
        self.push.consumed(events, Duration::from_secs(30)).await;
        eventually(Duration::from_secs(30), "every send recorded", || async {
            (self
                .email
                .count("SELECT count(*) FROM email_sends WHERE outcome = 'sent'")
                .await
                >= events as i64)
                .then_some(())
        })
        .await;

        let mails = self.smtp.to(&self.address);
        let ids: HashSet<&str> = mails.iter().filter_map(|m| message_id(&m.data)).collect();
        assert_eq!(ids.len(), events, "one distinct mail per event");
        assert_eq!(mails.len(), events, "no mail twice");
        for i in 0..replies {
            let body = format!("Answer {i}");
            assert!(
                mails.iter().any(|m| m.data.contains(&body)),
                "the mail of {body:?} arrived"
            );
        }
        let pushes = self.push.doubles.pushes_to(&self.device);
        let push_ids: HashSet<&str> = pushes
            .iter()
            .filter_map(|p| p.headers.get("apns-id").map(String::as_str))
            .collect();
        assert_eq!(push_ids.len(), replies, "one distinct push per reply");
        assert_eq!(pushes.len(), replies, "no push twice");
    }
}

fn message_id(data: &str) -> Option<&str> {
    data.lines()
        .find_map(|l| l.strip_prefix("Message-ID:").map(str::trim))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_posted_while_the_broker_is_down_reach_the_customer_once_after_it_returns_empty() {
    let mut p = pipeline(Broker::start().await, Duration::ZERO).await;
    p.broker.stop().await;
    for i in 0..20 {
        p.reply(i).await;
    }
    // Everything the broker had is gone: topics, records, the groups' committed offsets.
    p.broker.resume().await;
    p.every_reply_arrived_once(20).await;

    // And the pipeline keeps working after the recovery.
    p.reply(20).await;
    p.every_reply_arrived_once(21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_broker_killed_in_the_middle_of_a_backlog_loses_and_repeats_nothing() {
    // A slow SMTP server keeps the backlog long enough to kill the broker in its middle.
    let mut p = pipeline(Broker::start_durable().await, Duration::from_millis(50)).await;
    for i in 0..150 {
        p.reply(i).await;
    }
    p.mails_at_least(4 + 30).await;
    assert!(
        p.smtp.to(&p.address).len() < 4 + 150,
        "the broker goes down with part of the backlog still to deliver"
    );
    p.broker.stop().await;
    p.broker.resume().await;
    p.every_reply_arrived_once(150).await;
}
