//! Chaos, short form: the whole system as separate processes — the ticket service and two
//! replicas of each dispatcher, built binaries configured by environment variables — under a
//! steady load of agent replies while, at moments drawn at random around a fixed order, the
//! SMTP server goes away for a while, the ticket service is killed with SIGKILL and restarted,
//! APNs answers 503, the durable broker is killed and restarted, one replica of each
//! dispatcher is killed with SIGKILL and restarted, and the other replica of each is rolled
//! (SIGTERM, as a deployment stops it, and started again). At the end, per event and channel:
//! nothing lost, and nothing sent twice beyond the sends in flight at the kills. `make chaos`
//! runs it longer (`TIDINGS_CHAOS_SECONDS`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tidings_push_doubles::Failure;
use tidings_tests::broker::Broker;
use tidings_tests::pipeline::message_id;
use tidings_tests::processes::System;

/// Mails the email dispatcher may have in flight when it is killed: its SMTP sessions (4 in
/// the tests' configuration, 2 more for codes), each one message.
const MAX_MAILED_TWICE_PER_KILL: usize = 6;

/// Pushes the push dispatcher may have in flight to the one customer when it is killed: a
/// ticket's records are handled one at a time, and the customer has four tickets.
const MAX_PUSHED_TWICE_PER_KILL: usize = 4;

/// Seconds per round of faults.
const ROUND: f64 = 15.0;

/// A fraction in [lo, hi), from fresh randomness.
fn between(lo: f64, hi: f64) -> f64 {
    let r = uuid::Uuid::new_v4().as_u128() as f64 / u128::MAX as f64;
    lo + (hi - lo) * r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_outages_broker_restarts_kills_and_rolls_of_every_service_lose_nothing() {
    let seconds: f64 = std::env::var("TIDINGS_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUND);
    let mut s = System::start(Broker::start_durable().await).await;
    println!(
        "chaos: service logs in {}, the broker's in {:?}",
        s.log_dir.display(),
        s.broker.dir()
    );
    let rounds = ((seconds / ROUND).round() as u32).max(1);
    let mut replies = 0;
    for round in 0..rounds {
        // When each fault happens, as fractions of the round.
        let smtp_down = (between(0.05, 0.10), between(0.15, 0.20));
        let ticket_kill = between(0.22, 0.28);
        let apns_503 = between(0.30, 0.35);
        let broker_down = (between(0.40, 0.45), between(0.50, 0.55));
        let email_kill = between(0.60, 0.66);
        let push_kill = between(0.68, 0.74);
        let roll = between(0.80, 0.90);
        println!(
            "chaos round {round}: smtp down {smtp_down:.2?}, ticket service kill at \
             {ticket_kill:.2}, apns 503 at {apns_503:.2}, broker down {broker_down:.2?}, \
             email kill at {email_kill:.2}, push kill at {push_kill:.2}, roll at {roll:.2}"
        );
        let started = Instant::now();
        let at = |f: f64| started + Duration::from_secs_f64(ROUND * f);
        let mut done = [false; 9];
        while Instant::now() < at(1.0) {
            s.reply(replies).await;
            replies += 1;
            let now = Instant::now();
            // Whether fault `i`, due at fraction `f`, is to happen now (once).
            let mut due = |i: usize, f: f64| {
                let now_due = !done[i] && now >= at(f);
                done[i] |= now_due;
                now_due
            };
            if due(0, smtp_down.0) {
                s.smtp.set_unavailable(true);
            }
            if due(1, smtp_down.1) {
                s.smtp.set_unavailable(false);
            }
            if due(2, ticket_kill) {
                s.ticket.kill().await;
                s.ticket.spawn();
            }
            if due(3, apns_503) {
                s.doubles.fail(&s.device, Failure::Unavailable, Some(10));
            }
            if due(4, broker_down.0) {
                s.broker.stop().await;
            }
            if due(5, broker_down.1) {
                s.broker.resume().await;
            }
            if due(6, email_kill) {
                s.email[0].kill().await;
                s.email[0].spawn();
            }
            if due(7, push_kill) {
                s.push[0].kill().await;
                s.push[0].spawn();
            }
            if due(8, roll) {
                for replica in [&mut s.email[1], &mut s.push[1]] {
                    replica.terminate().await;
                    replica.start().await;
                }
            }
            // The load's pace (20 replies a second), not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(done.iter().all(|d| *d), "every fault happened: {done:?}");
    }

    // Every event: the four openings and the replies. Each is recorded once it was sent;
    // a record handled again after a kill finds its send recorded and sends nothing.
    let events = 4 + replies;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (mailed, pushed) = s.recorded_sends().await;
        if mailed >= events as i64 && pushed >= replies as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within 120 s, {mailed} of {events} mails and {pushed} of {replies} pushes \
             recorded as sent\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mails = s.smtp.to(&s.address);
    let distinct_mails: HashSet<&str> = mails.iter().filter_map(|m| message_id(&m.data)).collect();
    let pushes = s.doubles.pushes_to(&s.device);
    let distinct_pushes: HashSet<&str> = pushes
        .iter()
        .filter_map(|p| p.headers.get("apns-id").map(String::as_str))
        .collect();
    let mailed_twice = mails.len() - distinct_mails.len();
    let pushed_twice = pushes.len() - distinct_pushes.len();
    let mut times: Vec<Instant> = mails.iter().map(|m| m.at).collect();
    times.sort();
    let longest_silence = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "chaos: {rounds} rounds, {replies} replies; mails {} for {events} events ({mailed_twice} \
         twice), pushes {} for {replies} replies ({pushed_twice} twice); longest silence \
         between mails {:.1} s",
        mails.len(),
        pushes.len(),
        longest_silence.as_secs_f64()
    );
    assert_eq!(
        distinct_mails.len(),
        events,
        "no mail lost, none for an unknown event"
    );
    assert_eq!(
        distinct_pushes.len(),
        replies,
        "no push lost, none for an unknown event"
    );
    assert!(
        mailed_twice <= MAX_MAILED_TWICE_PER_KILL * rounds as usize,
        "{mailed_twice} mails sent twice: more than in flight at {rounds} kills"
    );
    assert!(
        pushed_twice <= MAX_PUSHED_TWICE_PER_KILL * rounds as usize,
        "{pushed_twice} pushes sent twice: more than in flight at {rounds} kills"
    );
}
