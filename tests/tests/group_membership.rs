//! A replica that dies without leaving its consumer group (SIGKILL: no close, no leave) holds
//! its partitions only until its session expires; then they move to the replicas that are
//! left, and every notification of theirs goes out.

use std::collections::HashSet;
use std::time::Duration;

use tidings_tests::mail::{DispatcherOptions, SmtpDouble, dispatcher_vars, unique};
use tidings_tests::pipeline::message_id;
use tidings_tests::processes::Service;
use tidings_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_partitions_move_to_the_survivor_when_its_session_expires() {
    let app = spawn_app().await;
    let smtp = SmtpDouble::start(vec![], Duration::ZERO).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let vars = dispatcher_vars(
        &DispatcherOptions::new(smtp.addr, &app),
        &format!("t_{id}_email"),
        &format!("test-email-{id}"),
    );
    let logs = std::env::temp_dir().join(format!("tidings-group-{id}"));
    std::fs::create_dir_all(&logs).expect("log directory");
    let replica = |name: &str| {
        Service::new(
            name,
            "email-dispatcher",
            "TIDINGS_EMAIL_ADMIN_ADDR",
            vars.clone(),
            &logs,
        )
    };
    let (mut survivor, mut doomed) = (replica("survivor"), replica("doomed"));
    survivor.start().await;
    doomed.start().await;

    // Twelve tickets, so that every partition has some.
    let sub = unique("ann");
    let ann = customer(&sub);
    let address = format!("{sub}@example.com");
    let mut tickets = Vec::new();
    for i in 0..12 {
        tickets.push(open_as(&app, &ann, &format!("Order {i}")).await.ticket_id);
    }
    let reply = |i: usize| {
        let ticket_id = tickets[i % tickets.len()].clone();
        let app = &app;
        async move { reply_as(app, &agent("giulia"), &ticket_id, &format!("Answer {i}")).await }
    };
    // Both replicas hold partitions: each has handled records.
    let consumed = |s: &Service| metric(s.admin, "tidings_consumed_total", "\"ticket-events\"");
    let mut replies = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while consumed(&survivor).await == 0.0 || consumed(&doomed).await == 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both replicas consuming"
        );
        reply(replies).await;
        replies += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    doomed.kill().await;
    for _ in 0..30 {
        reply(replies).await;
        replies += 1;
    }
    let events = tickets.len() + replies;
    let distinct = || {
        smtp.to(&address)
            .iter()
            .filter_map(|m| message_id(&m.data).map(str::to_owned))
            .collect::<HashSet<_>>()
            .len()
    };
    // The session (6 s) expires, the survivor rejoins and takes every partition.
    let within = Duration::from_secs(45);
    let deadline = tokio::time::Instant::now() + within;
    while distinct() < events {
        assert!(
            tokio::time::Instant::now() < deadline,
            "within {within:?}, {} of {events} mailed; the survivor's log:\n{}",
            distinct(),
            survivor.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
