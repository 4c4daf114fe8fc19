//! `tidings-pushbench`: the push benchmark, driving the real binaries.
//!
//! 1. Fan-out: registers `users × devices` iOS devices through the dispatcher's gRPC API,
//!    preloads `events` agent replies for those users' tickets, then starts a dispatcher with
//!    an empty group and measures pushes/s accepted by the APNs double, from its first consumed
//!    record to the last push; its peak RSS. In the same run, h2load sends the same number of
//!    requests with one of those payloads, over one connection with the same number of
//!    concurrent streams, to the same double.
//! 2. End to end: the ticket service and a dispatcher; agent replies at a fixed rate (open
//!    loop), each on its own customer's ticket with one device; latency from `PostReply`
//!    returning to the push arriving at the double (same process, same clock).

use futures::StreamExt as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tidings_loadgen::{authed, token};

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Parser;
use tidings_proto::push::v1 as pb;
use tidings_proto::ticket::v1::ticket_service_client::TicketServiceClient;
use tidings_proto::ticket::v1::*;
use tidings_push_doubles::{Doubles, Options};
use tokio::process::{Child, Command};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    #[arg(long, env = "TIDINGS_JWT_HS256_SECRET", hide_env_values = true)]
    secret: String,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    #[arg(long, default_value_t = 4)]
    devices_per_user: usize,
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Concurrent streams: the dispatcher's lanes and h2load's -m.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    #[arg(long, default_value_t = 500)]
    e2e_rate: u64,
    #[arg(long, default_value_t = 20)]
    e2e_seconds: u64,
    #[arg(long, default_value = ".dev/pushbench")]
    dir: PathBuf,
}

const APP_ID: &str = "com.tidings.app";

fn device_token(user: usize, device: usize) -> String {
    format!("{user:032x}{device:032x}")
}

struct Service {
    child: Child,
}

impl Service {
    async fn start(bin: PathBuf, env: &[(String, String)], port: u16) -> anyhow::Result<Self> {
        let child = Command::new(&bin)
            .envs(env.iter().cloned())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("{} did not come up on port {port}", bin.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self { child })
    }

    fn peak_rss_mib(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map(|kb| kb / 1024)
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }
}

/// The dispatcher's `/metrics` page; empty when it cannot be read.
async fn metrics_text(admin_port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics")).await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn metric(admin_port: u16, name: &str) -> f64 {
    metrics_text(admin_port)
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The crash window's 99th percentile in ms: the smallest bucket bound of the histogram
/// `name` (summed over its label sets) that holds 99 % of its observations, once it holds
/// `count` of them (the last send records commit just after the last pushes arrive).
async fn histogram_p99_ms(admin_port: u16, name: &str, count: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = metrics_text(admin_port).await;
        let mut buckets: std::collections::BTreeMap<u64, f64> = Default::default();
        let prefix = format!("{name}_bucket{{");
        for line in body.lines().filter(|l| l.starts_with(&prefix)) {
            let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let n: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            // Keyed by the bound's bits: non-negative floats order like their bits.
            *buckets.entry(bound.to_bits()).or_default() += n;
        }
        let total = buckets.values().next_back().copied().unwrap_or(0.0);
        if total >= count as f64 || Instant::now() > deadline {
            return buckets
                .iter()
                .find(|(_, n)| **n >= 0.99 * total)
                .map_or(f64::NAN, |(bound, _)| f64::from_bits(*bound) * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stamp = Utc::now().timestamp();
    let doubles = Doubles::start(Options {
        apns_port: 0,
        fcm_port: 0,
        dir: args.dir.clone(),
        record: true,
    })
    .await?;
    let bench = Bench {
        schema: format!("bench_push_{stamp}"),
        dispatcher: args.bin_dir.join("push-dispatcher"),
        args,
        doubles,
        stamp,
    };
    let fan_out = bench.fan_out().await?;
    let (h2_rps, h2_ok) = bench.h2load(fan_out.pushes).await?;
    let e2e = bench.end_to_end().await?;
    let latencies = &e2e.latencies_ms;
    println!(
        "fanout_pushes_per_s={:.0} h2load_per_s={h2_rps:.0} h2load_all_ok={h2_ok} pushes={} streams={} dispatcher_peak_rss_mib={} \
         crash_window_p99_ms={} e2e_replies={} e2e_offered_per_s={:.0} e2e_arrived={} e2e_p50_ms={:.2} e2e_p99_ms={:.2} e2e_max_ms={:.2}",
        fan_out.per_s,
        fan_out.pushes,
        bench.args.streams,
        fan_out.peak_rss_mib,
        fan_out.crash_window_p99_ms,
        e2e.replies,
        e2e.offered_per_s,
        latencies.len(),
        pct(latencies, 0.5),
        pct(latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    Ok(())
}

/// One run's settings and the APNs/FCM doubles both parts push to.
struct Bench {
    args: Args,
    doubles: Doubles,
    stamp: i64,
    schema: String,
    dispatcher: std::path::PathBuf,
}

struct FanOut {
    pushes: u64,
    per_s: f64,
    crash_window_p99_ms: f64,
    peak_rss_mib: u64,
}

struct EndToEnd {
    replies: usize,
    offered_per_s: f64,
    /// From `PostReply` returning to the push arriving at the double, sorted.
    latencies_ms: Vec<f64>,
}

impl Bench {
    /// The push dispatcher's environment: consuming `topic` in `group` with `lanes`.
    fn push_env(&self, group: &str, topic: &str, lanes: usize) -> Vec<(String, String)> {
        let (args, doubles) = (&self.args, &self.doubles);
        [
            ("DATABASE_URL", args.database_url.clone()),
            ("KAFKA_BROKERS", args.brokers.clone()),
            ("TIDINGS_PUSH_DB_SCHEMA", self.schema.clone()),
            ("TIDINGS_PUSH_GRPC_ADDR", "127.0.0.1:50652".into()),
            ("TIDINGS_PUSH_ADMIN_ADDR", "127.0.0.1:19468".into()),
            ("TIDINGS_TICKET_EVENTS_TOPIC", topic.into()),
            (
                "TIDINGS_NOTIFICATION_EVENTS_TOPIC",
                format!("{topic}.notifications"),
            ),
            ("TIDINGS_PUSH_DLQ_TOPIC", format!("{topic}.push-dlq")),
            ("TIDINGS_PUSH_GROUP_ID", group.into()),
            ("TIDINGS_PUSH_LANES", lanes.to_string()),
            ("TIDINGS_JWT_HS256_SECRET", args.secret.clone()),
            ("TIDINGS_APNS_URL", doubles.apns_url.clone()),
            (
                "TIDINGS_APNS_CA_FILE",
                doubles.ca_file.display().to_string(),
            ),
            (
                "TIDINGS_APNS_KEY_FILE",
                doubles.apns_key_file.display().to_string(),
            ),
            ("TIDINGS_APNS_KEY_ID", doubles.apns_key_id.clone()),
            ("TIDINGS_APNS_TEAM_ID", doubles.apns_team_id.clone()),
            ("TIDINGS_FCM_URL", doubles.fcm_url.clone()),
            ("TIDINGS_FCM_CA_FILE", doubles.ca_file.display().to_string()),
            (
                "TIDINGS_FCM_SERVICE_ACCOUNT_FILE",
                doubles.fcm_service_account_file.display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Fan-out: registers the users' devices, preloads the events, and measures a fresh
    /// dispatcher pushing them all.
    async fn fan_out(&self) -> anyhow::Result<FanOut> {
        let (args, doubles, stamp, dispatcher) =
            (&self.args, &self.doubles, self.stamp, &self.dispatcher);
        let push_env = |group: &str, topic: &str, lanes: usize| self.push_env(group, topic, lanes);
        let topic = format!("bench.push.{stamp}");
        eprintln!(
            "registering {} users x {} devices",
            args.users, args.devices_per_user
        );
        let setup = Service::start(
            dispatcher.clone(),
            &push_env("bench-setup", &topic, args.streams),
            50652,
        )
        .await?;
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50652")
            .connect()
            .await?;
        let registrations = futures::stream::iter(0..args.users).map(|u| {
            let mut c = pb::device_service_client::DeviceServiceClient::new(channel.clone());
            let t = token(&args.secret, &format!("load-{u}"), false);
            let devices = args.devices_per_user;
            async move {
                for d in 0..devices {
                    c.register_device(authed(
                        &t,
                        pb::RegisterDeviceRequest {
                            platform: pb::Platform::Ios as i32,
                            token: device_token(u, d),
                            app_id: APP_ID.into(),
                            locale: if u % 2 == 0 { "it" } else { "en" }.into(),
                        },
                    ))
                    .await?;
                }
                Ok::<_, tonic::Status>(())
            }
        });
        let results: Vec<_> = registrations.buffer_unordered(32).collect().await;
        for r in results {
            r?;
        }
        setup.stop().await;

        eprintln!("preloading {} events", args.events);
        let preload = Command::new(args.bin_dir.join("tidings-preload"))
            .args(["--brokers", &args.brokers, "--topic", &topic])
            .args([
                "--count",
                &args.events.to_string(),
                "--tickets",
                &args.users.to_string(),
            ])
            .args(["--guest-every", "0"])
            .stdout(Stdio::null())
            .status()
            .await?;
        if !preload.success() {
            bail!("preload failed");
        }
        let expected = (args.events * args.devices_per_user) as u64;
        let before = doubles.accepted();
        // Each record fans out to every device of its user at once: lanes × devices ≈ streams.
        let lanes = (args.streams / args.devices_per_user.max(1)).max(1);
        let run = Service::start(
            dispatcher.clone(),
            &push_env(&format!("bench-{stamp}"), &topic, lanes),
            50652,
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut first = None;
        let last = loop {
            let now = Instant::now();
            if first.is_none() && metric(19468, "tidings_consumed_total").await > 0.0 {
                first = Some(now);
            }
            if doubles.accepted() - before >= expected {
                break now;
            }
            if now > deadline {
                bail!(
                    "only {} of {expected} pushes arrived",
                    doubles.accepted() - before
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ours = expected as f64 / (last - first.unwrap_or(last)).as_secs_f64();
        let window_p99 = histogram_p99_ms(19468, "tidings_push_unrecorded_seconds", expected).await;
        let rss = run.peak_rss_mib();
        run.stop().await;
        Ok(FanOut {
            pushes: expected,
            per_s: ours,
            crash_window_p99_ms: window_p99,
            peak_rss_mib: rss,
        })
    }

    /// h2load: the same double, payload, request count and concurrency. Returns its
    /// requests/s and whether every request succeeded.
    async fn h2load(&self, expected: u64) -> anyhow::Result<(f64, bool)> {
        let (args, doubles) = (&self.args, &self.doubles);
        let sample = doubles.pushes().pop().context("no push recorded")?;
        let payload = args.dir.join("payload.json");
        std::fs::write(&payload, sample.body.to_string())?;
        let provider_token = doubles.apns_provider_token()?;
        let mut h2 = Command::new("h2load");
        h2.args([
            "-n",
            &expected.to_string(),
            "-c",
            "1",
            "-m",
            &args.streams.to_string(),
        ])
        .args(["-d", &payload.display().to_string()])
        .args(["-H", &format!("authorization: bearer {provider_token}")])
        .args(["-H", &format!("apns-topic: {APP_ID}")])
        .args(["-H", "apns-push-type: alert", "-H", "apns-priority: 10"])
        .args(["-H", "content-type: application/json"])
        .arg(format!(
            "{}/3/device/{}",
            doubles.apns_url,
            device_token(0, 0)
        ));
        let out = h2
            .output()
            .await
            .context("running h2load (Debian nghttp2-client)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let h2_rps: f64 = text
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|s| s.trim().split(' ').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("cannot read h2load's output:\n{text}"))?;
        let h2_ok = text.contains(&format!("{expected} succeeded"))
            || text.contains(&format!("{expected} 2xx"));
        Ok((h2_rps, h2_ok))
    }

    /// End to end: agent replies at the configured rate through a ticket service, one
    /// customer with one device each.
    async fn end_to_end(&self) -> anyhow::Result<EndToEnd> {
        let (args, doubles, stamp, dispatcher) = (
            &self.args,
            &self.doubles,
            self.stamp,
            self.dispatcher.clone(),
        );
        let push_env = |group: &str, topic: &str, lanes: usize| self.push_env(group, topic, lanes);
        let e2e_topic = format!("bench.push-e2e.{stamp}");
        let replies = (args.e2e_rate * args.e2e_seconds) as usize;
        eprintln!("end to end: {replies} replies at {}/s", args.e2e_rate);
        let ts_env: Vec<(String, String)> = [
            ("DATABASE_URL", args.database_url.clone()),
            ("KAFKA_BROKERS", args.brokers.clone()),
            ("TIDINGS_DB_SCHEMA", format!("bench_push_ts_{stamp}")),
            ("TIDINGS_GRPC_ADDR", "127.0.0.1:50651".into()),
            ("TIDINGS_ADMIN_ADDR", "off".into()),
            ("TIDINGS_TICKET_EVENTS_TOPIC", e2e_topic.clone()),
            ("TIDINGS_ACCESS_CODES_TOPIC", format!("{e2e_topic}.codes")),
            ("TIDINGS_JWT_HS256_SECRET", args.secret.clone()),
            (
                "TIDINGS_GUEST_KEYS",
                std::env::var("TIDINGS_GUEST_KEYS").unwrap_or_default(),
            ),
            (
                "TIDINGS_CODE_SEAL_KEY",
                std::env::var("TIDINGS_CODE_SEAL_KEY").unwrap_or_default(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let ticket_service =
            Service::start(args.bin_dir.join("ticket-service"), &ts_env, 50651).await?;
        let e2e_dispatcher = Service::start(
            dispatcher,
            &push_env(&format!("bench-e2e-{stamp}"), &e2e_topic, args.streams),
            50652,
        )
        .await?;
        let push_channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50652")
            .connect()
            .await?;
        let ts_channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50651")
            .connect()
            .await?;
        // One customer, one device and one open ticket per reply.
        let tickets: Vec<(usize, String)> = futures::stream::iter(0..replies)
            .map(|i| {
                let mut d =
                    pb::device_service_client::DeviceServiceClient::new(push_channel.clone());
                let mut t = TicketServiceClient::new(ts_channel.clone());
                let who = token(&args.secret, &format!("e2e-{i}"), false);
                async move {
                    d.register_device(authed(
                        &who,
                        pb::RegisterDeviceRequest {
                            platform: pb::Platform::Ios as i32,
                            token: device_token(1_000_000 + i, 0),
                            app_id: APP_ID.into(),
                            locale: "en".into(),
                        },
                    ))
                    .await?;
                    let opened = t
                        .open_ticket(authed(
                            &who,
                            OpenTicketRequest {
                                request_id: uuid::Uuid::new_v4().to_string(),
                                subject: "Withdrawal pending".into(),
                                body: "Pending for two hours".into(),
                                guest: None,
                            },
                        ))
                        .await?
                        .into_inner();
                    Ok::<_, tonic::Status>((i, opened.ticket_id))
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        // Let the opening burst drain before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let agent = token(&args.secret, "bench-agent", true);
        let interval = Duration::from_secs_f64(1.0 / args.e2e_rate as f64);
        let started = tokio::time::Instant::now();
        let mut sends = Vec::with_capacity(replies);
        for (n, (_, ticket_id)) in tickets.iter().enumerate() {
            tokio::time::sleep_until(started + interval * n as u32).await;
            let mut c = TicketServiceClient::new(ts_channel.clone());
            let agent = agent.clone();
            let ticket_id = ticket_id.clone();
            sends.push(tokio::spawn(async move {
                c.post_reply(authed(
                    &agent,
                    PostReplyRequest {
                        request_id: uuid::Uuid::new_v4().to_string(),
                        ticket_id: ticket_id.clone(),
                        body: "We found your transfer; it will arrive within the hour".into(),
                    },
                ))
                .await
                .map(|_| (ticket_id, Utc::now()))
            }));
        }
        let mut returned: HashMap<String, chrono::DateTime<Utc>> = HashMap::new();
        for s in sends {
            if let Ok(Ok((ticket, at))) = s.await {
                returned.insert(ticket, at);
            }
        }
        let offered = returned.len() as f64 / started.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(60);
        let arrived = loop {
            let pushes: HashMap<String, chrono::DateTime<Utc>> = doubles
                .pushes()
                .into_iter()
                .filter_map(|p| Some((p.body["ticket_id"].as_str()?.to_owned(), p.at)))
                .filter(|(t, _)| returned.contains_key(t))
                .collect();
            if pushes.len() >= returned.len() || Instant::now() > deadline {
                break pushes;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut latencies: Vec<f64> = arrived
            .iter()
            .filter_map(|(t, at)| {
                Some((*at - *returned.get(t)?).num_microseconds()? as f64 / 1000.0)
            })
            .collect();
        latencies.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        e2e_dispatcher.stop().await;
        ticket_service.stop().await;
        Ok(EndToEnd {
            replies: returned.len(),
            offered_per_s: offered,
            latencies_ms: latencies,
        })
    }
}
