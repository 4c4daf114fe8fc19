//! What a dispatcher did with each notification: the send log that makes redelivered events
//! harmless, the outcome events it publishes, and how it paces retries. Shared by the email
//! and push dispatchers.

mod batch;
mod log;
mod outcome;
mod retry;

pub use log::{
    Found, OutcomeMessage, Pending, Record, RecordWriter, Recorded, SendLog, SendLogError, Trigger,
};
pub use outcome::OutcomeEvents;
pub use retry::{Interrupted, Retry, pause, until_ok};
