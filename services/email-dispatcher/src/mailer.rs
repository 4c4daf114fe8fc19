//! Sending: a small trait so the handler does not care how mail leaves, and its SMTP adapter:
//! lettre's async SMTP client on sessions we keep open ourselves (a bounded set, TCP_NODELAY;
//! STARTTLS, implicit TLS and auth from the URL), with PIPELINING (RFC 2920) where the server
//! offers it.

use std::future::Future;
use std::time::Duration;

use std::time::Instant;

use lettre::Message;
use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};

/// One message, ready to send.
#[derive(Debug, Clone)]
pub struct OutgoingEmail {
    pub to: String,
    /// `<id@domain>`, derived from (event, recipient) so downstream systems can dedupe too.
    pub message_id: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// Time-critical (access codes): uses connections of its own, never queued behind
    /// ordinary notifications.
    pub urgent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: connection refused or lost, timeouts, 4xx replies.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help: 5xx replies, an address that is not one.
    #[error("permanent: {0}")]
    Permanent(String),
}

pub trait Mailer: Send + Sync + 'static {
    fn send(&self, email: &OutgoingEmail) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// How to reach the SMTP server, from `TIDINGS_SMTP_URL`:
/// `smtp://[user:pass@]host[:port]` (plain, port 25), `…?tls=required` or `…?tls=opportunistic`
/// (STARTTLS, port 587 when required), `smtps://[user:pass@]host[:port]` (implicit TLS, 465).
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
            conn.auth(&[Mechanism::Plain, Mechanism::Login], c)
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(Session { conn, pipelining })
    }
}

/// Why a session could not send a message.
enum Failure {
    Smtp(lettre::transport::smtp::Error),
    /// This server cannot take this message at all; nothing was sent.
    Unsendable(&'static str),
}

impl From<lettre::transport::smtp::Error> for Failure {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        Self::Smtp(e)
    }
}

/// An open SMTP session and what its server offers.
struct Session {
    conn: AsyncSmtpConnection,
    pipelining: bool,
}

impl Session {
    /// Sends one message. With PIPELINING, MAIL, RCPT and DATA go out in one write and their
    /// replies are read together; then the message and its end mark go out in one more write:
    /// two round trips and two writes per message instead of four (lettre's own `send` makes
    /// five writes). lettre's `command` writes whatever its argument displays, and its
    /// `read_response` reads the replies that follow. Any error leaves replies unread, so the
    /// caller drops the session.
    async fn send(&mut self, envelope: &Envelope, email: &[u8]) -> Result<(), Failure> {
        let Ok(text) = std::str::from_utf8(email) else {
            // Never from our builder (its output is ASCII or UTF-8); lettre copes anyway.
            return Ok(self.conn.send(envelope, email).await.map(drop)?);
        };
        let mail = Mail::new(
            envelope.from().cloned(),
            self.mail_parameters(envelope, email)?,
        );
        let rcpts = envelope.to().iter().map(|to| Rcpt::new(to.clone(), vec![]));
        if self.pipelining {
            let mut group = mail.to_string();
            for rcpt in rcpts {
                group.push_str(&rcpt.to_string());
            }
            group.push_str(&Data.to_string());
            self.conn.command(group).await?;
            for _ in envelope.to() {
                self.conn.read_response().await?;
            }
            self.conn.read_response().await?;
        } else {
            self.conn.command(mail).await?;
            for rcpt in rcpts {
                self.conn.command(rcpt).await?;
            }
            self.conn.command(Data).await?;
        }
        self.conn.command(data_block(text)).await?;
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
                return Err(Failure::Unsendable(
                    "a non-ASCII body, and the server does not offer 8BITMIME",
                ));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        Ok(params)
    }
}

/// The DATA block of RFC 5321 4.1.1.4 in one piece: the message with every line that starts
/// with "." dot-stuffed (4.5.2), then the end mark. lettre's `message` does the same byte by
/// byte and writes the end mark separately (an extra segment the server must read).
fn data_block(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 8);
    let mut rest = message;
    if rest.starts_with('.') {
        out.push('.');
    }
    while let Some(i) = rest.find("\n.") {
        out.push_str(&rest[..=i]);
        out.push('.');
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push_str("\r\n.\r\n");
    out
}

/// Open SMTP sessions, reused message after message (no NOOP probe before each reuse: a
/// session the server closed fails on its next command and is replaced at once).
pub struct SmtpMailer {
    endpoint: Endpoint,
    from: Mailbox,
    idle: std::sync::Mutex<Vec<(Session, Instant)>>,
    /// At most this many sessions at once: the pool size for notifications, plus a few
    /// kept aside so urgent mail never queues behind them.
    sessions: tokio::sync::Semaphore,
    urgent_sessions: tokio::sync::Semaphore,
}

/// Sessions kept aside for urgent mail.
const URGENT_SESSIONS: usize = 2;
/// Servers drop idle sessions after a while; ours are closed before that.
const IDLE_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SmtpSetupError {
    #[error("TIDINGS_SMTP_URL: {0}")]
    Url(String),
    #[error("TIDINGS_EMAIL_FROM: {0}")]
    From(String),
}

impl SmtpMailer {
    pub fn new(
        url: &str,
        from: &str,
        pool_size: u32,
        timeout: Duration,
    ) -> Result<Self, SmtpSetupError> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| SmtpSetupError::From(format!("{e}")))?;
        Ok(Self {
            endpoint: Endpoint::parse(url, timeout)?,
            from,
            idle: std::sync::Mutex::new(Vec::new()),
            sessions: tokio::sync::Semaphore::new(pool_size as usize),
            urgent_sessions: tokio::sync::Semaphore::new(URGENT_SESSIONS),
        })
    }

    /// The domain of the sender address, for Message-IDs.
    pub fn from_domain(&self) -> String {
        self.from.email.domain().to_owned()
    }

    fn message(&self, e: &OutgoingEmail) -> Result<Message, SendError> {
        let to: Mailbox = e
            .to
            .parse()
            .map_err(|err| SendError::Permanent(format!("invalid recipient {:?}: {err}", e.to)))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(e.subject.clone())
            .message_id(Some(e.message_id.clone()))
            .date_now()
            // Notification-only: tell well-behaved auto-responders not to answer.
            .header(AutoSubmitted)
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(e.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(e.html.clone()),
                    ),
            )
            .map_err(|err| SendError::Permanent(format!("cannot build message: {err}")))
    }

    fn take_idle(&self) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((session, since)) = idle.pop() {
            if since.elapsed() < IDLE_MAX && !session.conn.has_broken() {
                return Some(session);
            }
            // Stale: dropping closes the socket.
        }
        None
    }

    fn put_idle(&self, session: Session) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((session, Instant::now()));
    }
}

/// `Auto-Submitted: auto-generated` (RFC 3834).
#[derive(Clone)]
struct AutoSubmitted;

impl lettre::message::header::Header for AutoSubmitted {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("Auto-Submitted")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }
    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "auto-generated".into())
    }
}

impl Mailer for SmtpMailer {
    async fn send(&self, email: &OutgoingEmail) -> Result<(), SendError> {
        let message = self.message(email)?;
        let bytes = message.formatted();
        let envelope = message.envelope();
        let sessions = if email.urgent {
            &self.urgent_sessions
        } else {
            &self.sessions
        };
        let _session = sessions
            .acquire()
            .await
            .map_err(|_| SendError::Transient("mailer is shutting down".into()))?;
        let mut reused = self.take_idle();
        loop {
            let was_reused = reused.is_some();
            let mut session = match reused.take() {
                Some(s) => s,
                None => self.endpoint.connect().await?,
            };
            match session.send(envelope, &bytes).await {
                Ok(()) => {
                    metrics::counter!("tidings_email_bytes_total").increment(bytes.len() as u64);
                    self.put_idle(session);
                    return Ok(());
                }
                // A kept session the server closed meanwhile: try once more on a new one.
                Err(Failure::Smtp(e)) if was_reused && !e.is_response() => continue,
                // After an error the session is dropped: replies may be left unread.
                Err(Failure::Smtp(e)) => return Err(classify(&e)),
                Err(Failure::Unsendable(why)) => return Err(SendError::Permanent(why.into())),
            }
        }
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
    fn data_blocks_dot_stuff_lines_and_end_with_the_end_mark() {
        assert_eq!(data_block("a\r\nb"), "a\r\nb\r\n.\r\n");
        assert_eq!(
            data_block(".x\r\n.\r\n..y\r\nz."),
            "..x\r\n..\r\n...y\r\nz.\r\n.\r\n"
        );
        assert_eq!(data_block(""), "\r\n.\r\n");
    }

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
}
