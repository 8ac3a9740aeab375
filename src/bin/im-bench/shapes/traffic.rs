//! The measuring loop that `pairs` and `fanout` share, whatever the target.
//!
//! Senders keep a window of unacknowledged messages; each body carries the sender's index,
//! its sequence number and the send time, so a receiver can measure latency and check that it
//! got every message exactly once and in order. After the window closes, sending stops and the
//! loop waits until every message sent is acknowledged and every acknowledged message arrived.

use crate::Common;
use crate::net::{Net, Phase, drive};
use crate::procstat::Process;
use crate::stats::{Histogram, Report};
use crate::window::Window;
use std::time::{Duration, Instant};

/// Bytes of the body header: sequence (16 hex), send time in ns (16 hex), sender (8 hex).
pub const BODY_HEADER: usize = 40;
/// How long after the window closes the last messages may take to arrive.
const DRAIN_GRACE: Duration = Duration::from_secs(15);
/// Failures described in full; the rest are only counted.
const MAX_DESCRIBED: usize = 5;

/// What one target needs to carry messages: how a send is written, how replies and pushes are
/// read. `im-server` uses SEND/GROUP_SEND and DELIVER; Redis uses PUBLISH and SUBSCRIBE.
pub trait Wire {
    /// Queues one message from a sender to destination `dest`.
    fn send(&mut self, net: &mut Net, token: usize, dest: usize, seq: u64, body: &str);

    /// Reads a sender's replies: `on_ack(message_id, receivers)` per acknowledged message
    /// (`message_id` 0 when the target has none, `receivers` when the target reports it).
    fn sender_frames<F: FnMut(u64, Option<i64>) -> Result<(), String>>(
        &mut self,
        data: &[u8],
        on_ack: F,
    ) -> Result<usize, String>;

    /// Reads a receiver's pushes: `on_deliver(message_id, body)` per delivered message.
    fn receiver_frames<'a, F: FnMut(u64, &'a [u8]) -> Result<(), String>>(
        &mut self,
        data: &'a [u8],
        on_deliver: F,
    ) -> Result<usize, String>;

    /// Tells the server that a receiver has processed everything up to `message_id`.
    fn receiver_ack(&mut self, net: &mut Net, token: usize, message_id: u64);

    /// Whether acknowledgements carry message ids that deliveries repeat.
    fn has_message_ids(&self) -> bool;
}

/// Who sends to whom.
pub struct Plan {
    /// (token, destination index) per sender.
    pub senders: Vec<(usize, usize)>,
    /// (token, index of the one sender it hears) per receiver.
    pub receivers: Vec<(usize, usize)>,
    /// Receivers of each message (the PUBLISH reply Redis should give).
    pub fanout: i64,
    pub window: usize,
    pub body: usize,
}

/// Writes the body of message `seq`: the 40-byte header, then dots up to `len` bytes.
pub fn write_body(buf: &mut Vec<u8>, len: usize, seq: u64, sent_ns: u64, sender: u32) {
    buf.clear();
    push_hex(buf, seq, 16);
    push_hex(buf, sent_ns, 16);
    push_hex(buf, u64::from(sender), 8);
    buf.resize(len.max(BODY_HEADER), b'.');
}

fn push_hex(buf: &mut Vec<u8>, v: u64, digits: u32) {
    for i in (0..digits).rev() {
        buf.push(b"0123456789abcdef"[((v >> (i * 4)) & 0xF) as usize]);
    }
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// (sequence, send time in ns, sender) from a body written by [`write_body`].
pub fn parse_body(body: &[u8]) -> Option<(u64, u64, u32)> {
    if body.len() < BODY_HEADER {
        return None;
    }
    Some((parse_hex(&body[..16])?, parse_hex(&body[16..32])?, parse_hex(&body[32..40])? as u32))
}

struct Sender {
    token: usize,
    dest: usize,
    next_seq: u64,
    acked: u64,
    last_id: u64,
    id_sum: u64,
}

struct Receiver {
    token: usize,
    sender: usize,
    next_seq: u64,
    last_id: u64,
    id_sum: u64,
    acked_to: u64,
}

#[derive(Clone, Copy)]
enum Role {
    None,
    Sender(usize),
    Receiver(usize),
}

struct Traffic<'a, W: Wire> {
    common: &'a Common,
    wire: W,
    plan_window: usize,
    body_len: usize,
    fanout: i64,
    senders: Vec<Sender>,
    receivers: Vec<Receiver>,
    roles: Vec<Role>,
    window: Window,
    hist: Histogram,
    /// Deliveries and latency per second of the measured span: stalls show here, not in the
    /// whole window's figures.
    per_second: Vec<(u64, Histogram)>,
    window_acks: u64,
    window_deliveries: u64,
    body_buf: Vec<u8>,
    failures: Vec<String>,
    failure_count: u64,
}

impl<W: Wire> Traffic<'_, W> {
    fn fail(&mut self, why: String) {
        self.failure_count += 1;
        if self.failures.len() < MAX_DESCRIBED {
            self.failures.push(why);
        }
    }

    fn send_one(&mut self, net: &mut Net, s: usize, now: Instant) {
        let sent_ns = now.duration_since(self.common.started).as_nanos() as u64;
        let sender = &mut self.senders[s];
        write_body(&mut self.body_buf, self.body_len, sender.next_seq, sent_ns, s as u32);
        let body = std::str::from_utf8(&self.body_buf).expect("bodies are ASCII");
        self.wire.send(net, sender.token, sender.dest, sender.next_seq, body);
        sender.next_seq += 1;
    }

    fn in_flight(&self, s: usize) -> u64 {
        self.senders[s].next_seq - self.senders[s].acked
    }
}

impl<W: Wire> Phase for Traffic<'_, W> {
    fn tick(&mut self, net: &mut Net, now: Instant) -> Result<(), String> {
        if self.window.tick(now) {
            for s in 0..self.senders.len() {
                for _ in 0..self.plan_window {
                    self.send_one(net, s, now);
                }
            }
        }
        Ok(())
    }

    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], now: Instant) -> Result<usize, String> {
        let measuring = self.window.measuring();
        match self.roles.get(token).copied().unwrap_or(Role::None) {
            Role::None => Err(format!("bytes from connection {token}, which has no role")),
            Role::Sender(s) => {
                let mut acks = 0u64;
                let mut problems = Vec::new();
                let has_ids = self.wire.has_message_ids();
                let fanout = self.fanout;
                let sender = &mut self.senders[s];
                let used = self.wire.sender_frames(data, |message_id, receivers| {
                    if sender.acked == sender.next_seq {
                        return Err(format!("sender {s} got an acknowledgement for nothing"));
                    }
                    sender.acked += 1;
                    acks += 1;
                    if has_ids {
                        if message_id <= sender.last_id {
                            problems.push(format!("sender {s}: message id {message_id} after {}", sender.last_id));
                        }
                        sender.last_id = message_id;
                        sender.id_sum = sender.id_sum.wrapping_add(message_id);
                    }
                    if let Some(n) = receivers
                        && n != fanout
                    {
                        problems.push(format!("sender {s}: PUBLISH reached {n} receivers, not {fanout}"));
                    }
                    Ok(())
                })?;
                for p in problems {
                    self.fail(p);
                }
                if measuring {
                    self.window_acks += acks;
                }
                if self.window.loading() {
                    while self.in_flight(s) < self.plan_window as u64 {
                        self.send_one(net, s, now);
                    }
                }
                Ok(used)
            }
            Role::Receiver(r) => {
                let now_ns = now.duration_since(self.common.started).as_nanos() as u64;
                let has_ids = self.wire.has_message_ids();
                let receiver = &mut self.receivers[r];
                let hist = &mut self.hist;
                let second = self.window.second_of(now);
                if measuring && self.per_second.len() <= second {
                    self.per_second.resize_with(second + 1, || (0, Histogram::default()));
                }
                let mut this_second = if measuring { self.per_second.get_mut(second) } else { None };
                let mut delivered = 0u64;
                let mut problems = Vec::new();
                let used = self.wire.receiver_frames(data, |message_id, body| {
                    let Some((seq, sent_ns, from)) = parse_body(body) else {
                        problems.push(format!("receiver {r}: a body not written by im-bench"));
                        return Ok(());
                    };
                    delivered += 1;
                    if from as usize != receiver.sender {
                        problems
                            .push(format!("receiver {r}: a message of sender {from}, expected {}", receiver.sender));
                    }
                    if seq != receiver.next_seq {
                        let what = if seq < receiver.next_seq { "duplicate or reordered" } else { "missing" };
                        problems
                            .push(format!("receiver {r}: got sequence {seq}, expected {} ({what})", receiver.next_seq));
                    }
                    receiver.next_seq = receiver.next_seq.max(seq + 1);
                    if has_ids {
                        if message_id <= receiver.last_id {
                            problems.push(format!("receiver {r}: message id {message_id} after {}", receiver.last_id));
                        }
                        receiver.last_id = receiver.last_id.max(message_id);
                        receiver.id_sum = receiver.id_sum.wrapping_add(message_id);
                    }
                    if measuring {
                        hist.record(now_ns.saturating_sub(sent_ns));
                    }
                    if let Some((count, h)) = this_second.as_mut() {
                        *count += 1;
                        h.record(now_ns.saturating_sub(sent_ns));
                    }
                    Ok(())
                })?;
                if self.common.receiver_ack && has_ids && receiver.last_id > receiver.acked_to {
                    receiver.acked_to = receiver.last_id;
                    self.wire.receiver_ack(net, receiver.token, receiver.last_id);
                }
                for p in problems {
                    self.fail(p);
                }
                if measuring {
                    self.window_deliveries += delivered;
                }
                Ok(used)
            }
        }
    }

    fn done(&self) -> bool {
        self.window.draining()
            && self.senders.iter().all(|s| s.acked == s.next_seq)
            && self.receivers.iter().all(|r| r.next_seq >= self.senders[r.sender].next_seq)
    }
}

/// Runs the window and the drain, and fills `report` with rates, latency and the verdict.
pub fn run<W: Wire>(net: &mut Net, common: &Common, wire: W, plan: Plan, report: &mut Report) -> Result<(), String> {
    let mut roles = Vec::new();
    let mut set = |token: usize, role: Role| {
        if roles.len() <= token {
            roles.resize(token + 1, Role::None);
        }
        roles[token] = role;
    };
    for (i, &(token, _)) in plan.senders.iter().enumerate() {
        set(token, Role::Sender(i));
    }
    for (i, &(token, _)) in plan.receivers.iter().enumerate() {
        set(token, Role::Receiver(i));
    }
    let mut t = Traffic {
        common,
        wire,
        plan_window: plan.window,
        body_len: plan.body,
        fanout: plan.fanout,
        senders: plan
            .senders
            .iter()
            .map(|&(token, dest)| Sender { token, dest, next_seq: 0, acked: 0, last_id: 0, id_sum: 0 })
            .collect(),
        receivers: plan
            .receivers
            .iter()
            .map(|&(token, sender)| Receiver { token, sender, next_seq: 0, last_id: 0, id_sum: 0, acked_to: 0 })
            .collect(),
        roles,
        window: Window::new(common),
        hist: Histogram::default(),
        per_second: Vec::new(),
        window_acks: 0,
        window_deliveries: 0,
        body_buf: Vec::with_capacity(plan.body),
        failures: Vec::new(),
        failure_count: 0,
    };
    let deadline = t.window.deadline(DRAIN_GRACE.min(common.timeout));
    let result = drive(net, &mut t, deadline, "measuring");
    if !t.window.draining() {
        return result;
    }
    let measured = t.window.seconds();
    report.int("senders", t.senders.len() as u64);
    report.int("receivers", t.receivers.len() as u64);
    report.int("window", plan.window as u64);
    report.int("body_bytes", plan.body.max(BODY_HEADER) as u64);
    report.float("seconds", measured);
    report.float("deliveries_per_s", t.window_deliveries as f64 / measured);
    report.float("acks_per_s", t.window_acks as f64 / measured);
    report.latency(["latency_p50_us", "latency_p99_us", "latency_p999_us", "latency_max_us"], &t.hist);
    // Whole seconds only: a last partial second would look like a stall.
    let whole = (measured.floor() as usize).min(t.per_second.len());
    report.timeline =
        t.per_second[..whole].iter().map(|(count, h)| (*count, h.quantile(0.999) as f64 / 1000.0)).collect();
    if let Some(median) = median_of(report.timeline.iter().map(|&(count, _)| count).collect()) {
        let low = report.timeline.iter().filter(|&&(count, _)| (count as f64) < 0.8 * median as f64).count();
        report.int("seconds_below_80pct_of_median", low as u64);
        report.int("median_second_deliveries", median);
    }
    let sent: u64 = t.senders.iter().map(|s| s.next_seq).sum();
    let acked: u64 = t.senders.iter().map(|s| s.acked).sum();
    let delivered: u64 = t.receivers.iter().map(|r| r.next_seq).sum();
    report.int("messages_sent", sent);
    report.int("messages_acked", acked);
    report.int("deliveries_total", delivered);
    report.cpu(t.window.cpu_result);
    report.cpu_per("server_cpu_us_per_delivery", t.window.cpu_result, t.window_deliveries as f64 / measured);
    if let Some(rss) = common.server_pid.and_then(|pid| Process::Pid(pid).rss_kib()) {
        report.int("server_rss_kib", rss);
    }
    if let Err(e) = result {
        report.fail(format!("{e}: {} of {sent} messages acknowledged after the window", acked));
    }
    let mut unverified = 0u64;
    for r in &t.receivers {
        let s = &t.senders[r.sender];
        let ids_differ = t.wire.has_message_ids() && r.id_sum != s.id_sum;
        if r.next_seq != s.acked || ids_differ {
            unverified += 1;
            if unverified <= MAX_DESCRIBED as u64 {
                report.fail(format!(
                    "receiver {} got {} messages of sender {}, which had {} acknowledged{}",
                    r.token,
                    r.next_seq,
                    r.sender,
                    s.acked,
                    if ids_differ { " (message ids differ)" } else { "" }
                ));
            }
        }
    }
    if unverified > MAX_DESCRIBED as u64 {
        report.fail(format!("{unverified} receivers in all did not get exactly what was acknowledged"));
    }
    for f in std::mem::take(&mut t.failures) {
        report.fail(f);
    }
    if t.failure_count > MAX_DESCRIBED as u64 {
        report.fail(format!("{} delivery errors in all", t.failure_count));
    }
    Ok(())
}

/// The median of `values` (the upper one of an even count); `None` when empty.
fn median_of(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_at_any_length() {
        let mut buf = Vec::new();
        for len in [0, BODY_HEADER, 64, 4096] {
            write_body(&mut buf, len, 123_456, u64::MAX - 1, 7);
            assert_eq!(buf.len(), len.max(BODY_HEADER));
            assert_eq!(parse_body(&buf), Some((123_456, u64::MAX - 1, 7)));
        }
        assert_eq!(parse_body(b"short"), None);
        assert_eq!(parse_body(&[b'G'; 40]), None);
    }
}
