//! The single table from domain errors to gRPC status codes, and the machine-readable reason
//! each error carries (a `google.rpc.ErrorInfo` in the status details, as AIP-193 describes),
//! so a client such as the portal picks its message by reason, never by parsing text.

use std::collections::HashMap;

use tidings_domain::DomainError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Tidings error.
pub const ERROR_DOMAIN: &str = "tidings.ticket.v1";

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

pub fn domain_reason(e: &DomainError) -> &'static str {
    match e {
        DomainError::AlreadyExists => "ALREADY_EXISTS",
        DomainError::NotFound => "NOT_FOUND",
        DomainError::NotPermitted(_) => "NOT_PERMITTED",
        DomainError::AlreadyResolved => "ALREADY_RESOLVED",
        DomainError::RateLimited { .. } => "RATE_LIMITED",
        DomainError::CodeExpired => "CODE_EXPIRED",
        DomainError::CodeAttemptsExhausted => "CODE_ATTEMPTS_EXHAUSTED",
        DomainError::GuestAccessLocked { .. } => "GUEST_ACCESS_LOCKED",
    }
}

pub fn domain_status(e: &DomainError) -> Status {
    let mut metadata = HashMap::new();
    let mut retry_after = None;
    if let DomainError::RateLimited { retry_after_secs }
    | DomainError::GuestAccessLocked { retry_after_secs } = e
    {
        metadata.insert("retry_after_secs".to_owned(), retry_after_secs.to_string());
        retry_after = Some(*retry_after_secs);
    }
    let mut status = with_reason(domain_code(e), e.to_string(), domain_reason(e), metadata);
    if let Some(Ok(v)) = retry_after.map(|secs| secs.to_string().parse()) {
        status.metadata_mut().insert("retry-after", v);
    }
    status
}

/// A status carrying `ErrorInfo { reason, domain: ERROR_DOMAIN, metadata }`.
pub fn with_reason(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// The reason and metadata of a Tidings error, if the status carries one.
pub fn reason_of(status: &Status) -> Option<(String, HashMap<String, String>)> {
    let info = status.get_details_error_info()?;
    (info.domain == ERROR_DOMAIN).then_some((info.reason, info.metadata))
}

/// `INVALID_ARGUMENT` that names the offending field, e.g. `body: must not be empty`.
pub fn invalid_field(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}
