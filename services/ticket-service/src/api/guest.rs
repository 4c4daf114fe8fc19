//! `tidings.ticket.v1.GuestAccessService`: from an emailed link to a one-ticket session.
//!
//! Whatever is wrong with a link (unknown ticket, another email, forged), the answer is the
//! same, so a link reveals nothing about other tickets or addresses.

use std::sync::Arc;

use tidings_domain::{
    AccessCodeOutcome, Actor, Command, DomainError, Requester, Ticket, TicketEvent,
};
use tidings_guest_access::{TokenError, UnverifiedLink, generate_code, mask_email};
use tidings_proto::ticket::v1 as pb;
use tonic::{Request, Response, Status};

use super::{observe, trace_of, traceparent_header};
use crate::clock::Clock;
use crate::commands::{Executor, Write};
use crate::config::GuestSettings;
use crate::error::ApiError;

pub struct GuestApi {
    pub exec: Arc<Executor>,
    pub guest: GuestSettings,
    pub clock: Arc<dyn Clock>,
}

impl GuestApi {
    /// Returns the link and the guest email it is bound to.
    async fn check_link(
        &self,
        token: &str,
    ) -> Result<(UnverifiedLink, tidings_domain::Email), ApiError> {
        let (link, ticket) = self.linked_ticket(token).await?;
        let Requester::Guest { email, .. } = ticket.requester else {
            unreachable!("linked_ticket returns guest tickets only")
        };
        Ok((link, email))
    }

    /// The link and guest email of a link whose signature holds but whose time is up.
    async fn expired_link(
        &self,
        token: &str,
    ) -> Result<Option<(UnverifiedLink, tidings_domain::Email)>, ApiError> {
        let Ok(link) = UnverifiedLink::parse(token) else {
            return Ok(None);
        };
        let Some(ticket) = self.exec.store.load_ticket(link.ticket).await? else {
            return Ok(None);
        };
        let Requester::Guest { email, .. } = ticket.requester else {
            return Ok(None);
        };
        let verified =
            self.guest
                .keys
                .verify_link(&link, &email, self.clock.now(), self.guest.link_ttl);
        Ok(matches!(verified, Err(TokenError::Expired)).then_some((link, email)))
    }

    /// The guest ticket a valid link leads to.
    async fn linked_ticket(&self, token: &str) -> Result<(UnverifiedLink, Ticket), ApiError> {
        if token.trim().is_empty() {
            return Err(ApiError::invalid("link_token", "must not be empty"));
        }
        let bad = ApiError::BadLink { expired: false };
        let link = UnverifiedLink::parse(token).map_err(|_| bad)?;
        let Some(ticket) = self.exec.store.load_ticket(link.ticket).await? else {
            return Err(ApiError::BadLink { expired: false });
        };
        let Requester::Guest { email, .. } = &ticket.requester else {
            return Err(ApiError::BadLink { expired: false });
        };
        match self
            .guest
            .keys
            .verify_link(&link, email, self.clock.now(), self.guest.link_ttl)
        {
            Ok(()) => Ok((link, ticket)),
            Err(TokenError::Expired) => Err(ApiError::BadLink { expired: true }),
            Err(_) => Err(ApiError::BadLink { expired: false }),
        }
    }
}

impl GuestApi {
    /// Runs a guest-access command on the linked ticket as its guest; returns the events.
    async fn write_as_guest(
        &self,
        link: &UnverifiedLink,
        email: tidings_domain::Email,
        command: Command,
        trace: tidings_telemetry::trace_context::TraceParent,
    ) -> Result<Vec<TicketEvent>, ApiError> {
        let write = Write {
            id: link.ticket,
            actor: Actor::Guest { email },
            visible: &|_| true,
            command,
            idem: None,
            trace,
            focus: never_focus,
        };
        Ok(self.exec.execute(write).await?.events)
    }
}

fn never_focus(_: &TicketEvent) -> bool {
    false
}

#[tonic::async_trait]
impl pb::guest_access_service_server::GuestAccessService for GuestApi {
    async fn describe_link(
        &self,
        req: Request<pb::DescribeLinkRequest>,
    ) -> Result<Response<pb::DescribeLinkResponse>, Status> {
        observe("DescribeLink", traceparent_header(&req), async {
            let (_, ticket) = self.linked_ticket(&req.get_ref().link_token).await?;
            Ok(pb::DescribeLinkResponse {
                ticket_id: ticket.id.to_string(),
                ticket_number: ticket.number.get(),
                masked_email: mask_email(ticket.requester.email()),
                locale: ticket.requester.locale().as_str().to_owned(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn request_access_code(
        &self,
        req: Request<pb::RequestAccessCodeRequest>,
    ) -> Result<Response<pb::RequestAccessCodeResponse>, Status> {
        observe("RequestAccessCode", traceparent_header(&req), async {
            let trace = trace_of(&req);
            let (link, email) = self.check_link(&req.get_ref().link_token).await?;
            let code = generate_code();
            let command = Command::RequestAccessCode {
                code_hash: self.guest.keys.hash_code(link.ticket, &code),
                sealed_code: self.guest.sealer.seal(link.ticket, &code),
                ttl: self.guest.code_ttl,
                min_interval: self.guest.code_min_interval,
            };
            let events = self.write_as_guest(&link, email, command, trace).await?;
            if let Some(until) = events.iter().find_map(|e| match e {
                TicketEvent::GuestAccessLocked { until } => Some(*until),
                _ => None,
            }) {
                tracing::warn!(ticket_id = %link.ticket, %until, "guest access locked: the day's codes are used up");
                let wait = (until - self.clock.now()).num_seconds().max(1);
                return Err(ApiError::Domain(DomainError::GuestAccessLocked {
                    retry_after_secs: wait,
                }));
            }
            let expires_at = events.iter().find_map(|e| match e {
                TicketEvent::AccessCodeRequested { expires_at, .. } => Some(*expires_at),
                _ => None,
            });
            tracing::info!(ticket_id = %link.ticket, "guest access code requested");
            Ok(pb::RequestAccessCodeResponse {
                code_expires_at: expires_at.map(tidings_proto::timestamp),
            })
        })
        .await
        .map(Response::new)
    }

    async fn send_fresh_link(
        &self,
        req: Request<pb::SendFreshLinkRequest>,
    ) -> Result<Response<pb::SendFreshLinkResponse>, Status> {
        observe("SendFreshLink", traceparent_header(&req), async {
            let trace = trace_of(&req);
            let token = &req.get_ref().link_token;
            // An expired link is the point; a current one may ask too. Anything else is
            // answered the same, with nothing sent.
            let linked = match self.linked_ticket(token).await {
                Err(ApiError::BadLink { expired: true }) => self.expired_link(token).await?,
                Err(ApiError::BadLink { expired: false }) => None,
                Err(e) => return Err(e),
                Ok((link, ticket)) => Some((link, ticket.requester.email().clone())),
            };
            let Some((link, email)) = linked else {
                tracing::info!("fresh link asked for with a link that is not ours");
                return Ok(pb::SendFreshLinkResponse {});
            };
            let command = Command::RequestFreshLink {
                min_interval: self.guest.fresh_link_min_interval,
            };
            match self.write_as_guest(&link, email, command, trace).await {
                Ok(_) => tracing::info!(ticket_id = %link.ticket, "fresh guest link requested"),
                Err(ApiError::Domain(e)) => {
                    tracing::info!(ticket_id = %link.ticket, error = %e, "fresh guest link not sent");
                }
                Err(e) => return Err(e),
            }
            Ok(pb::SendFreshLinkResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn verify_access_code(
        &self,
        req: Request<pb::VerifyAccessCodeRequest>,
    ) -> Result<Response<pb::VerifyAccessCodeResponse>, Status> {
        observe("VerifyAccessCode", traceparent_header(&req), async {
            let trace = trace_of(&req);
            let r = req.get_ref();
            let code = r.code.trim();
            if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
                return Err(ApiError::invalid(
                    "code",
                    "must be the 6 digits from the email",
                ));
            }
            let (link, email) = self.check_link(&r.link_token).await?;
            let command = Command::VerifyAccessCode {
                code_hash: self.guest.keys.hash_code(link.ticket, code),
            };
            let events = self
                .write_as_guest(&link, email.clone(), command, trace)
                .await?;
            match AccessCodeOutcome::from_events(&events) {
                Some(AccessCodeOutcome::Granted) => {
                    let expires_at = self.clock.now() + self.guest.session_ttl;
                    let token = self
                        .guest
                        .keys
                        .mint_session(link.ticket, &email, expires_at);
                    tracing::info!(ticket_id = %link.ticket, "guest session granted");
                    Ok(pb::VerifyAccessCodeResponse {
                        session_token: token,
                        session_expires_at: Some(tidings_proto::timestamp(expires_at)),
                        ticket_id: link.ticket.to_string(),
                    })
                }
                Some(AccessCodeOutcome::Rejected { attempts_left }) => {
                    Err(ApiError::CodeRejected { attempts_left })
                }
                Some(AccessCodeOutcome::Locked { until }) => {
                    tracing::warn!(ticket_id = %link.ticket, %until, "guest access locked for the day");
                    let wait = (until - self.clock.now()).num_seconds().max(1);
                    Err(ApiError::Domain(DomainError::GuestAccessLocked {
                        retry_after_secs: wait,
                    }))
                }
                None => Err(ApiError::Unauthenticated(
                    "the code could not be checked; request a new one".into(),
                )),
            }
        })
        .await
        .map(Response::new)
    }
}
