//! A latency histogram and the report every shape prints (a table, or one JSON line).

use crate::procstat::CpuUse;
use std::borrow::Cow;
use std::fmt::Write as _;

/// Sub-buckets per power of two: values are kept within 1/128 (under 1%) of their true size.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

/// A log-linear histogram of nanosecond values: fixed memory, constant-time record.
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; (SUB + 58 * HALF) as usize], total: 0, max: 0 }
    }
}

const HALF: u64 = SUB / 2;

impl Histogram {
    /// Values below 128 get their own bucket; above, 64 buckets per power of two.
    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let shift = u64::from(63 - v.leading_zeros()) - u64::from(SUB_BITS - 1);
        let mantissa = v >> shift;
        (SUB + (shift - 1) * HALF + (mantissa - HALF)) as usize
    }

    /// The middle of a bucket.
    fn value_of(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB {
            return index;
        }
        let k = index - SUB;
        let shift = k / HALF + 1;
        let mantissa = k % HALF + HALF;
        (mantissa << shift) + (1 << shift) / 2
    }

    pub fn record(&mut self, nanos: u64) {
        self.counts[Self::index(nanos)] += 1;
        self.total += 1;
        self.max = self.max.max(nanos);
    }

    /// The value at quantile `q` (0..=1), in nanoseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value_of(i).min(self.max);
            }
        }
        self.max
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

/// One value of a report.
#[derive(Debug, Clone)]
pub enum Value {
    Int(u64),
    Float(f64),
}

/// What a shape measured: named values in print order, whether delivery verified, warnings.
pub struct Report {
    pub shape: &'static str,
    pub target: &'static str,
    /// Keys are mostly literals; a few are made per run (one per device of `drain`).
    rows: Vec<(Cow<'static, str>, Value)>,
    pub verified: bool,
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
    /// (deliveries, latency p99.9 in µs) per second of the measured span, for shapes that
    /// carry messages; in the JSON only.
    pub timeline: Vec<(u64, f64)>,
}

impl Report {
    pub fn new(shape: &'static str, target: &'static str) -> Self {
        Report {
            shape,
            target,
            rows: Vec::new(),
            verified: true,
            failures: Vec::new(),
            warnings: Vec::new(),
            timeline: Vec::new(),
        }
    }

    pub fn int(&mut self, key: impl Into<Cow<'static, str>>, v: u64) {
        self.rows.push((key.into(), Value::Int(v)));
    }

    pub fn float(&mut self, key: impl Into<Cow<'static, str>>, v: f64) {
        self.rows.push((key.into(), Value::Float(v)));
    }

    /// Adds p50/p99/p99.9/max of a histogram, in microseconds, under the four keys given.
    pub fn latency(&mut self, keys: [&'static str; 4], h: &Histogram) {
        let us = |ns: u64| ns as f64 / 1000.0;
        self.float(keys[0], us(h.quantile(0.5)));
        self.float(keys[1], us(h.quantile(0.99)));
        self.float(keys[2], us(h.quantile(0.999)));
        self.float(keys[3], us(h.max()));
    }

    /// Records a failed check; the run then exits non-zero.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.verified = false;
        self.failures.push(why.into());
    }

    /// Adds the server's CPU time per unit of work (`key`), in µs: a figure that holds up
    /// better than a rate when other work shares the machine.
    pub fn cpu_per(&mut self, key: &'static str, usage: CpuUse, per_second: f64) {
        if let Some(s) = usage.server
            && per_second > 0.0
        {
            self.float(key, s / 100.0 * 1e6 / per_second);
        }
    }

    /// Adds the CPU figures; warns when the bench, not the server, was the bottleneck, and when
    /// other work on the machine took enough CPU to distort the figures.
    pub fn cpu(&mut self, usage: CpuUse) {
        if let Some(s) = usage.server {
            self.float("server_cpu_pct", s);
        }
        if let Some(b) = usage.bench {
            self.float("bench_cpu_pct", b);
            if b >= 90.0 {
                self.warnings
                    .push(format!("the bench used {b:.0}% of a core: it may be the bottleneck, not the server"));
            }
        }
        if let Some(o) = usage.other {
            self.float("other_cpu_pct", o);
            if o >= 30.0 {
                self.warnings.push(format!(
                    "other processes and interrupts used {o:.0}% of a core meanwhile: both sides may have been starved"
                ));
            }
        }
    }

    pub fn human(&self) -> String {
        let mut out = format!("im-bench {} against {}\n", self.shape, self.target);
        let width = self.rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0).max(24);
        for (key, value) in &self.rows {
            let shown = match value {
                Value::Int(v) => group_digits(*v),
                Value::Float(v) if v.abs() >= 1000.0 => group_digits(v.round() as u64),
                Value::Float(v) if v.abs() >= 10.0 => format!("{v:.1}"),
                Value::Float(v) => format!("{v:.3}"),
            };
            let _ = writeln!(out, "  {key:<width$} {shown:>16}");
        }
        let _ = writeln!(out, "  {:<width$} {:>16}", "verified", self.verified);
        for f in &self.failures {
            let _ = writeln!(out, "  FAILED: {f}");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
        out
    }

    pub fn json(&self) -> String {
        let mut out = format!("{{\"shape\":{},\"target\":{}", quote(self.shape), quote(self.target));
        for (key, value) in &self.rows {
            let v = match value {
                Value::Int(v) => v.to_string(),
                Value::Float(v) if v.is_finite() => format!("{v:.3}"),
                Value::Float(_) => "null".to_string(),
            };
            let _ = write!(out, ",{}:{v}", quote(key));
        }
        if !self.timeline.is_empty() {
            let seconds: Vec<String> = self.timeline.iter().map(|(n, p)| format!("[{n},{p:.1}]")).collect();
            let _ = write!(out, ",\"timeline\":[{}]", seconds.join(","));
        }
        let list = |items: &[String]| items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(",");
        let _ = write!(
            out,
            ",\"verified\":{},\"failures\":[{}],\"warnings\":[{}]}}",
            self.verified,
            list(&self.failures),
            list(&self.warnings)
        );
        out
    }
}

fn group_digits(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, expected) in [(0.5, 50_000_000.0), (0.99, 99_000_000.0), (0.999, 99_900_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - expected).abs() / expected < 0.01, "q {q}: {got} vs {expected}");
        }
        assert_eq!(h.quantile(1.0), 100_000_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        h.record(5);
        assert_eq!(h.quantile(0.5), 5);
    }

    #[test]
    fn json_is_one_line_and_escaped() {
        let mut r = Report::new("pairs", "im-server");
        r.int("n", 3);
        r.fail("a \"quote\"\n");
        let j = r.json();
        assert!(!j.contains('\n'));
        assert!(j.contains("\"failures\":[\"a \\\"quote\\\"\\u000a\"]"), "{j}");
        assert!(j.contains("\"verified\":false"));
        assert_eq!(group_digits(1234567), "1,234,567");
    }
}
