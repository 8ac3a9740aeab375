//! `drain`: M messages queued for an offline user, then the time to push them all after it
//! logs in (it acknowledges as it reads). A second login then checks that the
//! acknowledgements held: it must find an empty backlog.

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
}

pub fn run(common: &Common, args: &Args, rng: &mut Rng) -> Result<Report, String> {
    if common.target != Target::Im {
        return Err("the drain shape measures im-server's offline backlog; it has no Redis form".into());
    }
    let mut net = Net::new(common.sources).map_err(|e| e.to_string())?;
    let creds = Credentials::new(common.kdf_iterations, rng);
    let names = vec![format!("{}ds", common.prefix), format!("{}dr", common.prefix)];
    im::register_users(&mut net, common, &creds, &names)?;
    let sessions = im::login_all(&mut net, common, &creds, &names, rng)?;
    let (sender, receiver) = (sessions.tokens[0], sessions.tokens[1]);
    let items = im::befriend(&mut net, common, &[(sender, &names[0], receiver, &names[1])])?;

    // The receiver acknowledges its friend events and logs out, keeping its connection.
    let seen = sessions.max_item[1].max(items.get(&receiver).copied().unwrap_or(0));
    let mut oks = 1;
    if seen > 0 {
        let id = net.next_id(receiver);
        client::ack(net.out(receiver), id, seen);
        oks += 1;
    }
    let id = net.next_id(receiver);
    client::logout(net.out(receiver), id);
    im::expect_oks(&mut net, common, receiver, oks, "logging the receiver out")?;

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
        creds: &creds,
        name: &names[1],
        rng,
        server_pid: common.server_pid,
        token: receiver,
        total: args.messages as u64,
        flow: LoginFlow::default(),
        stage: Stage::Start,
        logged_in_at: None,
        cpu: None,
        cpu_result: CpuUse::default(),
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
    };
    drive(&mut net, &mut drain, common.setup_deadline(), "draining the backlog")?;

    let mut report = Report::new("drain", common.target.name());
    let m = args.messages as u64;
    report.int("messages", m);
    report.float("fill_s", fill_s);
    report.float("fill_msgs_per_s", m as f64 / fill_s.max(1e-9));
    if let Some(cpu) = fill_server_cpu {
        report.float("fill_server_cpu_pct", cpu);
    }
    let start = drain.logged_in_at.unwrap_or_else(Instant::now);
    let drain_s = drain.finished_at.map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    report.float("drain_s", drain_s);
    report.float("drain_msgs_per_s", m as f64 / drain_s.max(1e-9));
    report.float("first_delivery_ms", drain.first_at.map_or(0.0, |t| t.duration_since(start).as_secs_f64() * 1000.0));
    report.int("sync_done_count", u64::from(drain.sync_count.unwrap_or(0)));
    report.int("redelivered_after_ack", drain.redelivered);
    report.cpu(drain.cpu_result);
    report.cpu_per("server_cpu_us_per_message", drain.cpu_result, m as f64 / drain_s.max(1e-9));
    for p in std::mem::take(&mut drain.problems) {
        report.fail(p);
    }
    if drain.next_seq != m {
        report.fail(format!("{} of {m} messages delivered", drain.next_seq));
    }
    if drain.id_sum != fill.id_sum {
        report.fail("the delivered message ids are not those the sender was acknowledged");
    }
    if drain.sync_count != Some(m as u32) {
        report.fail(format!("SYNC_DONE counted {:?} items, expected {m}", drain.sync_count));
    }
    if drain.redelivered > 0 || drain.relogin_count != Some(0) {
        report.fail(format!(
            "after acknowledging everything, the next login got {} messages and SYNC_DONE({:?})",
            drain.redelivered, drain.relogin_count
        ));
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Login,
    Receiving,
    AwaitAcks,
    Relogin,
    Done,
}

struct Drain<'a> {
    creds: &'a Credentials,
    name: &'a str,
    rng: &'a mut Rng,
    server_pid: Option<u32>,
    token: usize,
    total: u64,
    flow: LoginFlow,
    stage: Stage,
    logged_in_at: Option<Instant>,
    cpu: Option<CpuPair>,
    cpu_result: CpuUse,
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

impl Drain<'_> {
    fn handle(&mut self, net: &mut Net, frame: ServerFrame, now: Instant) -> Result<(), String> {
        match (self.stage, frame) {
            (_, ServerFrame::Presence { .. }) => {}
            (Stage::Login, other) => {
                if self.flow.on_frame(net, self.token, self.name, self.creds, &other)? {
                    self.logged_in_at = Some(now);
                    self.cpu = Some(CpuPair::start(self.server_pid));
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
                if self.next_seq == self.total {
                    self.finished_at = Some(now);
                }
            }
            (Stage::Receiving, ServerFrame::SyncDone { count }) => {
                self.sync_count = Some(count);
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
                self.flow.on_frame(net, self.token, self.name, self.creds, &other)?;
            }
            (stage, other) => return Err(im::unexpected(&format!("draining ({stage:?})"), &other)),
        }
        Ok(())
    }
}

impl Phase for Drain<'_> {
    fn tick(&mut self, net: &mut Net, _now: Instant) -> Result<(), String> {
        if self.stage == Stage::Start {
            self.flow.start(net, self.token, self.name, self.rng);
            self.stage = Stage::Login;
        }
        Ok(())
    }

    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], now: Instant) -> Result<usize, String> {
        if token != self.token {
            // The sender may get a presence push when the receiver logs in.
            return im::frames(data, |_, _| Ok(()));
        }
        let mut used = 0;
        loop {
            match client::next_frame(&data[used..], u32::MAX) {
                Ok(NextFrame::Incomplete) => break,
                Ok(NextFrame::Frame { total, frame, .. }) => {
                    used += total;
                    self.handle(net, frame, now)?;
                }
                Err(e) => return Err(format!("the server sent a bad frame: {e}")),
            }
        }
        if matches!(self.stage, Stage::Receiving) && self.last_id > self.acked_to {
            self.acked_to = self.last_id;
            let id = net.next_id(self.token);
            client::ack(net.out(self.token), id, self.last_id);
            self.acks_sent += 1;
        }
        if self.stage == Stage::Receiving && self.next_seq >= self.total && self.sync_count.is_some() {
            self.finished_at = Some(self.finished_at.unwrap_or(now).max(now));
            self.cpu_result = self.cpu.map(|c| c.usage()).unwrap_or_default();
            self.stage = Stage::AwaitAcks;
        }
        if self.stage == Stage::AwaitAcks && self.acks_answered == self.acks_sent {
            let id = net.next_id(self.token);
            client::logout(net.out(self.token), id);
            self.flow.start(net, self.token, self.name, self.rng);
            self.stage = Stage::Relogin;
        }
        Ok(used)
    }

    fn done(&self) -> bool {
        self.stage == Stage::Done
    }
}
