//! Batching requests that arrive from many tasks into one statement: every caller awaits its
//! own answer, but whatever the callers ask while a query runs goes into the next query
//! together. Under load that is one round trip and one commit for hundreds of requests; when
//! idle, a single request goes out at once.

use tokio::sync::mpsc;

/// Requests per statement, at most.
const BATCH: usize = 500;
const LINGER_BELOW: usize = 16;
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Takes one request, then whatever else is already waiting, up to `BATCH`. Under heavy load
/// (the previous batch held `LINGER_BELOW` requests or more) a smaller batch waits once for
/// `LINGER` to collect more: fewer, larger statements and commits, which cost Postgres
/// markedly less under load (docs/performance.md has the measurement). Moderate load (a push
/// per device at 500 replies/s) and an idle dispatcher never wait.
pub(crate) async fn next_batch<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    previous: usize,
) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    drain(rx, &mut batch);
    if previous >= LINGER_BELOW && batch.len() < LINGER_BELOW {
        tokio::time::sleep(LINGER).await;
        drain(rx, &mut batch);
    }
    Some(batch)
}

fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>, batch: &mut Vec<T>) {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
}
