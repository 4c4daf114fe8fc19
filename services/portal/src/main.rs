// Many small, short-lived allocations across worker threads (docs/decisions/0007-mimalloc.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use portal::{Application, Config};

/// Tidings customer portal. Configuration comes from the environment (see
/// docs/configuration.md).
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    let config = Config::from_env()?;
    // Held to the end of main: dropping it flushes the span exporter.
    let _telemetry = tidings_telemetry::init(
        "portal",
        config.runtime.log_json,
        config.runtime.otlp_endpoint.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let grace = config.runtime.shutdown_grace;
    let app = Application::build(config).await?;
    app.run_until(tidings_telemetry::shutdown_signal(), grace)
        .await
}
