//! Results of a run: what is measured, derived figures, the printed tables
//! and the targets of the engine issue, checked against the baseline
//! measured in the same run.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Interval;
use super::client::Transport;
use super::procfs::Machine;

/// Idle memory per connection: user-space memory a target says an idle
/// connection may cost.
const TARGET_KIB_PER_CONNECTION: f64 = 8.0;
/// Fan-out target: this share of the baseline's deliveries per second.
const TARGET_SHARE_OF_BASELINE: f64 = 0.8;
/// Latency target: p99 at half the maximum rate with this many subscribers.
const TARGET_P99_MS: f64 = 5.0;
const TARGET_P99_SUBSCRIBERS: usize = 1000;
/// WebTransport fan-out: deliveries per second within this share of WebSocket's.
const TARGET_WT_WS_TOLERANCE: f64 = 0.2;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// How the run was started.
    pub command_line: String,
    /// Where it ran.
    pub machine: Machine,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Length of each fan-out phase.
    pub phase_seconds: f64,
    /// Publications in flight in the maximum-rate phase.
    pub window: u64,
    /// How long the run took.
    pub wall_seconds: f64,
    /// CPU in use by others in the second before the run, in % of one CPU.
    pub background_cpu_pct: Option<f64>,
    /// The latency phase's rate as a share of the maximum rate.
    pub latency_share: f64,
    /// How far idle Switchboard connections went: upgrade, connect or subscribe.
    pub idle_stage: String,
    /// WebTransport client endpoints (UDP sockets) the subscribers share, if any were used.
    pub wt_client_endpoints: Option<usize>,
    /// The receive buffer each of them got from the kernel, in bytes.
    pub wt_socket_recv_buffer: Option<usize>,
    /// The servers, the one under test first.
    pub servers: Vec<ServerResult>,
}

/// The measurements of one server.
#[derive(Debug, Serialize)]
pub struct ServerResult {
    /// `switchboard`, `target` or `baseline`.
    pub name: String,
    /// Its process id, when known (memory and CPU figures need it).
    pub pid: Option<u32>,
    /// Idle memory (WebSocket connections).
    pub idle: Option<IdleResult>,
    /// Idle memory of WebTransport connections, measured on a fresh server
    /// process (spawned servers) so that memory freed by the WebSocket
    /// connections is not reused.
    pub idle_webtransport: Option<IdleResult>,
    /// Whether `idle_webtransport` comes from a fresh process.
    pub idle_webtransport_fresh: bool,
    /// Fan-out per framing, transport and subscriber count.
    pub fanout: Vec<FanoutResult>,
    /// Datagrams against ordinary pushes at one rate.
    pub datagram: Option<DatagramResult>,
}

/// Server memory as idle connections are added.
#[derive(Debug, Serialize)]
pub struct IdleResult {
    /// Connections at the end.
    pub connections: usize,
    /// (connections, server RSS in bytes) after each step; RSS unknown without a pid.
    pub rss_bytes: Vec<(usize, Option<u64>)>,
    /// Slope of a least-squares line through the steps.
    pub kib_per_connection_fit: Option<f64>,
    /// (RSS(N) − RSS(0)) / N.
    pub kib_per_connection_delta: Option<f64>,
    /// Connections opened (and subscribed) per second.
    pub connections_per_s: f64,
}

impl IdleResult {
    /// Derives the figures from the steps.
    pub fn new(rss_bytes: Vec<(usize, Option<u64>)>, connections_per_s: f64) -> Self {
        let known: Vec<(f64, f64)> = rss_bytes
            .iter()
            .filter_map(|&(n, rss)| Some((n as f64, rss? as f64)))
            .collect();
        let connections = rss_bytes.last().map_or(0, |p| p.0);
        let delta = match (known.first(), known.last()) {
            (Some(&(n0, r0)), Some(&(n1, r1))) if n1 > n0 => Some((r1 - r0) / (n1 - n0) / 1024.0),
            _ => None,
        };
        let count = known.len() as f64;
        let (mx, my) = known
            .iter()
            .fold((0.0, 0.0), |(x, y), p| (x + p.0 / count, y + p.1 / count));
        let sxx: f64 = known.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = known.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let fit = (known.len() >= 2 && sxx > 0.0).then(|| sxy / sxx / 1024.0);
        Self {
            connections,
            rss_bytes,
            kib_per_connection_fit: fit,
            kib_per_connection_delta: delta,
            connections_per_s,
        }
    }
}

/// Fan-out with one publisher and N subscribers.
#[derive(Debug, Serialize)]
pub struct FanoutResult {
    /// `json`, `protobuf` or `raw`.
    pub framing: String,
    /// The subscribers' transport (the publisher uses WebSocket).
    pub transport: Transport,
    /// Subscribers.
    pub subscribers: usize,
    /// At the maximum rate.
    pub max: RateResult,
    /// At half of it.
    pub half: LatencyResult,
    /// Subscribers the server closed during the measurement.
    pub lost_subscribers: u64,
    /// WebTransport: packets the server's UDP socket dropped (receive buffer
    /// full) over both phases, from /proc/net/udp.
    pub server_socket_drops: Option<u64>,
}

/// The maximum-rate phase.
#[derive(Debug, Serialize)]
pub struct RateResult {
    /// Publications sent per second.
    pub publications_per_s: f64,
    /// Publications received per second, all subscribers together.
    pub deliveries_per_s: f64,
    /// Deliveries per CPU-second of the server.
    pub deliveries_per_server_cpu_s: Option<f64>,
    /// Server CPU time over wall time (100 = one core).
    pub server_cpu_pct: Option<f64>,
    /// The generator's CPU time over wall time.
    pub generator_cpu_pct: Option<f64>,
    /// All CPUs busy, in % of one (200 = both of 2), interrupts included.
    pub machine_cpu_pct: Option<f64>,
    /// Other processes (not the server, not the generator), in % of one CPU.
    pub others_cpu_pct: Option<f64>,
}

impl RateResult {
    /// Figures of a phase in which `sent` publications were sent.
    pub(super) fn new(interval: &Interval, sent: u64) -> Self {
        let per_s = |x: f64| x / interval.seconds.max(1e-9);
        let deliveries = interval.deliveries as f64;
        Self {
            publications_per_s: per_s(sent as f64),
            deliveries_per_s: per_s(deliveries),
            deliveries_per_server_cpu_s: interval
                .server_cpu
                .filter(|&c| c > 0.0)
                .map(|c| deliveries / c),
            server_cpu_pct: interval.server_cpu.map(|c| per_s(c) * 100.0),
            generator_cpu_pct: interval.own_cpu.map(|c| per_s(c) * 100.0),
            machine_cpu_pct: interval.machine_cpu_pct,
            others_cpu_pct: interval.others_cpu_pct,
        }
    }
}

/// The open-loop phase at a share (by default half) of the maximum rate.
#[derive(Debug, Serialize)]
pub struct LatencyResult {
    /// Publications sent per second.
    pub publications_per_s: f64,
    /// Deliveries per second during the phase.
    pub deliveries_per_s: f64,
    /// Deliveries of the phase's publications received (until drained) over
    /// publications × subscribers.
    pub delivered_fraction: f64,
    /// Publish→deliver latency percentiles, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// The largest.
    pub max_ms: f64,
    /// Server CPU time over wall time.
    pub server_cpu_pct: Option<f64>,
    /// The generator's CPU time over wall time.
    pub generator_cpu_pct: Option<f64>,
    /// All CPUs busy, in % of one (200 = both of 2), interrupts included.
    pub machine_cpu_pct: Option<f64>,
    /// Other processes (not the server, not the generator), in % of one CPU.
    pub others_cpu_pct: Option<f64>,
}

impl LatencyResult {
    /// Figures of the phase; `latencies` in nanoseconds.
    pub(super) fn new(
        interval: &Interval,
        sent: u64,
        delivered: u64,
        subscribers: u64,
        latencies: &Histogram<u64>,
    ) -> Self {
        let rate = RateResult::new(interval, sent);
        let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1e6;
        Self {
            publications_per_s: rate.publications_per_s,
            deliveries_per_s: rate.deliveries_per_s,
            delivered_fraction: delivered as f64 / (sent * subscribers).max(1) as f64,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: latencies.max() as f64 / 1e6,
            server_cpu_pct: rate.server_cpu_pct,
            generator_cpu_pct: rate.generator_cpu_pct,
            machine_cpu_pct: rate.machine_cpu_pct,
            others_cpu_pct: rate.others_cpu_pct,
        }
    }
}

/// The datagram stage's paths: WebTransport subscribers of a volatile room
/// (datagrams), WebSocket subscribers of it (ordinary pushes), WebTransport
/// subscribers of an ordinary room (the stream).
pub const PATH_DATAGRAM: &str = "wt datagram";
/// See [`PATH_DATAGRAM`].
pub const PATH_WS_PUSH: &str = "ws push";
/// See [`PATH_DATAGRAM`].
pub const PATH_WT_STREAM: &str = "wt stream";

/// The datagram stage: one rate, one subscriber count, three paths.
#[derive(Debug, Serialize)]
pub struct DatagramResult {
    /// `json` or `protobuf`.
    pub framing: String,
    /// Subscribers of each path.
    pub subscribers: usize,
    /// Publications per second asked for.
    pub rate: f64,
    /// WebTransport datagrams, WebSocket pushes, the WebTransport stream.
    pub paths: Vec<DatagramPath>,
}

/// One way publications reach the subscribers in the datagram stage.
#[derive(Debug, Serialize)]
pub struct DatagramPath {
    /// What is measured: [`PATH_DATAGRAM`], [`PATH_WS_PUSH`] or [`PATH_WT_STREAM`].
    pub path: String,
    /// The subscribers' transport.
    pub transport: Transport,
    /// The room (volatile or not).
    pub room: String,
    /// Whether the room is volatile.
    pub volatile: bool,
    /// Rate, delivered fraction (1 − loss) and latency.
    pub latency: LatencyResult,
    /// Share of the deliveries that came in QUIC datagrams.
    pub via_datagrams: f64,
    /// Subscribers the server closed.
    pub lost_subscribers: u64,
    /// UDP datagrams the kernel dropped (receive buffer full) during the
    /// phase at the server's WebTransport socket (packets from the clients:
    /// acknowledgements, pongs).
    pub server_socket_drops: Option<u64>,
    /// The same at the generator's WebTransport client sockets.
    pub generator_socket_drops: Option<u64>,
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Writes rows under a header, each column as wide as its widest cell, the
/// first one left-aligned.
fn table(out: &mut String, header: &[&str], rows: Vec<Vec<String>>) -> std::fmt::Result {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .chain([&header])
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in [&header].into_iter().chain(&rows) {
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            match i {
                0 => write!(out, "{cell:<width$}")?,
                _ => write!(out, "  {cell:>width$}")?,
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

fn ratio(ours: Option<f64>, base: Option<f64>) -> Option<f64> {
    ours.zip(base.filter(|&b| b > 0.0)).map(|(o, b)| o / b)
}

impl Report {
    fn baseline(&self, subscribers: usize) -> Option<&FanoutResult> {
        let baseline = self.servers.iter().find(|s| s.name == "baseline")?;
        baseline
            .fanout
            .iter()
            .find(|f| f.subscribers == subscribers)
    }

    fn under_test(&self) -> impl Iterator<Item = &ServerResult> {
        self.servers.iter().filter(|s| s.name != "baseline")
    }

    /// The tables, as printed by `bench run`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> std::fmt::Result {
        let m = &self.machine;
        let files = m.open_files.map_or("?".into(), |n| n.to_string());
        writeln!(out, "\n# switchboard bench\n")?;
        writeln!(out, "command:  {}", self.command_line)?;
        writeln!(
            out,
            "machine:  {} CPUs ({}), {:.1} GiB, Linux {}, open files {files}",
            m.cpus, m.cpu_model, m.memory_gib, m.kernel
        )?;
        writeln!(
            out,
            "settings: payload {} B, phases {:.0} s, window {}, run took {:.0} s",
            self.payload_bytes, self.phase_seconds, self.window, self.wall_seconds
        )?;
        writeln!(
            out,
            "CPU:      % of one CPU. Generator and server share the CPUs; \"all\" adds kernel \
             (softirq) time and \"others\" (other processes), {}% busy before the run",
            opt(self.background_cpu_pct, 0)
        )?;
        if let Some(endpoints) = self.wt_client_endpoints {
            writeln!(
                out,
                "WT:       the publisher always speaks WebSocket; WebTransport subscribers share {endpoints} \
                 client endpoints (UDP sockets, receive buffer {} KiB each)",
                opt(self.wt_socket_recv_buffer.map(|b| b as f64 / 1024.0), 0)
            )?;
        }

        writeln!(
            out,
            "\n## Idle memory: server RSS (Switchboard connections: {})\n",
            self.idle_stage
        )?;
        let mib = |rss: Option<&(usize, Option<u64>)>| {
            opt(rss.and_then(|p| p.1).map(|b| b as f64 / 1048576.0), 1)
        };
        let rows = self.servers.iter().flat_map(|s| {
            let wt = match s.idle_webtransport_fresh {
                true => "webtransport (fresh process)",
                false => "webtransport",
            };
            [
                (s, "websocket", s.idle.as_ref()),
                (s, wt, s.idle_webtransport.as_ref()),
            ]
        });
        let rows = rows.filter_map(|(server, transport, idle)| {
            let idle = idle?;
            Some(vec![
                server.name.clone(),
                transport.to_owned(),
                idle.connections.to_string(),
                mib(idle.rss_bytes.first()),
                mib(idle.rss_bytes.last()),
                opt(idle.kib_per_connection_fit, 2),
                opt(idle.kib_per_connection_delta, 2),
                format!("{:.0}", idle.connections_per_s),
            ])
        });
        let header = [
            "server",
            "transport",
            "conns",
            "RSS(0) MiB",
            "RSS(N) MiB",
            "KiB/conn fit",
            "KiB/conn Δ/N",
            "opened/s",
        ];
        table(out, &header, rows.collect())?;

        writeln!(
            out,
            "\n## Fan-out at the maximum rate (1 publisher → N subscribers, {} in flight)\n",
            self.window
        )?;
        let fanouts = || {
            self.servers
                .iter()
                .flat_map(|s| s.fanout.iter().map(move |f| (s, f)))
        };
        let rows = fanouts().map(|(server, f)| {
            let base = self.baseline(f.subscribers);
            let per_cpu = base.and_then(|b| b.max.deliveries_per_server_cpu_s);
            vec![
                format!("{}/{}", server.name, f.framing),
                f.transport.short().to_owned(),
                f.subscribers.to_string(),
                format!("{:.0}", f.max.publications_per_s),
                format!("{:.0}", f.max.deliveries_per_s),
                opt(f.max.deliveries_per_server_cpu_s, 0),
                opt(f.max.server_cpu_pct, 0),
                opt(f.max.generator_cpu_pct, 0),
                opt(f.max.machine_cpu_pct, 0),
                opt(f.max.others_cpu_pct, 0),
                f.lost_subscribers.to_string(),
                opt(
                    ratio(
                        Some(f.max.deliveries_per_s),
                        base.map(|b| b.max.deliveries_per_s),
                    ),
                    2,
                ),
                opt(ratio(f.max.deliveries_per_server_cpu_s, per_cpu), 2),
            ]
        });
        let header = [
            "server",
            "subs via",
            "subs",
            "pub/s",
            "deliv/s",
            "deliv/CPU-s",
            "srv CPU",
            "gen CPU",
            "all CPU",
            "others",
            "lost",
            "÷base deliv/s",
            "÷base /CPU-s",
        ];
        table(out, &header, rows.collect())?;

        writeln!(
            out,
            "\n## Latency at {:.0}% of the maximum rate (publish → deliver, ms)\n",
            self.latency_share * 100.0
        )?;
        let rows = fanouts().map(|(server, f)| {
            let h = &f.half;
            let ms = |v: f64| format!("{v:.2}");
            vec![
                format!("{}/{}", server.name, f.framing),
                f.transport.short().to_owned(),
                f.subscribers.to_string(),
                format!("{:.0}", h.publications_per_s),
                format!("{:.0}", h.deliveries_per_s),
                format!("{:.2}%", h.delivered_fraction * 100.0),
                ms(h.p50_ms),
                ms(h.p90_ms),
                ms(h.p99_ms),
                ms(h.p999_ms),
                ms(h.max_ms),
                opt(h.server_cpu_pct, 0),
                opt(h.generator_cpu_pct, 0),
                opt(h.machine_cpu_pct, 0),
                opt(h.others_cpu_pct, 0),
            ]
        });
        let header = [
            "server",
            "subs via",
            "subs",
            "pub/s",
            "deliv/s",
            "delivered",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "srv CPU",
            "gen CPU",
            "all CPU",
            "others",
        ];
        table(out, &header, rows.collect())?;
        self.write_transports(out)?;
        self.write_datagrams(out)?;
        self.write_targets(out)
    }

    /// Pairs of fan-outs of one server, framing and subscriber count: over
    /// WebSocket and over WebTransport.
    fn transport_pairs(&self) -> Vec<(&ServerResult, &FanoutResult, &FanoutResult)> {
        let mut pairs = Vec::new();
        for server in self.under_test() {
            for ws in server
                .fanout
                .iter()
                .filter(|f| f.transport == Transport::WebSocket)
            {
                let wt = server.fanout.iter().find(|f| {
                    f.transport == Transport::WebTransport
                        && f.framing == ws.framing
                        && f.subscribers == ws.subscribers
                });
                if let Some(wt) = wt {
                    pairs.push((server, ws, wt));
                }
            }
        }
        pairs
    }

    fn write_transports(&self, out: &mut String) -> std::fmt::Result {
        let pairs = self.transport_pairs();
        if pairs.is_empty() {
            return Ok(());
        }
        writeln!(
            out,
            "\n## WebTransport vs WebSocket subscribers (same server, same run; the publisher is on WebSocket)\n"
        )?;
        writeln!(
            out,
            "Maximum rate, deliveries per second and per server CPU-second:\n"
        )?;
        let rows = pairs.iter().map(|(server, ws, wt)| {
            vec![
                format!("{}/{}", server.name, ws.framing),
                ws.subscribers.to_string(),
                format!("{:.0}", ws.max.deliveries_per_s),
                format!("{:.0}", wt.max.deliveries_per_s),
                opt(
                    ratio(Some(wt.max.deliveries_per_s), Some(ws.max.deliveries_per_s)),
                    2,
                ),
                opt(ws.max.deliveries_per_server_cpu_s, 0),
                opt(wt.max.deliveries_per_server_cpu_s, 0),
                opt(
                    ratio(
                        wt.max.deliveries_per_server_cpu_s,
                        ws.max.deliveries_per_server_cpu_s,
                    ),
                    2,
                ),
                opt(ws.max.generator_cpu_pct, 0),
                opt(wt.max.generator_cpu_pct, 0),
                wt.server_socket_drops
                    .map_or_else(|| "n/a".to_owned(), |d| d.to_string()),
            ]
        });
        let header = [
            "server",
            "subs",
            "WS deliv/s",
            "WT deliv/s",
            "WT/WS",
            "WS /CPU-s",
            "WT /CPU-s",
            "WT/WS",
            "WS gen CPU",
            "WT gen CPU",
            "WT srv UDP drops",
        ];
        table(out, &header, rows.collect())?;
        writeln!(
            out,
            "\nLatency at {:.0}% of each transport's own maximum rate (ms):\n",
            self.latency_share * 100.0
        )?;
        let rows = pairs.iter().map(|(server, ws, wt)| {
            let (a, b) = (&ws.half, &wt.half);
            let pair = |x: f64, y: f64| format!("{x:.2} / {y:.2}");
            vec![
                format!("{}/{}", server.name, ws.framing),
                ws.subscribers.to_string(),
                format!("{:.0} / {:.0}", a.publications_per_s, b.publications_per_s),
                pair(a.p50_ms, b.p50_ms),
                pair(a.p90_ms, b.p90_ms),
                pair(a.p99_ms, b.p99_ms),
                pair(a.max_ms, b.max_ms),
                opt(ratio(Some(b.p99_ms), Some(a.p99_ms)), 2),
            ]
        });
        let header = [
            "server",
            "subs",
            "pub/s WS / WT",
            "p50 WS / WT",
            "p90 WS / WT",
            "p99 WS / WT",
            "max WS / WT",
            "p99 WT/WS",
        ];
        table(out, &header, rows.collect())
    }

    fn write_datagrams(&self, out: &mut String) -> std::fmt::Result {
        for server in self.under_test() {
            let Some(d) = &server.datagram else { continue };
            writeln!(
                out,
                "\n## Volatile room: datagrams vs pushes at {:.0} publications/s ({}, {} subscribers, ms)\n",
                d.rate, d.framing, d.subscribers
            )?;
            let rows = d.paths.iter().map(|p| {
                let h = &p.latency;
                let ms = |v: f64| format!("{v:.2}");
                vec![
                    format!("{}/{}", server.name, p.path),
                    p.transport.short().to_owned(),
                    p.room.clone(),
                    format!("{:.0}", h.publications_per_s),
                    format!("{:.0}", h.deliveries_per_s),
                    format!("{:.3}%", (1.0 - h.delivered_fraction).max(0.0) * 100.0),
                    format!("{:.1}%", p.via_datagrams * 100.0),
                    ms(h.p50_ms),
                    ms(h.p90_ms),
                    ms(h.p99_ms),
                    ms(h.max_ms),
                    opt(h.server_cpu_pct, 0),
                    opt(h.generator_cpu_pct, 0),
                    p.server_socket_drops
                        .map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
                    p.generator_socket_drops
                        .map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
                    p.lost_subscribers.to_string(),
                ]
            });
            let header = [
                "path",
                "subs via",
                "room",
                "pub/s",
                "deliv/s",
                "loss",
                "in dgrams",
                "p50",
                "p90",
                "p99",
                "max",
                "srv CPU",
                "gen CPU",
                "UDP drops srv",
                "gen",
                "lost",
            ];
            table(out, &header, rows.collect())?;
            writeln!(
                out,
                "\nloss: publications × subscribers not received within 2 s after the phase (datagrams are \
                 never retransmitted); latencies are of those received. UDP drops: packets the kernel dropped \
                 for a full receive buffer at the server's socket (from the clients: acknowledgements, \
                 pongs) and at the generator's sockets during the phase."
            )?;
        }
        Ok(())
    }

    fn write_targets(&self, out: &mut String) -> std::fmt::Result {
        let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
        writeln!(out, "\n## Targets\n")?;
        let base_idle = self
            .servers
            .iter()
            .find(|s| s.name == "baseline")
            .and_then(|s| s.idle.as_ref());
        for server in self.under_test() {
            if let Some(kib) = server.idle.as_ref().and_then(|i| i.kib_per_connection_fit) {
                let vs = ratio(Some(kib), base_idle.and_then(|i| i.kib_per_connection_fit));
                writeln!(
                    out,
                    "{}  idle memory ≤ {TARGET_KIB_PER_CONNECTION} KiB/connection: {}: {kib:.2} KiB ({}× baseline)",
                    verdict(kib <= TARGET_KIB_PER_CONNECTION),
                    server.name,
                    opt(vs, 2)
                )?;
            }
            let websocket = || {
                server
                    .fanout
                    .iter()
                    .filter(|f| f.transport == Transport::WebSocket)
            };
            for f in websocket() {
                if let Some(share) = ratio(
                    Some(f.max.deliveries_per_s),
                    self.baseline(f.subscribers).map(|b| b.max.deliveries_per_s),
                ) {
                    writeln!(
                        out,
                        "{}  fan-out ≥ {:.0}% of baseline: {}/{} {} subscribers: {:.0}%",
                        verdict(share >= TARGET_SHARE_OF_BASELINE),
                        TARGET_SHARE_OF_BASELINE * 100.0,
                        server.name,
                        f.framing,
                        f.subscribers,
                        share * 100.0
                    )?;
                }
            }
            let at_half = (self.latency_share - 0.5).abs() < 1e-9;
            for f in websocket().filter(|f| at_half && f.subscribers == TARGET_P99_SUBSCRIBERS) {
                writeln!(
                    out,
                    "{}  p99 ≤ {TARGET_P99_MS} ms at half the maximum rate, {} subscribers: {}/{}: {:.2} ms",
                    verdict(f.half.p99_ms <= TARGET_P99_MS),
                    f.subscribers,
                    server.name,
                    f.framing,
                    f.half.p99_ms
                )?;
            }
        }
        for (server, ws, wt) in self.transport_pairs() {
            let share = wt.max.deliveries_per_s / ws.max.deliveries_per_s.max(1e-9);
            writeln!(
                out,
                "{}  WebTransport fan-out within ±{:.0}% of WebSocket: {}/{} {} subscribers: WT/WS {:.2}",
                verdict((share - 1.0).abs() <= TARGET_WT_WS_TOLERANCE),
                TARGET_WT_WS_TOLERANCE * 100.0,
                server.name,
                ws.framing,
                ws.subscribers,
                share
            )?;
        }
        for server in self.under_test() {
            let Some(d) = &server.datagram else { continue };
            let Some(datagram) = d.paths.iter().find(|p| p.path == PATH_DATAGRAM) else {
                continue;
            };
            for other in d.paths.iter().filter(|p| p.path != PATH_DATAGRAM) {
                writeln!(
                    out,
                    "{}  datagram p99 below {} p99 at {:.0}/s: {}: {:.2} ms vs {:.2} ms (datagram loss {:.3}%)",
                    verdict(datagram.latency.p99_ms < other.latency.p99_ms),
                    other.path,
                    d.rate,
                    server.name,
                    datagram.latency.p99_ms,
                    other.latency.p99_ms,
                    (1.0 - datagram.latency.delivered_fraction).max(0.0) * 100.0
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_fit_and_delta() {
        let kib = 1024;
        let idle = IdleResult::new(
            vec![
                (0, Some(1000 * kib)),
                (1000, Some(9000 * kib)),
                (2000, Some(17000 * kib)),
            ],
            1.0,
        );
        assert_eq!(idle.connections, 2000);
        assert!((idle.kib_per_connection_fit.unwrap() - 8.0).abs() < 1e-9);
        assert!((idle.kib_per_connection_delta.unwrap() - 8.0).abs() < 1e-9);
        assert!(
            IdleResult::new(vec![(0, None), (1000, None)], 1.0)
                .kib_per_connection_fit
                .is_none()
        );
    }
}
