//! The whole pipeline across a broker restart: the ticket service, both dispatchers, the
//! SMTP double and the APNs double on a private broker that is killed and started again.
//! Every agent reply reaches the customer once by mail and once by push — whether the
//! broker comes back with its data (durable storage, killed in the middle of a backlog) or
//! empty (its topics and the groups' offsets gone).

use std::time::Duration;

use tidings_tests::broker::Broker;
use tidings_tests::pipeline::pipeline;

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
