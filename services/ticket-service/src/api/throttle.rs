//! Throttling of unauthenticated ticket opening: anyone can open a ticket as a guest, and
//! each one mails the address given, so both the caller and the target address are bounded
//! (GCRA, `governor`). The limits are per replica: with N replicas a caller gets up to N
//! times as many; the per-address bound is what keeps one inbox from being flooded.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// Calls between two sweeps of full buckets.
const RETAIN_EVERY: u64 = 10_000;

pub struct GuestOpenLimits {
    /// Callers (the portal) whose `x-forwarded-for` names the client; for anyone else the
    /// client is the peer address.
    trusted_proxies: Vec<IpAddr>,
    by_client: DefaultKeyedRateLimiter<IpAddr>,
    by_email: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    checks: std::sync::atomic::AtomicU64,
}

impl GuestOpenLimits {
    /// `per_client` and `per_email` tickets an hour, each allowed as a burst.
    pub fn new(
        per_client: NonZeroU32,
        per_email: NonZeroU32,
        trusted_proxies: Vec<IpAddr>,
    ) -> Self {
        Self {
            trusted_proxies,
            by_client: RateLimiter::keyed(Quota::per_hour(per_client)),
            by_email: RateLimiter::keyed(Quota::per_hour(per_email)),
            clock: DefaultClock::default(),
            checks: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The calling client: the peer, or — when the peer is a trusted proxy — the last address
    /// of its `x-forwarded-for` (the one the proxy itself appended).
    pub fn client_of<T>(&self, req: &tonic::Request<T>) -> Option<IpAddr> {
        let peer = req.remote_addr()?.ip();
        if !self.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let forwarded = req
            .metadata()
            .get_all("x-forwarded-for")
            .iter()
            .next_back()?
            .to_str()
            .ok()?;
        forwarded
            .rsplit(',')
            .next()?
            .trim()
            .parse()
            .ok()
            .or(Some(peer))
    }

    /// Takes one ticket from both buckets, or says how long to wait. A call without a peer
    /// address (not TCP) is bounded by its email only.
    pub fn check(&self, client: Option<IpAddr>, email: &str) -> Result<(), ApiError> {
        if let Some(ip) = client
            && let Err(not_until) = self.by_client.check_key(&ip)
        {
            return Err(self.limited(
                "from this client",
                not_until.wait_time_from(self.clock.now()),
            ));
        }
        if let Err(not_until) = self.by_email.check_key(&email.to_ascii_lowercase()) {
            return Err(self.limited(
                "for this email address",
                not_until.wait_time_from(self.clock.now()),
            ));
        }
        // Keys whose buckets are full again hold no information: drop them every so many
        // calls (a scan of all keys, so never on every call).
        if self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(RETAIN_EVERY)
        {
            self.by_email.retain_recent();
            self.by_client.retain_recent();
        }
        Ok(())
    }

    fn limited(&self, what: &'static str, wait: std::time::Duration) -> ApiError {
        metrics::counter!("tidings_guest_opens_throttled_total", "by" => what).increment(1);
        ApiError::Throttled {
            what,
            retry_after_secs: wait.as_secs().max(1),
        }
    }
}
