//! The services as an operator runs them: the built binaries, each in a process of its own
//! configured only by environment variables, that a test kills with SIGKILL (a crash, the OOM
//! killer, a lost node: nothing is committed, closed or left) or stops with SIGTERM (a
//! deployment). [`System`] is the whole pipeline so: the ticket service, two replicas of each
//! dispatcher, the SMTP double and the APNs double, with one customer, one iPhone and four
//! tickets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tidings_proto::push::v1 as pb;
use tidings_proto::push::v1::device_service_client::DeviceServiceClient;
use tidings_proto::ticket::v1::ticket_service_client::TicketServiceClient;
use tidings_proto::ticket::v1::*;
use tidings_push_doubles::{Doubles, Options};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::broker::Broker;
use crate::mail::{DispatcherOptions, SmtpDouble, dispatcher_vars, unique};
use crate::push::push_vars;
use crate::*;

/// Where cargo put the workspace's binaries: the test binary runs from `target/<profile>/deps`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// One service binary with its environment, started, killed and started again on the same
/// ports. Its output goes to a log file that outlives the test.
pub struct Service {
    pub name: String,
    bin: PathBuf,
    vars: Vec<(&'static str, String)>,
    pub admin: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Service {
    /// `bin` configured with `vars`, its admin server (`admin_var`) on a port of its own.
    /// Not started.
    pub fn new(
        name: &str,
        bin: &str,
        admin_var: &'static str,
        vars: Vec<(&'static str, String)>,
        log_dir: &Path,
    ) -> Self {
        let bin = bin_dir().join(bin);
        assert!(
            bin.exists(),
            "{} is built (cargo build --workspace --bins)",
            bin.display()
        );
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut s = Self {
            name: name.to_owned(),
            bin,
            vars,
            admin,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        };
        s.set(admin_var, admin.to_string());
        s
    }

    /// Sets a variable (over the one given to `new`).
    pub fn set(&mut self, key: &'static str, value: String) {
        self.vars.retain(|(k, _)| *k != key);
        self.vars.push((key, value));
    }

    /// Starts the process without waiting for it (as a supervisor restarts a service).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("service log");
        use std::io::Write as _;
        writeln!(log, "--- start {} ---", self.starts).expect("service log");
        let child = Command::new(&self.bin)
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("service log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("service binary starts");
        self.child = Some(child);
    }

    /// Waits until the admin server answers `/healthz`.
    pub async fn ready(&mut self) {
        let url = format!("http://{}/healthz", self.admin);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{} exited ({status}):\n{}", self.name, self.log_tail(40));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not become healthy:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn start(&mut self) {
        self.spawn();
        self.ready().await;
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.expect("SIGKILL");
    }

    /// SIGTERM, and waits for the graceful stop; it must end well.
    pub async fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("pid").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill -TERM");
        assert!(sent.success(), "SIGTERM sent to {}", self.name);
        let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} stops within 40 s of SIGTERM", self.name))
            .expect("wait");
        assert!(
            status.success(),
            "{} stopped cleanly ({status}):\n{}",
            self.name,
            self.log_tail(40)
        );
    }

    /// The last `n` lines of the service's log (all its runs).
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// The whole pipeline in processes (see the module).
pub struct System {
    pub broker: Broker,
    pub smtp: SmtpDouble,
    pub doubles: Arc<Doubles>,
    pub ticket: Service,
    pub email: [Service; 2],
    pub push: [Service; 2],
    grpc: SocketAddr,
    push_grpc: SocketAddr,
    email_pool: sqlx::PgPool,
    push_pool: sqlx::PgPool,
    pub log_dir: PathBuf,
    pub address: String,
    pub device: String,
    pub tickets: Vec<String>,
}

impl System {
    pub async fn start(broker: Broker) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let log_dir = std::env::temp_dir().join(format!("tidings-system-{id}"));
        std::fs::create_dir_all(&log_dir).expect("log directory");
        let topic = format!("test.ticket-events.{id}");
        let codes_topic = format!("{topic}.codes");
        let brokers = broker.address();

        let mut ticket = Service::new(
            "ticket-service",
            "ticket-service",
            "TIDINGS_ADMIN_ADDR",
            service_vars(&format!("t_{id}"), &topic, &codes_topic, &brokers),
            &log_dir,
        );
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        ticket.set("TIDINGS_GRPC_ADDR", grpc.to_string());
        ticket.start().await;

        let smtp = SmtpDouble::start(vec![], Duration::ZERO).await;
        let options = DispatcherOptions {
            smtp: smtp.addr.to_string(),
            ticket_topic: topic.clone(),
            codes_topic,
            brokers: brokers.clone(),
            schema: None,
            group: None,
            extra: vec![],
        };
        let email_schema = format!("t_{id}_email");
        let email_vars = dispatcher_vars(&options, &email_schema, &format!("test-email-{id}"));
        let mut email = [0, 1].map(|i| {
            Service::new(
                &format!("email-dispatcher-{i}"),
                "email-dispatcher",
                "TIDINGS_EMAIL_ADMIN_ADDR",
                email_vars.clone(),
                &log_dir,
            )
        });

        let doubles = Arc::new(
            Doubles::start(Options {
                apns_port: 0,
                fcm_port: 0,
                dir: log_dir.join("push-doubles"),
                record: true,
            })
            .await
            .expect("push doubles start"),
        );
        let push_schema = format!("t_{id}_push");
        let push_vars = push_vars(
            &doubles,
            &topic,
            &brokers,
            &push_schema,
            &format!("test-push-{id}"),
        );
        let mut push = [0, 1].map(|i| {
            let mut s = Service::new(
                &format!("push-dispatcher-{i}"),
                "push-dispatcher",
                "TIDINGS_PUSH_ADMIN_ADDR",
                push_vars.clone(),
                &log_dir,
            );
            s.set(
                "TIDINGS_PUSH_GRPC_ADDR",
                format!("127.0.0.1:{}", free_port()),
            );
            s
        });
        // One after the other: the first of each creates its schema.
        for s in email.iter_mut().chain(push.iter_mut()) {
            s.start().await;
        }
        let push_grpc = push[0]
            .vars
            .iter()
            .find(|(k, _)| *k == "TIDINGS_PUSH_GRPC_ADDR")
            .and_then(|(_, v)| v.parse().ok())
            .expect("push gRPC address");

        let pool = |schema: String| async move {
            tidings_store::connect(&database_url(), Some(&schema), 2)
                .await
                .expect("test pool")
        };
        let mut system = Self {
            broker,
            smtp,
            doubles,
            ticket,
            email,
            push,
            grpc,
            push_grpc,
            email_pool: pool(email_schema).await,
            push_pool: pool(push_schema).await,
            log_dir,
            address: String::new(),
            device: String::new(),
            tickets: vec![],
        };
        system.customer_with_tickets().await;
        system
    }

    /// One customer with an iPhone and four tickets, whose openings were mailed.
    async fn customer_with_tickets(&mut self) {
        let sub = unique("ann");
        let ann = customer(&sub);
        self.device = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        DeviceServiceClient::connect(format!("http://{}", self.push_grpc))
            .await
            .expect("push gRPC")
            .register_device(authed(
                &ann,
                pb::RegisterDeviceRequest {
                    platform: pb::Platform::Ios as i32,
                    token: self.device.clone(),
                    app_id: "com.tidings.app".into(),
                    locale: "it".into(),
                },
            ))
            .await
            .expect("device registers");
        for i in 0..4 {
            let opened = self
                .tickets()
                .await
                .open_ticket(authed(&ann, new_ticket(format!("Order {i}"))))
                .await
                .expect("open ticket");
            self.tickets.push(opened.into_inner().ticket_id);
        }
        self.address = format!("{sub}@example.com");
        eventually(
            Duration::from_secs(60),
            "the four openings mailed",
            || async { (self.smtp.to(&self.address).len() >= 4).then_some(()) },
        )
        .await;
    }

    async fn tickets(&self) -> TicketServiceClient<tonic::transport::Channel> {
        TicketServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("ticket gRPC")
    }

    /// Agent reply number `i`, sent again with the same request id until the ticket service
    /// has stored it (it may be down, or die with the request in flight).
    pub async fn reply(&self, i: usize) {
        let request = PostReplyRequest {
            request_id: rid(),
            ticket_id: self.tickets[i % self.tickets.len()].clone(),
            body: format!("Answer {i}"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = async {
                let url = format!("http://{}", self.grpc);
                let mut client = TicketServiceClient::connect(url)
                    .await
                    .map_err(|e| e.to_string())?;
                client
                    .post_reply(authed(&agent("giulia"), request.clone()))
                    .await
                    .map_err(|s| s.to_string())
            };
            match attempt.await {
                Ok(_) => return,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "reply {i} not stored within 60 s: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends the email dispatchers recorded as sent to the customer, and pushes the push
    /// dispatchers recorded as sent.
    pub async fn recorded_sends(&self) -> (i64, i64) {
        let count = |pool: &sqlx::PgPool, sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&pool)
                    .await
                    .expect("count")
            }
        };
        (
            count(
                &self.email_pool,
                "SELECT count(*) FROM email_sends WHERE outcome = 'sent'",
            )
            .await,
            count(
                &self.push_pool,
                "SELECT count(*) FROM push_sends WHERE outcome = 'sent'",
            )
            .await,
        )
    }

    /// Every service's log tail, for a failing test's output.
    pub fn logs(&self) -> String {
        [&self.ticket]
            .into_iter()
            .chain(&self.email)
            .chain(&self.push)
            .map(|s| format!("== {} ==\n{}", s.name, s.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
