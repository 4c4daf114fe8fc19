//! With OTEL_EXPORTER_OTLP_ENDPOINT set, each call's span is exported over OTLP/gRPC as a
//! child of the caller's trace, and that span is the context stored with the event (and so
//! sent to Kafka). The collector here is a real OTLP/gRPC server that records what it gets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tidings_tests::*;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = req
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_spans_are_exported_over_otlp_in_the_callers_trace_and_match_the_stored_event() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream_shim::incoming(listener)),
    );
    // First in this process, so it installs the exporter (each test runs in its own process).
    let guard = Arc::new(
        tidings_telemetry::init("ticket-service", false, Some(&format!("http://{addr}"))).unwrap(),
    );

    let app = spawn_app().await;
    let mut req = authed(&customer("ann"), new_ticket("s"));
    req.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    app.tickets().await.open_ticket(req).await.unwrap();

    let span = eventually(
        Duration::from_secs(20),
        "the OpenTicket span at the collector",
        || {
            let guard = guard.clone();
            let collector = collector.clone();
            async move {
                tokio::task::spawn_blocking(move || guard.flush())
                    .await
                    .unwrap();
                collector
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|s| s.name == "OpenTicket")
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    let stored: String = sqlx::query_scalar("SELECT traceparent FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        stored,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex(&span.span_id)
        )
    );
}

mod tokio_stream_shim {
    //! A TcpListener as the connection stream tonic's server wants.
    pub fn incoming(
        listener: tokio::net::TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
        futures::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        })
    }
}
