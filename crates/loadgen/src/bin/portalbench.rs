//! `tidings-portalbench`, for `bench/portal.sh`:
//! - `setup`: a ticket with 50 messages for a customer, and that customer signed in to the
//!   portal through the OpenID Connect provider double; prints the ticket id and the portal's
//!   session cookie (for wrk).
//! - `get-ticket`: the anchor, `GetTicket` of that ticket straight to the ticket service at a
//!   fixed concurrency; prints throughput and latency percentiles.

use std::time::{Duration, Instant};
use tidings_loadgen::{BODY, authed, token};

use clap::{Parser, Subcommand};
use tidings_proto::ticket::v1::ticket_service_client::TicketServiceClient;
use tidings_proto::ticket::v1::*;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The customer who owns the ticket (the same `sub` signs in at the provider).
    #[arg(long, default_value = "bench-customer")]
    sub: String,
    #[arg(long, env = "TIDINGS_JWT_HS256_SECRET", hide_env_values = true)]
    secret: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Setup {
        #[arg(long)]
        portal: String,
        #[arg(long, default_value_t = 50)]
        messages: usize,
    },
    GetTicket {
        #[arg(long)]
        ticket_id: String,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        warmup_seconds: u64,
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
}

/// Opens a ticket as the customer and answers it until it has `messages` messages.
async fn seed(cli: &Cli, messages: usize) -> anyhow::Result<String> {
    let mut c = TicketServiceClient::connect(cli.addr.clone()).await?;
    let customer = token(&cli.secret, &cli.sub, false);
    let agent = token(&cli.secret, "bench-agent", true);
    let opened = c
        .open_ticket(authed(
            &customer,
            OpenTicketRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                subject: "Withdrawal pending".into(),
                body: BODY.into(),
                guest: None,
            },
        ))
        .await?
        .into_inner();
    for i in 1..messages {
        let who = if i % 2 == 1 { &agent } else { &customer };
        c.post_reply(authed(
            who,
            PostReplyRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                ticket_id: opened.ticket_id.clone(),
                body: format!("{i}: {BODY}"),
            },
        ))
        .await?;
    }
    Ok(opened.ticket_id)
}

/// The value of `name`'s `hidden` input in `html`.
fn hidden(html: &str, name: &str) -> anyhow::Result<String> {
    let needle = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&needle)
        .ok_or_else(|| anyhow::anyhow!("no {name} in the provider's form"))?
        + needle.len();
    let end = html[start..].find('"').unwrap_or(0) + start;
    Ok(html[start..end].replace("&amp;", "&"))
}

/// Signs `sub` in to the portal at the provider double and opens one page, as a browser
/// would; returns the cookies the browser then sends with every page (the session and the
/// CSRF token).
async fn sign_in(portal: &str, sub: &str) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let location = |r: &reqwest::Response| -> anyhow::Result<String> {
        Ok(r.headers()
            .get("location")
            .ok_or_else(|| anyhow::anyhow!("expected a redirect, got {}", r.status()))?
            .to_str()?
            .to_owned())
    };
    let start = http.get(format!("{portal}/sign-in")).send().await?;
    let pending: Vec<String> = start
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect();
    let authorize = location(&start)?;
    let form = http.get(&authorize).send().await?.text().await?;
    let mut fields: Vec<(String, String)> = [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    ]
    .iter()
    .map(|n| Ok(((*n).to_owned(), hidden(&form, n)?)))
    .collect::<anyhow::Result<_>>()?;
    fields.extend([
        ("sub".into(), sub.to_owned()),
        ("email".into(), format!("{sub}@example.com")),
        ("name".into(), sub.to_owned()),
        ("locale".into(), "en".into()),
    ]);
    let action = authorize.split('?').next().unwrap_or_default().to_owned();
    let body: String = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let back = http
        .post(action)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    let callback = location(&back)?;
    let done = http
        .get(callback)
        .header("cookie", pending.join("; "))
        .send()
        .await?;
    let session = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next())
        .find(|c| c.starts_with("tidings_customer=") || c.starts_with("__Host-tidings_customer="))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the callback set no session ({})", done.status()))?;
    let first = http
        .get(format!("{portal}/tickets"))
        .header("cookie", &session)
        .send()
        .await?;
    let csrf = first
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next())
        .find(|c| c.contains("tidings_csrf="))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the first page set no CSRF cookie"))?;
    Ok(format!("{session}; {csrf}"))
}

/// A form value, percent-encoded (everything but the unreserved characters).
fn encode(raw: &str) -> String {
    const VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(raw, VALUE).to_string()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn get_ticket_client(
    channel: Channel,
    token: String,
    ticket_id: String,
    warm_until: Instant,
    stop_at: Instant,
) -> (Vec<Duration>, u64) {
    let mut c = TicketServiceClient::new(channel);
    let mut latencies = Vec::with_capacity(100_000);
    let mut errors = 0;
    while Instant::now() < stop_at {
        let started = Instant::now();
        let r = c
            .get_ticket(authed(
                &token,
                GetTicketRequest {
                    ticket_id: ticket_id.clone(),
                },
            ))
            .await;
        match r {
            Ok(_) if started >= warm_until => latencies.push(started.elapsed()),
            Ok(_) => {}
            Err(_) => errors += 1,
        }
    }
    (latencies, errors)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Setup { portal, messages } => {
            let ticket_id = seed(&cli, *messages).await?;
            let cookie = sign_in(portal.trim_end_matches('/'), &cli.sub).await?;
            println!("ticket_id={ticket_id}");
            println!("cookie={cookie}");
        }
        Command::GetTicket {
            ticket_id,
            concurrency,
            seconds,
            warmup_seconds,
            connections,
        } => {
            let mut channels = Vec::new();
            for _ in 0..(*connections).max(1) {
                channels.push(
                    Endpoint::from_shared(cli.addr.clone())?
                        .tcp_nodelay(true)
                        .connect()
                        .await?,
                );
            }
            let token = token(&cli.secret, &cli.sub, false);
            let warm_until = Instant::now() + Duration::from_secs(*warmup_seconds);
            let stop_at = warm_until + Duration::from_secs(*seconds);
            let tasks: Vec<_> = (0..*concurrency)
                .map(|i| {
                    tokio::spawn(get_ticket_client(
                        channels[i % channels.len()].clone(),
                        token.clone(),
                        ticket_id.clone(),
                        warm_until,
                        stop_at,
                    ))
                })
                .collect();
            let mut all = Vec::new();
            let mut errors = 0;
            for t in tasks {
                let (latencies, e) = t.await?;
                all.extend(latencies);
                errors += e;
            }
            all.sort();
            println!(
                "getticket_rps={:.0} p50_ms={:.2} p99_ms={:.2} calls={} errors={errors}",
                all.len() as f64 / *seconds as f64,
                pct(&all, 0.50),
                pct(&all, 0.99),
                all.len()
            );
        }
    }
    Ok(())
}
