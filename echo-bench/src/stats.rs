//! What a run measured, how it is summed up, and how it is shown: one JSON line per run, and a live
//! progress line when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::procstat;

/// The result of one run of one scenario against one server.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub scenario: String,
    pub conns: usize,
    pub depth: usize,
    pub size: usize,
    pub secs: f64,
    pub msgs: u64,
    pub bytes: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub errors: u64,
    pub mismatches: u64,
    pub server_cpu_ns_per_msg: Option<f64>,
    /// This load generator's own CPU per message: a client-bound run shows up here.
    pub client_cpu_ns_per_msg: Option<f64>,
    pub server_rss_peak: Option<u64>,
    pub rss_per_conn: Option<f64>,
}

impl RunResult {
    pub fn msgs_per_s(&self) -> f64 {
        self.msgs as f64 / self.secs.max(1e-9)
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }

    /// Whether every echoed byte was right and no connection failed.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.mismatches == 0
    }

    pub fn to_json(&self, extra: &[(&str, Value)]) -> Value {
        let mut v = json!({
            "scenario": self.scenario,
            "conns": self.conns,
            "depth": self.depth,
            "size": self.size,
            "secs": self.secs,
            "msgs": self.msgs,
            "msgs_per_s": self.msgs_per_s(),
            "mb_per_s": self.mb_per_s(),
            "mean_us": self.mean_us,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "errors": self.errors,
            "mismatches": self.mismatches,
            "server_cpu_ns_per_msg": self.server_cpu_ns_per_msg,
            "client_cpu_ns_per_msg": self.client_cpu_ns_per_msg,
            "server_rss_peak": self.server_rss_peak,
            "rss_per_conn": self.rss_per_conn,
        });
        if let Some(map) = v.as_object_mut() {
            for (k, x) in extra {
                map.insert((*k).to_string(), x.clone());
            }
        }
        v
    }
}

/// Counters and the latency histogram of the measured phase, plus the server's CPU and memory.
pub struct Meter {
    pub hist: Histogram<u64>,
    pub msgs: u64,
    pub bytes: u64,
    pub errors: u64,
    pub mismatches: u64,
    server_pid: Option<u32>,
    began: Instant,
    cpu_at_begin: Option<u64>,
    own_cpu_at_begin: Option<u64>,
    rss_peak: Option<u64>,
    last_sample: Instant,
    last_progress: Instant,
    progress: bool,
    label: String,
}

impl Meter {
    pub fn new(label: &str, server_pid: Option<u32>) -> Meter {
        let now = Instant::now();
        Meter {
            // 1 ns to 100 s at 3 significant digits; the bounds are valid, so this cannot fail.
            hist: Histogram::new_with_bounds(1, 100_000_000_000, 3)
                .expect("valid histogram bounds"),
            msgs: 0,
            bytes: 0,
            errors: 0,
            mismatches: 0,
            server_pid,
            began: now,
            cpu_at_begin: None,
            own_cpu_at_begin: None,
            rss_peak: None,
            last_sample: now,
            last_progress: now,
            progress: std::io::stderr().is_terminal(),
            label: label.to_string(),
        }
    }

    /// Starts the measured phase: everything before (connecting, warming up) is forgotten, except
    /// errors and mismatches, which always count.
    pub fn begin(&mut self, now: Instant) {
        self.hist.reset();
        self.msgs = 0;
        self.bytes = 0;
        self.began = now;
        self.cpu_at_begin = self.server_pid.and_then(procstat::cpu_ns);
        self.own_cpu_at_begin = procstat::cpu_ns(std::process::id());
        self.sample_rss();
    }

    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    pub fn sample_rss(&mut self) {
        if let Some(rss) = self.server_pid.and_then(procstat::rss_bytes) {
            self.rss_peak = Some(self.rss_peak.map_or(rss, |p| p.max(rss)));
        }
    }

    /// Cheap to call every loop turn: samples memory every 100 ms and redraws progress every 250 ms.
    pub fn tick(&mut self, now: Instant) {
        if now.duration_since(self.last_sample) >= Duration::from_millis(100) {
            self.last_sample = now;
            self.sample_rss();
        }
        if self.progress && now.duration_since(self.last_progress) >= Duration::from_millis(250) {
            self.last_progress = now;
            let secs = now.duration_since(self.began).as_secs_f64().max(1e-9);
            eprint!(
                "\r{:<28} {:>6.1}s {:>12.0} msgs/s {:>9.1} MB/s errors {} mismatches {}   ",
                self.label,
                secs,
                self.msgs as f64 / secs,
                self.bytes as f64 / secs / 1e6,
                self.errors,
                self.mismatches
            );
            let _ = std::io::stderr().flush();
        }
    }

    pub fn finish(&mut self, now: Instant) -> RunResult {
        self.sample_rss();
        if self.progress {
            eprint!("\r{:100}\r", "");
        }
        let us = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        let per_msg = |begin: Option<u64>, end: Option<u64>| match (begin, end) {
            (Some(a), Some(b)) if self.msgs > 0 => {
                Some(b.saturating_sub(a) as f64 / self.msgs as f64)
            }
            _ => None,
        };
        let cpu = per_msg(
            self.cpu_at_begin,
            self.server_pid.and_then(procstat::cpu_ns),
        );
        let own_cpu = per_msg(self.own_cpu_at_begin, procstat::cpu_ns(std::process::id()));
        RunResult {
            scenario: self.label.clone(),
            secs: now.duration_since(self.began).as_secs_f64(),
            msgs: self.msgs,
            bytes: self.bytes,
            mean_us: self.hist.mean() / 1000.0,
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.hist.max() as f64 / 1000.0,
            errors: self.errors,
            mismatches: self.mismatches,
            server_cpu_ns_per_msg: cpu,
            client_cpu_ns_per_msg: own_cpu,
            server_rss_peak: self.rss_peak,
            ..RunResult::default()
        }
    }
}

/// The median of some values (the mean of the middle two for an even count); `None` when empty.
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// The median of some values and the range they span.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The [`Spread`] of the finite values; `None` when there are none.
pub fn spread(xs: Vec<f64>) -> Option<Spread> {
    let finite: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
    let min = finite.iter().copied().reduce(f64::min)?;
    let max = finite.iter().copied().reduce(f64::max)?;
    Some(Spread {
        median: median(finite)?,
        min,
        max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn spread_ignores_values_that_are_not_finite() {
        let s = spread(vec![2.0, f64::NAN, 0.5, 1.0, f64::INFINITY]);
        assert_eq!(
            s,
            Some(Spread {
                median: 1.0,
                min: 0.5,
                max: 2.0
            })
        );
        assert_eq!(spread(vec![f64::NAN]), None);
    }
}
