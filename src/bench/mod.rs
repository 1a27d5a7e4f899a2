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
pub use self::client::Stage;
use self::client::{Dialect, Endpoint, Pace, Pool, Publisher, Stats};
use self::report::{FanoutResult, IdleResult, LatencyResult, RateResult, Report, ServerResult};
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
    Run(RunArgs),
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
        BenchCommand::Run(args) => runtime.block_on(run(args)),
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
    let background_cpu_pct = background_load().await;
    if let Some(pct) = background_cpu_pct.filter(|&p| p > 10.0) {
        eprintln!(
            "warning: the machine is already {pct:.0}% busy (of one CPU) before the run: figures will be noisy"
        );
    }
    let started = Instant::now();
    let mut servers = Vec::new();
    {
        let (endpoint, pid, _server) = match &args.target {
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
                let (server, endpoint) = spawn_switchboard(&args).await?;
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
        let name = if args.target.is_some() {
            "target"
        } else {
            "switchboard"
        };
        servers.push(measure(&args, name, endpoint, pid, &dialects).await?);
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
            )
            .await?,
        );
    }
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
    })
}

/// Starts `switchboard serve` with a temp config made for the benchmark.
async fn spawn_switchboard(args: &RunArgs) -> Result<(procfs::Spawned, Endpoint), String> {
    let namespace = args.room.split_once(':').map_or("", |(ns, _)| ns);
    if namespace.is_empty() {
        return Err("--room must have a namespace (`bench:room`)".into());
    }
    let secret = format!("bench-{:032x}", fastrand::u128(..));
    let config = format!(
        "listen = \"127.0.0.1:0\"\n\
         [auth]\nhmac_secret = \"{secret}\"\n\
         [limits]\nmax_connections = 1000000\nmax_connections_per_user = 0\n\
         command_rate = 1000000\ncommand_burst = 1000000\nconnect_timeout = \"10m\"\n\
         [namespaces.{namespace}]\nhistory_size = 0\npresence = false\njoin_leave = false\n"
    );
    let path = std::env::temp_dir().join(format!("switchboard-bench-{}.toml", std::process::id()));
    std::fs::write(&path, config).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let path_text = path.to_string_lossy().into_owned();
    let (server, addr) =
        procfs::Spawned::start(&["serve", "--config", &path_text], Some(path)).await?;
    let endpoint = endpoint(args, &format!("ws://{addr}/connection/websocket"), secret).await?;
    Ok((server, endpoint))
}

/// Measures one server: idle memory (with the first dialect), then fan-out
/// for each dialect and subscriber count.
async fn measure(
    args: &RunArgs,
    name: &str,
    endpoint: Endpoint,
    pid: Option<u32>,
    dialects: &[Dialect],
) -> Result<ServerResult, String> {
    let endpoint = Arc::new(endpoint);
    let stats = Arc::new(Stats::new()?);
    let mut result = ServerResult {
        name: name.to_owned(),
        pid,
        idle: None,
        fanout: Vec::new(),
    };
    let mut sizes = args.subscribers.clone();
    sizes.retain(|&n| n > 0);
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    for (i, &dialect) in dialects.iter().enumerate() {
        let label = format!("{name}/{}", dialect.name());
        let mut pool = Pool::new(endpoint.clone(), dialect, args.idle_stage, stats.clone());
        if i == 0 && args.idle_connections > 0 {
            result.idle = Some(idle(args, &label, &mut pool, pid).await?);
        }
        if sizes.is_empty() {
            pool.resize(0).await?;
            break;
        }
        if args.idle_stage != Stage::Subscribe {
            // Those connections cannot receive: start over with subscribers.
            pool.resize(0).await?;
            pool = Pool::new(endpoint.clone(), dialect, Stage::Subscribe, stats.clone());
        }
        let mut publisher = Publisher::open(&endpoint, dialect, args.payload).await?;
        for &n in &sizes {
            pool.resize(n).await?;
            tokio::time::sleep(args.settle).await;
            let fanout = fanout(args, &mut publisher, &pool, &stats, pid, dialect).await?;
            eprintln!(
                "{label}: {n} subscribers: {:.0} deliveries/s max; p99 {:.2} ms at {:.0} publications/s",
                fanout.max.deliveries_per_s, fanout.half.p99_ms, fanout.half.publications_per_s
            );
            result.fanout.push(fanout);
        }
        publisher.close().await;
        pool.resize(0).await?;
        tokio::time::sleep(args.settle).await;
    }
    Ok(result)
}

async fn idle(
    args: &RunArgs,
    label: &str,
    pool: &mut Pool,
    pid: Option<u32>,
) -> Result<IdleResult, String> {
    let rss = || pid.and_then(procfs::rss_bytes);
    let mut points = vec![(0, rss())];
    let mut opening = Duration::ZERO;
    let step = args.idle_step.max(1);
    while pool.subscribers() < args.idle_connections {
        let target = (pool.subscribers() + step).min(args.idle_connections);
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

async fn fanout(
    args: &RunArgs,
    publisher: &mut Publisher,
    pool: &Pool,
    stats: &Stats,
    pid: Option<u32>,
    dialect: Dialect,
) -> Result<FanoutResult, String> {
    let n = pool.subscribers() as u64;
    let lost_before = stats.lost();
    let drain = Duration::from_secs(5);
    // Warm-up, then the maximum rate.
    let base = stats.delivered();
    let sent = publisher
        .run(Pace::Window(args.window), Duration::from_secs(1), n, stats)
        .await?;
    publisher.settle(stats, base + sent * n, drain).await?;
    let start = Reading::now(stats.delivered(), pid);
    let sent = publisher
        .run(Pace::Window(args.window), args.duration, n, stats)
        .await?;
    let end = Reading::now(stats.delivered(), pid);
    publisher
        .settle(stats, start.delivered + sent * n, drain)
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
        .settle(stats, start.delivered + sent * n, drain)
        .await?;
    let latencies = stats.stop_recording();
    let delivered = stats.delivered() - start.delivered;
    let half = LatencyResult::new(&interval(&start, &end), sent, delivered, n, &latencies);
    Ok(FanoutResult {
        framing: dialect.name().to_owned(),
        subscribers: pool.subscribers(),
        max,
        half,
        lost_subscribers: stats.lost() - lost_before,
    })
}
