use std::sync::Arc;

// Many small, short-lived allocations across worker threads: mimalloc's per-thread heaps
// serve them for much less CPU than glibc's malloc (docs/decisions/0007-mimalloc.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use ticket_service::{Application, Config, SystemClock};

/// Tidings ticket service. Configuration comes from the environment (see
/// docs/configuration.md).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve gRPC and relay the outbox (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Rebuild the ticket list read model from the event log and exit.
    RebuildReadModel,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::from_env()?;
    // Held to the end of main: dropping it flushes the span exporter.
    let _telemetry = tidings_telemetry::init(
        "ticket-service",
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
        Cmd::Migrate => {
            let pool = tidings_store::connect(
                config.database_url.expose_secret(),
                config.db_schema.as_deref(),
                2,
            )
            .await?;
            tidings_store::migrate(&pool, config.db_schema.as_deref())
                .await
                .context("migrating")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Cmd::RebuildReadModel => {
            let pool = tidings_store::connect(
                config.database_url.expose_secret(),
                config.db_schema.as_deref(),
                2,
            )
            .await?;
            tidings_store::migrate(&pool, config.db_schema.as_deref()).await?;
            let n = tidings_store::EventStore::new(pool)
                .rebuild_read_model()
                .await?;
            tracing::info!(tickets = n, "read model rebuilt");
            Ok(())
        }
    }
}
