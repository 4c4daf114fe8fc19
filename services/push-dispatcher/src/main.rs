use std::sync::Arc;

use push_dispatcher::{Application, Config};
use tidings_domain::clock::SystemClock;

// Many small, short-lived allocations across worker threads; see the ticket service.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let _telemetry = tidings_telemetry::init(
        "push-dispatcher",
        config.runtime.log_json,
        config.runtime.otlp_endpoint.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let grace = config.runtime.shutdown_grace;
    let app = Application::build(config, Arc::new(SystemClock)).await?;
    app.run_until(tidings_telemetry::shutdown_signal(), grace)
        .await
}
