use std::sync::Arc;

use email_dispatcher::{Application, Config};
use tidings_domain::clock::SystemClock;

// Many small, short-lived allocations across worker threads; see the ticket service.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Where transparent huge pages are on for every process (`always`), mimalloc's arenas
    // are backed by 2 MiB pages it never fully uses: opting out costs no measurable
    // throughput and a good part of the peak RSS (docs/decisions/0008-thp-off.md). Best
    // effort: a kernel without the flag keeps THP.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let _telemetry = tidings_telemetry::init(
        "email-dispatcher",
        config.runtime.log_json,
        config.runtime.otlp_endpoint.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let grace = config.runtime.shutdown_grace;
    let app = Application::build(config, Arc::new(SystemClock)).await?;
    app.run_until(tidings_telemetry::shutdown_signal(), grace)
        .await
}
