//! The measuring window every timed shape uses: a warm-up, then `--seconds` of measurement
//! (with the CPU of both processes sampled over exactly that span), then a drain.

use crate::Common;
use crate::procstat::{CpuPair, CpuUse};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Nothing has happened yet.
    Idle,
    /// Load runs but is not counted.
    Warmup,
    /// Load runs and is counted.
    Measuring,
    /// No new load; what is in flight finishes.
    Draining,
}

pub struct Window {
    warmup: Duration,
    length: Duration,
    server_pid: Option<u32>,
    pub stage: Stage,
    start: Instant,
    end: Instant,
    cpu: Option<CpuPair>,
    /// CPU use over the measured span, once it has ended.
    pub cpu_result: CpuUse,
}

impl Window {
    pub fn new(common: &Common) -> Self {
        let now = Instant::now();
        Window {
            warmup: Duration::from_secs_f64(common.warmup),
            length: Duration::from_secs_f64(common.seconds),
            server_pid: common.server_pid,
            stage: Stage::Idle,
            start: now,
            end: now,
            cpu: None,
            cpu_result: CpuUse::default(),
        }
    }

    /// Advances the stages; returns true on the first call, when the load should start.
    pub fn tick(&mut self, now: Instant) -> bool {
        let first = self.stage == Stage::Idle;
        if first {
            self.stage = Stage::Warmup;
            self.start = now + self.warmup;
        }
        if self.stage == Stage::Warmup && now >= self.start {
            self.stage = Stage::Measuring;
            self.start = now;
            self.end = now + self.length;
            self.cpu = Some(CpuPair::start(self.server_pid));
        }
        if self.stage == Stage::Measuring && now >= self.end {
            self.stage = Stage::Draining;
            self.end = now;
            self.cpu_result = self.cpu.map(|c| c.usage()).unwrap_or_default();
        }
        first
    }

    pub fn measuring(&self) -> bool {
        self.stage == Stage::Measuring
    }

    /// Which second of the measured span `now` falls in (0 for the first).
    pub fn second_of(&self, now: Instant) -> usize {
        now.saturating_duration_since(self.start).as_secs() as usize
    }

    /// Whether new load may still be started.
    pub fn loading(&self) -> bool {
        matches!(self.stage, Stage::Warmup | Stage::Measuring)
    }

    pub fn draining(&self) -> bool {
        self.stage == Stage::Draining
    }

    /// Seconds actually measured (never zero, to keep rates finite).
    pub fn seconds(&self) -> f64 {
        self.end.duration_since(self.start).as_secs_f64().max(1e-9)
    }

    /// The deadline for the whole window plus `grace` to drain.
    pub fn deadline(&self, grace: Duration) -> Instant {
        Instant::now() + self.warmup + self.length + grace
    }
}
