//! `tidings`: talk to the ticket service from a shell. Agents and operators use it to reply,
//! ask for information and resolve; developers use it to mint dev tokens and guest links.

use anyhow::{Context, bail};
use chrono::Utc;
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use tidings_proto::ticket::v1::guest_access_service_client::GuestAccessServiceClient;
use tidings_proto::ticket::v1::ticket_service_client::TicketServiceClient;
use tidings_proto::ticket::v1::*;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Command-line client for the Tidings ticket service"
)]
struct Cli {
    /// Ticket service gRPC address.
    #[arg(
        long,
        env = "TIDINGS_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// Push dispatcher gRPC address (devices and push preferences).
    #[arg(
        long,
        env = "TIDINGS_PUSH_ADDR",
        default_value = "http://127.0.0.1:50052",
        global = true
    )]
    push_addr: String,
    /// Bearer token (a JWT, or a guest session token).
    #[arg(long, env = "TIDINGS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mint a development JWT signed with TIDINGS_JWT_HS256_SECRET.
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long, default_value = "en")]
        locale: String,
        #[arg(long)]
        name: Option<String>,
        /// Make the token an agent's.
        #[arg(long)]
        agent: bool,
        #[arg(long, default_value_t = 8 * 3600)]
        ttl_secs: i64,
        #[arg(long, env = "TIDINGS_JWT_HS256_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Open a ticket (signed in with --token, or as a guest with --guest-email).
    Open {
        #[arg(long)]
        subject: String,
        #[arg(long)]
        body: String,
        #[arg(long)]
        guest_email: Option<String>,
        #[arg(long, default_value = "en")]
        guest_locale: String,
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Reply to a ticket.
    Reply {
        ticket_id: String,
        #[arg(long)]
        body: String,
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Ask the customer for more information (agents).
    RequestInfo {
        ticket_id: String,
        #[arg(long)]
        body: String,
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Resolve a ticket (agents).
    Resolve {
        ticket_id: String,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show a ticket and its conversation.
    Get { ticket_id: String },
    /// List tickets, newest activity first.
    List {
        /// open, awaiting_customer or resolved (repeatable).
        #[arg(long)]
        status: Vec<String>,
        /// Agents only: one customer's tickets.
        #[arg(long, default_value = "")]
        requester: String,
        #[arg(long, default_value_t = 20)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Mint the guest link an email would carry (operators; needs TIDINGS_GUEST_KEYS).
    GuestLink {
        ticket_id: String,
        #[arg(long)]
        email: String,
        #[arg(long, env = "TIDINGS_GUEST_KEYS", hide_env_values = true)]
        keys: String,
    },
    /// As a guest: ask for a one-time code for the ticket behind a link (the URL from the
    /// notification email, or just its token).
    RequestCode {
        #[arg(long, value_parser = link_token)]
        link: String,
    },
    /// As a signed-in customer: register a phone for push.
    RegisterDevice {
        /// ios (APNs) or android (FCM).
        #[arg(long)]
        platform: String,
        /// The APNs device token or FCM registration token (`--token` is the bearer token).
        #[arg(long)]
        device_token: String,
        #[arg(long, default_value = "com.tidings.app")]
        app_id: String,
        #[arg(long, default_value = "en")]
        locale: String,
    },
    /// As a signed-in customer: list the registered devices.
    Devices,
    /// As a signed-in customer: show or change push preferences.
    PushPrefs {
        /// Turn push off altogether (`--on` turns it back on).
        #[arg(long)]
        off: bool,
        #[arg(long, conflicts_with = "off")]
        on: bool,
        /// Quiet hours as HH:MM-HH:MM, with --time-zone.
        #[arg(long, requires = "time_zone")]
        quiet: Option<String>,
        #[arg(long)]
        time_zone: Option<String>,
    },
    /// As a guest: exchange the emailed code for a session token.
    VerifyCode {
        #[arg(long, value_parser = link_token)]
        link: String,
        #[arg(long)]
        code: String,
    },
}

/// The link token from an emailed URL (`…?link=<token>`), or the token itself.
fn link_token(raw: &str) -> Result<String, String> {
    let token = match raw.split_once("link=") {
        Some((_, rest)) => rest.split(['&', '#']).next().unwrap_or_default(),
        None => raw,
    };
    if token.is_empty() {
        return Err("no link token in it".into());
    }
    Ok(token.to_owned())
}

fn authed<T>(token: &Option<String>, msg: T) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .context("token is not ASCII")?,
        );
    }
    Ok(req)
}

fn status_name(s: i32) -> &'static str {
    match TicketStatus::try_from(s) {
        Ok(TicketStatus::Open) => "open",
        Ok(TicketStatus::AwaitingCustomer) => "awaiting customer",
        Ok(TicketStatus::Resolved) => "resolved",
        _ => "unknown",
    }
}

fn parse_status(s: &str) -> anyhow::Result<i32> {
    Ok(match s {
        "open" => TicketStatus::Open,
        "awaiting_customer" | "awaiting-customer" => TicketStatus::AwaitingCustomer,
        "resolved" => TicketStatus::Resolved,
        other => bail!("unknown status {other:?} (open, awaiting_customer, resolved)"),
    } as i32)
}

fn when(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(tidings_proto::from_timestamp)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn rid(given: Option<String>) -> String {
    given.unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

async fn tickets(addr: &str) -> anyhow::Result<TicketServiceClient<Channel>> {
    TicketServiceClient::connect(addr.to_owned())
        .await
        .with_context(|| format!("connecting to {addr}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let token = cli.token.clone().filter(|t| !t.trim().is_empty());
    let result: anyhow::Result<()> = async {
        match cli.command {
            Cmd::Token {
                sub,
                email,
                locale,
                name,
                agent,
                ttl_secs,
                secret,
            } => {
                let claims = tidings_auth::Claims {
                    sub,
                    email,
                    locale: Some(locale),
                    name,
                    role: agent.then(|| "agent".to_owned()),
                    exp: Utc::now().timestamp() + ttl_secs,
                    ..Default::default()
                };
                println!(
                    "{}",
                    tidings_auth::mint_hs256(&SecretString::from(secret), &claims)
                );
            }
            Cmd::Open {
                subject,
                body,
                guest_email,
                guest_locale,
                request_id,
            } => {
                let guest = guest_email.map(|email| GuestRequester {
                    email,
                    locale: guest_locale,
                });
                let req = OpenTicketRequest {
                    request_id: rid(request_id),
                    subject,
                    body,
                    guest,
                };
                let r = tickets(&cli.addr)
                    .await?
                    .open_ticket(authed(&token, req)?)
                    .await?
                    .into_inner();
                println!("opened ticket {} (id {})", r.ticket_number, r.ticket_id);
            }
            Cmd::Reply {
                ticket_id,
                body,
                request_id,
            } => {
                let req = PostReplyRequest {
                    request_id: rid(request_id),
                    ticket_id,
                    body,
                };
                let r = tickets(&cli.addr)
                    .await?
                    .post_reply(authed(&token, req)?)
                    .await?
                    .into_inner();
                println!(
                    "reply #{} added; ticket is {}",
                    r.sequence,
                    status_name(r.status)
                );
            }
            Cmd::RequestInfo {
                ticket_id,
                body,
                request_id,
            } => {
                let req = RequestInfoRequest {
                    request_id: rid(request_id),
                    ticket_id,
                    body,
                };
                let r = tickets(&cli.addr)
                    .await?
                    .request_info(authed(&token, req)?)
                    .await?
                    .into_inner();
                println!(
                    "information requested (#{}); ticket is {}",
                    r.sequence,
                    status_name(r.status)
                );
            }
            Cmd::Resolve {
                ticket_id,
                note,
                request_id,
            } => {
                let req = ResolveTicketRequest {
                    request_id: rid(request_id),
                    ticket_id,
                    note,
                };
                let r = tickets(&cli.addr)
                    .await?
                    .resolve_ticket(authed(&token, req)?)
                    .await?
                    .into_inner();
                println!("ticket {}", status_name(r.status));
            }
            Cmd::Get { ticket_id } => {
                let r = tickets(&cli.addr)
                    .await?
                    .get_ticket(authed(&token, GetTicketRequest { ticket_id })?)
                    .await?
                    .into_inner();
                let t = r.ticket.context("empty response")?;
                println!(
                    "Ticket {} [{}] {}",
                    t.ticket_number,
                    status_name(t.status),
                    t.subject
                );
                if !t.requester_email.is_empty() {
                    println!(
                        "requester: {} {}",
                        t.requester_email, t.requester_account_id
                    );
                }
                for m in t.messages {
                    println!("\n--- {} — {}", m.author_display_name, when(&m.created_at));
                    println!("{}", m.body);
                }
            }
            Cmd::List {
                status,
                requester,
                page_size,
                page_token,
            } => {
                let statuses = status
                    .iter()
                    .map(|s| parse_status(s))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let req = ListTicketsRequest {
                    statuses,
                    requester_account_id: requester,
                    page_size,
                    page_token,
                };
                let r = tickets(&cli.addr)
                    .await?
                    .list_tickets(authed(&token, req)?)
                    .await?
                    .into_inner();
                for t in &r.tickets {
                    println!(
                        "{:>8}  {:<18} {}  {}  {}",
                        t.ticket_number,
                        status_name(t.status),
                        when(&t.last_activity_at),
                        t.ticket_id,
                        t.subject
                    );
                }
                if !r.next_page_token.is_empty() {
                    println!("more: --page-token {}", r.next_page_token);
                }
            }
            Cmd::GuestLink {
                ticket_id,
                email,
                keys,
            } => {
                let keys = tidings_guest_access::Keyring::parse(&SecretString::from(keys))?;
                let ticket = tidings_domain::TicketId::parse(&ticket_id)
                    .map_err(|e| anyhow::anyhow!("ticket_id: {e}"))?;
                let email = tidings_domain::Email::parse(&email)
                    .map_err(|e| anyhow::anyhow!("email: {e}"))?;
                println!("{}", keys.mint_link(ticket, &email, Utc::now()));
            }
            Cmd::RequestCode { link } => {
                let mut g = GuestAccessServiceClient::connect(cli.addr.clone()).await?;
                let r = g
                    .request_access_code(RequestAccessCodeRequest { link_token: link })
                    .await?
                    .into_inner();
                println!(
                    "code requested; it is emailed to the guest's address and expires at {}",
                    when(&r.code_expires_at)
                );
            }
            Cmd::RegisterDevice {
                platform,
                device_token,
                app_id,
                locale,
            } => {
                use tidings_proto::push::v1 as pb;
                let platform = match platform.as_str() {
                    "ios" => pb::Platform::Ios,
                    "android" => pb::Platform::Android,
                    other => bail!("--platform {other}: expected ios or android"),
                };
                let r =
                    pb::device_service_client::DeviceServiceClient::connect(cli.push_addr.clone())
                        .await
                        .with_context(|| format!("connecting to {}", cli.push_addr))?
                        .register_device(authed(
                            &token,
                            pb::RegisterDeviceRequest {
                                platform: platform as i32,
                                token: device_token,
                                app_id,
                                locale,
                            },
                        )?)
                        .await?
                        .into_inner();
                if let Some(d) = r.device {
                    println!("device {} registered", d.device_id);
                }
            }
            Cmd::Devices => {
                use tidings_proto::push::v1 as pb;
                let r =
                    pb::device_service_client::DeviceServiceClient::connect(cli.push_addr.clone())
                        .await
                        .with_context(|| format!("connecting to {}", cli.push_addr))?
                        .list_devices(authed(&token, pb::ListDevicesRequest {})?)
                        .await?
                        .into_inner();
                for d in r.devices {
                    let platform = if d.platform == pb::Platform::Ios as i32 {
                        "ios"
                    } else {
                        "android"
                    };
                    println!(
                        "{}  {platform:<7} {}  {}  {}",
                        d.device_id, d.app_id, d.locale, d.token
                    );
                }
            }
            Cmd::PushPrefs {
                off,
                on,
                quiet,
                time_zone,
            } => {
                use tidings_proto::push::v1 as pb;
                let mut c = pb::preference_service_client::PreferenceServiceClient::connect(
                    cli.push_addr.clone(),
                )
                .await
                .with_context(|| format!("connecting to {}", cli.push_addr))?;
                let mut prefs = c
                    .get_preferences(authed(&token, pb::GetPreferencesRequest {})?)
                    .await?
                    .into_inner();
                if off || on || quiet.is_some() {
                    if off || on {
                        prefs.push_enabled = on;
                    }
                    if let (Some(q), Some(tz)) = (quiet, time_zone) {
                        let (start, end) =
                            q.split_once('-').context("--quiet: expected HH:MM-HH:MM")?;
                        prefs.quiet_hours = Some(pb::QuietHours {
                            start: start.into(),
                            end: end.into(),
                            time_zone: tz,
                        });
                    }
                    prefs = c
                        .update_preferences(authed(
                            &token,
                            pb::UpdatePreferencesRequest {
                                preferences: Some(prefs),
                            },
                        )?)
                        .await?
                        .into_inner();
                }
                println!("{prefs:#?}");
            }
            Cmd::VerifyCode { link, code } => {
                let mut g = GuestAccessServiceClient::connect(cli.addr.clone()).await?;
                let r = g
                    .verify_access_code(VerifyAccessCodeRequest {
                        link_token: link,
                        code,
                    })
                    .await?
                    .into_inner();
                println!("{}", r.session_token);
                eprintln!(
                    "guest session for ticket {} until {}",
                    r.ticket_id,
                    when(&r.session_expires_at)
                );
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        match e.downcast_ref::<tonic::Status>() {
            Some(s) => eprintln!("error: {:?}: {}", s.code(), s.message()),
            None => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
    Ok(())
}
