//! Sending: a small trait so the handler does not care how mail leaves, and its SMTP adapter
//! (lettre, async on tokio, pooled connections; TLS, STARTTLS and auth from the URL).

use std::future::Future;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

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

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// lettre's pool bounds idle connections only and opens more on demand; these bound how
    /// many sessions we hold open at once: the pool size for notifications, plus a few for
    /// urgent mail.
    sessions: tokio::sync::Semaphore,
    urgent_sessions: tokio::sync::Semaphore,
}

/// Sessions kept aside for urgent mail.
const URGENT_SESSIONS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum SmtpSetupError {
    #[error("TIDINGS_SMTP_URL: {0}")]
    Url(String),
    #[error("TIDINGS_EMAIL_FROM: {0}")]
    From(String),
}

impl SmtpMailer {
    /// `url` as lettre reads it: `smtp://host:port` (plain; add `?tls=required` for
    /// STARTTLS), `smtps://user:pass@host` (implicit TLS).
    pub fn new(
        url: &str,
        from: &str,
        pool_size: u32,
        timeout: Duration,
    ) -> Result<Self, SmtpSetupError> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| SmtpSetupError::From(format!("{e}")))?;
        let pool = lettre::transport::smtp::PoolConfig::new()
            .max_size(pool_size + URGENT_SESSIONS as u32)
            .idle_timeout(Duration::from_secs(30));
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| SmtpSetupError::Url(e.to_string()))?
            .timeout(Some(timeout))
            .pool_config(pool)
            .build();
        Ok(Self {
            transport,
            from,
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
        let sessions = if email.urgent {
            &self.urgent_sessions
        } else {
            &self.sessions
        };
        let _session = sessions
            .acquire()
            .await
            .map_err(|_| SendError::Transient("mailer is shutting down".into()))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
            Err(e) => Err(SendError::Transient(e.to_string())),
        }
    }
}
