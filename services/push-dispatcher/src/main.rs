use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use push_dispatcher::{Application, Config, Registry};
use secrecy::ExposeSecret;
use tidings_domain::clock::SystemClock;

// Many small, short-lived allocations across worker threads; see the ticket service.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tidings push dispatcher. Configuration comes from the environment (see
/// docs/configuration.md).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Consume ticket events and serve the device API (the default).
    Serve,
    /// Bring back the devices removed since a time (RFC 3339), e.g. after a misconfigured
    /// provider URL made every token look gone, and exit.
    RestoreDevices {
        #[arg(long)]
        since: chrono::DateTime<chrono::Utc>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::from_env()?;
    let _telemetry = tidings_telemetry::init(
        "push-dispatcher",
        config.runtime.log_json,
        config.runtime.otlp_endpoint.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => {
            let grace = config.runtime.shutdown_grace;
            let app = Application::build(config, Arc::new(SystemClock)).await?;
            app.run_until(tidings_telemetry::shutdown_signal(), grace)
                .await
        }
        Cmd::RestoreDevices { since } => {
            let pool = tidings_store::connect(
                config.database_url.expose_secret(),
                Some(&config.db_schema),
                2,
            )
            .await
            .context("connecting to postgres")?;
            let restored = Registry::new(pool).restore_removed(since).await?;
            tracing::info!(restored, %since, "devices restored");
            println!("{restored} devices restored");
            Ok(())
        }
    }
}
