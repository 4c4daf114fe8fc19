//! `tidings`: talk to the ticket service from a shell. Agents and operators use it to reply,
//! ask for information and resolve; developers use it to mint dev tokens and guest links.

use anyhow::{Context, bail};
use chrono::Utc;
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use tidings_proto::push::v1 as pb;
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

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        match e.downcast_ref::<tonic::Status>() {
            Some(s) => eprintln!("error: {:?}: {}", s.code(), s.message()),
            None => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = Client {
        token: cli.token.filter(|t| !t.trim().is_empty()),
        addr: cli.addr,
        push_addr: cli.push_addr,
    };
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
        Cmd::GuestLink {
            ticket_id,
            email,
            keys,
        } => guest_link(&ticket_id, &email, keys)?,
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
            c.open(OpenTicketRequest {
                request_id: rid(request_id),
                subject,
                body,
                guest,
            })
            .await?
        }
        Cmd::Reply {
            ticket_id,
            body,
            request_id,
        } => {
            c.reply(PostReplyRequest {
                request_id: rid(request_id),
                ticket_id,
                body,
            })
            .await?
        }
        Cmd::RequestInfo {
            ticket_id,
            body,
            request_id,
        } => {
            c.request_info(RequestInfoRequest {
                request_id: rid(request_id),
                ticket_id,
                body,
            })
            .await?
        }
        Cmd::Resolve {
            ticket_id,
            note,
            request_id,
        } => {
            c.resolve(ResolveTicketRequest {
                request_id: rid(request_id),
                ticket_id,
                note,
            })
            .await?
        }
        Cmd::Get { ticket_id } => c.get(ticket_id).await?,
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
            c.list(ListTicketsRequest {
                statuses,
                requester_account_id: requester,
                page_size,
                page_token,
            })
            .await?
        }
        Cmd::RequestCode { link } => c.request_code(link).await?,
        Cmd::VerifyCode { link, code } => c.verify_code(link, code).await?,
        Cmd::RegisterDevice {
            platform,
            device_token,
            app_id,
            locale,
        } => {
            let platform = match platform.as_str() {
                "ios" => pb::Platform::Ios,
                "android" => pb::Platform::Android,
                other => bail!("--platform {other}: expected ios or android"),
            };
            c.register_device(pb::RegisterDeviceRequest {
                platform: platform as i32,
                token: device_token,
                app_id,
                locale,
            })
            .await?
        }
        Cmd::Devices => c.devices().await?,
        Cmd::PushPrefs {
            off,
            on,
            quiet,
            time_zone,
        } => {
            let enabled = (off || on).then_some(on);
            let quiet = match (quiet, time_zone) {
                (Some(q), Some(time_zone)) => {
                    let (start, end) =
                        q.split_once('-').context("--quiet: expected HH:MM-HH:MM")?;
                    Some(pb::QuietHours {
                        start: start.into(),
                        end: end.into(),
                        time_zone,
                    })
                }
                _ => None,
            };
            c.push_prefs(enabled, quiet).await?
        }
    }
    Ok(())
}

fn guest_link(ticket_id: &str, email: &str, keys: String) -> anyhow::Result<()> {
    let keys = tidings_guest_access::Keyring::parse(&SecretString::from(keys))?;
    let ticket = tidings_domain::TicketId::parse(ticket_id)
        .map_err(|e| anyhow::anyhow!("ticket_id: {e}"))?;
    let email = tidings_domain::Email::parse(email).map_err(|e| anyhow::anyhow!("email: {e}"))?;
    println!("{}", keys.mint_link(ticket, &email, Utc::now()));
    Ok(())
}

/// Where the services are and who is calling.
struct Client {
    addr: String,
    push_addr: String,
    token: Option<String>,
}

impl Client {
    fn authed<T>(&self, msg: T) -> anyhow::Result<tonic::Request<T>> {
        authed(&self.token, msg)
    }

    async fn tickets(&self) -> anyhow::Result<TicketServiceClient<Channel>> {
        TicketServiceClient::connect(self.addr.clone())
            .await
            .with_context(|| format!("connecting to {}", self.addr))
    }

    async fn guests(&self) -> anyhow::Result<GuestAccessServiceClient<Channel>> {
        GuestAccessServiceClient::connect(self.addr.clone())
            .await
            .with_context(|| format!("connecting to {}", self.addr))
    }

    async fn devices_client(
        &self,
    ) -> anyhow::Result<pb::device_service_client::DeviceServiceClient<Channel>> {
        pb::device_service_client::DeviceServiceClient::connect(self.push_addr.clone())
            .await
            .with_context(|| format!("connecting to {}", self.push_addr))
    }

    async fn open(&self, req: OpenTicketRequest) -> anyhow::Result<()> {
        let r = self
            .tickets()
            .await?
            .open_ticket(self.authed(req)?)
            .await?
            .into_inner();
        println!("opened ticket {} (id {})", r.ticket_number, r.ticket_id);
        Ok(())
    }

    async fn reply(&self, req: PostReplyRequest) -> anyhow::Result<()> {
        let r = self
            .tickets()
            .await?
            .post_reply(self.authed(req)?)
            .await?
            .into_inner();
        println!(
            "reply #{} added; ticket is {}",
            r.sequence,
            status_name(r.status)
        );
        Ok(())
    }

    async fn request_info(&self, req: RequestInfoRequest) -> anyhow::Result<()> {
        let r = self
            .tickets()
            .await?
            .request_info(self.authed(req)?)
            .await?
            .into_inner();
        println!(
            "information requested (#{}); ticket is {}",
            r.sequence,
            status_name(r.status)
        );
        Ok(())
    }

    async fn resolve(&self, req: ResolveTicketRequest) -> anyhow::Result<()> {
        let r = self
            .tickets()
            .await?
            .resolve_ticket(self.authed(req)?)
            .await?
            .into_inner();
        println!("ticket {}", status_name(r.status));
        Ok(())
    }

    async fn get(&self, ticket_id: String) -> anyhow::Result<()> {
        let r = self
            .tickets()
            .await?
            .get_ticket(self.authed(GetTicketRequest { ticket_id })?)
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
        Ok(())
    }

    async fn list(&self, req: ListTicketsRequest) -> anyhow::Result<()> {
        let r = self
            .tickets()
            .await?
            .list_tickets(self.authed(req)?)
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
        Ok(())
    }

    async fn request_code(&self, link_token: String) -> anyhow::Result<()> {
        let r = self
            .guests()
            .await?
            .request_access_code(RequestAccessCodeRequest { link_token })
            .await?
            .into_inner();
        println!(
            "code requested; it is emailed to the guest's address and expires at {}",
            when(&r.code_expires_at)
        );
        Ok(())
    }

    async fn verify_code(&self, link_token: String, code: String) -> anyhow::Result<()> {
        let r = self
            .guests()
            .await?
            .verify_access_code(VerifyAccessCodeRequest { link_token, code })
            .await?
            .into_inner();
        println!("{}", r.session_token);
        eprintln!(
            "guest session for ticket {} until {}",
            r.ticket_id,
            when(&r.session_expires_at)
        );
        Ok(())
    }

    async fn register_device(&self, req: pb::RegisterDeviceRequest) -> anyhow::Result<()> {
        let r = self
            .devices_client()
            .await?
            .register_device(self.authed(req)?)
            .await?
            .into_inner();
        if let Some(d) = r.device {
            println!("device {} registered", d.device_id);
        }
        Ok(())
    }

    async fn devices(&self) -> anyhow::Result<()> {
        let r = self
            .devices_client()
            .await?
            .list_devices(self.authed(pb::ListDevicesRequest {})?)
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
        Ok(())
    }

    /// Shows the preferences, after setting push on or off (`enabled`) and quiet hours if
    /// given.
    async fn push_prefs(
        &self,
        enabled: Option<bool>,
        quiet: Option<pb::QuietHours>,
    ) -> anyhow::Result<()> {
        let mut c =
            pb::preference_service_client::PreferenceServiceClient::connect(self.push_addr.clone())
                .await
                .with_context(|| format!("connecting to {}", self.push_addr))?;
        let mut prefs = c
            .get_preferences(self.authed(pb::GetPreferencesRequest {})?)
            .await?
            .into_inner();
        if enabled.is_some() || quiet.is_some() {
            if let Some(on) = enabled {
                prefs.push_enabled = on;
            }
            if quiet.is_some() {
                prefs.quiet_hours = quiet;
            }
            prefs = c
                .update_preferences(self.authed(pb::UpdatePreferencesRequest {
                    preferences: Some(prefs),
                })?)
                .await?
                .into_inner();
        }
        println!("{prefs:#?}");
        Ok(())
    }
}
