//! An SMTP client for many small messages: lettre's async SMTP client on sessions we keep
//! open ourselves (a bounded set, TCP_NODELAY; STARTTLS, implicit TLS and auth from the URL),
//! with PIPELINING (RFC 2920) where the server offers it, on a thread of its own. It sends
//! messages already in their DATA form ([`DataBlock`]); what they say is the caller's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tidings_delivery::{RecordWriter, Trigger};
use tokio::sync::oneshot;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: connection refused or lost, timeouts, 4xx replies.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help: 5xx replies, an address that is not one.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// What ends every DATA block, after the message's last CRLF (RFC 5321 4.1.1.4).
pub const END_MARK: &str = ".\r\n";

/// A message in its DATA form (RFC 5321 4.1.1.4): CRLF line ends, every line that starts with
/// "." dot-stuffed, and the end mark.
pub struct DataBlock {
    data: String,
    /// The message as stored, without the end mark.
    size: usize,
}

impl DataBlock {
    /// Ends `message` — already dot-stuffed, with CRLF line ends, its last line ended — with
    /// the end mark.
    pub fn end(mut message: String) -> Self {
        let size = message.len();
        message.push_str(END_MARK);
        Self {
            data: message,
            size,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.data
    }
}

/// How to reach the SMTP server, from `TIDINGS_SMTP_URL`:
/// `smtp://[user:pass@]host[:port]` (plain, port 25), `…?tls=required` or `…?tls=opportunistic`
/// (STARTTLS, port 587 when required), `smtps://[user:pass@]host[:port]` (implicit TLS, 465).
/// Credentials need a connection that is always encrypted (`smtps://` or `tls=required`): over
/// a plain one, or STARTTLS that an attacker on the path can strip, AUTH sends the password in
/// clear.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    timeout: Duration,
    hello: ClientId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    Plain,
    StartTls { required: bool },
    Implicit,
}

impl Endpoint {
    pub fn parse(raw: &str, timeout: Duration) -> Result<Self, SmtpSetupError> {
        let bad = |m: &str| SmtpSetupError::Url(m.to_owned());
        let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
        let tls = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let security = match (url.scheme(), tls.as_deref()) {
            ("smtps", None) => Security::Implicit,
            ("smtp", None) => Security::Plain,
            ("smtp", Some("required")) => Security::StartTls { required: true },
            ("smtp", Some("opportunistic")) => Security::StartTls { required: false },
            ("smtp" | "smtps", Some(other)) => {
                return Err(bad(&format!(
                    "tls={other}: expected required or opportunistic"
                )));
            }
            (other, _) => return Err(bad(&format!("scheme {other}: expected smtp or smtps"))),
        };
        let host = url
            .host_str()
            .ok_or_else(|| bad("no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = url.port().unwrap_or(match security {
            Security::Implicit => 465,
            Security::StartTls { required: true } => 587,
            _ => 25,
        });
        let credentials = (!url.username().is_empty()).then(|| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Credentials::new(
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            )
        });
        if credentials.is_some()
            && matches!(
                security,
                Security::Plain | Security::StartTls { required: false }
            )
        {
            return Err(bad(
                "credentials need an encrypted connection: use smtps:// or ?tls=required \
                 (AUTH over a plain or opportunistic connection sends the password in clear)",
            ));
        }
        Ok(Self {
            host,
            port,
            security,
            credentials,
            timeout,
            hello: ClientId::default(),
        })
    }

    async fn connect(&self) -> Result<Session, SendError> {
        let tls = || TlsParameters::new(self.host.clone()).map_err(|e| classify(&e));
        let mut conn = if self.security == Security::Implicit {
            AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(self.timeout),
                &self.hello,
                Some(tls()?),
                None,
            )
            .await
            .map_err(|e| classify(&e))?
        } else {
            let tcp = tokio::time::timeout(
                self.timeout,
                tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
            )
            .await
            .map_err(|_| SendError::Transient("connecting to the SMTP server timed out".into()))?
            .map_err(|e| SendError::Transient(format!("connecting to the SMTP server: {e}")))?;
            // Without it, the small final write of each message (".") waits for the server's
            // delayed ACK: ~40 ms per email.
            tcp.set_nodelay(true)
                .map_err(|e| SendError::Transient(e.to_string()))?;
            AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                .await
                .map_err(|e| classify(&e))?
        };
        if let Security::StartTls { required } = self.security {
            if conn.can_starttls() {
                conn.starttls(tls()?, &self.hello)
                    .await
                    .map_err(|e| classify(&e))?;
            } else if required {
                conn.abort().await;
                return Err(SendError::Transient(
                    "the server does not offer STARTTLS (tls=required)".into(),
                ));
            }
        }
        // lettre keeps only the extensions it uses itself; ask once more (EHLO may be
        // repeated, RFC 5321 4.1.4) to learn whether the server pipelines.
        let pipelining = conn
            .command(Ehlo::new(self.hello.clone()))
            .await
            .map_err(|e| classify(&e))?
            .message()
            .any(|line| line.trim().eq_ignore_ascii_case("PIPELINING"));
        if let Some(c) = &self.credentials {
            // `parse` only lets credentials through with TLS required; this holds the line
            // should that ever change.
            if !conn.is_encrypted() {
                conn.abort().await;
                return Err(SendError::Permanent(
                    "refusing SMTP AUTH over an unencrypted connection".into(),
                ));
            }
            conn.auth(&[Mechanism::Plain, Mechanism::Login], c)
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(Session { conn, pipelining })
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("authenticates", &self.credentials.is_some())
            .finish()
    }
}

/// Why a session could not send a message.
enum Failure {
    Smtp(lettre::transport::smtp::Error),
    /// This server cannot take this message at all; nothing was sent.
    Unsendable(&'static str),
    /// An 8-bit message for a server that does not offer 8BITMIME (any more); nothing was
    /// sent.
    NotEightBit,
}

impl From<lettre::transport::smtp::Error> for Failure {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        Self::Smtp(e)
    }
}

impl Failure {
    fn into_send_error(self) -> SendError {
        match self {
            Self::Smtp(e) => classify(&e),
            Self::Unsendable(why) => SendError::Permanent(why.into()),
            Self::NotEightBit => SendError::Transient(
                "an 8-bit message, and the server no longer offers 8BITMIME".into(),
            ),
        }
    }

    /// The connection failed (not a reply from the server): on a session kept from earlier
    /// use, the server probably closed it meanwhile.
    fn is_network(&self) -> bool {
        matches!(self, Self::Smtp(e) if !e.is_response())
    }
}

/// One message waiting for a session, and where its result goes.
struct Job {
    envelope: Envelope,
    /// The message's DATA block, built by the sender's task, so that a session worker
    /// between two round trips has only to write it.
    data: String,
    /// The message's size as sent (its DATA block without the end mark), for
    /// `tidings_email_bytes_total`.
    size: usize,
    reply: oneshot::Sender<Result<std::time::Instant, SendError>>,
    on_accept: Option<Trigger>,
}

impl Job {
    fn finish(self, result: Result<(), SendError>) {
        let accepted = std::time::Instant::now();
        if result.is_ok() {
            if let Some(trigger) = &self.on_accept {
                trigger.fire();
            }
            metrics::counter!("tidings_email_bytes_total").increment(self.size as u64);
        }
        // The sender stopped waiting only at shutdown; nothing is left to tell.
        let _ = self.reply.send(result.map(|()| accepted));
    }
}

/// An open SMTP session and what its server offers.
struct Session {
    conn: AsyncSmtpConnection,
    pipelining: bool,
}

impl Session {
    /// MAIL, RCPT and DATA for `job`, as one pipelined group (RFC 2920: DATA ends a group).
    fn envelope_group(&self, job: &Job) -> Result<String, Failure> {
        let mut group = Mail::new(
            job.envelope.from().cloned(),
            self.mail_parameters(&job.envelope, job.data.as_bytes())?,
        )
        .to_string();
        for to in job.envelope.to() {
            group.push_str(&Rcpt::new(to.clone(), vec![]).to_string());
        }
        group.push_str(&Data.to_string());
        Ok(group)
    }

    /// The replies to `job`'s envelope, up to DATA's 354. lettre's `read_response` reads one
    /// reply after another from what the server sent.
    async fn read_envelope_replies(&mut self, job: &Job) -> Result<(), Failure> {
        for _ in 0..job.envelope.to().len() + 2 {
            self.conn.read_response().await?;
        }
        Ok(())
    }

    /// Opens `job`'s mail transaction: pipelined where the server offers it (one write, the
    /// replies read together), else command by command.
    async fn open(&mut self, job: &Job) -> Result<(), Failure> {
        if self.pipelining {
            let group = self.envelope_group(job)?;
            // `command` writes whatever its argument displays and reads the first reply.
            self.conn.command(group).await?;
            for _ in 0..job.envelope.to().len() + 1 {
                self.conn.read_response().await?;
            }
        } else {
            let params = self.mail_parameters(&job.envelope, job.data.as_bytes())?;
            self.conn
                .command(Mail::new(job.envelope.from().cloned(), params))
                .await?;
            for to in job.envelope.to() {
                self.conn.command(Rcpt::new(to.clone(), vec![])).await?;
            }
            self.conn.command(Data).await?;
        }
        Ok(())
    }

    /// The MAIL parameters lettre's own `send` would use: SMTPUTF8 for non-ASCII addresses,
    /// 8BITMIME for a non-ASCII body, refused when the server lacks them.
    fn mail_parameters(
        &self,
        envelope: &Envelope,
        email: &[u8],
    ) -> Result<Vec<MailParameter>, Failure> {
        let info = self.conn.server_info();
        let mut params = vec![];
        let non_ascii = |a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii();
        if envelope.from().is_some_and(non_ascii) || envelope.to().iter().any(non_ascii) {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(Failure::Unsendable(
                    "non-ASCII addresses, and the server does not offer SMTPUTF8",
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !email.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                // Built while the server offered it; the worker has learnt since that it
                // no longer does, and the retry builds the message 7-bit.
                return Err(Failure::NotEightBit);
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        Ok(params)
    }
}

/// One SMTP session's worker: takes messages from the shared queue and sends them on its
/// session, kept open between messages (no NOOP probe before reuse: a session the server
/// closed fails on its next command and the message goes out on a new one).
///
/// With PIPELINING, a message's data and end mark go out in one write together with the
/// envelope of the next queued message (RFC 2920 lets MAIL follow the end of data): under
/// load each message costs one write and one round trip. Any error leaves replies unread,
/// so the session is dropped; a message whose envelope was written but whose data was not
/// is sent again on a new session (nothing of it was delivered).
async fn session_worker(
    endpoint: Arc<Endpoint>,
    queue: flume::Receiver<Job>,
    eight_bit: Arc<AtomicBool>,
) {
    let mut session: Option<Session> = None;
    let mut carried: Option<Job> = None;
    loop {
        let job = match carried.take() {
            Some(job) => job,
            // Servers drop idle sessions after a while; ours are closed before that.
            None => match tokio::time::timeout(IDLE_MAX, queue.recv_async()).await {
                Ok(Ok(job)) => job,
                Ok(Err(_)) => return,
                Err(_) => {
                    session = None;
                    continue;
                }
            },
        };
        let (mut s, kept) = match session.take() {
            Some(s) => (s, true),
            None => match endpoint.connect().await {
                Ok(s) => {
                    let offered = s
                        .conn
                        .server_info()
                        .supports_feature(Extension::EightBitMime);
                    eight_bit.store(offered, Ordering::Relaxed);
                    (s, false)
                }
                Err(e) => {
                    job.finish(Err(e));
                    continue;
                }
            },
        };
        match s.open(&job).await {
            Ok(()) => {}
            Err(f) if kept && f.is_network() => {
                carried = Some(job);
                continue;
            }
            Err(f) => {
                job.finish(Err(f.into_send_error()));
                continue;
            }
        }
        let mut current = job;
        // `current`'s envelope is accepted (354): its data goes next.
        loop {
            let follower = if s.pipelining {
                queue.try_recv().ok()
            } else {
                None
            };
            let mut block = std::mem::take(&mut current.data);
            let follower = match follower.map(|f| (s.envelope_group(&f), f)) {
                Some((Ok(group), f)) => {
                    block.push_str(&group);
                    Some(f)
                }
                Some((Err(why), f)) => {
                    f.finish(Err(why.into_send_error()));
                    None
                }
                None => None,
            };
            if let Err(e) = s.conn.command(block).await {
                current.finish(Err(classify(&e)));
                carried = follower;
                break;
            }
            current.finish(Ok(()));
            let Some(follower) = follower else {
                session = Some(s);
                break;
            };
            if let Err(f) = s.read_envelope_replies(&follower).await {
                follower.finish(Err(f.into_send_error()));
                break;
            }
            current = follower;
        }
    }
}

/// Sends through a fixed set of SMTP sessions, each with its own worker: the pool size for
/// ordinary messages, plus a few kept aside so urgent ones never queue behind them.
pub struct Sessions {
    notifications: flume::Sender<Job>,
    urgent: flume::Sender<Job>,
    /// Whether the server takes 8-bit bodies (8BITMIME, RFC 6152), as the last session that
    /// connected said; until one has, messages are built for a server that does not.
    eight_bit: Arc<AtomicBool>,
}

/// Sessions kept aside for urgent mail.
const URGENT_SESSIONS: usize = 2;
/// Servers drop idle sessions after a while; ours are closed before that.
const IDLE_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SmtpSetupError {
    #[error("TIDINGS_SMTP_URL: {0}")]
    Url(String),
    #[error("starting the SMTP session thread: {0}")]
    Thread(std::io::Error),
}

impl Sessions {
    pub fn start(
        endpoint: Endpoint,
        pool_size: u32,
        beside: Vec<RecordWriter>,
    ) -> Result<Self, SmtpSetupError> {
        let endpoint = Arc::new(endpoint);
        let eight_bit = Arc::new(AtomicBool::new(false));
        // The session workers run on a thread of their own. On the shared runtime a server's
        // reply waits behind hundreds of lane tasks in the run queue, and with one message per
        // round trip per session as the ceiling, that wait is the throughput
        // (docs/performance.md, email dispatcher).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SmtpSetupError::Thread)?;
        let mut workers = Vec::new();
        let mut pool = |size: usize| {
            // Bounded by its callers: each send awaits its job's answer, so the queue holds
            // at most one job per handler in flight (the consumer loops' lanes).
            let (tx, rx) = flume::unbounded();
            for _ in 0..size.max(1) {
                workers.push(runtime.spawn(session_worker(
                    endpoint.clone(),
                    rx.clone(),
                    eight_bit.clone(),
                )));
            }
            tx
        };
        let notifications = pool(pool_size as usize);
        let urgent = pool(URGENT_SESSIONS);
        for task in beside {
            runtime.spawn(task);
        }
        // Ends once every worker has: when the mailer, and with it the queues, is dropped.
        std::thread::Builder::new()
            .name("smtp-sessions".into())
            .spawn(move || {
                runtime.block_on(async move {
                    for w in workers {
                        let _ = w.await;
                    }
                })
            })
            .map_err(SmtpSetupError::Thread)?;
        Ok(Self {
            notifications,
            urgent,
            eight_bit,
        })
    }

    /// Whether messages may go with 8-bit bodies (see the field).
    pub fn eight_bit(&self) -> bool {
        self.eight_bit.load(Ordering::Relaxed)
    }

    /// Sends `block` to `envelope`'s recipients; `Ok` carries the instant the server accepted
    /// it (the start of the crash window, taken where the reply is read, not where the caller
    /// wakes up), when `on_accept` has also fired, there.
    pub async fn send(
        &self,
        envelope: Envelope,
        block: DataBlock,
        urgent: bool,
        on_accept: Option<Trigger>,
    ) -> Result<std::time::Instant, SendError> {
        let (reply, answer) = oneshot::channel();
        let queue = if urgent {
            &self.urgent
        } else {
            &self.notifications
        };
        let stopped = || SendError::Transient("mailer is shutting down".into());
        queue
            .send(Job {
                envelope,
                size: block.size,
                data: block.data,
                reply,
                on_accept,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    if e.is_permanent() {
        SendError::Permanent(e.to_string())
    } else {
        SendError::Transient(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_choose_security_port_and_credentials() {
        let t = Duration::from_secs(5);
        let plain = Endpoint::parse("smtp://127.0.0.1:1025", t).unwrap();
        assert_eq!((plain.port, plain.security), (1025, Security::Plain));
        let starttls =
            Endpoint::parse("smtp://mailer:p%40ss@smtp.example.com?tls=required", t).unwrap();
        assert_eq!(
            (starttls.port, starttls.security),
            (587, Security::StartTls { required: true })
        );
        assert!(starttls.credentials.is_some());
        let implicit = Endpoint::parse("smtps://smtp.example.com", t).unwrap();
        assert_eq!(
            (implicit.port, implicit.security),
            (465, Security::Implicit)
        );
        for bad in ["http://x", "smtp://x?tls=sometimes", "not a url"] {
            assert!(Endpoint::parse(bad, t).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_refused_unless_the_connection_is_always_encrypted() {
        let t = Duration::from_secs(5);
        for clear in [
            "smtp://mailer:hunter2@smtp.example.com",
            "smtp://mailer:hunter2@smtp.example.com?tls=opportunistic",
        ] {
            let err = Endpoint::parse(clear, t).unwrap_err().to_string();
            assert!(err.contains("encrypted connection"), "{clear}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        for encrypted in [
            "smtps://mailer:hunter2@smtp.example.com",
            "smtp://mailer:hunter2@smtp.example.com?tls=required",
        ] {
            let endpoint = Endpoint::parse(encrypted, t).unwrap();
            assert!(!format!("{endpoint:?}").contains("hunter2"));
        }
    }
}
