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
        let fields = stat_fields(&self.path("stat"))?;
        Some(field(&fields, 11)? + field(&fields, 12)?)
    }

    /// CPU time so far of the process and of its child processes, in ticks: its own, its
    /// children's that have ended (fields 16 and 17 of `stat`) and those of the children still
    /// running. A server's forks (Redis rewriting its append-only file) are its own work, not
    /// other work on the machine.
    pub fn family_cpu_ticks(self) -> Option<u64> {
        let own = with_ended_children(&stat_fields(&self.path("stat"))?)?;
        let pid = match self {
            Process::Pid(pid) => pid,
            Process::Myself => std::process::id(),
        };
        Some(own + live_children_ticks(pid))
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
    /// Whether the process's children count as its own (the server's do).
    family: bool,
    start_ticks: Option<u64>,
    start: Instant,
}

impl CpuWindow {
    pub fn start(process: Process) -> Self {
        CpuWindow { process, family: false, start_ticks: process.cpu_ticks(), start: Instant::now() }
    }

    /// A window over the process and its child processes.
    pub fn start_family(process: Process) -> Self {
        CpuWindow { process, family: true, start_ticks: process.family_cpu_ticks(), start: Instant::now() }
    }

    fn ticks(&self) -> Option<u64> {
        if self.family { self.process.family_cpu_ticks() } else { self.process.cpu_ticks() }
    }

    /// Percent of one core used since the start (100 = one core busy all the time).
    pub fn percent(&self) -> Option<f64> {
        let end = self.ticks()?;
        let elapsed = self.start.elapsed().as_secs_f64();
        if elapsed <= 0.0 {
            return None;
        }
        Some((end - self.start_ticks?) as f64 / TICKS_PER_SECOND / elapsed * 100.0)
    }
}

/// The fields of a `stat` file after the command name (which may hold spaces and parentheses,
/// so the fields start after the last ')'): index 0 is the state, 1 the parent's pid.
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().map(str::to_string).collect())
}

fn field(fields: &[String], index: usize) -> Option<u64> {
    fields.get(index)?.parse().ok()
}

/// CPU ticks of the running children of `parent` (and of their ended children).
fn live_children_ticks(parent: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let parent = parent.to_string();
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| stat_fields(&format!("/proc/{pid}/stat")))
        .filter(|fields| fields.get(1) == Some(&parent))
        .filter_map(|fields| with_ended_children(&fields))
        .sum()
}

/// A process's own user and system ticks plus those of its ended children (fields 14 to 17).
fn with_ended_children(fields: &[String]) -> Option<u64> {
    Some(field(fields, 11)? + field(fields, 12)? + field(fields, 13)? + field(fields, 14)?)
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
            server: server_pid.map(|pid| CpuWindow::start_family(Process::Pid(pid))),
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

    /// A child's CPU time counts as its parent's: the bench's own, while a busy child runs
    /// and after it has ended.
    #[test]
    fn a_childs_cpu_time_counts_as_its_parents() {
        let before = Process::Myself.family_cpu_ticks().unwrap();
        let mut child = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        // The child's ticks show up while it runs (within a generous deadline on a busy machine).
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        let mut running = before;
        while running < before + 20 && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            running = Process::Myself.family_cpu_ticks().unwrap();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let ended = Process::Myself.family_cpu_ticks().unwrap();
        assert!(running >= before + 20, "a running child's ticks: {before} then {running}");
        assert!(ended >= running, "an ended child's ticks stay counted: {running} then {ended}");
    }
}
