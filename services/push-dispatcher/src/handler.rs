//! Turning ticket events into pushes: decode, plan (pure, `tidings-notify`) against the
//! requester's devices and preferences, hold what falls in quiet hours, and deliver the rest
//! — every device at once, each with its own retries, so a slow or failing provider never
//! holds up the other platform. Invalid tokens remove the device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings_delivery::{Found, OutcomeEvents, Record, Recorded, Retry, SendLog, pause, until_ok};
use tidings_domain::clock::Clock;
use tidings_domain::{Change, Requester, TicketUpdate};
use tidings_kafka::{Delivery, Handler, Publisher, Unhandled};
use tidings_notify::{Device, Platform, PushKind, When, plan_push, push_kind, release_held};
use tidings_proto::{DeliveryOutcome, update_from_wire};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::apns::ApnsClient;
use crate::fcm::FcmClient;
use crate::payload;
use crate::registry::{Held, Invalidation, InvalidationGuard, Registry};
use crate::transport::{PushResult, Transport};

/// Held pushes claimed at once, and released at most this many at a time.
const HOLD_BATCH: usize = 100;
const HOLD_CONCURRENCY: usize = 16;

/// A recorded failure that was the device's token: not a dead letter on redelivery.
const INVALIDATED: &str = "invalidated: ";

pub struct Dispatch<A = ApnsClient, F = FcmClient> {
    pub apns: A,
    pub fcm: F,
    pub registry: Registry,
    pub sends: SendLog,
    pub outcomes: OutcomeEvents,
    pub clock: Arc<dyn Clock>,
    pub retry: Retry,
    pub invalidation_guard: InvalidationGuard,
    pub dead_letters: DeadLetterTopic,
    pub shutdown: CancellationToken,
}

/// Where holds that can never be sent go: the consumer's dead-letter topic.
pub struct DeadLetterTopic {
    pub publisher: Arc<Publisher>,
    pub topic: String,
}

pub struct TicketEvents<A, F>(pub Arc<Dispatch<A, F>>);

impl<A: Transport, F: Transport> Handler for TicketEvents<A, F> {
    async fn handle(&self, d: &Delivery) -> Result<(), Unhandled> {
        let span = tidings_telemetry::trace_context::consumer_span(
            "push.ticket_event",
            d.header("traceparent"),
        );
        async {
            let payload = d
                .payload
                .as_deref()
                .ok_or_else(|| Unhandled::DeadLetter("empty record".into()))?;
            let update = update_from_wire(payload)
                .map_err(|e| Unhandled::DeadLetter(format!("undecodable event: {e}")))?;
            self.0
                .on_update(&update, payload, d.header("traceparent"))
                .await
        }
        .instrument(span)
        .await
    }
}

impl<A: Transport, F: Transport> Dispatch<A, F> {
    async fn db<T, E: std::fmt::Display, Fut>(
        &self,
        what: &str,
        op: impl FnMut() -> Fut,
    ) -> Result<T, Unhandled>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        until_ok(&self.retry, &self.shutdown, what, op)
            .await
            .map_err(Unhandled::from)
    }

    async fn on_update(
        &self,
        update: &TicketUpdate,
        raw: &[u8],
        traceparent: Option<&str>,
    ) -> Result<(), Unhandled> {
        if let Change::Resolved { .. } = update.change {
            let (ticket, sequence) = (update.ticket_id.as_uuid(), update.sequence);
            self.db("resolutions", || {
                self.registry.mark_resolved(ticket, sequence)
            })
            .await?;
        }
        // Guests, and events nobody hears about by push, stop here.
        let (Some(_), Requester::Customer { account_id, .. }) =
            (push_kind(update), &update.requester)
        else {
            return Ok(());
        };
        let account = account_id.as_str().to_owned();
        let (devices, prefs) = self
            .db("device registry", || self.registry.recipient(&account))
            .await?;
        let now = self.clock.now();
        let plans = plan_push(update, &devices, &prefs, now);
        let results = futures::future::join_all(plans.into_iter().map(|plan| async move {
            match plan.when {
                When::Now => {
                    self.deliver(update, &plan.device, plan.kind, traceparent)
                        .await
                }
                When::HoldUntil(release_at) => {
                    metrics::counter!("tidings_pushes_total", "outcome" => "held").increment(1);
                    let (event, device, ticket, sequence) = (
                        update.event_id,
                        plan.device.id,
                        update.ticket_id.as_uuid(),
                        update.sequence,
                    );
                    self.db("held pushes", || {
                        self.registry.hold(
                            event,
                            device,
                            ticket,
                            sequence,
                            plan.kind,
                            now,
                            release_at,
                            raw,
                            traceparent,
                        )
                    })
                    .await
                }
            }
        }))
        .await;
        combine(results)
    }

    /// One push to one device, at most once per (event, device) however often it is asked.
    pub async fn deliver(
        &self,
        update: &TicketUpdate,
        device: &Device,
        kind: PushKind,
        traceparent: Option<&str>,
    ) -> Result<(), Unhandled> {
        let recipient = device.id.to_string();
        let platform = device.platform.name();
        match self
            .db("send log", || {
                self.sends.lookup(update.event_id, &recipient)
            })
            .await?
        {
            Some(Found {
                outcome: Recorded::Sent,
                message_id,
            }) => {
                metrics::counter!("tidings_pushes_total", "platform" => platform, "outcome" => "duplicate")
                    .increment(1);
                // A crash may have come between the record and the outcome's publication.
                let event = self.outcomes.message(
                    update,
                    &recipient,
                    kind.name(),
                    &DeliveryOutcome::Sent {
                        provider_message_id: message_id,
                    },
                    traceparent,
                );
                return self
                    .db("outcome event", || self.sends.republish(&event))
                    .await;
            }
            Some(Found {
                outcome: Recorded::Failed(reason),
                ..
            }) if reason.starts_with(INVALIDATED) => return Ok(()),
            Some(Found {
                outcome: Recorded::Failed(reason),
                ..
            }) => return Err(Unhandled::DeadLetter(reason)),
            None => {}
        }
        let message = payload::build(update, device, kind, self.clock.now());
        let started = Instant::now();
        let result = self.send_with_retry(device, &message).await?;
        let accepted = Instant::now();
        metrics::histogram!("tidings_push_send_seconds", "platform" => platform)
            .record(started.elapsed().as_secs_f64());
        let (recorded, outcome, provider_id, verdict, label) = match result {
            PushResult::Sent { id } => (
                Recorded::Sent,
                DeliveryOutcome::Sent {
                    provider_message_id: id.clone(),
                },
                id,
                Ok(()),
                "sent",
            ),
            PushResult::Invalid { reason } => {
                let id = device.id;
                let invalidation = self
                    .db("device registry", || {
                        self.registry
                            .invalidate(id, &reason, &self.invalidation_guard)
                    })
                    .await?;
                match invalidation {
                    Invalidation::Removed => {
                        tracing::info!(device_id = %device.id, %reason, "device token invalid; device removed");
                        (
                            Recorded::Failed(format!("{INVALIDATED}{reason}")),
                            DeliveryOutcome::DeviceTokenInvalidated {
                                platform: platform.to_owned(),
                                reason,
                            },
                            String::new(),
                            Ok(()),
                            "invalidated",
                        )
                    }
                    Invalidation::Withheld { recent, limit } => {
                        metrics::counter!("tidings_push_invalidations_withheld_total", "platform" => platform)
                            .increment(1);
                        let reason = format!(
                            "{reason}; device kept: {recent} devices removed in the last hour \
                             reached the limit of {limit} (check the provider URL and \
                             credentials; restore with push-dispatcher restore-devices)"
                        );
                        tracing::error!(device_id = %device.id, %reason, "invalidation spike: device kept");
                        // No send record: once the configuration is fixed and the devices
                        // restored, replaying the dead letter must push.
                        let event = self.outcomes.message(
                            update,
                            &recipient,
                            kind.name(),
                            &DeliveryOutcome::Failed {
                                reason: reason.clone(),
                                permanent: false,
                            },
                            traceparent,
                        );
                        self.db("outcome event", || self.sends.republish(&event))
                            .await?;
                        metrics::counter!("tidings_pushes_total", "platform" => platform, "outcome" => "failed")
                            .increment(1);
                        return Err(Unhandled::DeadLetter(reason));
                    }
                }
            }
            PushResult::Rejected { reason } => (
                Recorded::Failed(reason.clone()),
                DeliveryOutcome::Failed {
                    reason: reason.clone(),
                    permanent: true,
                },
                String::new(),
                Err(Unhandled::DeadLetter(reason)),
                "failed",
            ),
            PushResult::Throttled { reason, .. } | PushResult::Transient { reason } => (
                Recorded::Failed(reason.clone()),
                DeliveryOutcome::Failed {
                    reason: reason.clone(),
                    permanent: false,
                },
                String::new(),
                Err(Unhandled::DeadLetter(reason)),
                "failed",
            ),
        };
        let record = Record {
            event_id: update.event_id,
            recipient,
            kind: kind.name(),
            message_id: if provider_id.is_empty() {
                message.id.to_string()
            } else {
                provider_id
            },
            outcome: recorded,
            event: self.outcomes.message(
                update,
                &device.id.to_string(),
                kind.name(),
                &outcome,
                traceparent,
            ),
        };
        let written = self
            .db("send log", || self.sends.record(record.clone()))
            .await?;
        if label == "sent" {
            // The crash window: a dispatcher killed between the provider's acceptance and
            // the record pushes again after its restart.
            metrics::histogram!("tidings_push_unrecorded_seconds", "platform" => platform)
                .record(written.duration_since(accepted).as_secs_f64());
        }
        metrics::counter!("tidings_pushes_total", "platform" => platform, "outcome" => label)
            .increment(1);
        verdict
    }

    /// Retries throttling (honouring Retry-After) and transient failures with backoff until
    /// the give-up time; returns the last result otherwise.
    async fn send_with_retry(
        &self,
        device: &Device,
        message: &payload::PushMessage,
    ) -> Result<PushResult, Unhandled> {
        let first = Instant::now();
        let mut backoff = self.retry.first;
        loop {
            let result = match device.platform {
                Platform::Ios => self.apns.send(device, message).await,
                Platform::Android => self.fcm.send(device, message).await,
            };
            let wait = match &result {
                PushResult::Throttled {
                    retry_after: Some(after),
                    ..
                } => Some(*after),
                PushResult::Throttled { .. } | PushResult::Transient { .. } => None,
                _ => return Ok(result),
            };
            let elapsed = first.elapsed();
            if elapsed + wait.unwrap_or_default() >= self.retry.give_up_after {
                return Ok(match result {
                    PushResult::Throttled {
                        reason,
                        retry_after,
                    } => PushResult::Throttled {
                        reason: format!("gave up after {} s: {reason}", elapsed.as_secs()),
                        retry_after,
                    },
                    PushResult::Transient { reason } => PushResult::Transient {
                        reason: format!("gave up after {} s: {reason}", elapsed.as_secs()),
                    },
                    other => other,
                });
            }
            metrics::counter!("tidings_push_retries_total", "platform" => device.platform.name())
                .increment(1);
            tracing::debug!(device_id = %device.id, ?result, "push retry");
            match wait {
                // The provider said when: not earlier (and no jitter below it).
                Some(after) => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(Unhandled::Interrupted),
                        _ = tokio::time::sleep(after) => {}
                    }
                }
                None => pause(&mut backoff, self.retry.max, &self.shutdown).await?,
            }
        }
    }

    /// Sends or drops the held pushes that are due, [`HOLD_CONCURRENCY`] at a time, under
    /// one claim; returns how many it looked at. A hold that can never be sent (an unknown
    /// kind, an unreadable event, retries exhausted) goes to the dead-letter topic and is
    /// deleted: it is not claimed again.
    pub async fn release_due(&self) -> Result<usize, sqlx::Error> {
        use futures::StreamExt as _;
        let claim = self
            .registry
            .claim_due(self.clock.now(), HOLD_BATCH as i64)
            .await?;
        let n = claim.held.len();
        // Collected first: a lazily mapped stream of borrowing futures is not `Send` enough
        // for the spawned release loop (rust-lang/rust#102211).
        let releases: Vec<_> = claim
            .held
            .iter()
            .map(|held| async move { (held.id, self.release_one(held).await) })
            .collect();
        let work = futures::stream::iter(releases)
            .buffer_unordered(HOLD_CONCURRENCY)
            .collect::<Vec<(i64, Result<(), Unhandled>)>>();
        // The lease outlives the work: renewed until every release has an answer.
        let renew = async {
            loop {
                tokio::time::sleep(claim.renew_every()).await;
                if let Err(e) = claim.renew().await {
                    tracing::warn!(error = %e, "renewing the held-push claim failed");
                }
            }
        };
        let verdicts = tokio::select! {
            verdicts = work => verdicts,
            never = renew => never,
        };
        let (mut done, mut retry) = (Vec::new(), Vec::new());
        for (id, verdict) in verdicts {
            match verdict {
                Ok(()) => done.push(id),
                // A shutdown leaves it due for the next replica; a failing database or
                // dead-letter topic is given a minute.
                Err(_) if self.shutdown.is_cancelled() => {}
                Err(_) => retry.push(id),
            }
        }
        claim
            .finish(
                &done,
                &retry,
                self.clock.now() + chrono::Duration::minutes(1),
            )
            .await?;
        Ok(n)
    }

    async fn release_one(&self, held: &Held) -> Result<(), Unhandled> {
        use futures::FutureExt as _;
        let verdict = std::panic::AssertUnwindSafe(self.release_one_inner(held))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(Unhandled::DeadLetter(format!(
                    "releasing panicked: {}",
                    tidings_telemetry::panic_message(panic.as_ref())
                )))
            });
        match verdict {
            Err(Unhandled::DeadLetter(reason)) => self.dead_letter(held, &reason).await,
            other => other,
        }
    }

    /// A panic here dead-letters the hold instead of stopping the release loop (which would
    /// meet the same hold after the restart).
    async fn release_one_inner(&self, held: &Held) -> Result<(), Unhandled> {
        async {
            let kind = held
                .kind
                .clone()
                .map_err(|raw| Unhandled::DeadLetter(format!("unknown push kind {raw:?}")))?;
            let update = update_from_wire(&held.event)
                .map_err(|e| Unhandled::DeadLetter(format!("unreadable held event: {e}")))?;
            if !release_held(kind, held.resolved_since) {
                metrics::counter!("tidings_pushes_total", "outcome" => "dropped").increment(1);
                tracing::info!(ticket_id = %update.ticket_id, kind = kind.name(), "held push dropped: ticket resolved since");
                return Ok(());
            }
            match self.registry.device(held.device_id).await {
                Ok(Some(device)) => {
                    self.deliver(&update, &device, kind, held.traceparent.as_deref())
                        .await
                }
                // Unregistered while the push was held.
                Ok(None) => Ok(()),
                Err(_) => Err(Unhandled::Interrupted),
            }
        }
        .await
    }

    /// Publishes a hold that can never be sent to the dead-letter topic, with the reason and
    /// the device, in the consumer's dead-letter format.
    async fn dead_letter(&self, held: &Held, reason: &str) -> Result<(), Unhandled> {
        tracing::warn!(hold = held.id, event_id = %held.event_id, reason, "held push dead-lettered");
        let mut headers = vec![
            ("tidings_dlq_reason".to_owned(), reason.to_owned()),
            ("tidings_dlq_source".to_owned(), "held_pushes".to_owned()),
            ("tidings_dlq_device".to_owned(), held.device_id.to_string()),
        ];
        headers.extend(
            held.traceparent
                .clone()
                .map(|t| ("traceparent".to_owned(), t)),
        );
        match self
            .dead_letters
            .publisher
            .publish(
                &self.dead_letters.topic,
                held.event_id.as_bytes(),
                &held.event,
                &headers,
            )
            .await
        {
            Ok(()) => {
                metrics::counter!("tidings_dead_letters_total", "consumer" => "held-pushes")
                    .increment(1);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead-lettering a held push failed; it stays held");
                Err(Unhandled::Interrupted)
            }
        }
    }
}

/// One record's verdict from its devices': interrupted if any was, else dead-lettered (with
/// every reason) if any was, else handled.
fn combine(results: Vec<Result<(), Unhandled>>) -> Result<(), Unhandled> {
    let mut reasons = Vec::new();
    for r in results {
        match r {
            Ok(()) => {}
            Err(Unhandled::Interrupted) => return Err(Unhandled::Interrupted),
            Err(Unhandled::DeadLetter(reason)) => reasons.push(reason),
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Unhandled::DeadLetter(reasons.join("; ")))
    }
}

/// Releases held pushes as their quiet hours end, until shutdown.
pub async fn release_held_pushes<A: Transport, F: Transport>(
    dispatch: Arc<Dispatch<A, F>>,
    poll: Duration,
) {
    loop {
        match dispatch.release_due().await {
            // A full batch: there may be more due right away (not when stopping: what was
            // left is due again at once, and would be claimed again and again).
            Ok(HOLD_BATCH) if !dispatch.shutdown.is_cancelled() => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "releasing held pushes failed"),
        }
        tokio::select! {
            _ = dispatch.shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}
