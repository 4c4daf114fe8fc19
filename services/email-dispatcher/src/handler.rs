//! Turning records into emails: decode, plan (pure, `tidings-notify`), skip what was already
//! sent, render, send with bounded retries, record the outcome with its event. Runs inside
//! the consumer loop of `tidings-kafka`, once per record, in order per ticket.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tidings_domain::TicketUpdate;
use tidings_domain::clock::Clock;
use tidings_guest_access::{CodeSealer, Keyring};
use tidings_kafka::{Delivery, Handler, Unhandled};
use tidings_notify::{Audience, EmailKind, EmailPlan, plan_code_email, plan_email};
use tidings_proto::{DeliveryOutcome, update_from_wire};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::compose::OutgoingEmail;
use crate::mailer::{Mailer, SendError};
use crate::render::{Content, Lang, render};
use tidings_delivery::{
    Found, OutcomeEvents, Record, Recorded, Retry, SendLog, SendLogError, Trigger, pause, until_ok,
};

/// Where a reader continues: `{ticket_id}`, `{ticket_number}` and (guests) `{token}` are
/// filled into the configured URL templates.
pub struct Links {
    pub customer_url: String,
    pub guest_url: String,
    pub keys: Arc<Keyring>,
}

impl Links {
    pub fn for_plan(&self, plan: &EmailPlan, u: &TicketUpdate, now: DateTime<Utc>) -> String {
        let template = match plan.audience {
            Audience::Customer => &self.customer_url,
            Audience::Guest => &self.guest_url,
        };
        let mut url = template
            .replace("{ticket_id}", &u.ticket_id.to_string())
            .replace("{ticket_number}", &u.ticket_number.to_string());
        if plan.audience == Audience::Guest {
            // Bound to this ticket and this address; verified by the ticket service.
            url = url.replace("{token}", &self.keys.mint_link(u.ticket_id, &plan.to, now));
        }
        url
    }
}

pub struct Dispatch<M> {
    pub mailer: M,
    pub sends: SendLog,
    pub links: Links,
    pub sealer: Arc<CodeSealer>,
    pub outcomes: OutcomeEvents,
    /// Right-hand side of Message-IDs (the sender's domain).
    pub message_id_domain: String,
    pub retry: Retry,
    /// What plans and links are decided against (a code's expiry, a link's lifetime).
    pub clock: Arc<dyn Clock>,
    pub shutdown: CancellationToken,
}

/// Handles the ticket-events topic.
pub struct TicketEvents<M>(pub Arc<Dispatch<M>>);
/// Handles the access-codes topic (its own consumer, so codes never wait behind a backlog).
pub struct AccessCodes<M>(pub Arc<Dispatch<M>>);

fn decode(d: &Delivery) -> Result<TicketUpdate, Unhandled> {
    let payload = d
        .payload
        .as_deref()
        .ok_or_else(|| Unhandled::DeadLetter("empty record".into()))?;
    update_from_wire(payload).map_err(|e| Unhandled::DeadLetter(format!("undecodable event: {e}")))
}

impl<M: Mailer> Handler for TicketEvents<M> {
    async fn handle(&self, d: &Delivery) -> Result<(), Unhandled> {
        let span = tidings_telemetry::trace_context::consumer_span(
            "email.ticket_event",
            d.header("traceparent"),
        );
        async {
            let update = decode(d)?;
            match plan_email(&update) {
                Some(plan) => {
                    self.0
                        .deliver(&update, &plan, None, d.header("traceparent"))
                        .await
                }
                None => Ok(()),
            }
        }
        .instrument(span)
        .await
    }
}

impl<M: Mailer> Handler for AccessCodes<M> {
    async fn handle(&self, d: &Delivery) -> Result<(), Unhandled> {
        let span = tidings_telemetry::trace_context::consumer_span(
            "email.access_code",
            d.header("traceparent"),
        );
        async {
            let update = decode(d)?;
            let plan = match plan_code_email(&update, self.0.clock.now()) {
                Ok(plan) => plan,
                Err(reason) => {
                    tracing::info!(ticket_id = %update.ticket_id, ?reason, "code request not mailed");
                    metrics::counter!("tidings_emails_total", "kind" => "access_code", "outcome" => "skipped").increment(1);
                    return Ok(());
                }
            };
            let tidings_domain::Change::AccessCodeRequested { sealed_code, expires_at } = &update.change else {
                return Ok(());
            };
            let code = self.0.sealer.open(update.ticket_id, sealed_code).map_err(|_| {
                Unhandled::DeadLetter("sealed code cannot be opened (TIDINGS_CODE_SEAL_KEY differs from the ticket service's?)".into())
            })?;
            self.0
                .deliver(&update, &plan, Some((code.as_str(), *expires_at)), d.header("traceparent"))
                .await
        }
        .instrument(span)
        .await
    }
}

/// How a send ended after retries.
enum Sent {
    /// Accepted by the server at this instant.
    Ok(Instant),
    Failed {
        reason: String,
        permanent: bool,
    },
}

impl<M: Mailer> Dispatch<M> {
    async fn deliver(
        &self,
        update: &TicketUpdate,
        plan: &EmailPlan,
        code: Option<(&str, DateTime<Utc>)>,
        traceparent: Option<&str>,
    ) -> Result<(), Unhandled> {
        let kind = plan.kind.name();
        let recipient = plan.to.as_str();
        let lookup = self
            .with_db_retry(|| self.sends.lookup(update.event_id, recipient))
            .await?;
        match lookup {
            Some(Found {
                outcome: Recorded::Sent,
                message_id,
            }) => {
                metrics::counter!("tidings_emails_total", "kind" => kind, "outcome" => "duplicate")
                    .increment(1);
                tracing::debug!(event_id = %update.event_id, "already mailed");
                // A crash may have come between the record and the outcome's publication.
                let event = self.outcomes.message(
                    update,
                    recipient,
                    kind,
                    &DeliveryOutcome::Sent {
                        provider_message_id: message_id,
                    },
                    traceparent,
                );
                return self.with_db_retry(|| self.sends.republish(&event)).await;
            }
            // Dead-lettered before; at-least-once applies to the dead-letter topic too.
            Some(Found {
                outcome: Recorded::Failed(reason),
                ..
            }) => return Err(Unhandled::DeadLetter(reason)),
            None => {}
        }

        let message_id = format!(
            "<{}@{}>",
            Uuid::new_v5(&update.event_id, format!("email|{recipient}").as_bytes()),
            self.message_id_domain
        );
        let link = self.links.for_plan(plan, update, self.clock.now());
        let rendered = render(&Content {
            kind: plan.kind,
            lang: Lang::of(&plan.locale),
            update,
            link: &link,
            code,
        })
        .map_err(|e| Unhandled::DeadLetter(format!("rendering failed: {e}")))?;
        let email = OutgoingEmail {
            to: recipient.to_owned(),
            message_id: message_id.clone(),
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
            urgent: plan.kind == EmailKind::AccessCode,
        };

        // The record of a sent message is written from the SMTP session thread the moment the
        // server accepts (the trigger); a failure is recorded below, after its outcome.
        let sent_outcome = DeliveryOutcome::Sent {
            provider_message_id: message_id.clone(),
        };
        let sent_record = |event| Record {
            event_id: update.event_id,
            recipient: recipient.to_owned(),
            kind,
            message_id: message_id.clone(),
            outcome: Recorded::Sent,
            event,
        };
        let (trigger, pending) = self.sends.prepare(sent_record(self.outcomes.message(
            update,
            recipient,
            kind,
            &sent_outcome,
            traceparent,
        )));
        let started = Instant::now();
        let sent = self.send_with_retry(&email, &trigger).await?;
        drop(trigger);
        // Thousands of records wait for their outcome's acknowledgement at once; none needs
        // its email any more.
        drop(email);
        metrics::histogram!("tidings_email_send_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        let (accepted, written, result) = match sent {
            Sent::Ok(accepted) => {
                let event =
                    self.outcomes
                        .message(update, recipient, kind, &sent_outcome, traceparent);
                let written = match self.sends.wait(pending, &event).await {
                    Ok(at) => at,
                    // The first try failed (database, broker): retry the whole.
                    Err(_) => {
                        let record = sent_record(event);
                        self.with_db_retry(|| self.sends.record(record.clone()))
                            .await?
                    }
                };
                (Some(accepted), written, Ok(()))
            }
            Sent::Failed { reason, permanent } => {
                let event = self.outcomes.message(
                    update,
                    recipient,
                    kind,
                    &DeliveryOutcome::Failed {
                        reason: reason.clone(),
                        permanent,
                    },
                    traceparent,
                );
                let record = Record {
                    outcome: Recorded::Failed(reason.clone()),
                    ..sent_record(event)
                };
                let written = self
                    .with_db_retry(|| self.sends.record(record.clone()))
                    .await?;
                (None, written, Err(Unhandled::DeadLetter(reason)))
            }
        };
        let label = if let Some(accepted) = accepted {
            // The crash window: a dispatcher killed between the server's acceptance and the
            // record's commit mails the message again after its restart.
            metrics::histogram!("tidings_email_unrecorded_seconds")
                .record(written.duration_since(accepted).as_secs_f64());
            // For staleness alerts ("no mail accepted for 10 minutes") and the benchmark.
            metrics::gauge!("tidings_email_last_sent_timestamp_seconds")
                .set(Utc::now().timestamp_micros() as f64 / 1e6);
            "sent"
        } else {
            "failed"
        };
        metrics::counter!("tidings_emails_total", "kind" => kind, "outcome" => label).increment(1);
        tracing::info!(ticket_id = %update.ticket_id, event_id = %update.event_id, kind, outcome = label, "email");
        result
    }

    async fn send_with_retry(
        &self,
        email: &OutgoingEmail,
        on_accept: &Trigger,
    ) -> Result<Sent, Unhandled> {
        let first = Instant::now();
        let mut backoff = self.retry.first;
        loop {
            match self.mailer.send(email, Some(on_accept)).await {
                Ok(accepted) => return Ok(Sent::Ok(accepted)),
                Err(SendError::Permanent(reason)) => {
                    return Ok(Sent::Failed {
                        reason: format!("smtp rejected the message: {reason}"),
                        permanent: true,
                    });
                }
                Err(SendError::Transient(reason)) => {
                    if first.elapsed() >= self.retry.give_up_after {
                        return Ok(Sent::Failed {
                            reason: format!(
                                "gave up after {} s of transient failures: {reason}",
                                first.elapsed().as_secs()
                            ),
                            permanent: false,
                        });
                    }
                    tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "email send failed; retrying");
                    metrics::counter!("tidings_email_retries_total").increment(1);
                }
            }
            pause(&mut backoff, self.retry.max, &self.shutdown).await?;
        }
    }

    /// Database trouble is never the record's fault: retry until it works or we stop.
    async fn with_db_retry<T, F, Fut>(&self, op: F) -> Result<T, Unhandled>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SendLogError>>,
    {
        until_ok(&self.retry, &self.shutdown, "send log", op)
            .await
            .map_err(Unhandled::from)
    }
}
