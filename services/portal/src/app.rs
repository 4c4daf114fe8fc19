//! Building and running the portal: everything `main` does, reusable by tests on port 0.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::backend::Backend;
use crate::config::Config;
use crate::web::{AppState, security_headers};
use crate::{customer, guest, requests};

/// A form's largest body: a reply of `BODY_MAX_CHARS` characters, each up to four UTF-8
/// bytes, percent-encoded (three bytes each), with room for the other fields.
const FORM_BODY_LIMIT: usize = 20_000 * 4 * 3 + 16 * 1024;

const CSS: &str = include_str!("../static/portal.css");
const JS: &str = include_str!("../static/portal.js");

pub struct Application {
    http_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    admin: Option<JoinHandle<()>>,
}

/// Every route of the portal.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/", get(requests::home))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/static/portal.css",
            get(|| async { asset("text/css", CSS) }),
        )
        .route(
            "/static/portal.js",
            get(|| async { asset("text/javascript", JS) }),
        )
        .route(
            "/requests/new",
            get(requests::new_form).post(requests::submit),
        )
        .route("/requests/sent", get(requests::sent))
        .route("/guest/tickets/{id}", get(guest::show))
        .route("/guest/tickets/{id}/code", post(guest::send_code))
        .route("/guest/tickets/{id}/verify", post(guest::verify_code))
        .route("/guest/tickets/{id}/reply", post(guest::reply))
        .route("/guest/tickets/{id}/fresh-link", post(guest::fresh_link))
        .route("/guest/sign-out", post(guest::sign_out))
        .route("/sign-in", get(customer::sign_in))
        .route("/oidc/callback", get(customer::callback))
        .route("/sign-out", post(customer::sign_out))
        .route("/tickets", get(customer::my_tickets))
        .route(
            "/tickets/new",
            get(customer::new_form).post(customer::submit),
        )
        .route("/tickets/{id}", get(customer::show))
        .route("/tickets/{id}/reply", post(customer::reply))
        .fallback(crate::pages::not_found)
        .layer(DefaultBodyLimit::max(FORM_BODY_LIMIT));
    for (name, value) in security_headers() {
        router = router.layer(SetResponseHeaderLayer::overriding(name, value));
    }
    router.with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
}

impl Application {
    /// Binds the listeners and starts serving. The ticket service is connected to lazily.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let started = shutdown.clone().drop_guard();
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?;
        let http_addr = listener.local_addr()?;
        let admin = tidings_telemetry::spawn_admin(config.admin_addr, shutdown.clone())
            .await
            .context("binding the admin endpoint")?;
        let admin_addr = admin.as_ref().map(|(a, _)| *a);
        let admin = admin.map(|(_, t)| t);

        let backend = Backend::connect_lazy(&config.ticket_service_url)
            .with_context(|| format!("TIDINGS_TICKET_SERVICE_URL={}", config.ticket_service_url))?;
        let app = router(AppState::new(&config, backend)?)
            .into_make_service_with_connect_info::<SocketAddr>();
        let stop = shutdown.clone();
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        tracing::info!(%http_addr, ticket_service = %config.ticket_service_url, "portal serving");
        started.disarm();
        Ok(Application {
            http_addr,
            admin_addr,
            shutdown,
            http,
            admin,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Stops when `signal` completes: stops accepting, lets requests in flight finish for up
    /// to `grace`.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
        grace: std::time::Duration,
    ) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => {},
            _ = self.shutdown.cancelled() => {},
        }
        self.shutdown.cancel();
        let drain = async {
            if let Ok(Err(e)) = self.http.await {
                tracing::warn!(error = %e, "http server ended with error");
            }
            if let Some(a) = self.admin {
                let _ = a.await;
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "shutdown grace period elapsed"
            );
        }
        tracing::info!("portal stopped");
        Ok(())
    }

    /// Stops serving (tests).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}
