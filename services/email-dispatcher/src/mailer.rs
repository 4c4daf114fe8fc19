//! Sending: a small trait so the handler does not care how mail leaves, and its SMTP adapter:
//! lettre's async SMTP client on sessions we keep open ourselves (a bounded set, TCP_NODELAY;
//! STARTTLS, implicit TLS and auth from the URL).

use std::future::Future;
use std::time::Duration;

use std::time::Instant;

use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

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

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
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
        if let Some(c) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], c)
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(conn)
    }
}

/// Open SMTP sessions, reused message after message (no NOOP probe before each reuse: a
/// session the server closed fails on its next command and is replaced at once).
pub struct SmtpMailer {
    endpoint: Endpoint,
    from: Mailbox,
    idle: std::sync::Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
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

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_MAX && !conn.has_broken() {
                return Some(conn);
            }
            // Stale: dropping closes the socket.
        }
        None
    }

    fn put_idle(&self, conn: AsyncSmtpConnection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((conn, Instant::now()));
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
            let mut conn = match reused.take() {
                Some(c) => c,
                None => self.endpoint.connect().await?,
            };
            match conn.send(envelope, &bytes).await {
                Ok(_) => {
                    metrics::counter!("tidings_email_bytes_total").increment(bytes.len() as u64);
                    self.put_idle(conn);
                    return Ok(());
                }
                // A kept session the server closed meanwhile: try once more on a new one.
                Err(e) if was_reused && !e.is_response() => continue,
                // lettre closes the session after any error.
                Err(e) => return Err(classify(&e)),
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
