//! `drain`: M messages queued for an offline user, then the time to push them all after it
//! logs in (it acknowledges as it reads). A second login then checks that the
//! acknowledgements held: it must find an empty backlog.
//!
//! With `--devices N`, the user logs in on N devices at once and each drains the whole
//! backlog, since every device has its own position (PROTOCOL.md §6): M × N deliveries. Each
//! device logs in and acknowledges once before the fill, so that its backlog is exactly the M
//! messages: a device first seen during the drain would start at the lowest position of the
//! others at that moment, which moves as they acknowledge.

use super::traffic::{parse_body, write_body};
use crate::im::{self, Credentials, LoginFlow};
use crate::net::{Net, Phase, drive};
use crate::procstat::{CpuPair, CpuUse};
use crate::stats::Report;
use crate::{Common, Rng, Target};
use im_server::protocol::client::{self, NextFrame, ServerFrame};
use std::time::Instant;

pub struct Args {
    pub messages: usize,
    pub window: usize,
    pub body: usize,
    /// Devices the receiver drains on at once, with ids 1 to `devices`.
    pub devices: u64,
}

pub fn run(common: &Common, args: &Args, rng: &mut Rng) -> Result<Report, String> {
    if common.target != Target::Im {
        return Err("the drain shape measures im-server's offline backlog; it has no Redis form".into());
    }
    let mut net = Net::new(common.sources, common.tls.clone(), common.ws).map_err(|e| e.to_string())?;
    let creds = Credentials::new(common.kdf_iterations, rng);
    let names = vec![format!("{}ds", common.prefix), format!("{}dr", common.prefix)];
    im::register_users(&mut net, common, &creds, &names)?;
    let sessions = im::login_all(&mut net, common, &creds, &names, rng)?;
    let (sender, receiver) = (sessions.tokens[0], sessions.tokens[1]);
    let items = im::befriend(&mut net, common, &[(sender, &names[0], receiver, &names[1])])?;

    // The receiver's other devices log in too. Per device: its connection, and the highest
    // item id it was pushed. The first device is the receiver's connection of the steps above.
    let more_ids: Vec<u64> = (2..=args.devices).collect();
    let more = im::login_devices(&mut net, common, &creds, &names[1], &more_ids, rng)?;
    let mut devices = vec![(receiver, sessions.max_item[1].max(items.get(&receiver).copied().unwrap_or(0)))];
    devices.extend(more.tokens.into_iter().zip(more.max_item));

    // Each device acknowledges what it was pushed and logs out, keeping its connection.
    for &(token, seen) in &devices {
        let mut oks = 1;
        if seen > 0 {
            let id = net.next_id(token);
            client::ack(net.out(token), id, seen);
            oks += 1;
        }
        let id = net.next_id(token);
        client::logout(net.out(token), id);
        im::expect_oks(&mut net, common, token, oks, "logging the receiver out")?;
    }

    let mut fill = Fill {
        common,
        token: sender,
        to: &names[1],
        total: args.messages as u64,
        window: args.window.max(1) as u64,
        body: args.body,
        next_seq: 0,
        acked: 0,
        id_sum: 0,
        body_buf: Vec::new(),
    };
    let fill_cpu = CpuPair::start(common.server_pid);
    let fill_start = Instant::now();
    drive(&mut net, &mut fill, common.setup_deadline(), "queueing messages for the offline user")?;
    let fill_s = fill_start.elapsed().as_secs_f64();
    let fill_server_cpu = fill_cpu.usage().server;

    let mut drain = Drain {
        receiver: Receiver { name: &names[1], creds: &creds, total: args.messages as u64 },
        rng,
        server_pid: common.server_pid,
        devices: devices.iter().zip(1..).map(|(&(token, _), device_id)| Device::new(token, device_id)).collect(),
        cpu: None,
        cpu_result: None,
    };
    drive(&mut net, &mut drain, common.setup_deadline(), "draining the backlog")?;

    let mut report = Report::new("drain", common.target.name());
    let m = args.messages as u64;
    let several = drain.devices.len() > 1;
    let deliveries = m * drain.devices.len() as u64;
    report.int("messages", m);
    if several {
        report.int("devices", drain.devices.len() as u64);
    }
    report.float("fill_s", fill_s);
    report.float("fill_msgs_per_s", m as f64 / fill_s.max(1e-9));
    if let Some(cpu) = fill_server_cpu {
        report.float("fill_server_cpu_pct", cpu);
    }
    // From the first device's login to the last device's last message.
    let start = drain.devices.iter().filter_map(|d| d.logged_in_at).min().unwrap_or_else(Instant::now);
    let since_start = |t: Option<Instant>| t.map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    let drain_s = since_start(drain.devices.iter().filter_map(|d| d.finished_at).max());
    report.float("drain_s", drain_s);
    report.float("drain_msgs_per_s", deliveries as f64 / drain_s.max(1e-9));
    report.float("first_delivery_ms", since_start(drain.devices.iter().filter_map(|d| d.first_at).min()) * 1000.0);
    for (n, device) in (1..).zip(&drain.devices) {
        if several {
            let own_start = device.logged_in_at.unwrap_or(start);
            let own_s = device.finished_at.map_or(0.0, |t| t.duration_since(own_start).as_secs_f64());
            report.float(format!("device{n}_drain_s"), own_s);
            report.int(format!("device{n}_sync_done_count"), u64::from(device.sync_count.unwrap_or(0)));
            report.int(format!("device{n}_redelivered_after_ack"), device.redelivered);
        } else {
            report.int("sync_done_count", u64::from(device.sync_count.unwrap_or(0)));
            report.int("redelivered_after_ack", device.redelivered);
        }
    }
    let cpu = drain.cpu_result.unwrap_or_default();
    report.cpu(cpu);
    report.cpu_per("server_cpu_us_per_message", cpu, deliveries as f64 / drain_s.max(1e-9));
    for (n, device) in (1..).zip(&mut drain.devices) {
        let who = if several { format!("device {n}: ") } else { String::new() };
        for p in std::mem::take(&mut device.problems) {
            report.fail(format!("{who}{p}"));
        }
        if device.next_seq != m {
            report.fail(format!("{who}{} of {m} messages delivered", device.next_seq));
        }
        if device.id_sum != fill.id_sum {
            report.fail(format!("{who}the delivered message ids are not those the sender was acknowledged"));
        }
        if device.sync_count != Some(m as u32) {
            report.fail(format!("{who}SYNC_DONE counted {:?} items, expected {m}", device.sync_count));
        }
        if device.redelivered > 0 || device.relogin_count != Some(0) {
            report.fail(format!(
                "{who}after acknowledging everything, the next login got {} messages and SYNC_DONE({:?})",
                device.redelivered, device.relogin_count
            ));
        }
    }
    Ok(report)
}

/// Sends `total` messages to the offline user, `window` at a time.
struct Fill<'a> {
    common: &'a Common,
    token: usize,
    to: &'a str,
    total: u64,
    window: u64,
    body: usize,
    next_seq: u64,
    acked: u64,
    id_sum: u64,
    body_buf: Vec<u8>,
}

impl Fill<'_> {
    fn top_up(&mut self, net: &mut Net, now: Instant) {
        while self.next_seq < self.total && self.next_seq - self.acked < self.window {
            let sent_ns = now.duration_since(self.common.started).as_nanos() as u64;
            write_body(&mut self.body_buf, self.body, self.next_seq, sent_ns, 0);
            let body = std::str::from_utf8(&self.body_buf).expect("bodies are ASCII");
            let id = net.next_id(self.token);
            client::send(net.out(self.token), id, self.to, self.next_seq + 1, body);
            self.next_seq += 1;
        }
    }
}

impl Phase for Fill<'_> {
    fn tick(&mut self, net: &mut Net, now: Instant) -> Result<(), String> {
        if self.next_seq == 0 {
            self.top_up(net, now);
        }
        Ok(())
    }

    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], now: Instant) -> Result<usize, String> {
        if token != self.token {
            return im::frames(data, |_, _| Ok(()));
        }
        let used = im::frames(data, |_, frame| match frame {
            ServerFrame::Sent { message_id, .. } => {
                self.acked += 1;
                self.id_sum = self.id_sum.wrapping_add(message_id);
                Ok(())
            }
            ServerFrame::Presence { .. } | ServerFrame::FriendEvent { .. } => Ok(()),
            other => Err(im::unexpected("SEND", &other)),
        })?;
        self.top_up(net, now);
        Ok(used)
    }

    fn done(&self) -> bool {
        self.acked == self.total
    }
}

/// Where one device is in the drain, in the order of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Start,
    Login,
    Receiving,
    /// Everything received; waiting for the answers to its ACKs.
    AwaitAcks,
    /// Everything received and acknowledged. It waits for the other devices, so that no
    /// re-login runs while another device still drains.
    Drained,
    Relogin,
    Done,
}

/// The receiver, logged in on every device at once.
struct Drain<'a> {
    receiver: Receiver<'a>,
    rng: &'a mut Rng,
    server_pid: Option<u32>,
    devices: Vec<Device>,
    /// Started at the first device's login, read when the last device has every message.
    cpu: Option<CpuPair>,
    cpu_result: Option<CpuUse>,
}

/// What every device of the receiver shares: who it is, and how many messages it awaits.
struct Receiver<'a> {
    name: &'a str,
    creds: &'a Credentials,
    total: u64,
}

/// One connection of the receiver, speaking for its own device.
struct Device {
    token: usize,
    flow: LoginFlow,
    stage: Stage,
    logged_in_at: Option<Instant>,
    first_at: Option<Instant>,
    finished_at: Option<Instant>,
    next_seq: u64,
    last_id: u64,
    id_sum: u64,
    acked_to: u64,
    acks_sent: u64,
    acks_answered: u64,
    sync_count: Option<u32>,
    relogin_count: Option<u32>,
    redelivered: u64,
    problems: Vec<String>,
}

impl Device {
    fn new(token: usize, device_id: u64) -> Self {
        Device {
            token,
            flow: LoginFlow::for_device(device_id),
            stage: Stage::Start,
            logged_in_at: None,
            first_at: None,
            finished_at: None,
            next_seq: 0,
            last_id: 0,
            id_sum: 0,
            acked_to: 0,
            acks_sent: 0,
            acks_answered: 0,
            sync_count: None,
            relogin_count: None,
            redelivered: 0,
            problems: Vec::new(),
        }
    }

    fn handle(&mut self, net: &mut Net, receiver: &Receiver, frame: ServerFrame, now: Instant) -> Result<(), String> {
        match (self.stage, frame) {
            (_, ServerFrame::Presence { .. }) => {}
            (Stage::Login, other) => {
                if self.flow.on_frame(net, self.token, receiver.name, receiver.creds, &other)? {
                    self.logged_in_at = Some(now);
                    self.stage = Stage::Receiving;
                }
            }
            (Stage::Receiving, ServerFrame::Deliver { message_id, body, .. }) => {
                self.first_at.get_or_insert(now);
                match parse_body(body.as_bytes()) {
                    Some((seq, _, 0)) if seq == self.next_seq => {}
                    Some((seq, _, _)) => {
                        self.problems.push(format!("got sequence {seq}, expected {}", self.next_seq));
                    }
                    None => self.problems.push("a body not written by im-bench".into()),
                }
                if message_id <= self.last_id {
                    self.problems.push(format!("message id {message_id} after {}", self.last_id));
                }
                self.last_id = self.last_id.max(message_id);
                self.id_sum = self.id_sum.wrapping_add(message_id);
                self.next_seq += 1;
                if self.next_seq == receiver.total {
                    self.finished_at = Some(now);
                }
            }
            (Stage::Receiving, ServerFrame::SyncDone { count }) => {
                self.sync_count = Some(count);
            }
            (Stage::Receiving, ServerFrame::SyncGap { skipped, .. }) => {
                return Err(format!(
                    "SYNC_GAP: the server skipped {skipped} items of the backlog; start it with \
                     --device-backlog-cap of at least {}",
                    receiver.total
                ));
            }
            (Stage::Receiving | Stage::AwaitAcks, ServerFrame::Ok) => self.acks_answered += 1,
            (Stage::Receiving | Stage::AwaitAcks, ServerFrame::FriendEvent { .. }) => {}
            (Stage::Relogin, ServerFrame::Ok) if self.flow.state == im::LoginState::AwaitChallenge => {}
            (Stage::Relogin, ServerFrame::Deliver { .. }) => self.redelivered += 1,
            (Stage::Relogin, ServerFrame::SyncDone { count }) => {
                self.relogin_count = Some(count);
                self.stage = Stage::Done;
            }
            (Stage::Relogin, other) => {
                self.flow.on_frame(net, self.token, receiver.name, receiver.creds, &other)?;
            }
            (stage, other) => return Err(im::unexpected(&format!("draining ({stage:?})"), &other)),
        }
        Ok(())
    }

    /// After a read: acknowledges the newest message, and moves on once everything is in.
    fn after_read(&mut self, net: &mut Net, total: u64, now: Instant) {
        if self.stage == Stage::Receiving && self.last_id > self.acked_to {
            self.acked_to = self.last_id;
            let id = net.next_id(self.token);
            client::ack(net.out(self.token), id, self.last_id);
            self.acks_sent += 1;
        }
        if self.stage == Stage::Receiving && self.next_seq >= total && self.sync_count.is_some() {
            self.finished_at = Some(self.finished_at.unwrap_or(now).max(now));
            self.stage = Stage::AwaitAcks;
        }
        if self.stage == Stage::AwaitAcks && self.acks_answered == self.acks_sent {
            self.stage = Stage::Drained;
        }
    }
}

impl Phase for Drain<'_> {
    fn tick(&mut self, net: &mut Net, _now: Instant) -> Result<(), String> {
        // Every device logs in at once, and again once all of them have drained.
        for device in &mut self.devices {
            if device.stage == Stage::Start {
                device.flow.start(net, device.token, self.receiver.name, self.rng);
                device.stage = Stage::Login;
            }
        }
        if self.devices.iter().all(|d| d.stage == Stage::Drained) {
            for device in &mut self.devices {
                let id = net.next_id(device.token);
                client::logout(net.out(device.token), id);
                device.flow.start(net, device.token, self.receiver.name, self.rng);
                device.stage = Stage::Relogin;
            }
        }
        Ok(())
    }

    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], now: Instant) -> Result<usize, String> {
        let Some(device) = self.devices.iter_mut().find(|d| d.token == token) else {
            // The sender may get a presence push when the receiver logs in.
            return im::frames(data, |_, _| Ok(()));
        };
        let mut used = 0;
        loop {
            match client::next_frame(&data[used..], u32::MAX) {
                Ok(NextFrame::Incomplete) => break,
                Ok(NextFrame::Frame { total, frame, .. }) => {
                    used += total;
                    device.handle(net, &self.receiver, frame, now)?;
                }
                Err(e) => return Err(format!("the server sent a bad frame: {e}")),
            }
        }
        device.after_read(net, self.receiver.total, now);
        if self.cpu.is_none() && device.logged_in_at.is_some() {
            self.cpu = Some(CpuPair::start(self.server_pid));
        }
        if self.cpu_result.is_none() && self.devices.iter().all(|d| d.stage >= Stage::AwaitAcks) {
            self.cpu_result = self.cpu.map(|c| c.usage());
        }
        Ok(used)
    }

    fn done(&self) -> bool {
        self.devices.iter().all(|d| d.stage == Stage::Done)
    }
}
