//! Pacing retries: exponential backoff with jitter, cut short by shutdown.

use std::time::Duration;

use rand::Rng as _;
use tokio_util::sync::CancellationToken;

/// Backoff for transient failures: exponential from `first` to `max`, with jitter, until
/// `give_up_after` has passed since the first attempt.
#[derive(Debug, Clone)]
pub struct Retry {
    pub first: Duration,
    pub max: Duration,
    pub give_up_after: Duration,
}

/// Shutdown came while waiting to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

/// In a consumer handler, an interrupted retry leaves the record unhandled (uncommitted).
impl From<Interrupted> for tidings_kafka::Unhandled {
    fn from(_: Interrupted) -> Self {
        tidings_kafka::Unhandled::Interrupted
    }
}

/// Waits `backoff` (jittered to between half and all of it), then doubles it up to `max`.
pub async fn pause(
    backoff: &mut Duration,
    max: Duration,
    shutdown: &CancellationToken,
) -> Result<(), Interrupted> {
    let ms = backoff.as_millis() as u64;
    let wait = Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms.max(1)));
    tokio::select! {
        _ = shutdown.cancelled() => return Err(Interrupted),
        _ = tokio::time::sleep(wait) => {}
    }
    *backoff = (*backoff * 2).min(max);
    Ok(())
}

/// Runs `op` until it succeeds: for failures that are never the record's fault (the
/// dispatcher's own database), so giving up would only lose work.
pub async fn until_ok<T, E, F, Fut>(
    retry: &Retry,
    shutdown: &CancellationToken,
    what: &str,
    mut op: F,
) -> Result<T, Interrupted>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = retry.first;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => tracing::warn!(error = %e, what, "unavailable; retrying"),
        }
        pause(&mut backoff, retry.max, shutdown).await?;
    }
}
