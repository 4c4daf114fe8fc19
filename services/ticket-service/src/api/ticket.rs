//! `tidings.ticket.v1.TicketService`.

use std::sync::Arc;

use tidings_auth::{Authenticator, Principal};
use tidings_domain::{
    Actor, Body, Command, Email, Locale, RequestId, Requester, Subject, TicketEvent, TicketId,
};
use tidings_proto::ticket::v1 as pb;
use tidings_proto::{View, status_from_wire, status_to_wire, summary_to_wire, ticket_to_wire};
use tidings_store::{Cursor, ListFilter};
use tonic::{Request, Response, Status};

use super::throttle::GuestOpenLimits;
use super::{bearer, observe, require, trace_of, traceparent_header};
use crate::clock::Clock;
use crate::commands::{Executor, Idempotency, Write, fingerprint, visible_to};
use crate::error::ApiError;

pub struct TicketApi {
    pub exec: Arc<Executor>,
    pub auth: Arc<Authenticator>,
    pub clock: Arc<dyn Clock>,
    pub guest_opens: Arc<GuestOpenLimits>,
}

fn ticket_id(raw: &str) -> Result<TicketId, ApiError> {
    TicketId::parse(raw).map_err(|e| ApiError::invalid("ticket_id", e))
}
fn request_id(raw: &str) -> Result<RequestId, ApiError> {
    RequestId::parse(raw).map_err(|e| ApiError::invalid("request_id", e))
}
fn body(field: &'static str, raw: &str) -> Result<Body, ApiError> {
    Body::parse(raw).map_err(|e| ApiError::invalid(field, e))
}
fn is_reply(e: &TicketEvent) -> bool {
    matches!(e, TicketEvent::ReplyAdded { .. })
}
fn is_info(e: &TicketEvent) -> bool {
    matches!(e, TicketEvent::InfoRequested { .. })
}
fn is_resolved(e: &TicketEvent) -> bool {
    matches!(e, TicketEvent::Resolved { .. })
}
fn any(_: &TicketEvent) -> bool {
    true
}

/// What a mutating call is about, for its idempotency fingerprint.
struct Target {
    ticket_id: String,
    request_id: String,
    kind: &'static str,
    content: String,
}

impl TicketApi {
    async fn mutate(
        &self,
        principal: Principal,
        target: Target,
        command: Command,
        trace: tidings_telemetry::trace_context::TraceParent,
        focus: fn(&TicketEvent) -> bool,
    ) -> Result<tidings_store::Outcome, ApiError> {
        let id = ticket_id(&target.ticket_id)?;
        let rid = request_id(&target.request_id)?;
        let idem = Idempotency {
            scope: principal.scope_key(),
            request_id: rid.as_str(),
            fingerprint: fingerprint(&[target.kind, &target.ticket_id, &target.content]),
        };
        let p = principal.clone();
        let visible = move |t: &tidings_domain::Ticket| visible_to(&p, t);
        let w = Write {
            id,
            actor: principal.actor(),
            visible: &visible,
            command,
            idem: Some(idem),
            trace,
            focus,
        };
        Ok(self.exec.execute(w).await?.outcome)
    }

    /// The shape every agent/requester action shares: authenticate, parse, run, answer with
    /// (ticket id, sequence of the focused event, status).
    async fn mutation<R, T>(
        &self,
        rpc: &'static str,
        req: Request<R>,
        focus: fn(&TicketEvent) -> bool,
        parse: impl FnOnce(R) -> Result<(Target, Command), ApiError>,
        respond: impl FnOnce(String, u64, i32) -> T,
    ) -> Result<Response<T>, Status> {
        observe(rpc, traceparent_header(&req), async {
            let principal = require(bearer(&self.auth, &self.clock, &req)?)?;
            let trace = trace_of(&req);
            let (target, command) = parse(req.into_inner())?;
            let o = self
                .mutate(principal, target, command, trace, focus)
                .await?;
            Ok(respond(o.ticket_id.to_string(), o.sequence, status_of(&o)))
        })
        .await
        .map(Response::new)
    }
}

fn status_of(outcome: &tidings_store::Outcome) -> i32 {
    tidings_domain::TicketStatus::parse(&outcome.status)
        .map(|s| status_to_wire(s) as i32)
        .unwrap_or_default()
}

#[tonic::async_trait]
impl pb::ticket_service_server::TicketService for TicketApi {
    async fn open_ticket(
        &self,
        req: Request<pb::OpenTicketRequest>,
    ) -> Result<Response<pb::OpenTicketResponse>, Status> {
        observe("OpenTicket", traceparent_header(&req), async {
            let principal = bearer(&self.auth, &self.clock, &req)?;
            let trace = trace_of(&req);
            let client = self.guest_opens.client_of(&req);
            let r = req.into_inner();
            let rid = request_id(&r.request_id)?;
            let subject =
                Subject::parse(&r.subject).map_err(|e| ApiError::invalid("subject", e))?;
            let text = body("body", &r.body)?;
            let (requester, actor, scope) = match (principal, r.guest) {
                (
                    Some(Principal::Customer {
                        account_id,
                        email,
                        locale,
                        display_name,
                    }),
                    None,
                ) => {
                    let scope = format!("customer:{account_id}");
                    let actor = Actor::Customer {
                        account_id: account_id.clone(),
                        display_name: display_name.clone(),
                    };
                    (
                        Requester::Customer {
                            account_id,
                            email,
                            locale,
                            display_name,
                        },
                        actor,
                        scope,
                    )
                }
                (Some(Principal::Customer { .. }), Some(_)) => {
                    return Err(ApiError::invalid(
                        "guest",
                        "must be empty for signed-in customers",
                    ));
                }
                (Some(Principal::Agent { .. }), _) => {
                    return Err(ApiError::PermissionDenied(
                        "agents do not open tickets; customers and guests do",
                    ));
                }
                (Some(Principal::Guest { .. }), _) => {
                    return Err(ApiError::PermissionDenied(
                        "a guest session is bound to its ticket; open new tickets without a token",
                    ));
                }
                (None, None) => {
                    return Err(ApiError::invalid(
                        "guest",
                        "is required without a bearer token (email and locale)",
                    ));
                }
                (None, Some(g)) => {
                    let email =
                        Email::parse(&g.email).map_err(|e| ApiError::invalid("guest.email", e))?;
                    let locale = if g.locale.trim().is_empty() {
                        Locale::english()
                    } else {
                        Locale::parse(&g.locale)
                            .map_err(|e| ApiError::invalid("guest.locale", e))?
                    };
                    let scope = format!("guest-open:{email}");
                    (
                        Requester::Guest {
                            email: email.clone(),
                            locale,
                        },
                        Actor::Guest { email },
                        scope,
                    )
                }
            };
            let idem = Idempotency {
                scope,
                request_id: rid.as_str(),
                fingerprint: fingerprint(&["open", subject.as_str(), text.as_str()]),
            };
            // Fast path for retries: no ticket number is burnt.
            if let Some((fp, outcome)) = self
                .exec
                .store
                .find_outcome(&idem.scope, idem.request_id)
                .await?
            {
                if fp != idem.fingerprint {
                    return Err(ApiError::invalid(
                        "request_id",
                        "was already used for a different request",
                    ));
                }
                return Ok(pb::OpenTicketResponse {
                    ticket_id: outcome.ticket_id.to_string(),
                    ticket_number: outcome.ticket_number,
                });
            }
            // A retry (above) is not a new ticket and costs nothing.
            if let Requester::Guest { email, .. } = &requester {
                self.guest_opens.check(client, email.as_str())?;
            }
            let id = TicketId::new();
            let number = self.exec.store.next_ticket_number().await?;
            let command = Command::Open {
                id,
                number,
                requester,
                subject,
                body: text,
            };
            let executed = self
                .exec
                .execute(Write {
                    id,
                    actor,
                    visible: &|_| true,
                    command,
                    idem: Some(idem),
                    trace,
                    focus: any,
                })
                .await?;
            Ok(pb::OpenTicketResponse {
                ticket_id: executed.outcome.ticket_id.to_string(),
                ticket_number: executed.outcome.ticket_number,
            })
        })
        .await
        .map(Response::new)
    }

    async fn post_reply(
        &self,
        req: Request<pb::PostReplyRequest>,
    ) -> Result<Response<pb::PostReplyResponse>, Status> {
        self.mutation(
            "PostReply",
            req,
            is_reply,
            |r| {
                let text = body("body", &r.body)?;
                let target = Target {
                    ticket_id: r.ticket_id,
                    request_id: r.request_id,
                    kind: "reply",
                    content: r.body,
                };
                Ok((target, Command::PostReply { body: text }))
            },
            |ticket_id, sequence, status| pb::PostReplyResponse {
                ticket_id,
                sequence,
                status,
            },
        )
        .await
    }

    async fn request_info(
        &self,
        req: Request<pb::RequestInfoRequest>,
    ) -> Result<Response<pb::RequestInfoResponse>, Status> {
        self.mutation(
            "RequestInfo",
            req,
            is_info,
            |r| {
                let text = body("body", &r.body)?;
                let target = Target {
                    ticket_id: r.ticket_id,
                    request_id: r.request_id,
                    kind: "request_info",
                    content: r.body,
                };
                Ok((target, Command::RequestInfo { body: text }))
            },
            |ticket_id, sequence, status| pb::RequestInfoResponse {
                ticket_id,
                sequence,
                status,
            },
        )
        .await
    }

    async fn resolve_ticket(
        &self,
        req: Request<pb::ResolveTicketRequest>,
    ) -> Result<Response<pb::ResolveTicketResponse>, Status> {
        self.mutation(
            "ResolveTicket",
            req,
            is_resolved,
            |r| {
                let note = if r.note.trim().is_empty() {
                    None
                } else {
                    Some(body("note", &r.note)?)
                };
                let target = Target {
                    ticket_id: r.ticket_id,
                    request_id: r.request_id,
                    kind: "resolve",
                    content: r.note,
                };
                Ok((target, Command::Resolve { note }))
            },
            |ticket_id, sequence, status| pb::ResolveTicketResponse {
                ticket_id,
                sequence,
                status,
            },
        )
        .await
    }

    async fn get_ticket(
        &self,
        req: Request<pb::GetTicketRequest>,
    ) -> Result<Response<pb::GetTicketResponse>, Status> {
        observe("GetTicket", traceparent_header(&req), async {
            let principal = require(bearer(&self.auth, &self.clock, &req)?)?;
            let id = ticket_id(&req.get_ref().ticket_id)?;
            let ticket = self.exec.store.load_ticket(id).await?;
            let ticket = ticket
                .filter(|t| visible_to(&principal, t))
                .ok_or(ApiError::NotFound)?;
            let agent = matches!(principal, Principal::Agent { .. });
            Ok(pb::GetTicketResponse {
                ticket: Some(ticket_to_wire(
                    &ticket,
                    View {
                        with_history: true,
                        agent,
                    },
                )),
            })
        })
        .await
        .map(Response::new)
    }

    async fn list_tickets(
        &self,
        req: Request<pb::ListTicketsRequest>,
    ) -> Result<Response<pb::ListTicketsResponse>, Status> {
        observe("ListTickets", traceparent_header(&req), async {
            let principal = require(bearer(&self.auth, &self.clock, &req)?)?;
            let r = req.into_inner();
            let page_size = match r.page_size {
                0 => 20,
                n if n <= 100 => n,
                n => {
                    return Err(ApiError::invalid(
                        "page_size",
                        format!("must be at most 100 (got {n})"),
                    ));
                }
            };
            let statuses = r
                .statuses
                .iter()
                .map(|s| status_from_wire(*s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::invalid("statuses", e))?;
            let after = if r.page_token.is_empty() {
                None
            } else {
                Some(Cursor::decode(&r.page_token).ok_or_else(|| {
                    ApiError::invalid("page_token", "is not a token this service issued")
                })?)
            };
            let requester_filter = (!r.requester_account_id.trim().is_empty())
                .then(|| r.requester_account_id.trim().to_owned());
            let mut filter = ListFilter {
                statuses,
                ..Default::default()
            };
            match &principal {
                Principal::Agent { .. } => filter.requester_account_id = requester_filter,
                Principal::Customer { account_id, .. } => {
                    if requester_filter
                        .as_deref()
                        .is_some_and(|f| f != account_id.as_str())
                    {
                        return Err(ApiError::PermissionDenied(
                            "only agents may list other customers' tickets",
                        ));
                    }
                    filter.requester_account_id = Some(account_id.to_string());
                }
                Principal::Guest { ticket, .. } => filter.only_ticket = Some(*ticket),
            }
            let mut rows = self
                .exec
                .store
                .list(&filter, after.as_ref(), page_size + 1)
                .await?;
            let next = if rows.len() > page_size as usize {
                rows.truncate(page_size as usize);
                rows.last()
                    .map(|s| Cursor::after(s).encode())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let agent = matches!(principal, Principal::Agent { .. });
            Ok(pb::ListTicketsResponse {
                tickets: rows
                    .iter()
                    .map(|s| {
                        summary_to_wire(
                            s,
                            View {
                                with_history: false,
                                agent,
                            },
                        )
                    })
                    .collect(),
                next_page_token: next,
            })
        })
        .await
        .map(Response::new)
    }
}
