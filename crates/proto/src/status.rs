//! The single table from domain errors to gRPC status codes.

use tidings_domain::DomainError;
use tonic::{Code, Status};

pub fn domain_code(e: &DomainError) -> Code {
    match e {
        DomainError::AlreadyExists => Code::AlreadyExists,
        // Unknown and foreign tickets look the same to callers.
        DomainError::NotFound => Code::NotFound,
        DomainError::NotPermitted(_) => Code::PermissionDenied,
        DomainError::AlreadyResolved => Code::FailedPrecondition,
        DomainError::RateLimited { .. } => Code::ResourceExhausted,
        DomainError::CodeExpired => Code::FailedPrecondition,
        DomainError::CodeAttemptsExhausted => Code::ResourceExhausted,
        DomainError::GuestAccessLocked { .. } => Code::ResourceExhausted,
    }
}

pub fn domain_status(e: &DomainError) -> Status {
    let mut status = Status::new(domain_code(e), e.to_string());
    if let DomainError::RateLimited { retry_after_secs }
    | DomainError::GuestAccessLocked { retry_after_secs } = e
        && let Ok(v) = retry_after_secs.to_string().parse()
    {
        status.metadata_mut().insert("retry-after", v);
    }
    status
}

/// `INVALID_ARGUMENT` that names the offending field, e.g. `body: must not be empty`.
pub fn invalid_field(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}
