//! The whole pipeline in-process for end-to-end fault tests: the ticket service, both
//! dispatchers, the SMTP double and the APNs double on a private broker, with one
//! customer, one iPhone and four tickets.

use std::collections::HashSet;
use std::time::Duration;

use tidings_proto::push::v1 as pb;

use crate::broker::Broker;
use crate::mail::*;
use crate::push::*;
use crate::*;

pub struct Pipeline {
    pub broker: Broker,
    pub app: TestApp,
    pub smtp: SmtpDouble,
    pub email: TestDispatcher,
    pub push: PushStack,
    pub address: String,
    pub device: String,
    pub tickets: Vec<String>,
}

pub async fn pipeline(broker: Broker, smtp_delay: Duration) -> Pipeline {
    let app = spawn_app_with(SpawnOptions {
        brokers: broker.address(),
        ..Default::default()
    })
    .await;
    let smtp = SmtpDouble::start(vec![], smtp_delay).await;
    let options = DispatcherOptions::new(smtp.addr, &app);
    let email = spawn_dispatcher(options).await;
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
    pub async fn reply(&self, i: usize) {
        let ticket_id = &self.tickets[i % self.tickets.len()];
        reply_as(
            &self.app,
            &agent("giulia"),
            ticket_id,
            &format!("Answer {i}"),
        )
        .await;
    }

    pub async fn mails_at_least(&self, n: usize) {
        eventually(
            Duration::from_secs(90),
            &format!("{n} mails to the customer"),
            || async { (self.smtp.to(&self.address).len() >= n).then_some(()) },
        )
        .await;
    }

    /// Waits until every event was handled by both dispatchers, then checks that each reply
    /// arrived exactly once by mail and by push.
    pub async fn every_reply_arrived_once(&self, replies: usize) {
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

pub fn message_id(data: &str) -> Option<&str> {
    data.lines()
        .find_map(|l| l.strip_prefix("Message-ID:").map(str::trim))
}
