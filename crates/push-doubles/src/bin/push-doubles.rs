//! `push-doubles`: the APNs and FCM doubles on fixed loopback ports for `make run` and the
//! benchmark. Writes the test CA, the APNs key, the FCM service account and an env file with
//! the push dispatcher's variables into `--dir`, logs every accepted push, and lists them at
//! `GET /pushes` on either port.

use clap::Parser;
use tidings_push_doubles::{Doubles, Options};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 18443)]
    apns_port: u16,
    #[arg(long, default_value_t = 18444)]
    fcm_port: u16,
    #[arg(long, default_value = ".dev/push")]
    dir: std::path::PathBuf,
    /// Count pushes without keeping them (benchmarks).
    #[arg(long)]
    no_record: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tidings_telemetry::init_tracing(false);
    let args = Args::parse();
    let doubles = Doubles::start(Options {
        apns_port: args.apns_port,
        fcm_port: args.fcm_port,
        dir: args.dir.clone(),
        record: !args.no_record,
    })
    .await?;
    let env = args.dir.join("push.env");
    doubles.write_env(&env)?;
    std::fs::write(
        args.dir.join("apns-provider-token"),
        doubles.apns_provider_token()?,
    )?;
    tracing::info!(apns = %doubles.apns_url, fcm = %doubles.fcm_url, env = %env.display(), "push doubles listening");
    tidings_telemetry::shutdown_signal().await;
    Ok(())
}
