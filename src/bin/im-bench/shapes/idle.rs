//! `idle`: C authenticated (for Redis: subscribed) connections held open; what each costs the
//! server in resident memory, and the CPU it spends while they idle.

use crate::im::{self, Credentials};
use crate::net::{Net, Phase, drive};
use crate::procstat::{CpuPair, Process};
use crate::redis;
use crate::stats::Report;
use crate::{Common, Rng, Target};
use std::time::{Duration, Instant};

pub struct Args {
    pub connections: usize,
}

pub fn run(common: &Common, args: &Args, rng: &mut Rng) -> Result<Report, String> {
    let mut net = Net::new(common.sources, common.tls.clone(), common.ws).map_err(|e| e.to_string())?;
    let c = args.connections;
    let mut report = Report::new("idle", common.target.name());
    let rss = || common.server_pid.and_then(|pid| Process::Pid(pid).rss_kib());
    let (before, setup) = match common.target {
        Target::Im => {
            let creds = Credentials::new(common.kdf_iterations, rng);
            let names = im::names(&common.prefix, "i", c);
            im::register_users(&mut net, common, &creds, &names)?;
            let before = rss();
            let t0 = Instant::now();
            im::login_all(&mut net, common, &creds, &names, rng)?;
            (before, t0.elapsed())
        }
        Target::Redis(_) => {
            let before = rss();
            let t0 = Instant::now();
            let subs: Vec<Option<String>> = (0..c).map(|i| Some(format!("{}i{i}", common.prefix))).collect();
            redis::open(&mut net, common, &subs)?;
            (before, t0.elapsed())
        }
    };
    let after_setup = rss();
    let cpu = CpuPair::start(common.server_pid);
    let end = Instant::now() + Duration::from_secs_f64(common.seconds);
    let mut hold = Hold { target: common.target, end, over: false, closed: 0, first: None };
    drive(&mut net, &mut hold, end + Duration::from_secs(5), "holding connections")?;
    let cpu_use = cpu.usage();
    let after = rss();
    report.int("connections", c as u64);
    report.float("setup_s", setup.as_secs_f64());
    report.float("connections_per_s", c as f64 / setup.as_secs_f64().max(1e-9));
    report.float("seconds", common.seconds);
    if let (Some(before), Some(after_setup), Some(after)) = (before, after_setup, after) {
        report.int("rss_before_kib", before);
        report.int("rss_after_setup_kib", after_setup);
        report.int("rss_after_kib", after);
        report.float("kib_per_connection", after.saturating_sub(before) as f64 / c.max(1) as f64);
    }
    report.cpu(cpu_use);
    report.int("closed_while_idle", hold.closed);
    if hold.closed > 0 {
        report.fail(format!(
            "{} connections closed while idle; the first: {}",
            hold.closed,
            hold.first.unwrap_or_default()
        ));
    }
    Ok(report)
}

/// Keeps every connection open until `end`, counting those the server closes.
struct Hold {
    target: Target,
    end: Instant,
    over: bool,
    closed: u64,
    first: Option<String>,
}

impl Phase for Hold {
    fn on_data(&mut self, _net: &mut Net, _token: usize, data: &[u8], _now: Instant) -> Result<usize, String> {
        // Idle connections may still get pushes (presence, say); they are read and dropped.
        match self.target {
            Target::Im => im::frames(data, |_, _| Ok(())),
            Target::Redis(_) => redis::replies(data, |_| Ok(())),
        }
    }

    fn on_closed(&mut self, _net: &mut Net, _token: usize, why: &str) -> Result<(), String> {
        self.closed += 1;
        self.first.get_or_insert_with(|| why.to_string());
        Ok(())
    }

    fn tick(&mut self, _net: &mut Net, now: Instant) -> Result<(), String> {
        self.over = now >= self.end;
        Ok(())
    }

    fn done(&self) -> bool {
        self.over
    }
}
