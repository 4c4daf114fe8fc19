//! gRPC handlers. Each one authenticates, parses its input into domain types (naming the
//! field on failure), and hands the command to the `Executor`.

pub mod guest;
pub mod throttle;
pub mod ticket;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tidings_auth::{Authenticator, Principal};
use tidings_telemetry::trace_context::TraceParent;
use tonic::{Request, Status};

use crate::clock::Clock;
use crate::error::ApiError;

pub(crate) fn bearer<T>(
    auth: &Authenticator,
    clock: &Arc<dyn Clock>,
    req: &Request<T>,
) -> Result<Option<Principal>, ApiError> {
    let header =
        match req.metadata().get("authorization") {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::Unauthenticated("authorization header is not ASCII".into())
            })?),
        };
    Ok(auth.authenticate(header, clock.now())?)
}

pub(crate) fn require(p: Option<Principal>) -> Result<Principal, ApiError> {
    p.ok_or_else(|| ApiError::Unauthenticated("missing bearer token".into()))
}

pub(crate) fn traceparent_header<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The trace context stored with the events this call writes (call inside `observe`).
pub(crate) fn trace_of<T>(req: &Request<T>) -> TraceParent {
    tidings_telemetry::trace_context::current(traceparent_header(req).as_deref())
}

/// Runs a call in a server span (child of the caller's trace), then counts and times it by
/// RPC and resulting status code.
pub(crate) async fn observe<T>(
    rpc: &'static str,
    incoming_traceparent: Option<String>,
    fut: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, Status> {
    use tracing::Instrument as _;
    let span = tidings_telemetry::trace_context::server_span(rpc, incoming_traceparent.as_deref());
    let started = Instant::now();
    let result = fut.instrument(span).await.map_err(Status::from);
    let code = match &result {
        Ok(_) => "OK".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    };
    metrics::counter!("tidings_grpc_requests_total", "rpc" => rpc, "code" => code.clone())
        .increment(1);
    metrics::histogram!("tidings_grpc_request_duration_seconds", "rpc" => rpc, "code" => code)
        .record(started.elapsed().as_secs_f64());
    if let Err(s) = &result {
        tracing::debug!(rpc, code = ?s.code(), message = s.message(), "call failed");
    }
    result
}
