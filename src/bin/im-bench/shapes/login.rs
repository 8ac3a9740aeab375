//! `login`: SCRAM logins per second. Each of C connections logs in, logs out and logs in
//! again for the whole window, so the figure is the login path alone, not TCP setup.

use crate::im::{self, Credentials, LoginFlow, LoginState};
use crate::net::{Net, Phase, drive};
use crate::stats::{Histogram, Report};
use crate::window::Window;
use crate::{Common, Rng, Target};
use im_server::protocol::client::{self, ServerFrame};
use std::time::{Duration, Instant};

pub struct Args {
    pub connections: usize,
}

pub fn run(common: &Common, args: &Args, rng: &mut Rng) -> Result<Report, String> {
    if common.target != Target::Im {
        return Err("the login shape measures im-server's SCRAM logins; it has no Redis form".into());
    }
    let mut net = Net::new(common.sources, common.tls.clone(), common.ws).map_err(|e| e.to_string())?;
    let creds = Credentials::new(common.kdf_iterations, rng);
    let names = im::names(&common.prefix, "l", args.connections);
    im::register_users(&mut net, common, &creds, &names)?;
    let sessions = im::login_all(&mut net, common, &creds, &names, rng)?;
    let mut roles = Vec::new();
    for (i, &t) in sessions.tokens.iter().enumerate() {
        if roles.len() <= t {
            roles.resize(t + 1, usize::MAX);
        }
        roles[t] = i;
    }
    let mut phase = Logins {
        creds: &creds,
        names: &names,
        rng,
        tokens: sessions.tokens.clone(),
        roles,
        flows: (0..names.len()).map(|_| LoginFlow::default()).collect(),
        started_at: vec![Instant::now(); names.len()],
        busy: 0,
        window: Window::new(common),
        hist: Histogram::default(),
        logins_in_window: 0,
        logins: 0,
    };
    let deadline = phase.window.deadline(Duration::from_secs(10));
    drive(&mut net, &mut phase, deadline, "logging in and out")?;
    let mut report = Report::new("login", common.target.name());
    let seconds = phase.window.seconds();
    report.int("connections", args.connections as u64);
    report.float("seconds", seconds);
    report.float("logins_per_s", phase.logins_in_window as f64 / seconds);
    report.latency(["login_p50_us", "login_p99_us", "login_p999_us", "login_max_us"], &phase.hist);
    report.int("logins_total", phase.logins);
    report.cpu(phase.window.cpu_result);
    report.cpu_per("server_cpu_us_per_login", phase.window.cpu_result, phase.logins_in_window as f64 / seconds);
    if phase.logins_in_window == 0 {
        report.fail("no login completed in the window");
    }
    Ok(report)
}

struct Logins<'a> {
    creds: &'a Credentials,
    names: &'a [String],
    rng: &'a mut Rng,
    tokens: Vec<usize>,
    roles: Vec<usize>,
    flows: Vec<LoginFlow>,
    started_at: Vec<Instant>,
    /// Connections in the middle of a login.
    busy: usize,
    window: Window,
    hist: Histogram,
    logins_in_window: u64,
    logins: u64,
}

impl Logins<'_> {
    /// LOGOUT, then LOGIN_START at once: the server answers both in order.
    fn cycle(&mut self, net: &mut Net, i: usize, now: Instant) {
        let token = self.tokens[i];
        let id = net.next_id(token);
        client::logout(net.out(token), id);
        self.flows[i].start(net, token, &self.names[i], self.rng);
        self.started_at[i] = now;
    }
}

impl Phase for Logins<'_> {
    fn tick(&mut self, net: &mut Net, now: Instant) -> Result<(), String> {
        if self.window.tick(now) {
            for i in 0..self.tokens.len() {
                self.cycle(net, i, now);
            }
            self.busy = self.tokens.len();
        }
        Ok(())
    }

    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], now: Instant) -> Result<usize, String> {
        let i = self.roles[token];
        let mut finished = false;
        let flow = &mut self.flows[i];
        let name = &self.names[i];
        let creds = self.creds;
        let used = im::frames(data, |_, frame| {
            match &frame {
                ServerFrame::Ok | ServerFrame::SyncDone { .. } | ServerFrame::Presence { .. } => {}
                other => finished |= flow.on_frame(net, token, name, creds, other)?,
            }
            Ok(())
        })?;
        if finished {
            self.logins += 1;
            if self.window.measuring() {
                self.logins_in_window += 1;
                self.hist.record(now.duration_since(self.started_at[i]).as_nanos() as u64);
            }
            if self.window.loading() {
                self.cycle(net, i, now);
            } else {
                self.busy -= 1;
            }
        }
        Ok(used)
    }

    fn done(&self) -> bool {
        self.window.draining() && self.busy == 0 && self.flows.iter().all(|f| f.state == LoginState::LoggedIn)
    }
}
