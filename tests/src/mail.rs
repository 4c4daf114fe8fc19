//! Mail-side test helpers: the MailDev inbox `make` starts (and private MailDev instances for
//! outage tests), a small SMTP double for failure injection (per-recipient 5xx, slow
//! sessions), and the email dispatcher started in-process against a test's topics.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use email_dispatcher::{Application, Config};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::{GUEST_KEYS, SEAL_KEY, database_url, eventually, free_port};

/// The shared MailDev of the dev stack (`TIDINGS_TEST_SMTP`, `TIDINGS_TEST_MAILDEV`).
pub fn shared_smtp() -> String {
    std::env::var("TIDINGS_TEST_SMTP").unwrap_or_else(|_| "127.0.0.1:1025".into())
}

pub fn shared_maildev() -> MailDev {
    MailDev {
        api: std::env::var("TIDINGS_TEST_MAILDEV")
            .unwrap_or_else(|_| "http://127.0.0.1:1080".into()),
    }
}

/// A unique mailbox name per test, so tests can share one inbox.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..10])
}

#[derive(Debug, Clone, Deserialize)]
pub struct Address {
    pub address: String,
}

/// One message as MailDev's API shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Received {
    pub id: String,
    pub subject: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    pub to: Vec<Address>,
    #[serde(default)]
    pub from: Vec<Address>,
}

impl Received {
    pub fn text(&self) -> &str {
        self.text.as_deref().unwrap_or_default()
    }
    pub fn html(&self) -> &str {
        self.html.as_deref().unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct MailDev {
    pub api: String,
}

impl MailDev {
    pub async fn all(&self) -> Vec<Received> {
        reqwest::get(format!("{}/api/email", self.api))
            .await
            .expect("maildev api")
            .json()
            .await
            .expect("maildev json")
    }

    pub async fn to(&self, address: &str) -> Vec<Received> {
        self.all()
            .await
            .into_iter()
            .filter(|m| m.to.iter().any(|a| a.address.eq_ignore_ascii_case(address)))
            .collect()
    }

    /// Waits until `address` has at least `n` messages; returns them.
    pub async fn wait_for(&self, address: &str, n: usize, within: Duration) -> Vec<Received> {
        eventually(within, &format!("{n} email(s) to {address}"), || async {
            let got = self.to(address).await;
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// The raw message (headers and MIME parts) as received.
    pub async fn source(&self, id: &str) -> String {
        reqwest::get(format!("{}/api/email/{id}/source", self.api))
            .await
            .expect("maildev api")
            .text()
            .await
            .expect("maildev source")
    }
}

/// A MailDev of a test's own, on fixed ports for its lifetime, that can be stopped and
/// started (a started-again MailDev has an empty inbox).
pub struct PrivateMailDev {
    pub smtp_port: u16,
    pub web_port: u16,
    child: Option<Child>,
}

impl PrivateMailDev {
    pub async fn start() -> Self {
        let mut m = Self {
            smtp_port: free_port(),
            web_port: free_port(),
            child: None,
        };
        m.resume().await;
        m
    }

    pub fn smtp(&self) -> String {
        format!("127.0.0.1:{}", self.smtp_port)
    }

    pub fn inbox(&self) -> MailDev {
        MailDev {
            api: format!("http://127.0.0.1:{}", self.web_port),
        }
    }

    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "maildev already running");
        let bin = std::env::var("MAILDEV_BIN").unwrap_or_else(|_| "maildev".into());
        let child = Command::new(bin)
            .args([
                "--smtp",
                &self.smtp_port.to_string(),
                "--ip",
                "127.0.0.1",
                "--web",
                &self.web_port.to_string(),
                "--web-ip",
                "127.0.0.1",
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("MailDev is installed (make deps) or MAILDEV_BIN points at it");
        self.child = Some(child);
        let web = self.inbox();
        eventually(Duration::from_secs(30), "private maildev up", || {
            let web = web.clone();
            let smtp = self.smtp_port;
            async move {
                let smtp_up = tokio::net::TcpStream::connect(("127.0.0.1", smtp))
                    .await
                    .is_ok();
                let api_up = reqwest::get(format!("{}/api/email", web.api)).await.is_ok();
                (smtp_up && api_up).then_some(())
            }
        })
        .await;
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }
}

/// A message the SMTP double accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub rcpt: Vec<String>,
    pub data: String,
    pub at: std::time::Instant,
}

#[derive(Default)]
struct DoubleState {
    /// While set, every transaction gets `421` and the session is closed (a server going
    /// down for maintenance).
    unavailable: bool,
    accepted: Vec<Accepted>,
    sessions: usize,
    /// MAIL commands that arrived together with the commands after them (RFC 2920).
    pipelined: usize,
}

/// A minimal ESMTP server for failure injection: recipients in `reject` get `550 5.1.1` at
/// RCPT, every accepted message waits `delay` before its `250` (a slow server), DATA without
/// a valid recipient gets `554` (as Postfix answers). It offers PIPELINING only when started
/// with [`SmtpDouble::pipelining`].
#[derive(Clone)]
pub struct SmtpDouble {
    pub addr: std::net::SocketAddr,
    state: Arc<Mutex<DoubleState>>,
}

impl SmtpDouble {
    pub async fn start(reject: Vec<String>, delay: Duration) -> Self {
        Self::spawn(reject, delay, false).await
    }

    /// A double that offers PIPELINING.
    pub async fn pipelining(reject: Vec<String>) -> Self {
        Self::spawn(reject, Duration::ZERO, true).await
    }

    async fn spawn(reject: Vec<String>, delay: Duration, pipelining: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind smtp double");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(DoubleState::default()));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                st.lock().unwrap().sessions += 1;
                tokio::spawn(session(sock, st.clone(), reject.clone(), delay, pipelining));
            }
        });
        Self { addr, state }
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn pipelined_count(&self) -> usize {
        self.state.lock().unwrap().pipelined
    }

    pub fn accepted_count(&self) -> usize {
        self.state.lock().unwrap().accepted.len()
    }

    pub fn to(&self, address: &str) -> Vec<Accepted> {
        self.accepted()
            .into_iter()
            .filter(|m| m.rcpt.iter().any(|r| r.eq_ignore_ascii_case(address)))
            .collect()
    }

    /// Answers every new transaction with `421` (and closes the session) while `down`.
    pub fn set_unavailable(&self, down: bool) {
        self.state.lock().unwrap().unavailable = down;
    }
}

async fn session(
    sock: tokio::net::TcpStream,
    state: Arc<Mutex<DoubleState>>,
    reject: Vec<String>,
    delay: Duration,
    pipelining: bool,
) {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r);
    let _ = w.write_all(b"220 smtp-double ESMTP\r\n").await;
    let mut rcpt = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") && pipelining {
            b"250-smtp-double\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("EHLO") {
            b"250-smtp-double\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            b"250 ok\r\n"
        } else if upper.starts_with("MAIL FROM") && state.lock().unwrap().unavailable {
            let _ = w
                .write_all(b"421 4.3.2 service not available, closing\r\n")
                .await;
            return;
        } else if upper.starts_with("MAIL FROM") || upper.starts_with("RSET") {
            if !lines.buffer().is_empty() {
                state.lock().unwrap().pipelined += 1;
            }
            rcpt.clear();
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO") {
            let addr = cmd[8..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or_default()
                .to_owned();
            if reject.iter().any(|r| r.eq_ignore_ascii_case(&addr)) {
                b"550 5.1.1 mailbox unavailable\r\n"
            } else {
                rcpt.push(addr);
                b"250 ok\r\n"
            }
        } else if upper == "DATA" && rcpt.is_empty() {
            b"554 5.5.1 no valid recipients\r\n"
        } else if upper == "DATA" {
            let _ = w.write_all(b"354 go ahead\r\n").await;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(&line);
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            state.lock().unwrap().accepted.push(Accepted {
                rcpt: std::mem::take(&mut rcpt),
                data,
                at: std::time::Instant::now(),
            });
            b"250 accepted\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"502 not implemented\r\n"
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}

pub struct DispatcherOptions {
    pub smtp: String,
    pub ticket_topic: String,
    pub codes_topic: String,
    pub brokers: String,
    /// Reuse a schema/group (a restarted dispatcher); fresh ones otherwise.
    pub schema: Option<String>,
    pub group: Option<String>,
    pub extra: Vec<(&'static str, String)>,
}

impl DispatcherOptions {
    /// A dispatcher of `app`'s topics on `app`'s broker, mailing through `smtp`, with a
    /// schema and a group of its own.
    pub fn new(smtp: impl ToString, app: &crate::TestApp) -> Self {
        Self {
            smtp: smtp.to_string(),
            ticket_topic: app.topic.clone(),
            codes_topic: app.codes_topic.clone(),
            brokers: app.brokers.clone(),
            schema: None,
            group: None,
            extra: vec![],
        }
    }

    /// Another replica of `d` (running or stopped): its schema and its group.
    pub fn replica_of(self, d: &TestDispatcher) -> Self {
        Self {
            schema: Some(d.schema.clone()),
            group: Some(d.group.clone()),
            ..self
        }
    }
}

pub struct TestDispatcher {
    pub app: Option<Application>,
    pub schema: String,
    pub group: String,
    pub notification_topic: String,
    pub dead_letter_topic: String,
    pub admin: std::net::SocketAddr,
    pub pool: sqlx::PgPool,
}

/// The dispatcher's environment for a test: what an operator would set.
pub fn dispatcher_vars(
    o: &DispatcherOptions,
    schema: &str,
    group: &str,
) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("DATABASE_URL", database_url()),
        ("KAFKA_BROKERS", o.brokers.clone()),
        ("TIDINGS_EMAIL_DB_SCHEMA", schema.to_owned()),
        ("TIDINGS_EMAIL_DB_MAX_CONNECTIONS", "4".to_owned()),
        ("TIDINGS_EMAIL_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("TIDINGS_TICKET_EVENTS_TOPIC", o.ticket_topic.clone()),
        ("TIDINGS_ACCESS_CODES_TOPIC", o.codes_topic.clone()),
        (
            "TIDINGS_NOTIFICATION_EVENTS_TOPIC",
            format!("{}.notifications", o.ticket_topic),
        ),
        (
            "TIDINGS_EMAIL_DLQ_TOPIC",
            format!("{}.email-dlq", o.ticket_topic),
        ),
        ("TIDINGS_EMAIL_GROUP_ID", group.to_owned()),
        ("TIDINGS_TOPIC_PARTITIONS", "3".to_owned()),
        ("TIDINGS_SMTP_URL", format!("smtp://{}", o.smtp)),
        ("TIDINGS_SMTP_POOL_SIZE", "4".to_owned()),
        ("TIDINGS_SMTP_TIMEOUT_SECS", "5".to_owned()),
        ("TIDINGS_EMAIL_RETRY_FIRST_MS", "100".to_owned()),
        ("TIDINGS_EMAIL_RETRY_MAX_MS", "1000".to_owned()),
        ("TIDINGS_OUTBOX_POLL_MS", "200".to_owned()),
        ("TIDINGS_KAFKA_MESSAGE_TIMEOUT_MS", "3000".to_owned()),
        ("TIDINGS_GUEST_KEYS", GUEST_KEYS.to_owned()),
        ("TIDINGS_CODE_SEAL_KEY", SEAL_KEY.to_owned()),
        (
            "TIDINGS_GUEST_TICKET_URL",
            "http://help.test/guest/tickets/{ticket_id}?link={token}".to_owned(),
        ),
        (
            "TIDINGS_CUSTOMER_TICKET_URL",
            "http://help.test/tickets/{ticket_id}".to_owned(),
        ),
    ];
    for (k, v) in &o.extra {
        vars.retain(|(key, _)| key != k);
        vars.push((k, v.clone()));
    }
    vars
}

pub async fn spawn_dispatcher(o: DispatcherOptions) -> TestDispatcher {
    tidings_telemetry::init_tracing(false);
    let id = Uuid::new_v4().simple().to_string();
    let schema = o.schema.clone().unwrap_or_else(|| format!("t_{id}"));
    let group = o
        .group
        .clone()
        .unwrap_or_else(|| format!("test-email-{id}"));
    let vars: HashMap<&str, String> = dispatcher_vars(&o, &schema, &group).into_iter().collect();
    let notification_topic = vars["TIDINGS_NOTIFICATION_EVENTS_TOPIC"].clone();
    let dead_letter_topic = vars["TIDINGS_EMAIL_DLQ_TOPIC"].clone();
    let env = tidings_config::Env::with_lookup(move |k| vars.get(k).cloned());
    let config = Config::load(env).expect("test dispatcher configuration is valid");
    let app = Application::build(config, Arc::new(tidings_domain::clock::SystemClock))
        .await
        .expect("dispatcher starts");
    let admin = app.admin_addr().expect("admin port");
    let pool = tidings_store::connect(&database_url(), Some(&schema), 2)
        .await
        .expect("test pool");
    TestDispatcher {
        app: Some(app),
        schema,
        group,
        notification_topic,
        dead_letter_topic,
        admin,
        pool,
    }
}

impl TestDispatcher {
    /// Stops the dispatcher gracefully: lanes finish, offsets are committed, the group is
    /// left. A dispatcher that a test leaves running is dropped with the test's runtime
    /// instead, mid-poll.
    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.run_until(async {}, std::time::Duration::from_secs(10))
                .await
                .expect("clean stop");
        }
    }

    /// The value of one metric (sum over label sets) from the admin endpoint.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_where(name, "").await
    }

    /// Like `metric`, over the label sets whose line contains `labels` (e.g. `outcome="sent"`).
    pub async fn metric_where(&self, name: &str, labels: &str) -> f64 {
        crate::metric(self.admin, name, labels).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }

    /// The number of sends recorded as sent, once it has reached `n`. A send is recorded as
    /// the server accepts it, so within milliseconds of the mail's arrival; more than `n`
    /// fails the caller's assertion rather than the wait.
    pub async fn sent_records(&self, n: i64) -> i64 {
        let sql = "SELECT count(*) FROM email_sends WHERE outcome = 'sent'";
        crate::eventually(
            std::time::Duration::from_secs(10),
            &format!("{n} sends recorded"),
            || async { Some(self.count(sql).await).filter(|&c| c >= n) },
        )
        .await
    }
}
