//! What a run measured and how it is summed up: the latency histogram and counters of the measured
//! phase, the server's CPU and memory, the first error seen, optional one-second interval
//! histograms for an HDR log, and a live progress line when stderr is a terminal. How a result is
//! shown to people lives in `report`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::procstat;

/// Length of one interval of the HDR histogram log.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// One interval of the measured phase, its histogram kept encoded (a few KiB rather than the
/// ~200 KiB of counters a live histogram holds).
#[derive(Clone, Debug)]
pub struct Interval {
    /// Since the measured phase began.
    pub start: Duration,
    pub length: Duration,
    /// V2 encoding of the interval's histogram.
    pub encoded: Vec<u8>,
}

/// The result of one run of one scenario against one server. One field per figure of the
/// exported JSON record, flat on purpose: the record's schema reads in one place.
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
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub errors: u64,
    pub mismatches: u64,
    /// Messages sent but never echoed (their connection failed, stalled, or the run ended first).
    pub lost: u64,
    /// Open loop: messages that fell due but were not sent, their connection having too many
    /// outstanding; a warning that the server could not keep up with the rate.
    pub not_sent: u64,
    /// What went wrong first (a connection error or a mismatch), naming the address.
    pub first_error: Option<String>,
    pub server_cpu_ns_per_msg: Option<f64>,
    /// This load generator's own CPU per message: a client-bound run shows up here.
    pub client_cpu_ns_per_msg: Option<f64>,
    pub server_rss_peak: Option<u64>,
    pub rss_per_conn: Option<f64>,
    /// Latency in nanoseconds over the measured phase, for the full distribution.
    pub hist: Option<Histogram<u64>>,
    /// Wall-clock time the measured phase began (the HDR log's base time).
    pub began_at: Option<SystemTime>,
    /// One-second interval histograms, when asked for.
    pub intervals: Vec<Interval>,
}

impl RunResult {
    pub fn msgs_per_s(&self) -> f64 {
        self.msgs as f64 / self.secs.max(1e-9)
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }

    /// Whether every message sent came back, every echoed byte was right and no connection failed.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.mismatches == 0 && self.lost == 0
    }

    /// The run's figures as one JSON object, with `extra` fields added (kind, target, set-up...).
    pub fn to_json(&self, extra: &[(&str, Value)]) -> Value {
        let mut v = json!({
            "scenario": self.scenario,
            "conns": self.conns,
            "depth": self.depth,
            "size": self.size,
            "secs": self.secs,
            "msgs": self.msgs,
            "bytes": self.bytes,
            "msgs_per_s": self.msgs_per_s(),
            "mb_per_s": self.mb_per_s(),
            "mean_us": self.mean_us,
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "errors": self.errors,
            "mismatches": self.mismatches,
            "lost": self.lost,
            "not_sent": self.not_sent,
            "first_error": self.first_error,
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

/// A fresh histogram of 1 ns to 100 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy every precondition, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// The current interval of the HDR log and the intervals already closed.
struct IntervalRecorder {
    hist: Histogram<u64>,
    started: Instant,
    closed: Vec<Interval>,
}

/// Counters and the latency histogram of the measured phase, plus the server's CPU and memory.
/// Every load loop of a run shares this one value, so its clocks and samples stay together
/// rather than split into parts that each loop would have to carry.
pub struct Meter {
    pub hist: Histogram<u64>,
    pub msgs: u64,
    pub bytes: u64,
    errors: u64,
    mismatches: u64,
    lost: u64,
    not_sent: u64,
    first_error: Option<String>,
    server_pid: Option<u32>,
    /// False during connecting and warm-up, and after `stop`.
    measuring: bool,
    /// When the measured phase ended and both CPU readings then, once `stop` was called.
    stopped: Option<(Instant, Option<u64>, Option<u64>)>,
    created: Instant,
    began: Instant,
    began_at: Option<SystemTime>,
    cpu_at_begin: Option<u64>,
    own_cpu_at_begin: Option<u64>,
    rss_peak: Option<u64>,
    last_sample: Instant,
    last_progress: Instant,
    progress: bool,
    label: String,
    intervals: Option<IntervalRecorder>,
}

impl Meter {
    /// A meter for one run; `intervals` keeps one-second histograms for an HDR log.
    pub fn new(label: &str, server_pid: Option<u32>, intervals: bool) -> Meter {
        let now = Instant::now();
        Meter {
            hist: new_histogram(),
            msgs: 0,
            bytes: 0,
            errors: 0,
            mismatches: 0,
            lost: 0,
            not_sent: 0,
            first_error: None,
            server_pid,
            measuring: false,
            stopped: None,
            created: now,
            began: now,
            began_at: None,
            cpu_at_begin: None,
            own_cpu_at_begin: None,
            rss_peak: None,
            last_sample: now,
            last_progress: now,
            progress: std::io::stderr().is_terminal(),
            label: label.to_string(),
            intervals: intervals.then(|| IntervalRecorder {
                hist: new_histogram(),
                started: now,
                closed: Vec::new(),
            }),
        }
    }

    /// Starts the measured phase: everything before (connecting, warming up) is forgotten, except
    /// errors and mismatches, which always count.
    pub fn begin(&mut self, now: Instant) {
        self.hist.reset();
        self.msgs = 0;
        self.bytes = 0;
        self.measuring = true;
        self.began = now;
        self.began_at = Some(SystemTime::now());
        self.cpu_at_begin = self.server_pid.and_then(procstat::cpu_ns);
        self.own_cpu_at_begin = procstat::cpu_ns(std::process::id());
        if let Some(rec) = &mut self.intervals {
            rec.hist.reset();
            rec.started = now;
            rec.closed.clear();
        }
        self.sample_rss();
    }

    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
        if let Some(rec) = &mut self.intervals {
            rec.hist.saturating_record(ns.max(1));
        }
    }

    /// A connection failed; `why` (which names the address) is kept if it is the first failure.
    pub fn error(&mut self, why: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    /// Echoed bytes differed from those sent.
    pub fn mismatch(&mut self, why: impl FnOnce() -> String) {
        self.mismatches += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    /// `msgs` messages were sent and never echoed; the caller reports why through `error`.
    pub fn lost(&mut self, msgs: u64) {
        self.lost += msgs;
    }

    /// An open-loop message fell due on a connection that had too many outstanding.
    pub fn not_sent(&mut self) {
        self.not_sent += 1;
    }

    /// Ends the measured phase: figures and CPU are read now, while the run goes on to wait for
    /// the echoes still in flight (which are checked but not counted).
    pub fn stop(&mut self, now: Instant) {
        if !self.measuring {
            return;
        }
        self.close_interval(now);
        self.measuring = false;
        self.stopped = Some((
            now,
            self.server_pid.and_then(procstat::cpu_ns),
            procstat::cpu_ns(std::process::id()),
        ));
    }

    pub fn sample_rss(&mut self) {
        if let Some(rss) = self.server_pid.and_then(procstat::rss_bytes) {
            self.rss_peak = Some(self.rss_peak.map_or(rss, |p| p.max(rss)));
        }
    }

    /// Closes the current log interval, if logging, and starts the next one at `now`.
    fn close_interval(&mut self, now: Instant) {
        let began = self.began;
        let Some(rec) = &mut self.intervals else {
            return;
        };
        let mut encoded = Vec::new();
        // Encoding into memory fails only for a histogram it cannot represent; then the interval
        // is left out of the log rather than the run failing.
        if V2Serializer::new()
            .serialize(&rec.hist, &mut encoded)
            .is_ok()
        {
            rec.closed.push(Interval {
                start: rec.started.saturating_duration_since(began),
                length: now.saturating_duration_since(rec.started),
                encoded,
            });
        }
        rec.hist.reset();
        rec.started = now;
    }

    /// Cheap to call every loop turn: samples memory every 100 ms, closes log intervals every
    /// second and redraws progress every 250 ms.
    pub fn tick(&mut self, now: Instant) {
        if now.duration_since(self.last_sample) >= Duration::from_millis(100) {
            self.last_sample = now;
            self.sample_rss();
        }
        if self.measuring
            && self
                .intervals
                .as_ref()
                .is_some_and(|r| now.duration_since(r.started) >= LOG_INTERVAL)
        {
            self.close_interval(now);
        }
        if self.progress && now.duration_since(self.last_progress) >= Duration::from_millis(250) {
            self.last_progress = now;
            eprint!("\r{}   ", self.progress_line(now));
            let _ = std::io::stderr().flush();
        }
    }

    /// The live line: rates once measuring, and only the time spent before that (no rate is
    /// counted during warm-up, so none is shown).
    pub fn progress_line(&self, now: Instant) -> String {
        if self.stopped.is_some() {
            return format!(
                "{:<28} waiting for echoes in flight  errors {} mismatches {}",
                self.label, self.errors, self.mismatches
            );
        }
        if !self.measuring {
            let secs = now.duration_since(self.created).as_secs_f64();
            return format!(
                "{:<28} warming up {:>5.1}s  errors {} mismatches {}",
                self.label, secs, self.errors, self.mismatches
            );
        }
        let secs = now.duration_since(self.began).as_secs_f64().max(1e-9);
        format!(
            "{:<28} {:>6.1}s {:>12.0} msgs/s {:>9.1} MB/s errors {} mismatches {}",
            self.label,
            secs,
            self.msgs as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            self.errors,
            self.mismatches
        )
    }

    pub fn finish(&mut self, now: Instant) -> RunResult {
        self.sample_rss();
        if self.progress {
            eprint!("\r{:100}\r", "");
        }
        self.stop(now);
        let us = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        let per_msg = |begin: Option<u64>, end: Option<u64>| match (begin, end) {
            (Some(a), Some(b)) if self.msgs > 0 => {
                Some(b.saturating_sub(a) as f64 / self.msgs as f64)
            }
            _ => None,
        };
        let (secs, cpu, own_cpu) = match self.stopped {
            Some((ended, server, own)) => (
                ended.duration_since(self.began).as_secs_f64(),
                per_msg(self.cpu_at_begin, server),
                per_msg(self.own_cpu_at_begin, own),
            ),
            None => (0.0, None, None),
        };
        RunResult {
            scenario: self.label.clone(),
            secs,
            msgs: self.msgs,
            bytes: self.bytes,
            mean_us: self.hist.mean() / 1000.0,
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.hist.max() as f64 / 1000.0,
            errors: self.errors,
            mismatches: self.mismatches,
            lost: self.lost,
            not_sent: self.not_sent,
            first_error: self.first_error.clone(),
            server_cpu_ns_per_msg: cpu,
            client_cpu_ns_per_msg: own_cpu,
            server_rss_peak: self.rss_peak,
            hist: Some(self.hist.clone()),
            began_at: self.began_at,
            intervals: self
                .intervals
                .as_mut()
                .map(|r| std::mem::take(&mut r.closed))
                .unwrap_or_default(),
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
    fn warm_up_shows_no_rate() {
        let mut m = Meter::new("ping", None, false);
        let t = Instant::now();
        let warm = m.progress_line(t);
        assert!(warm.contains("warming up"), "{warm}");
        assert!(!warm.contains("msgs/s"), "{warm}");
        m.begin(t);
        m.msgs = 10;
        let live = m.progress_line(t + Duration::from_secs(1));
        assert!(
            live.contains("msgs/s") && !live.contains("warming"),
            "{live}"
        );
    }

    #[test]
    fn the_first_failure_is_kept_and_all_are_counted() {
        let mut m = Meter::new("t", None, false);
        m.error(|| "connect to 127.0.0.1:1: refused".into());
        m.mismatch(|| "second".into());
        m.error(|| "third".into());
        let r = m.finish(Instant::now());
        assert_eq!((r.errors, r.mismatches), (2, 1));
        assert_eq!(
            r.first_error.as_deref(),
            Some("connect to 127.0.0.1:1: refused")
        );
        assert!(!r.clean());
    }

    #[test]
    fn intervals_cover_the_measured_phase_and_decode() {
        use hdrhistogram::serialization::Deserializer;
        let mut m = Meter::new("t", None, true);
        let t0 = Instant::now();
        m.begin(t0);
        for ns in [1_000, 2_000, 3_000] {
            m.record(ns);
        }
        m.tick(t0 + Duration::from_millis(1500));
        m.record(50_000);
        let r = m.finish(t0 + Duration::from_millis(2000));
        assert_eq!(r.intervals.len(), 2);
        assert_eq!(r.intervals[0].start, Duration::ZERO);
        assert_eq!(r.intervals[1].start, Duration::from_millis(1500));
        assert_eq!(r.intervals[1].length, Duration::from_millis(500));
        let counts: Vec<u64> = r
            .intervals
            .iter()
            .map(|i| {
                let h: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut &i.encoded[..])
                    .expect("decodes");
                h.len()
            })
            .collect();
        assert_eq!(counts, vec![3, 1]);
        assert_eq!(r.hist.map(|h| h.len()), Some(4));
    }

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
