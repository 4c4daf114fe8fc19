//! Sending: a small trait so the handler does not care how mail leaves, and its SMTP
//! adapter, which composes each message and hands it to the SMTP sessions
//! ([`tidings_smtp`]).

use std::future::Future;

use lettre::address::Envelope;
use lettre::message::Mailbox;
use tidings_delivery::{RecordWriter, Trigger};
use tidings_smtp::Sessions;
pub use tidings_smtp::{Endpoint, SendError, SmtpSetupError};

use crate::compose::{self, OutgoingEmail};

pub trait Mailer: Send + Sync + 'static {
    /// Sends one message; `Ok` carries the instant the server accepted it (the start of the
    /// crash window, taken where the reply is read, not where the caller wakes up), when
    /// `on_accept` has also fired, there: the send record is on its way before the caller
    /// knows.
    fn send(
        &self,
        email: &OutgoingEmail,
        on_accept: Option<&Trigger>,
    ) -> impl Future<Output = Result<std::time::Instant, SendError>> + Send;
}

/// Mails through [`Sessions`]: builds each message's DATA block on the caller's task, so a
/// session between two round trips has only to write it.
pub struct SmtpMailer {
    from: Mailbox,
    /// The `From:` header line, encoded once.
    from_line: String,
    sessions: Sessions,
}

impl SmtpMailer {
    /// Starts the sessions (see [`Sessions::start`]), with `beside` (the send log's record
    /// writer, which the sessions' acceptances trigger) on their thread.
    pub fn new(
        endpoint: Endpoint,
        from: Mailbox,
        pool_size: u32,
        beside: Vec<RecordWriter>,
    ) -> Result<Self, SmtpSetupError> {
        Ok(Self {
            sessions: Sessions::start(endpoint, pool_size, beside)?,
            from_line: compose::from_line(&from),
            from,
        })
    }

    /// The domain of the sender address, for Message-IDs.
    pub fn from_domain(&self) -> String {
        self.from.email.domain().to_owned()
    }
}

impl Mailer for SmtpMailer {
    async fn send(
        &self,
        email: &OutgoingEmail,
        on_accept: Option<&Trigger>,
    ) -> Result<std::time::Instant, SendError> {
        let to: lettre::Address = email.to.parse().map_err(|err| {
            SendError::Permanent(format!("invalid recipient {:?}: {err}", email.to))
        })?;
        let envelope = Envelope::new(Some(self.from.email.clone()), vec![to.clone()])
            .map_err(|err| SendError::Permanent(format!("cannot build envelope: {err}")))?;
        let block = compose::data_block(
            &self.from_line,
            &to,
            email,
            self.sessions.eight_bit(),
            chrono::Utc::now(),
        );
        self.sessions
            .send(envelope, block, email.urgent, on_accept.cloned())
            .await
    }
}
