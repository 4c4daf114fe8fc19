//! Errors at the gRPC boundary and their status codes. Domain errors go through the single
//! table in `tidings-proto`; internal errors are logged and answered without details.

use tidings_auth::AuthError;
use tidings_domain::DomainError;
use tidings_store::StoreError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    Unauthenticated(String),
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
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::NotFound => Status::not_found("ticket not found"),
            ApiError::Domain(d) => tidings_proto::domain_status(&d),
            ApiError::Throttled {
                retry_after_secs, ..
            } => {
                let mut status = Status::resource_exhausted(e.to_string());
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
