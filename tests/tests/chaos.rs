//! Chaos, short form: the whole pipeline under a steady load of agent replies while, at
//! moments drawn at random around a fixed order, the SMTP server goes away for a while, APNs
//! answers 503, the durable broker is killed and restarted, the email dispatcher crashes and
//! is started again, and a second email-dispatcher replica in the same group is rolled
//! (stopped as a deployment stops it, and replaced). At the end, per event and channel:
//! nothing lost, nothing pushed twice, and at most the sends in flight at the crash mailed
//! twice. `make chaos` runs it longer (`TIDINGS_CHAOS_SECONDS`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tidings_push_doubles::Failure;
use tidings_tests::broker::Broker;
use tidings_tests::mail::{CrashableDispatcher, DispatcherOptions, spawn_dispatcher};
use tidings_tests::pipeline::{EmailDispatcher, crashable_pipeline, message_id};
use tidings_tests::*;

/// Sends the email dispatcher may have in flight when it crashes, per crash: its SMTP
/// sessions (4 in the tests' configuration, 2 more for codes), each one message.
const MAX_MAILED_TWICE_PER_CRASH: usize = 6;

/// Seconds per round of faults.
const ROUND: f64 = 12.0;

/// A fraction in [lo, hi), from fresh randomness.
fn between(lo: f64, hi: f64) -> f64 {
    let r = uuid::Uuid::new_v4().as_u128() as f64 / u128::MAX as f64;
    lo + (hi - lo) * r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_outages_a_broker_restart_a_dispatcher_crash_and_a_replica_roll_lose_nothing() {
    let seconds: f64 = std::env::var("TIDINGS_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUND);
    let mut p = crashable_pipeline(Broker::start_durable().await, Duration::ZERO).await;
    // Another replica of the email dispatcher (and, after a crash, its replacement): same
    // schema, same group.
    let replica_options = |p: &tidings_tests::pipeline::Pipeline| {
        DispatcherOptions::new(p.smtp.addr, &p.app).replica_of(p.email.get())
    };
    let mut replica = spawn_dispatcher(replica_options(&p)).await;
    // Rounds of ROUND seconds, each with every fault once, at moments of its own.
    let rounds = ((seconds / ROUND).round() as u32).max(1);
    let mut replies = 0;
    for round in 0..rounds {
        // When each fault starts and ends, as fractions of the round.
        let smtp_down = (between(0.05, 0.15), between(0.20, 0.30));
        let apns_503 = between(0.30, 0.40);
        let broker_down = (between(0.45, 0.50), between(0.55, 0.60));
        let crash = between(0.70, 0.80);
        let roll = between(0.85, 0.95);
        println!(
            "chaos round {round}: smtp down {smtp_down:.2?}, apns 503 at {apns_503:.2}, \
             broker down {broker_down:.2?}, email dispatcher crash at {crash:.2}, \
             replica roll at {roll:.2}"
        );
        let started = Instant::now();
        let at = |f: f64| started + Duration::from_secs_f64(ROUND * f);
        let mut done = [false; 7];
        while Instant::now() < at(1.0) {
            p.reply(replies).await;
            replies += 1;
            let now = Instant::now();
            if !done[0] && now >= at(smtp_down.0) {
                done[0] = true;
                p.smtp.set_unavailable(true);
            }
            if !done[1] && now >= at(smtp_down.1) {
                done[1] = true;
                p.smtp.set_unavailable(false);
            }
            if !done[2] && now >= at(apns_503) {
                done[2] = true;
                p.push
                    .doubles
                    .fail(&p.device, Failure::Unavailable, Some(10));
            }
            if !done[3] && now >= at(broker_down.0) {
                done[3] = true;
                p.broker.stop().await;
            }
            if !done[4] && now >= at(broker_down.1) {
                done[4] = true;
                p.broker.resume().await;
            }
            if !done[5] && now >= at(crash) {
                done[5] = true;
                let options = replica_options(&p);
                let crashed = std::mem::replace(
                    &mut p.email,
                    EmailDispatcher::OwnRuntime(CrashableDispatcher::start(options).await),
                );
                if let EmailDispatcher::OwnRuntime(crashed) = crashed {
                    crashed.crash();
                }
            }
            if !done[6] && now >= at(roll) {
                done[6] = true;
                replica.stop().await;
                replica = spawn_dispatcher(replica_options(&p)).await;
            }
            // The load's pace (20 replies a second), not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(done.iter().all(|d| *d), "every fault happened: {done:?}");
    }

    // Every event: the four openings and the replies.
    let events = 4 + replies;
    let distinct_mails = || {
        p.smtp
            .to(&p.address)
            .iter()
            .filter_map(|m| message_id(&m.data).map(str::to_owned))
            .collect::<HashSet<_>>()
            .len()
    };
    eventually(
        Duration::from_secs(120),
        &format!("a mail for each of {events} events"),
        || async { (distinct_mails() >= events).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(120),
        &format!("a push for each of {replies} replies"),
        || async {
            let ids: HashSet<String> = p
                .push
                .doubles
                .pushes_to(&p.device)
                .iter()
                .filter_map(|x| x.headers.get("apns-id").cloned())
                .collect();
            (ids.len() >= replies).then_some(())
        },
    )
    .await;
    p.push.consumed(events, Duration::from_secs(60)).await;

    let mails = p.smtp.to(&p.address);
    let mailed_twice = mails.len() - distinct_mails();
    let pushes = p.push.doubles.pushes_to(&p.device);
    let mut times: Vec<Instant> = mails.iter().map(|m| m.at).collect();
    times.sort();
    let longest_silence = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "chaos: {rounds} rounds, {replies} replies; mails {} for {events} events ({mailed_twice} twice), \
         pushes {} for {replies} replies; longest silence between mails {:.1} s",
        mails.len(),
        pushes.len(),
        longest_silence.as_secs_f64()
    );
    assert_eq!(
        distinct_mails(),
        events,
        "no mail lost, none for an unknown event"
    );
    assert!(
        mailed_twice <= MAX_MAILED_TWICE_PER_CRASH * rounds as usize,
        "{mailed_twice} mails sent twice: more than the sends in flight at {rounds} crashes"
    );
    assert_eq!(pushes.len(), replies, "every push once");
    replica.stop().await;
}
