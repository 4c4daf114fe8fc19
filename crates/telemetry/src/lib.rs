//! Runtime plumbing every Tidings service shares: logging, the Prometheus admin endpoint,
//! W3C trace context, environment configuration that reports all mistakes at once, and the
//! shutdown signal.

pub mod trace_context;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Keeps the span exporter alive; dropping it flushes and shuts it down.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports buffered spans now (tests, shutdown).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Logs (human by default, one JSON object per line with `json = true`, filtered by
/// `RUST_LOG`, default `info`) and, when `otlp_endpoint` is set, OpenTelemetry spans exported
/// over OTLP/gRPC. Must run inside the tokio runtime (the exporter's client lives there).
/// Only the first call in a process installs anything (tests call it repeatedly).
pub fn init(
    service: &'static str,
    json: bool,
    otlp_endpoint: Option<&str>,
) -> Result<TelemetryGuard, String> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service)
                            .build(),
                    )
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        // Colours only for a person at a terminal, not in files or a log collector.
        use std::io::IsTerminal as _;
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(otel)
        .with(fmt)
        .with(filter)
        .try_init()
        .is_ok();
    Ok(TelemetryGuard {
        provider: if installed { provider } else { None },
    })
}

/// Logs only; for tests and tools.
pub fn init_tracing(json: bool) {
    let _ = init("tidings", json, None);
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Installs the global Prometheus recorder once per process and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            // Publish lag has a target in milliseconds (p99 <= 50 ms), so its histogram is
            // fine enough for `make bench` to read percentiles from it: 1 ms steps to 20 ms,
            // 5 ms steps to 100 ms.
            let lag_buckets: Vec<f64> = (1..=20)
                .map(|ms| ms as f64 / 1000.0)
                .chain((25..=100).step_by(5).map(|ms| ms as f64 / 1000.0))
                .chain([0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
                .collect();
            // The exporter tries full names before suffixes (and suffixes in string order),
            // so the millisecond histograms are named in full: a suffix such as
            // `_unrecorded_seconds` would lose to `_seconds`.
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("tidings_outbox_publish_lag_seconds".into()),
                    &lag_buckets,
                )
                .expect("static buckets are valid")
                // The crash window (provider acceptance → send record) has a target in
                // milliseconds too (p99 <= 10 ms).
                .set_buckets_for_metric(
                    Matcher::Full("tidings_email_unrecorded_seconds".into()),
                    &lag_buckets,
                )
                .expect("static buckets are valid")
                .set_buckets_for_metric(
                    Matcher::Full("tidings_push_unrecorded_seconds".into()),
                    &lag_buckets,
                )
                .expect("static buckets are valid")
                .set_buckets_for_metric(
                    Matcher::Full("tidings_send_record_write_seconds".into()),
                    &lag_buckets,
                )
                .expect("static buckets are valid")
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist in tests; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// What every service reads the same way: log format, span export, shutdown grace.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub log_json: bool,
    pub otlp_endpoint: Option<String>,
    pub shutdown_grace: std::time::Duration,
}

impl RuntimeSettings {
    /// `TIDINGS_LOG_FORMAT`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `TIDINGS_SHUTDOWN_GRACE_SECS`.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &mut tidings_config::Env<F>) -> Self {
        Self {
            log_json: env.log_json(),
            otlp_endpoint: env.raw("OTEL_EXPORTER_OTLP_ENDPOINT"),
            shutdown_grace: std::time::Duration::from_secs(
                env.parse("TIDINGS_SHUTDOWN_GRACE_SECS", 10u64),
            ),
        }
    }
}

/// Binds the admin endpoint if `addr` is set and serves it until `shutdown`.
pub async fn spawn_admin(
    addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
) -> std::io::Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>> {
    let Some(addr) = addr else { return Ok(None) };
    metrics_handle();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = serve_admin(listener, shutdown).await {
            tracing::warn!(error = %e, "admin endpoint ended with error");
        }
    });
    Ok(Some((bound, task)))
}

/// Spawns a task the service cannot work without (a consumer loop, the outbox relay, the
/// release of held pushes). Should it fail, panic or end before `shutdown`, it sets `failed`
/// and cancels `shutdown`: the service stops and exits with an error, so that its supervisor
/// restarts it, rather than live on with `/healthz` answering ok and nothing moving.
pub fn spawn_essential<E: std::fmt::Display>(
    name: &'static str,
    task: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
    shutdown: CancellationToken,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let inner = tokio::spawn(async move { task.await.map_err(|e| e.to_string()) });
    tokio::spawn(async move {
        let reason = match inner.await {
            Ok(Ok(())) if shutdown.is_cancelled() => return,
            Ok(Ok(())) => "ended before shutdown".to_owned(),
            Ok(Err(e)) => e,
            Err(e) if e.is_panic() => {
                format!("panicked: {}", panic_message(e.into_panic().as_ref()))
            }
            Err(_) => "cancelled".to_owned(),
        };
        tracing::error!(
            task = name,
            reason,
            "essential task failed; stopping the service"
        );
        failed.store(true, std::sync::atomic::Ordering::SeqCst);
        shutdown.cancel();
    })
}

/// A panic's message, when it has one.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Waits for a stopping service's tasks, at most `grace`.
pub async fn join_within(
    service: &str,
    grace: std::time::Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) {
    let drain = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(
            service,
            grace_secs = grace.as_secs(),
            "shutdown grace period elapsed; exiting anyway"
        );
    }
    tracing::info!(service, "stopped");
}

/// Serves `GET /metrics` (Prometheus text) and `GET /healthz` until `shutdown`.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::{Router, routing::get};
    let handle = metrics_handle();
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| std::future::ready("ok")));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
