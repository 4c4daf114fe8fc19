//! `oidc-double`: the OpenID Connect provider double for `make run`. Writes the
//! portal's and the ticket service's settings for it to `<dir>/oidc.env`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tidings_oidc_double::{AccessTokenKey, OidcDouble, Settings};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[arg(long, default_value_t = 18445)]
    port: u16,
    /// Where `oidc.env` and the public key are written.
    #[arg(long)]
    dir: std::path::PathBuf,
    #[arg(long, default_value = "tidings-portal")]
    client_id: String,
    #[arg(long, env = "TIDINGS_OIDC_CLIENT_SECRET", hide_env_values = true)]
    client_secret: String,
    /// The portal's callback, e.g. http://127.0.0.1:8080/oidc/callback.
    #[arg(long)]
    redirect_uri: String,
    #[arg(long, default_value = "tidings-api")]
    api_audience: String,
    /// Sign access tokens with this HS256 secret (the ticket service's), else with the RSA key.
    #[arg(long, env = "TIDINGS_JWT_HS256_SECRET", hide_env_values = true)]
    hs256_secret: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tidings_telemetry::init_tracing(false);
    let settings = Settings {
        client_id: cli.client_id.clone(),
        client_secret: cli.client_secret,
        redirect_uris: vec![cli.redirect_uri],
        api_audience: cli.api_audience,
        access_token_key: cli
            .hs256_secret
            .map_or(AccessTokenKey::Rs256, AccessTokenKey::Hs256),
        token_ttl: Duration::from_secs(3600),
    };
    let double = OidcDouble::start(SocketAddr::from(([127, 0, 0, 1], cli.port)), settings).await?;
    std::fs::create_dir_all(&cli.dir)?;
    let pem = cli.dir.join("oidc-public.pem");
    std::fs::write(&pem, double.public_key_pem())?;
    let env = format!(
        "TIDINGS_OIDC_ISSUER={}\nTIDINGS_OIDC_CLIENT_ID={}\n",
        double.issuer(),
        cli.client_id
    );
    // Written last and whole: its presence says the double is serving.
    let tmp = cli.dir.join("oidc.env.tmp");
    std::fs::write(&tmp, env)?;
    std::fs::rename(&tmp, cli.dir.join("oidc.env"))?;
    tracing::info!(issuer = double.issuer(), "oidc double serving");
    tidings_telemetry::shutdown_signal().await;
    Ok(())
}
