//! The portal's only source of ticket data: the ticket service, over gRPC, called with the
//! visitor's own credentials (a guest session token), never with a key of the portal's.

use std::net::IpAddr;

use tidings_proto::ticket::v1 as pb;
use tidings_proto::ticket::v1::guest_access_service_client::GuestAccessServiceClient;
use tidings_proto::ticket::v1::ticket_service_client::TicketServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

#[derive(Clone)]
pub struct Backend {
    tickets: TicketServiceClient<Channel>,
    guest: GuestAccessServiceClient<Channel>,
}

/// Who is calling: the visitor's bearer token, if any, and their address (for the ticket
/// service's own throttles, which trust the portal's `x-forwarded-for`).
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub token: Option<&'a str>,
    pub client: IpAddr,
}

/// A failed call, as the pages need it: the status code, the error's reason
/// (`google.rpc.ErrorInfo`) and its metadata.
#[derive(Debug)]
pub struct CallError {
    pub code: Code,
    pub reason: Option<String>,
    pub metadata: std::collections::HashMap<String, String>,
    pub message: String,
}

impl CallError {
    pub fn is(&self, reason: &str) -> bool {
        self.reason.as_deref() == Some(reason)
    }

    pub fn number(&self, key: &str) -> Option<u64> {
        self.metadata.get(key)?.parse().ok()
    }
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        let (reason, metadata) = tidings_proto::reason_of(&status).unzip();
        CallError {
            code: status.code(),
            reason,
            metadata: metadata.unwrap_or_default(),
            message: status.message().to_owned(),
        }
    }
}

pub type CallResult<T> = Result<T, CallError>;

impl Backend {
    /// Connects lazily: the portal starts (and serves its error pages) while the ticket
    /// service is still coming up.
    pub fn connect_lazy(url: &str) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(10))
            .connect_lazy();
        Ok(Backend {
            tickets: TicketServiceClient::new(channel.clone()),
            guest: GuestAccessServiceClient::new(channel),
        })
    }

    fn request<T>(caller: Caller<'_>, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Some(token) = caller.token
            && let Ok(v) = format!("Bearer {token}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        if let Ok(v) = caller.client.to_string().parse() {
            req.metadata_mut().insert("x-forwarded-for", v);
        }
        req
    }

    pub async fn describe_link(
        &self,
        caller: Caller<'_>,
        link_token: &str,
    ) -> CallResult<pb::DescribeLinkResponse> {
        let req = pb::DescribeLinkRequest {
            link_token: link_token.to_owned(),
        };
        Ok(self
            .guest
            .clone()
            .describe_link(Self::request(caller, req))
            .await?
            .into_inner())
    }

    pub async fn request_code(
        &self,
        caller: Caller<'_>,
        link_token: &str,
    ) -> CallResult<pb::RequestAccessCodeResponse> {
        let req = pb::RequestAccessCodeRequest {
            link_token: link_token.to_owned(),
        };
        Ok(self
            .guest
            .clone()
            .request_access_code(Self::request(caller, req))
            .await?
            .into_inner())
    }

    pub async fn verify_code(
        &self,
        caller: Caller<'_>,
        link_token: &str,
        code: &str,
    ) -> CallResult<pb::VerifyAccessCodeResponse> {
        let req = pb::VerifyAccessCodeRequest {
            link_token: link_token.to_owned(),
            code: code.to_owned(),
        };
        Ok(self
            .guest
            .clone()
            .verify_access_code(Self::request(caller, req))
            .await?
            .into_inner())
    }

    pub async fn send_fresh_link(&self, caller: Caller<'_>, link_token: &str) -> CallResult<()> {
        let req = pb::SendFreshLinkRequest {
            link_token: link_token.to_owned(),
        };
        self.guest
            .clone()
            .send_fresh_link(Self::request(caller, req))
            .await?;
        Ok(())
    }

    pub async fn get_ticket(&self, caller: Caller<'_>, ticket_id: &str) -> CallResult<pb::Ticket> {
        let req = pb::GetTicketRequest {
            ticket_id: ticket_id.to_owned(),
        };
        self.tickets
            .clone()
            .get_ticket(Self::request(caller, req))
            .await?
            .into_inner()
            .ticket
            .ok_or_else(|| CallError::from(Status::internal("GetTicket answered no ticket")))
    }

    /// The caller's tickets, newest activity first.
    pub async fn list_tickets(
        &self,
        caller: Caller<'_>,
        page_size: u32,
        page_token: String,
    ) -> CallResult<pb::ListTicketsResponse> {
        let req = pb::ListTicketsRequest {
            statuses: vec![],
            requester_account_id: String::new(),
            page_size,
            page_token,
        };
        Ok(self
            .tickets
            .clone()
            .list_tickets(Self::request(caller, req))
            .await?
            .into_inner())
    }

    pub async fn post_reply(
        &self,
        caller: Caller<'_>,
        request_id: String,
        ticket_id: &str,
        body: &str,
    ) -> CallResult<pb::PostReplyResponse> {
        let req = pb::PostReplyRequest {
            request_id,
            ticket_id: ticket_id.to_owned(),
            body: body.to_owned(),
        };
        Ok(self
            .tickets
            .clone()
            .post_reply(Self::request(caller, req))
            .await?
            .into_inner())
    }

    pub async fn open_ticket(
        &self,
        caller: Caller<'_>,
        req: pb::OpenTicketRequest,
    ) -> CallResult<pb::OpenTicketResponse> {
        Ok(self
            .tickets
            .clone()
            .open_ticket(Self::request(caller, req))
            .await?
            .into_inner())
    }
}
