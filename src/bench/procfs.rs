//! What the benchmark learns from the operating system (Linux `/proc`): a
//! process's resident memory and CPU time, the machine, the open-file limit;
//! and the servers it spawns, which are killed when their handle drops.
//!
//! Without `unsafe` (the crate forbids it) there is no `sysconf` and no
//! `setrlimit`: clock ticks come from the auxiliary vector (`AT_CLKTCK`),
//! and a soft open-file limit that is too low is reported with the `ulimit`
//! command that fixes it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;

/// Resident memory of a process (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) of a process, or of this one with `None`, in seconds.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; utime
    // and stime are fields 14 and 15, the 12th and 13th after it.
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

/// CPU time of the whole machine since boot, in clock ticks.
#[derive(Clone, Copy, Debug)]
pub struct MachineTicks {
    /// Spent in processes (user, nice, system).
    pub processes: u64,
    /// Not idle: processes, interrupts and softirq (loopback networking is
    /// mostly softirq, charged to no process), steal.
    pub busy: u64,
    /// Everything, idle included.
    pub total: u64,
}

/// Reads the machine's CPU time (`/proc/stat`).
pub fn machine_ticks() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map_while(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let processes = ticks.get(..3)?.iter().sum();
    Some(MachineTicks {
        processes,
        busy: total - idle,
        total,
    })
}

/// Clock ticks per second (`AT_CLKTCK` from `/proc/self/auxv`; 100, the
/// Linux value everywhere in practice, when it cannot be read).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        const AT_CLKTCK: usize = 17;
        const WORD: usize = size_of::<usize>();
        let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
        let word = |b: &[u8]| b.try_into().ok().map(usize::from_ne_bytes);
        auxv.chunks_exact(2 * WORD)
            .find_map(|pair| {
                (word(&pair[..WORD])? == AT_CLKTCK)
                    .then(|| word(&pair[WORD..]))
                    .flatten()
            })
            .filter(|&ticks| ticks > 0)
            .map_or(100, |ticks| ticks as u64)
    })
}

/// Datagrams the kernel dropped (receive buffer full) for the UDP sockets
/// bound to `port` on any address, since they were opened (`drops` of
/// `/proc/net/udp` and `udp6`).
pub fn udp_drops(port: u16) -> Option<u64> {
    let mut total = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                let drops: u64 = fields.last()?.parse().ok()?;
                *total.get_or_insert(0) += drops;
            }
        }
    }
    total
}

/// The soft limit on open files of this process (inherited by the servers it spawns).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The machine a run measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// The CPU model (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// Total memory, in GiB.
    pub memory_gib: f64,
    /// The kernel release.
    pub kernel: String,
    /// Soft limit on open files per process.
    pub open_files: Option<u64>,
}

impl Machine {
    /// Reads the machine's description.
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let field = |text: &str, key: &str| {
            let line = text
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_default();
            line.split_once(':')
                .map_or("", |(_, v)| v.trim())
                .to_owned()
        };
        let mem_kib: f64 = field(&read("/proc/meminfo"), "MemTotal")
            .trim_end_matches(" kB")
            .parse()
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: field(&read("/proc/cpuinfo"), "model name"),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            open_files: open_files_limit(),
        }
    }
}

/// A server this process started: killed (and its temp config removed) on drop.
pub struct Spawned {
    child: Child,
    config: Option<PathBuf>,
}

impl Spawned {
    /// Runs this executable with `args` and waits for the line announcing
    /// `listening on ADDR` on its stdout. `config` is removed on drop.
    pub async fn start(
        args: &[&str],
        config: Option<PathBuf>,
    ) -> Result<(Self, SocketAddr), String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let child = Command::new(exe)
            .args(args)
            // The server reads these; the temp config must decide alone.
            .env_remove("SWITCHBOARD_SECRET")
            .env_remove("SWITCHBOARD_LISTEN")
            .env_remove("SWITCHBOARD_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", args.join(" ")))?;
        let mut spawned = Self { child, config };
        let stdout = spawned
            .child
            .stdout
            .take()
            .ok_or("the server's stdout was not captured")?;
        let (found, announced) = tokio::sync::oneshot::channel();
        // Reads the announcement, then keeps draining so the server never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let addr = line
                    .split_once("listening on ")
                    .and_then(|(_, a)| a.trim().parse().ok());
                if let (Some(addr), Some(tx)) = (addr, found.take()) {
                    let _ = tx.send(addr);
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(20), announced).await {
            Ok(Ok(addr)) => Ok((spawned, addr)),
            _ => {
                let status = spawned.child.try_wait().ok().flatten();
                Err(format!(
                    "`{}` did not announce its address (exit status: {status:?})",
                    args.join(" ")
                ))
            }
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(path) = &self.config {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(cpu_seconds(None).unwrap() >= 0.0);
        assert!((1..=10_000).contains(&clock_ticks()));
        assert!(open_files_limit().unwrap() > 0);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(udp_drops(socket.local_addr().unwrap().port()), Some(0));
        let ticks = machine_ticks().unwrap();
        assert!(ticks.processes <= ticks.busy && ticks.busy <= ticks.total);
        assert!(Machine::read().cpus >= 1);
    }
}
