//! `switchboard bench`: a load generator that measures a server from the
//! outside, and the same measurements of a bare tokio-tungstenite broadcast
//! server (`bench baseline-server`) in the same run, so every figure comes with its
//! ratio to what the library alone achieves on this machine.
//!
//! `bench run` spawns the server under test (`switchboard serve` with a
//! temp config on a free loopback port; or `--target` names a running one)
//! and then the baseline, one after the other, and measures each with the
//! same generator code, in separate processes (each process may hold only so
//! many open files):
//!
//! 1. **Idle memory**: connections opened in steps (connected and subscribed
//!    for Switchboard), the server's RSS after each step; KiB per connection
//!    from a least-squares fit and from (RSS(N) − RSS(0)) / N.
//! 2. **Fan-out**: one publisher, N subscribers in one room. First the
//!    maximum rate (publications in flight capped by `--window`): deliveries
//!    per second and per server CPU-second. Then half that rate
//!    (`--latency-share`), open loop: publish→deliver latency percentiles.
//! 3. The fan-out again for each framing (`--encodings`).
//!
//! **WebTransport** (`--transports websocket,webtransport`, both by default):
//! the fan-out of each framing and subscriber count is measured a second
//! time against the same server in the same run with WebTransport
//! subscribers (one bidirectional stream each; the publisher stays on
//! WebSocket), and the report puts both side by side with the ratio WT/WS.
//! A datagram stage then publishes at one moderate rate (`--datagram-rate`,
//! by default 200/s or less if that is over half the measured maximum) to
//! `--datagram-subscribers` subscribers of a volatile room (the spawned
//! server's config makes `--volatile-room`'s namespace `volatile = true`)
//! over WebTransport, whose publications travel as QUIC datagrams, and
//! compares their latency and loss with the same room over WebSocket
//! (ordinary pushes) and with an ordinary room over the WebTransport stream.
//! Idle memory per WebTransport connection (`--wt-idle-connections`) is
//! measured on a fresh server process, so that it does not reuse memory the
//! WebSocket connections freed. The QUIC connections of the generator share
//! a few client endpoints (UDP sockets, see `client::WT_CLIENT_ENDPOINTS`),
//! so they cost no open file each. The development certificate's hash comes
//! from `GET /connection/webtransport/certificate`.
//!
//! The generator shares the CPUs with the server; its own CPU time is
//! reported beside the server's, and so is the CPU other processes took
//! ("others"). On a shared machine, give the run's session priority first
//! (as root, with autogroup scheduling: `echo -15 > /proc/$$/autogroup`;
//! plain `nice` does not reach across sessions). Open files: each process
//! needs `--idle-connections` + 64 files (`ulimit -n`).
//! Everything is loopback only, bounded in count and time, and stops by
//! itself.

mod baseline;
mod client;
mod procfs;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub use self::baseline::BaselineArgs;
use self::client::{Dialect, Endpoint, Pace, Pool, Publisher, Stats, WebTransportTarget};
pub use self::client::{Stage, Transport};
use self::report::{
    DatagramPath, DatagramResult, FanoutResult, IdleResult, LatencyResult, PATH_DATAGRAM,
    PATH_WS_PUSH, PATH_WT_STREAM, RateResult, Report, ServerResult,
};
use crate::codec::Encoding;

/// Arguments of `switchboard bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The `bench` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Measure idle memory per connection, fan-out throughput and latency of
    /// Switchboard and of a bare tokio-tungstenite baseline, and compare.
    Run(Box<RunArgs>),
    /// The baseline server `run` spawns: a bare tokio-tungstenite broadcast server.
    #[command(hide = true)]
    BaselineServer(BaselineArgs),
}

/// What the server under test speaks (with `--target`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetProtocol {
    /// The Switchboard protocol.
    Switchboard,
    /// A plain broadcast server: every message goes to every other connection.
    Broadcast,
}

/// Arguments of `switchboard bench run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Idle connections to reach, in steps of `--idle-step`; 0 skips the memory measurement.
    #[arg(long, default_value_t = 19_000)]
    pub idle_connections: usize,
    /// How far idle Switchboard connections go: the upgrade alone, connected, or subscribed too.
    /// Comparing the three shows where the memory goes.
    #[arg(long, value_enum, default_value = "subscribe")]
    pub idle_stage: Stage,
    /// Connections added per idle-memory step.
    #[arg(long, default_value_t = 1_000)]
    pub idle_step: usize,
    /// Pause after opening or closing connections, before reading memory or publishing.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Subscriber counts for the fan-out measurement; 0 skips it.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub subscribers: Vec<usize>,
    /// Length of each measured fan-out phase (maximum rate; latency at a share of it).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Subscriber transports to measure fan-out over, against the same server (the publisher
    /// always speaks WebSocket). Without webtransport, no WebTransport measurement is made.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "websocket,webtransport"
    )]
    pub transports: Vec<Transport>,
    /// Idle WebTransport connections for the memory measurement (on a fresh server process,
    /// in steps of `--idle-step`); 0 skips it.
    #[arg(long, default_value_t = 5_000)]
    pub wt_idle_connections: usize,
    /// Subscribers of the datagram stage (WebTransport datagrams vs WebSocket pushes vs the
    /// WebTransport stream at one rate); 0 skips it.
    #[arg(long, default_value_t = 1_000)]
    pub datagram_subscribers: usize,
    /// Publications per second of the datagram stage [default: 200, or the latency share of the
    /// lowest maximum rate measured with as many subscribers if that is lower].
    #[arg(long)]
    pub datagram_rate: Option<f64>,
    /// The volatile room of the datagram stage; the spawned server's config makes its namespace
    /// volatile (with --target, the server's must be).
    #[arg(long, default_value = "volatile:room")]
    pub volatile_room: String,
    /// Switchboard framings to measure fan-out in.
    #[arg(long, value_delimiter = ',', default_value = "json,protobuf", value_parser = parse_encoding)]
    pub encodings: Vec<Encoding>,
    /// The latency phase publishes at this share of the maximum rate (the targets are for 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub latency_share: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// Maximum-rate phase: publications in flight (not yet delivered to every subscriber).
    #[arg(long, default_value_t = 32)]
    pub window: u64,
    /// Client sockets are spread over 127.0.0.2 ..= 127.0.0.(1 + N) (about 28k ports each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_addrs: u8,
    /// Measure a running server at this ws:// URL (loopback only) instead of spawning `switchboard serve`.
    #[arg(long)]
    pub target: Option<String>,
    /// With --target: what the server speaks.
    #[arg(long, value_enum, default_value = "switchboard")]
    pub target_protocol: TargetProtocol,
    /// With --target: the server's process id, to read its memory and CPU time.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// With --target: the HMAC secret the server checks tokens with.
    #[arg(long, env = "SWITCHBOARD_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The room to use; with --target its namespace must let the minted tokens subscribe and publish.
    #[arg(long, default_value = "bench:room")]
    pub room: String,
    /// Do not measure the baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Subscribers decode every frame with the library codec (a real client's cost) instead of
    /// splitting frames and reading the timestamp.
    #[arg(long)]
    pub full_decode: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_encoding(name: &str) -> Result<Encoding, String> {
    Encoding::from_name(name).ok_or_else(|| format!("unknown encoding {name:?}: json or protobuf"))
}

/// Runs a `bench` subcommand to its end.
pub fn main(args: BenchArgs) -> Result<(), String> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    match args.command {
        BenchCommand::Run(args) => runtime.block_on(run(*args)),
        BenchCommand::BaselineServer(args) => runtime.block_on(baseline::serve(args)),
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    client::now_ns();
    if !(args.latency_share > 0.0 && args.latency_share <= 1.0) {
        return Err("--latency-share must be in (0, 1]".into());
    }
    if args.payload < client::MIN_PAYLOAD {
        return Err(format!(
            "--payload must be at least {} bytes",
            client::MIN_PAYLOAD
        ));
    }
    if args
        .datagram_rate
        .is_some_and(|r| !(r > 0.0 && r.is_finite()))
    {
        return Err("--datagram-rate must be positive".into());
    }
    let needed = args
        .idle_connections
        .max(args.subscribers.iter().copied().max().unwrap_or(0))
        + 64;
    match procfs::open_files_limit() {
        Some(limit) if (limit as usize) < needed => {
            return Err(format!(
                "{needed} open files are needed per process, the limit is {limit}: run `ulimit -n {needed}` first \
                 (or measure fewer connections)"
            ));
        }
        _ => {}
    }
    // WebSocket first: its idle connections are reused for its fan-out.
    let transports: Vec<Transport> = [Transport::WebSocket, Transport::WebTransport]
        .into_iter()
        .filter(|t| args.transports.contains(t))
        .collect();
    let webtransport = transports.contains(&Transport::WebTransport);
    let background_cpu_pct = background_load().await;
    if let Some(pct) = background_cpu_pct.filter(|&p| p > 10.0) {
        eprintln!(
            "warning: the machine is already {pct:.0}% busy (of one CPU) before the run: figures will be noisy"
        );
    }
    let started = Instant::now();
    let mut servers = Vec::new();
    let wt_socket_recv_buffer;
    {
        let (mut endpoint, pid, _server) = match &args.target {
            Some(url) => {
                let secret = match (&args.secret, args.target_protocol) {
                    (Some(secret), _) => secret.clone(),
                    (None, TargetProtocol::Broadcast) => String::new(),
                    (None, TargetProtocol::Switchboard) => {
                        return Err("--target needs --secret (or SWITCHBOARD_SECRET)".into());
                    }
                };
                (endpoint(&args, url, secret).await?, args.target_pid, None)
            }
            None => {
                let (server, endpoint) = spawn_switchboard(&args, webtransport).await?;
                (endpoint, Some(server.pid()), Some(server))
            }
        };
        let dialects: Vec<Dialect> = match (&args.target, args.target_protocol) {
            (Some(_), TargetProtocol::Broadcast) => vec![Dialect::Broadcast],
            _ => args
                .encodings
                .iter()
                .map(|&e| Dialect::Switchboard(e))
                .collect(),
        };
        let switchboard = dialects.iter().all(|d| *d != Dialect::Broadcast);
        if args.target.is_some() && webtransport && switchboard {
            match webtransport_target(endpoint.addr).await {
                Ok(target) => endpoint.webtransport = Some(Arc::new(target)),
                Err(err) => eprintln!("warning: no WebTransport measurements: {err}"),
            }
        }
        let transports: Vec<Transport> = transports
            .iter()
            .copied()
            .filter(|&t| t == Transport::WebSocket || endpoint.webtransport.is_some())
            .collect();
        wt_socket_recv_buffer = endpoint.webtransport.as_ref().and_then(|t| t.recv_buffer);
        let name = if args.target.is_some() {
            "target"
        } else {
            "switchboard"
        };
        servers.push(measure(&args, name, endpoint, pid, &dialects, &transports).await?);
    }
    let switchboard_target =
        args.target.is_none() || args.target_protocol == TargetProtocol::Switchboard;
    let first_encoding = args.encodings.first().copied();
    if webtransport && args.wt_idle_connections > 0 && switchboard_target {
        if let (Some(server), Some(encoding)) = (servers.first_mut(), first_encoding) {
            let (spawned, endpoint, fresh) = match &args.target {
                // A fresh process: the WebSocket connections' freed memory
                // would otherwise be reused and hide part of the cost.
                None => {
                    let (spawned, endpoint) = spawn_switchboard(&args, true).await?;
                    (Some(spawned), Some(endpoint), true)
                }
                Some(url) => {
                    let secret = args.secret.clone().unwrap_or_default();
                    let mut endpoint = endpoint(&args, url, secret).await?;
                    let target = webtransport_target(endpoint.addr).await.ok();
                    endpoint.webtransport = target.map(Arc::new);
                    let endpoint = endpoint.webtransport.is_some().then_some(endpoint);
                    (None, endpoint, false)
                }
            };
            if let Some(endpoint) = endpoint {
                let pid = spawned.as_ref().map(|s| s.pid()).or(args.target_pid);
                let idle = idle_webtransport(&args, endpoint, pid, encoding).await?;
                server.idle_webtransport = Some(idle);
                server.idle_webtransport_fresh = fresh;
            }
        }
    }
    if !args.no_baseline {
        let (server, addr) = procfs::Spawned::start(
            &["bench", "baseline-server", "--listen", "127.0.0.1:0"],
            None,
        )
        .await?;
        let endpoint = endpoint(&args, &format!("ws://{addr}/"), String::new()).await?;
        servers.push(
            measure(
                &args,
                "baseline",
                endpoint,
                Some(server.pid()),
                &[Dialect::Broadcast],
                &[Transport::WebSocket],
            )
            .await?,
        );
    }
    let wt_used = servers.iter().any(|s| {
        s.idle_webtransport.is_some()
            || s.datagram.is_some()
            || s.fanout
                .iter()
                .any(|f| f.transport == Transport::WebTransport)
    });
    let report = Report {
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        machine: procfs::Machine::read(),
        payload_bytes: args.payload,
        phase_seconds: args.duration.as_secs_f64(),
        window: args.window,
        wall_seconds: started.elapsed().as_secs_f64(),
        background_cpu_pct,
        latency_share: args.latency_share,
        idle_stage: format!("{:?}", args.idle_stage).to_lowercase(),
        wt_client_endpoints: wt_used.then_some(client::WT_CLIENT_ENDPOINTS),
        wt_socket_recv_buffer: wt_socket_recv_buffer.filter(|_| wt_used),
        servers,
    };
    print!("{}", report.render());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// How busy the machine is without us, in % of one CPU, over one second.
async fn background_load() -> Option<f64> {
    let before = Reading::now(0, None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = Reading::now(0, None);
    interval(&before, &after).machine_cpu_pct
}

async fn endpoint(args: &RunArgs, url: &str, secret: String) -> Result<Endpoint, String> {
    let request = url
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(80);
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let addr = addrs.next().ok_or_else(|| format!("{url}: no address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{url}: the benchmark measures loopback servers only"
        ));
    }
    Ok(Endpoint {
        url: url.to_owned(),
        addr,
        secret,
        room: args.room.clone(),
        source_addrs: args.source_addrs,
        full_decode: args.full_decode,
        webtransport: None,
    })
}

/// The path of WebTransport sessions (the server's default); its
/// certificate hash is served at `<path>/certificate`.
const WT_PATH: &str = "/connection/webtransport";

/// Reads the WebTransport URL and certificate hash a server publishes over
/// HTTP at `addr`, and opens the client endpoints to reach it.
async fn webtransport_target(addr: std::net::SocketAddr) -> Result<WebTransportTarget, String> {
    let body = http_get(addr, &format!("{WT_PATH}/certificate")).await?;
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{WT_PATH}/certificate: not JSON: {e}"))?;
    let url = json["url"]
        .as_str()
        .ok_or_else(|| format!("{WT_PATH}/certificate: no url"))?;
    let sha256 = json["sha256"]
        .as_str()
        .and_then(parse_sha256)
        .ok_or_else(|| format!("{WT_PATH}/certificate: no valid sha256"))?;
    WebTransportTarget::new(url.to_owned(), sha256, addr.ip())
}

/// 64 hex digits.
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let mut hash = [0u8; 32];
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(hash)
}

/// The body of a plain HTTP/1.1 GET answered 200.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| format!("GET {path}: no answer in time"))?
        .map_err(|e| format!("GET {path}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: malformed response"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {status}"));
    }
    Ok(body.to_owned())
}

/// The namespace of a room (`ns:name`), which must have one.
fn namespace<'a>(room: &'a str, flag: &str) -> Result<&'a str, String> {
    match room.split_once(':') {
        Some((ns, _)) if !ns.is_empty() => Ok(ns),
        _ => Err(format!("{flag} must have a namespace (`ns:room`)")),
    }
}

/// Starts `switchboard serve` with a temp config made for the benchmark;
/// with `webtransport`, also reads its WebTransport certificate.
async fn spawn_switchboard(
    args: &RunArgs,
    webtransport: bool,
) -> Result<(procfs::Spawned, Endpoint), String> {
    let namespace_ = namespace(&args.room, "--room")?;
    let volatile = namespace(&args.volatile_room, "--volatile-room")?;
    if volatile == namespace_ {
        return Err("--room and --volatile-room need different namespaces".into());
    }
    let secret = format!("bench-{:032x}", fastrand::u128(..));
    let config = format!(
        "listen = \"127.0.0.1:0\"\n\
         [auth]\nhmac_secret = \"{secret}\"\n\
         [limits]\nmax_connections = 1000000\nmax_connections_per_user = 0\n\
         command_rate = 1000000\ncommand_burst = 1000000\nconnect_timeout = \"10m\"\n\
         [namespaces.{namespace_}]\nhistory_size = 0\npresence = false\njoin_leave = false\n\
         [namespaces.{volatile}]\nvolatile = true\nhistory_size = 0\npresence = false\njoin_leave = false\n"
    );
    let path = std::env::temp_dir().join(format!(
        "switchboard-bench-{}-{:08x}.toml",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::write(&path, config).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let path_text = path.to_string_lossy().into_owned();
    let (server, addr) =
        procfs::Spawned::start(&["serve", "--config", &path_text], Some(path)).await?;
    let mut endpoint = endpoint(args, &format!("ws://{addr}/connection/websocket"), secret).await?;
    if webtransport {
        endpoint.webtransport = Some(Arc::new(webtransport_target(addr).await?));
    }
    Ok((server, endpoint))
}

/// Measures one server: idle memory (with the first dialect, over
/// WebSocket), then fan-out for each dialect, transport and subscriber
/// count, then the datagram stage.
async fn measure(
    args: &RunArgs,
    name: &str,
    endpoint: Endpoint,
    pid: Option<u32>,
    dialects: &[Dialect],
    transports: &[Transport],
) -> Result<ServerResult, String> {
    let endpoint = Arc::new(endpoint);
    let stats = Arc::new(Stats::new()?);
    let mut result = ServerResult {
        name: name.to_owned(),
        pid,
        idle: None,
        idle_webtransport: None,
        idle_webtransport_fresh: false,
        fanout: Vec::new(),
        datagram: None,
    };
    let mut sizes = args.subscribers.clone();
    sizes.retain(|&n| n > 0);
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    for (i, &dialect) in dialects.iter().enumerate() {
        let label = format!("{name}/{}", dialect.name());
        let ws_pool = |stage| {
            Pool::new(
                endpoint.clone(),
                dialect,
                Transport::WebSocket,
                stage,
                stats.clone(),
            )
        };
        let mut idle_pool = ws_pool(args.idle_stage);
        if i == 0 && args.idle_connections > 0 {
            result.idle =
                Some(idle(args, &label, &mut idle_pool, pid, args.idle_connections).await?);
        }
        if sizes.is_empty() {
            idle_pool.resize(0).await?;
            break;
        }
        if args.idle_stage != Stage::Subscribe || !transports.contains(&Transport::WebSocket) {
            // Those connections cannot receive, or are not wanted: start over.
            let had = idle_pool.subscribers();
            idle_pool.resize(0).await?;
            idle_pool = ws_pool(Stage::Subscribe);
            if had > 0 {
                tokio::time::sleep(args.settle).await;
            }
        }
        let mut publisher = Publisher::open(&endpoint, dialect, args.payload).await?;
        for &transport in transports {
            let mut pool = match transport {
                Transport::WebSocket => {
                    std::mem::replace(&mut idle_pool, ws_pool(Stage::Subscribe))
                }
                Transport::WebTransport => Pool::new(
                    endpoint.clone(),
                    dialect,
                    transport,
                    Stage::Subscribe,
                    stats.clone(),
                ),
            };
            let label = format!("{label}/{}", transport.short());
            for &n in &sizes {
                let opening = Instant::now();
                publisher.meanwhile(pool.resize(n)).await??;
                if opening.elapsed() > Duration::from_secs(2) {
                    eprintln!(
                        "{label}: {n} subscribers open ({:.0} opened/s)",
                        n as f64 / opening.elapsed().as_secs_f64()
                    );
                }
                publisher.meanwhile(tokio::time::sleep(args.settle)).await?;
                let fanout =
                    fanout(args, &mut publisher, &pool, &stats, pid, dialect, transport).await?;
                eprintln!(
                    "{label}: {n} subscribers: {:.0} deliveries/s max; p99 {:.2} ms at {:.0} publications/s",
                    fanout.max.deliveries_per_s, fanout.half.p99_ms, fanout.half.publications_per_s
                );
                result.fanout.push(fanout);
            }
            publisher.meanwhile(pool.resize(0)).await??;
            publisher.meanwhile(tokio::time::sleep(args.settle)).await?;
        }
        publisher.close().await;
    }
    let datagram_dialect = dialects
        .first()
        .copied()
        .filter(|d| matches!(d, Dialect::Switchboard(_)));
    let datagrams = transports.contains(&Transport::WebTransport) && args.datagram_subscribers > 0;
    if let Some(dialect) = datagram_dialect.filter(|_| datagrams) {
        let rate = args.datagram_rate.unwrap_or_else(|| {
            let lowest = result
                .fanout
                .iter()
                .filter(|f| {
                    f.framing == dialect.name() && f.subscribers == args.datagram_subscribers
                })
                .map(|f| f.max.publications_per_s * args.latency_share)
                .fold(f64::INFINITY, f64::min);
            DATAGRAM_RATE.min(lowest).max(1.0)
        });
        result.datagram =
            Some(datagram_stage(args, name, &endpoint, &stats, pid, dialect, rate).await?);
    }
    Ok(result)
}

/// The datagram stage's default rate, in publications per second.
const DATAGRAM_RATE: f64 = 200.0;
/// How long the datagram stage waits for the last deliveries (lost
/// datagrams never come).
const DATAGRAM_DRAIN: Duration = Duration::from_secs(2);

/// One rate, three paths: WebTransport subscribers of the volatile room
/// (datagrams), WebSocket subscribers of it (pushes), WebTransport
/// subscribers of the ordinary room (the stream). The publisher is on
/// WebSocket.
async fn datagram_stage(
    args: &RunArgs,
    name: &str,
    endpoint: &Arc<Endpoint>,
    stats: &Arc<Stats>,
    pid: Option<u32>,
    dialect: Dialect,
    rate: f64,
) -> Result<DatagramResult, String> {
    let volatile = Arc::new(Endpoint {
        room: args.volatile_room.clone(),
        ..Endpoint::clone(endpoint)
    });
    let paths = [
        (PATH_DATAGRAM, Transport::WebTransport, &volatile, true),
        (PATH_WS_PUSH, Transport::WebSocket, &volatile, true),
        (PATH_WT_STREAM, Transport::WebTransport, endpoint, false),
    ];
    let mut results = Vec::new();
    for (path, transport, target, is_volatile) in paths {
        let mut pool = Pool::new(
            target.clone(),
            dialect,
            transport,
            Stage::Subscribe,
            stats.clone(),
        );
        pool.resize(args.datagram_subscribers).await?;
        tokio::time::sleep(args.settle).await;
        let mut publisher = Publisher::open(target, dialect, args.payload).await?;
        let n = pool.subscribers() as u64;
        // Warm-up at the rate.
        let base = stats.delivered();
        let sent = publisher
            .run(Pace::Rate(rate), Duration::from_secs(1), n, stats)
            .await?;
        publisher
            .settle(|| stats.delivered() >= base + sent * n, DATAGRAM_DRAIN)
            .await?;
        let (lost_before, datagrams_before) = (stats.lost(), stats.datagrams());
        let drops = || {
            let wt = endpoint.webtransport.as_deref()?;
            let clients: Option<u64> = wt.client_ports().into_iter().map(procfs::udp_drops).sum();
            Some((server_udp_drops(endpoint)?, clients?))
        };
        let drops_before = drops();
        stats.start_recording();
        let start = Reading::now(stats.delivered(), pid);
        let sent = publisher
            .run(Pace::Rate(rate), args.duration, n, stats)
            .await?;
        let end = Reading::now(stats.delivered(), pid);
        publisher
            .settle(|| stats.recorded() >= sent * n, DATAGRAM_DRAIN)
            .await?;
        let latencies = stats.stop_recording();
        let delivered = stats.recorded();
        let all = stats.delivered() - start.delivered;
        let drops = drops().zip(drops_before).map(|(after, before)| {
            (
                after.0.saturating_sub(before.0),
                after.1.saturating_sub(before.1),
            )
        });
        let latency = LatencyResult::new(&interval(&start, &end), sent, delivered, n, &latencies);
        eprintln!(
            "{name}/{}/{path}: {n} subscribers at {:.0}/s: loss {:.3}%, p99 {:.2} ms",
            dialect.name(),
            latency.publications_per_s,
            (1.0 - latency.delivered_fraction).max(0.0) * 100.0,
            latency.p99_ms
        );
        results.push(DatagramPath {
            path: path.to_owned(),
            transport,
            room: target.room.clone(),
            volatile: is_volatile,
            latency,
            via_datagrams: (stats.datagrams() - datagrams_before) as f64 / all.max(1) as f64,
            lost_subscribers: stats.lost() - lost_before,
            server_socket_drops: drops.map(|d| d.0),
            generator_socket_drops: drops.map(|d| d.1),
        });
        publisher.close().await;
        pool.resize(0).await?;
        tokio::time::sleep(args.settle).await;
    }
    Ok(DatagramResult {
        framing: dialect.name().to_owned(),
        subscribers: args.datagram_subscribers,
        rate,
        paths: results,
    })
}

/// Idle memory per WebTransport connection on the server at `endpoint`.
async fn idle_webtransport(
    args: &RunArgs,
    endpoint: Endpoint,
    pid: Option<u32>,
    encoding: crate::codec::Encoding,
) -> Result<IdleResult, String> {
    let stats = Arc::new(Stats::new()?);
    let mut pool = Pool::new(
        Arc::new(endpoint),
        Dialect::Switchboard(encoding),
        Transport::WebTransport,
        args.idle_stage,
        stats,
    );
    // Let the fresh server settle before its RSS(0).
    tokio::time::sleep(args.settle).await;
    let label = format!("webtransport/{}", encoding.name());
    let idle = idle(args, &label, &mut pool, pid, args.wt_idle_connections).await;
    pool.resize(0).await?;
    idle
}

async fn idle(
    args: &RunArgs,
    label: &str,
    pool: &mut Pool,
    pid: Option<u32>,
    connections: usize,
) -> Result<IdleResult, String> {
    let rss = || pid.and_then(procfs::rss_bytes);
    let mut points = vec![(0, rss())];
    let mut opening = Duration::ZERO;
    let step = args.idle_step.max(1);
    while pool.subscribers() < connections {
        let target = (pool.subscribers() + step).min(connections);
        let started = Instant::now();
        pool.resize(target).await?;
        opening += started.elapsed();
        tokio::time::sleep(args.settle).await;
        let now = rss();
        eprintln!(
            "{label}: {target} idle connections, server RSS {:.1} MiB",
            now.unwrap_or(0) as f64 / 1048576.0
        );
        points.push((target, now));
    }
    Ok(IdleResult::new(
        points,
        pool.subscribers() as f64 / opening.as_secs_f64().max(1e-9),
    ))
}

/// A reading of the counters at one instant.
struct Reading {
    at: Instant,
    delivered: u64,
    server_cpu: Option<f64>,
    own_cpu: Option<f64>,
    machine: Option<procfs::MachineTicks>,
}

impl Reading {
    fn now(delivered: u64, pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            delivered,
            server_cpu: pid.and_then(|p| procfs::cpu_seconds(Some(p))),
            own_cpu: procfs::cpu_seconds(None),
            machine: procfs::machine_ticks(),
        }
    }
}

/// The same figures over an interval.
struct Interval {
    seconds: f64,
    deliveries: u64,
    server_cpu: Option<f64>,
    own_cpu: Option<f64>,
    /// All CPUs busy (processes, interrupts, softirq), in % of one CPU.
    machine_cpu_pct: Option<f64>,
    /// Processes other than the server and the generator, in % of one CPU.
    others_cpu_pct: Option<f64>,
}

fn interval(a: &Reading, b: &Reading) -> Interval {
    let seconds = (b.at - a.at).as_secs_f64();
    let server_cpu = b.server_cpu.zip(a.server_cpu).map(|(b, a)| b - a);
    let own_cpu = b.own_cpu.zip(a.own_cpu).map(|(b, a)| b - a);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let share = |f: fn(&procfs::MachineTicks) -> u64| {
        let (a, b) = (a.machine?, b.machine?);
        Some((f(&b) - f(&a)) as f64 / (b.total - a.total).max(1) as f64 * cpus * 100.0)
    };
    let ours = (server_cpu.unwrap_or(0.0) + own_cpu.unwrap_or(0.0)) / seconds.max(1e-9) * 100.0;
    Interval {
        seconds,
        deliveries: b.delivered - a.delivered,
        server_cpu,
        own_cpu,
        machine_cpu_pct: share(|t| t.busy),
        others_cpu_pct: share(|t| t.processes).map(|p| (p - ours).max(0.0)),
    }
}

/// Packets the server's WebTransport socket has dropped so far.
fn server_udp_drops(endpoint: &Endpoint) -> Option<u64> {
    procfs::udp_drops(endpoint.webtransport.as_deref()?.server_port)
}

async fn fanout(
    args: &RunArgs,
    publisher: &mut Publisher,
    pool: &Pool,
    stats: &Stats,
    pid: Option<u32>,
    dialect: Dialect,
    transport: Transport,
) -> Result<FanoutResult, String> {
    let n = pool.subscribers() as u64;
    let lost_before = stats.lost();
    let server_drops = || match transport {
        Transport::WebTransport => server_udp_drops(pool.endpoint()),
        Transport::WebSocket => None,
    };
    let drops_before = server_drops();
    let drain = Duration::from_secs(5);
    // Warm-up, then the maximum rate.
    let base = stats.delivered();
    let sent = publisher
        .run(Pace::Window(args.window), Duration::from_secs(1), n, stats)
        .await?;
    publisher
        .settle(|| stats.delivered() >= base + sent * n, drain)
        .await?;
    let start = Reading::now(stats.delivered(), pid);
    let sent = publisher
        .run(Pace::Window(args.window), args.duration, n, stats)
        .await?;
    let end = Reading::now(stats.delivered(), pid);
    publisher
        .settle(|| stats.delivered() >= start.delivered + sent * n, drain)
        .await?;
    let max = RateResult::new(&interval(&start, &end), sent);
    // A share of it, open loop, recording latencies until everything arrived.
    let rate = (max.publications_per_s * args.latency_share).max(1.0);
    stats.start_recording();
    let start = Reading::now(stats.delivered(), pid);
    let sent = publisher
        .run(Pace::Rate(rate), args.duration, n, stats)
        .await?;
    let end = Reading::now(stats.delivered(), pid);
    publisher
        .settle(|| stats.recorded() >= sent * n, drain)
        .await?;
    let latencies = stats.stop_recording();
    // Deliveries of this phase's publications only (late ones of the
    // maximum-rate phase are not recorded).
    let delivered = stats.recorded();
    let half = LatencyResult::new(&interval(&start, &end), sent, delivered, n, &latencies);
    Ok(FanoutResult {
        framing: dialect.name().to_owned(),
        transport,
        subscribers: pool.subscribers(),
        max,
        half,
        lost_subscribers: stats.lost() - lost_before,
        server_socket_drops: server_drops()
            .zip(drops_before)
            .map(|(after, before)| after.saturating_sub(before)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_hashes_are_64_hex_digits() {
        let hex = "00ff10".to_owned() + &"ab".repeat(29);
        let hash = parse_sha256(&hex).unwrap();
        assert_eq!((hash[0], hash[1], hash[2], hash[31]), (0, 255, 16, 0xab));
        assert!(parse_sha256(&hex[2..]).is_none());
        assert!(parse_sha256(&hex.replace('f', "g")).is_none());
    }
}
