//! Results of a run: what is measured, derived figures, the printed tables
//! and the targets of the engine issue, checked against the baseline
//! measured in the same run.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Interval;
use super::procfs::Machine;

/// Idle memory per connection: user-space memory a target says an idle
/// connection may cost.
const TARGET_KIB_PER_CONNECTION: f64 = 8.0;
/// Fan-out target: this share of the baseline's deliveries per second.
const TARGET_SHARE_OF_BASELINE: f64 = 0.8;
/// Latency target: p99 at half the maximum rate with this many subscribers.
const TARGET_P99_MS: f64 = 5.0;
const TARGET_P99_SUBSCRIBERS: usize = 1000;

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
    /// Idle memory.
    pub idle: Option<IdleResult>,
    /// Fan-out per framing and subscriber count.
    pub fanout: Vec<FanoutResult>,
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
    /// Subscribers.
    pub subscribers: usize,
    /// At the maximum rate.
    pub max: RateResult,
    /// At half of it.
    pub half: LatencyResult,
    /// Subscribers the server closed during the measurement.
    pub lost_subscribers: u64,
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
    /// Deliveries received (until drained) over publications × subscribers.
    pub delivered_fraction: f64,
    /// Publish→deliver latency percentiles, in milliseconds.
    pub p50_ms: f64,
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

        writeln!(
            out,
            "\n## Idle memory: server RSS (Switchboard connections: {})\n",
            self.idle_stage
        )?;
        let mib = |rss: Option<&(usize, Option<u64>)>| {
            opt(rss.and_then(|p| p.1).map(|b| b as f64 / 1048576.0), 1)
        };
        let rows = self
            .servers
            .iter()
            .filter_map(|s| Some((s, s.idle.as_ref()?)));
        let rows = rows.map(|(server, idle)| {
            vec![
                server.name.clone(),
                idle.connections.to_string(),
                mib(idle.rss_bytes.first()),
                mib(idle.rss_bytes.last()),
                opt(idle.kib_per_connection_fit, 2),
                opt(idle.kib_per_connection_delta, 2),
                format!("{:.0}", idle.connections_per_s),
            ]
        });
        let header = [
            "server",
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
                f.subscribers.to_string(),
                format!("{:.0}", h.publications_per_s),
                format!("{:.0}", h.deliveries_per_s),
                format!("{:.2}%", h.delivered_fraction * 100.0),
                ms(h.p50_ms),
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
            "subs",
            "pub/s",
            "deliv/s",
            "delivered",
            "p50",
            "p99",
            "p99.9",
            "max",
            "srv CPU",
            "gen CPU",
            "all CPU",
            "others",
        ];
        table(out, &header, rows.collect())?;
        self.write_targets(out)
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
            for f in &server.fanout {
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
            for f in server
                .fanout
                .iter()
                .filter(|f| at_half && f.subscribers == TARGET_P99_SUBSCRIBERS)
            {
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
