//! CPU time and resident memory of a process, read from `/proc` (Linux only).

use std::time::Instant;

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on every mainstream Linux build).
const TICKS_PER_SECOND: f64 = 100.0;

/// Which process to read: the server under test, or the bench itself.
#[derive(Debug, Clone, Copy)]
pub enum Process {
    Pid(u32),
    Myself,
}

impl Process {
    fn path(self, file: &str) -> String {
        match self {
            Process::Pid(pid) => format!("/proc/{pid}/{file}"),
            Process::Myself => format!("/proc/self/{file}"),
        }
    }

    /// User plus system CPU time so far, in ticks (fields 14 and 15 of `stat`).
    pub fn cpu_ticks(self) -> Option<u64> {
        let stat = std::fs::read_to_string(self.path("stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    /// `VmRSS` of `status`, in KiB.
    pub fn rss_kib(self) -> Option<u64> {
        let status = std::fs::read_to_string(self.path("status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

/// CPU use of one process over a window that starts when this is made.
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    process: Process,
    start_ticks: Option<u64>,
    start: Instant,
}

impl CpuWindow {
    pub fn start(process: Process) -> Self {
        CpuWindow { process, start_ticks: process.cpu_ticks(), start: Instant::now() }
    }

    /// Percent of one core used since the start (100 = one core busy all the time).
    pub fn percent(&self) -> Option<f64> {
        let end = self.process.cpu_ticks()?;
        let elapsed = self.start.elapsed().as_secs_f64();
        if elapsed <= 0.0 {
            return None;
        }
        Some((end - self.start_ticks?) as f64 / TICKS_PER_SECOND / elapsed * 100.0)
    }
}

/// Busy time of the whole machine so far, in ticks summed over every CPU (`/proc/stat`).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    Some(v.get(..8)?.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum())
}

/// CPU use over one window, each in percent of one core.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub server: Option<f64>,
    pub bench: Option<f64>,
    /// The rest of the machine: other processes, and interrupt work not charged to a process.
    pub other: Option<f64>,
}

/// The server's, the bench's and the rest of the machine's CPU over the same window.
#[derive(Debug, Clone, Copy)]
pub struct CpuPair {
    server: Option<CpuWindow>,
    bench: CpuWindow,
    machine_start: Option<u64>,
}

impl CpuPair {
    pub fn start(server_pid: Option<u32>) -> Self {
        CpuPair {
            server: server_pid.map(|pid| CpuWindow::start(Process::Pid(pid))),
            bench: CpuWindow::start(Process::Myself),
            machine_start: machine_busy_ticks(),
        }
    }

    /// What each side used since the start.
    pub fn usage(&self) -> CpuUse {
        let server = self.server.and_then(|w| w.percent());
        let bench = self.bench.percent();
        let elapsed = self.bench.start.elapsed().as_secs_f64().max(1e-9);
        let machine = machine_busy_ticks()
            .zip(self.machine_start)
            .map(|(end, start)| end.saturating_sub(start) as f64 / TICKS_PER_SECOND / elapsed * 100.0);
        let other = machine.map(|m| (m - server.unwrap_or(0.0) - bench.unwrap_or(0.0)).max(0.0));
        CpuUse { server, bench, other }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        assert!(Process::Myself.cpu_ticks().is_some());
        assert!(Process::Myself.rss_kib().unwrap() > 0);
        assert!(Process::Pid(std::process::id()).rss_kib().is_some());
        assert!(machine_busy_ticks().is_some());
    }
}
