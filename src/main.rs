//! The `switchboard` command line: parse arguments, build the config, call
//! the library. Nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use switchboard::codec::Encoding;
use switchboard::config::Config;
use switchboard::server::Server;

/// Switchboard: a protocol-first real-time messaging server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. With no config it runs a development server on
    /// 127.0.0.1:8000 with the embedded in-memory broker.
    Serve(ServeArgs),
    /// Mint a development token (HS256) with the configured secret.
    Token(TokenArgs),
    /// Measure a server under load (idle memory, fan-out, latency) against a bare baseline.
    Bench(switchboard::bench::BenchArgs),
    /// Subscribe to rooms and print publications as JSON lines (events on stderr).
    Sub(SubArgs),
    /// Publish one payload into a room as a client.
    Pub(PubArgs),
    /// Publish one payload into a room through the server API (as the
    /// server, over HTTP) and print the result as JSON.
    Publish(ApiPublishArgs),
    /// Call a server API method with a JSON request and print the JSON reply
    /// (non-2xx: the error on stderr, exit status 1).
    Api(ApiCallArgs),
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML config file.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// HMAC secret for tokens (overrides the config file).
    #[arg(long, env = "SWITCHBOARD_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        if let Some(secret) = &self.secret {
            config.auth.hmac_secret = Some(secret.clone());
        }
        Ok(config)
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on (overrides the config file).
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Accept connections without a token.
    #[arg(long)]
    allow_anonymous: bool,
    /// An Origin allowed to open WebSocket connections (repeatable; `*` for any).
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// User id (the `sub` claim).
    #[arg(long)]
    user: String,
    /// Room patterns the user may subscribe to, e.g. 'chat:*' (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    rooms: Vec<String>,
    /// Room patterns the user may publish into.
    #[arg(long, value_delimiter = ',')]
    publish: Vec<String>,
    /// Lifetime, e.g. 1h, 30m; 0 for a token that never expires.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The `info` claim: JSON shown to others in presence.
    #[arg(long)]
    info: Option<String>,
}

#[derive(Args)]
struct TargetArgs {
    /// WebSocket URL of the server.
    #[arg(
        long,
        env = "SWITCHBOARD_URL",
        default_value = "ws://127.0.0.1:8000/connection/websocket"
    )]
    url: String,
    /// Token (JWT); omit for anonymous.
    #[arg(
        long,
        env = "SWITCHBOARD_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    token: String,
    /// Framing: json or protobuf.
    #[arg(long, default_value = "json", value_parser = ["json", "protobuf"])]
    format: String,
}

impl TargetArgs {
    fn target(&self) -> switchboard::client::cli::Target {
        switchboard::client::cli::Target {
            url: self.url.clone(),
            token: self.token.clone(),
            encoding: Encoding::from_name(&self.format).unwrap_or(Encoding::Json),
        }
    }
}

#[derive(Args)]
struct SubArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Rooms to subscribe to.
    #[arg(required = true)]
    rooms: Vec<String>,
}

#[derive(Args)]
struct PubArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The room.
    room: String,
    /// The payload, usually JSON text (sent as given).
    data: String,
}

#[derive(Args)]
struct ApiTargetArgs {
    /// Base URL of the server API (http:// only; the API's own address when
    /// the server sets api.listen).
    #[arg(
        long,
        env = "SWITCHBOARD_API_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    api_url: String,
    /// API key (default: the public development key, which only a
    /// development server accepts).
    #[arg(
        long,
        env = "SWITCHBOARD_API_KEY",
        default_value = switchboard::config::DEVELOPMENT_API_KEY,
        hide_default_value = true,
        hide_env_values = true
    )]
    api_key: String,
}

impl ApiTargetArgs {
    fn target(&self) -> switchboard::api::http::client::Target {
        switchboard::api::http::client::Target {
            url: self.api_url.clone(),
            key: self.api_key.clone(),
        }
    }
}

#[derive(Args)]
struct ApiPublishArgs {
    #[command(flatten)]
    target: ApiTargetArgs,
    /// The room.
    room: String,
    /// The payload, usually JSON text (sent as given).
    data: String,
    /// Publish once even if retried with the same key within the server's
    /// idempotency window.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Args)]
struct ApiCallArgs {
    #[command(flatten)]
    target: ApiTargetArgs,
    /// The method, e.g. publish, presence, history, disconnect, batch.
    method: String,
    /// The request as JSON (proto3 JSON mapping; spec/10-server-api.md).
    #[arg(default_value = "{}")]
    json: String,
}

fn run_client(future: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(future)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::Bench(args) => switchboard::bench::main(args),
        Command::Sub(args) => run_client(switchboard::client::cli::subscribe(
            args.target.target(),
            args.rooms,
        )),
        Command::Pub(args) => run_client(switchboard::client::cli::publish(
            args.target.target(),
            args.room,
            args.data.into_bytes().into(),
        )),
        Command::Publish(args) => run_client(async move {
            switchboard::api::http::client::run_publish(
                &args.target.target(),
                args.room,
                args.data.into_bytes(),
                args.idempotency_key,
            )
            .await
        }),
        Command::Api(args) => run_client(async move {
            switchboard::api::http::client::run_call(
                &args.target.target(),
                &args.method,
                &args.json,
            )
            .await
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> Result<(), String> {
    let config = args.config.load()?;
    let secret = config
        .auth
        .effective_hmac_secret()
        .ok_or("the config uses a public key: mint tokens with your own private key")?;
    let info = match &args.info {
        Some(text) => {
            Some(serde_json::from_str(text).map_err(|e| format!("--info is not JSON: {e}"))?)
        }
        None => None,
    };
    let expires_at = (!args.ttl.is_zero()).then(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (now + args.ttl).as_secs()
    });
    let token = switchboard::auth::mint_hs256(
        secret,
        &args.user,
        expires_at,
        &args.rooms,
        &args.publish,
        info.as_ref(),
    )
    .map_err(|e| e.to_string())?;
    println!("{token}");
    if config.auth.uses_development_secret() {
        eprintln!("(signed with the public development secret: for development only)");
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = args.config.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    config.auth.allow_anonymous |= args.allow_anonymous;
    config.allowed_origins.extend(args.allowed_origins);
    config.validate().map_err(|e| e.to_string())?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let dev_secret = config.auth.uses_development_secret();
        let path = config.websocket_path.clone();
        let wt_path = config.webtransport.path.clone();
        let server = Server::start(config).await.map_err(|e| e.to_string())?;
        let addr = server.addr();
        println!("switchboard {} listening on {addr}", env!("CARGO_PKG_VERSION"));
        println!("  WebSocket  ws://{addr}{path}  (subprotocols: {})", Encoding::SUBPROTOCOLS.join(", "));
        if let Some(wt) = server.webtransport() {
            let cert = wt.certificate();
            println!(
                "  WebTransport https://{}{wt_path}?format=json|protobuf  (udp)",
                wt.addr()
            );
            if cert.development {
                println!(
                    "             development certificate, sha256 {}\n             \
                     a page connects with serverCertificateHashes = [{{algorithm: \"sha-256\", value: <hash bytes>}}];\n             \
                     the current hash is served at http://{addr}{wt_path}/certificate",
                    cert.sha256_hex()
                );
            }
        }
        println!("  health     http://{addr}/health");
        println!("  metrics    http://{addr}/metrics");
        println!("  API        http://{}/api/v1/<method>  (OpenAPI: /api/v1/openapi.json)", server.api_addr());
        if dev_secret {
            println!(
                "  API key    {} (development only; set api.keys)",
                switchboard::config::DEVELOPMENT_API_KEY
            );
            println!(
                "WARNING: tokens are checked against the public development secret; set SWITCHBOARD_SECRET \
                 (or auth.hmac_secret) before exposing this server.\n  A token for testing: \
                 cargo run -- token --user alice --rooms 'chat:*' --publish 'chat:*'"
            );
        }
        wait_for_signal().await;
        println!("shutting down: telling clients to reconnect");
        let left = server.shutdown().await;
        if left > 0 {
            println!("{left} connections did not close in time");
        }
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
