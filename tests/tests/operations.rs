//! What operators and generic tools see: gRPC health and reflection, Prometheus metrics, and
//! a graceful stop that leaves nothing unpublished.

use std::time::Duration;

use tidings_proto::ticket::v1::*;
use tidings_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn health_reports_serving_and_reflection_lists_the_services() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let r = health
        .check(HealthCheckRequest {
            service: "tidings.ticket.v1.TicketService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "tidings.ticket.v1.TicketService",
        "tidings.ticket.v1.GuestAccessService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn metrics_count_calls_by_rpc_and_status() {
    let app = spawn_app().await;
    let mut c = app.tickets().await;
    c.open_ticket(authed(&customer("ann"), new_ticket("s")))
        .await
        .unwrap();
    let _ = c
        .get_ticket(GetTicketRequest {
            ticket_id: "nope".into(),
        })
        .await
        .unwrap_err();
    let admin = app
        .app
        .as_ref()
        .unwrap()
        .admin_addr()
        .expect("admin endpoint");
    let body = http_get(admin, "/metrics").await;
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(
        body.contains(r#"tidings_grpc_requests_total{rpc="OpenTicket",code="OK"}"#),
        "{body}"
    );
    assert!(
        body.contains(r#"tidings_grpc_requests_total{rpc="GetTicket",code="Unauthenticated"}"#),
        "{body}"
    );
    assert!(
        body.contains("tidings_grpc_request_duration_seconds_bucket"),
        "{body}"
    );
    assert!(http_get(admin, "/healthz").await.ends_with("ok"));
}

#[tokio::test]
async fn a_graceful_stop_publishes_what_was_written_and_closes_the_port() {
    let mut app = spawn_app().await;
    let ann = customer("ann");
    let mut c = app.tickets().await;
    for i in 0..5 {
        c.open_ticket(authed(
            &ann,
            OpenTicketRequest {
                request_id: rid(),
                subject: format!("s{i}"),
                body: "b".into(),
                guest: None,
            },
        ))
        .await
        .unwrap();
    }
    app.stop().await;
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
    assert_eq!(
        read_topic(&app.brokers, &app.topic, 5, Duration::from_secs(20))
            .await
            .len(),
        5
    );
    assert!(
        tokio::net::TcpStream::connect(app.addr).await.is_err(),
        "the gRPC port is closed after stop"
    );
}

#[tokio::test]
async fn a_taken_port_fails_the_start_before_anything_is_migrated() {
    let first = spawn_app().await;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let config = config_with(
        &schema,
        &first.topic,
        &first.codes_topic,
        &first.brokers,
        vec![("TIDINGS_GRPC_ADDR", first.addr.to_string())],
    );
    let err = ticket_service::Application::build(
        config,
        std::sync::Arc::new(tidings_domain::clock::ManualClock::new(chrono::Utc::now())),
    )
    .await
    .err()
    .expect("a taken gRPC port fails the start");
    assert!(format!("{err:#}").contains("binding"), "{err:#}");
    assert!(
        !schema_exists(&first.pool, &schema).await,
        "no schema created for a service that did not start"
    );
}
