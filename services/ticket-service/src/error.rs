//! Errors at the gRPC boundary and their status codes. Domain errors go through the single
//! table in `tidings-proto`; internal errors are logged and answered without details.

use std::collections::HashMap;
use tidings_auth::AuthError;
use tidings_domain::DomainError;
use tidings_store::StoreError;

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    Unauthenticated(String),
    /// A guest link that is forged, foreign, unknown (`expired: false`) or out of date.
    #[error("{}", if *.expired { "this link has expired; open the latest notification email" } else { "this link is not valid; open the latest notification email" })]
    BadLink { expired: bool },
    #[error("the code is not correct; {attempts_left} attempt(s) left")]
    CodeRejected { attempts_left: u8 },
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("ticket not found")]
    NotFound,
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the ticket changed concurrently too often; retry")]
    Contended,
    /// Too many guest tickets opened `what` (e.g. "for this email address").
    #[error("too many tickets opened {what}; retry in {retry_after_secs} s")]
    Throttled {
        what: &'static str,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Store(StoreError),
}

impl ApiError {
    pub fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Self {
        ApiError::Invalid {
            field,
            reason: reason.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Unauthenticated(e.to_string())
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid { field, reason } => tidings_proto::invalid_field(field, reason),
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::BadLink { expired } => {
                let reason = if expired {
                    "LINK_EXPIRED"
                } else {
                    "LINK_INVALID"
                };
                tidings_proto::with_reason(
                    Code::Unauthenticated,
                    e.to_string(),
                    reason,
                    HashMap::new(),
                )
            }
            ApiError::CodeRejected { attempts_left } => tidings_proto::with_reason(
                Code::Unauthenticated,
                e.to_string(),
                "CODE_REJECTED",
                HashMap::from([("attempts_left".to_owned(), attempts_left.to_string())]),
            ),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::NotFound => Status::not_found("ticket not found"),
            ApiError::Domain(d) => tidings_proto::domain_status(&d),
            ApiError::Throttled {
                retry_after_secs, ..
            } => {
                let mut status = tidings_proto::with_reason(
                    Code::ResourceExhausted,
                    e.to_string(),
                    "THROTTLED",
                    HashMap::from([("retry_after_secs".to_owned(), retry_after_secs.to_string())]),
                );
                if let Ok(v) = retry_after_secs.to_string().parse() {
                    status.metadata_mut().insert("retry-after", v);
                }
                status
            }
            ApiError::Contended => {
                Status::aborted("the ticket changed concurrently too often; retry")
            }
            ApiError::Store(StoreError::Conflict) => Status::aborted("concurrent write; retry"),
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store failure");
                Status::unavailable("storage is unavailable; retry later")
            }
        }
    }
}
