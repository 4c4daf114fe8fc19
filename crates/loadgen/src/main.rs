//! Drives `PostReply` at a fixed concurrency for a fixed time and reports throughput and
//! latency percentiles. Each client works like an agent on a queue: it opens a ticket (as a
//! customer), answers it a number of times, then moves to a new one, so tickets keep a
//! realistic length instead of growing without bound.

use std::time::{Duration, Instant};
use tidings_loadgen::{BODY, authed, token};

use clap::Parser;
use tidings_proto::ticket::v1::ticket_service_client::TicketServiceClient;
use tidings_proto::ticket::v1::*;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    #[arg(long, default_value_t = 20)]
    replies_per_ticket: usize,
    /// HTTP/2 connections shared by the clients.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, env = "TIDINGS_JWT_HS256_SECRET", hide_env_values = true)]
    secret: String,
}

struct ClientResult {
    latencies: Vec<Duration>,
    errors: u64,
}

async fn client(
    ch: Channel,
    id: usize,
    args_secret: String,
    per_ticket: usize,
    warm_until: Instant,
    stop_at: Instant,
) -> ClientResult {
    let mut c = TicketServiceClient::new(ch);
    let customer = token(&args_secret, &format!("load-customer-{id}"), false);
    let agent = token(&args_secret, &format!("load-agent-{id}"), true);
    let mut latencies = Vec::with_capacity(50_000);
    let mut errors = 0;
    let mut n = 0u64;
    'outer: while Instant::now() < stop_at {
        let opened = c
            .open_ticket(authed(
                &customer,
                OpenTicketRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    subject: "Withdrawal pending".into(),
                    body: "My withdrawal has been pending for two hours".into(),
                    guest: None,
                },
            ))
            .await;
        let Ok(opened) = opened else {
            errors += 1;
            continue;
        };
        let ticket_id = opened.into_inner().ticket_id;
        for _ in 0..per_ticket {
            n += 1;
            let started = Instant::now();
            if started >= stop_at {
                break 'outer;
            }
            let r = c
                .post_reply(authed(
                    &agent,
                    PostReplyRequest {
                        request_id: format!("load-{id}-{n}"),
                        ticket_id: ticket_id.clone(),
                        body: BODY.into(),
                    },
                ))
                .await;
            let took = started.elapsed();
            match r {
                Ok(_) if started >= warm_until => latencies.push(took),
                Ok(_) => {}
                Err(_) => errors += 1,
            }
        }
    }
    ClientResult { latencies, errors }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Endpoint::from_shared(args.addr.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let start = Instant::now();
    let warm_until = start + Duration::from_secs(args.warmup_seconds);
    let stop_at = warm_until + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| {
            tokio::spawn(client(
                channels[i % channels.len()].clone(),
                i,
                args.secret.clone(),
                args.replies_per_ticket,
                warm_until,
                stop_at,
            ))
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let r = t.await?;
        all.extend(r.latencies);
        errors += r.errors;
    }
    all.sort();
    let rps = all.len() as f64 / args.seconds as f64;
    println!(
        "postreply_rps={rps:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} replies={} errors={errors} concurrency={}",
        pct(&all, 0.50),
        pct(&all, 0.99),
        all.last()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN),
        all.len(),
        args.concurrency
    );
    Ok(())
}
