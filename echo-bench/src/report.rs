//! How one run is shown: an aligned summary with units for people, the full latency distribution
//! (`--latency`), one JSON line (`--json`), a JSON document in hyperfine's `{"results": [...]}`
//! shape (`--export-json`) and an HDR histogram interval log (`--hdr-log`).
//!
//! Units: latency and CPU time scale from ns to s with three significant digits, counts get
//! thousands separators, MB is 10^6 bytes (as in MB/s) and MiB 2^20 (memory).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::stats::RunResult;

/// Percentiles of the `--latency` table and of the exported distribution.
pub const PERCENTILES: [f64; 10] = [
    0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 99.999, 100.0,
];

/// What was asked for: the scenario and the shape of its load.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    pub kind: &'static str,
    pub conns: usize,
    /// Messages in flight per connection (closed loop).
    pub depth: usize,
    pub size: usize,
    /// Open loop: messages per second over all connections.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
}

impl Asked {
    /// A `kind` run with one connection, one message in flight, no rate and no time yet: each
    /// scenario sets what its flags say.
    pub fn of(kind: &'static str) -> Asked {
        Asked {
            kind,
            conns: 1,
            depth: 1,
            size: 0,
            rate: None,
            duration: Duration::ZERO,
            warmup: Duration::ZERO,
        }
    }
}

/// What was asked for and against whom, to describe a run beside what it measured.
pub struct RunInfo {
    pub asked: Asked,
    /// The target as given (`localhost:8080`) and the address used.
    pub target: String,
    pub addr: SocketAddr,
}

/// Three significant digits: `1.23`, `12.3`, `123`.
fn sig3(x: f64) -> String {
    if x < 9.995 {
        format!("{x:.2}")
    } else if x < 99.95 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// A time in nanoseconds with a unit that keeps it short: `850 ns`, `12.3 µs`, `4.56 ms`, `1.20 s`.
pub fn fmt_ns(ns: f64) -> String {
    if !ns.is_finite() {
        return "-".into();
    }
    if ns < 999.5 {
        format!("{ns:.0} ns")
    } else if ns < 999_500.0 {
        format!("{} µs", sig3(ns / 1e3))
    } else if ns < 999_500_000.0 {
        format!("{} ms", sig3(ns / 1e6))
    } else {
        format!("{} s", sig3(ns / 1e9))
    }
}

/// A whole number with thousands separators: `1,234,567`.
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes of memory in binary units: `512 B`, `3.40 KiB`, `12.3 MiB`.
pub fn fmt_bytes(b: f64) -> String {
    let (v, unit) = if b.abs() < 1024.0 {
        return format!("{b:.0} B");
    } else if b.abs() < 1024.0 * 1024.0 {
        (b / 1024.0, "KiB")
    } else if b.abs() < 1024.0 * 1024.0 * 1024.0 {
        (b / (1024.0 * 1024.0), "MiB")
    } else {
        (b / (1024.0 * 1024.0 * 1024.0), "GiB")
    };
    if v < 0.0 {
        format!("-{} {unit}", sig3(-v))
    } else {
        format!("{} {unit}", sig3(v))
    }
}

/// A rate rounded to a whole number unless it is small: `412,345`, `7.50`.
fn fmt_rate(x: f64) -> String {
    if x < 100.0 {
        sig3(x)
    } else {
        fmt_count(x.round() as u64)
    }
}

/// A duration as people write it: `500ms`, `3s`, `1.5s`, `2m`.
fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60.0 || secs.fract() != 0.0 || d.as_secs() % 60 != 0 {
        format!(
            "{}s",
            sig3(secs).trim_end_matches('0').trim_end_matches('.')
        )
    } else {
        format!("{}m", d.as_secs() / 60)
    }
}

/// The aligned summary of one run.
pub fn summary(info: &RunInfo, r: &RunResult) -> String {
    let mut out = format!(
        "{} {}: {}\n{}\n\n",
        info.asked.kind,
        target(info),
        what(info),
        phase(info, r)
    );
    let mut line = |label: &str, value: String| out.push_str(&format!("  {label:<12} {value}\n"));
    let (unit, noun) = match info.asked.kind {
        "churn" => ("conns/s", "connections, each echo checked"),
        "idle" => ("msgs/s", "first messages echoed, every byte checked"),
        _ => ("msgs/s", "messages echoed, every byte checked"),
    };
    line("messages", format!("{} {noun}", fmt_count(r.msgs)));
    if info.asked.kind != "idle" {
        line("rate", format!("{} {unit}", fmt_rate(r.msgs_per_s())));
        line("throughput", format!("{} MB/s", sig3(r.mb_per_s())));
    }
    line("latency", latency(r));
    let counted_from = match info.asked.kind {
        "stream" => Some("from each message's scheduled send time (open loop)"),
        "churn" => Some("a whole connection: connect, echo, close"),
        "idle" => Some("of the first echo, during the set-up burst"),
        _ => None,
    };
    if let Some(note) = counted_from {
        line("", note.into());
    }
    let errors = if r.clean() {
        "0".to_string()
    } else {
        failures(r)
    };
    line("errors", errors);
    if r.not_sent > 0 {
        line("not sent", not_sent(r));
    }
    if let Some(server) = server(r) {
        line("server", server);
    }
    if let Some(cpu) = r.client_cpu_ns_per_msg {
        line("client", format!("{} CPU per message", fmt_ns(cpu)));
    }
    out
}

/// The target as typed, with the address it resolved to when that differs.
fn target(info: &RunInfo) -> String {
    if info.target == info.addr.to_string() {
        info.target.clone()
    } else {
        format!("{} ({})", info.target, info.addr)
    }
}

/// What the scenario did, in one line.
fn what(info: &RunInfo) -> String {
    let (conns, size) = (
        fmt_count(info.asked.conns as u64),
        fmt_count(info.asked.size as u64),
    );
    match info.asked.kind {
        "ping" => format!(
            "{conns} connections, {} in flight each, {size} B messages",
            info.asked.depth
        ),
        "stream" => format!(
            "{} msgs/s scheduled over {conns} connections, {size} B messages",
            fmt_rate(info.asked.rate.unwrap_or(0.0))
        ),
        "churn" => format!("connect, echo {size} B, close; one connection after another"),
        _ => format!("{conns} connections held, each echoing one {size} B message first"),
    }
}

/// How long was measured, after what warm-up (or, idle: how long the connections took to open).
fn phase(info: &RunInfo, r: &RunResult) -> String {
    match info.asked.kind {
        "idle" => format!(
            "connections opened in {:.2} s, then held for {}",
            (r.secs - info.asked.duration.as_secs_f64()).max(0.0),
            fmt_duration(info.asked.duration)
        ),
        _ if info.asked.warmup.is_zero() => format!("measured {:.2} s, no warm-up", r.secs),
        _ => format!(
            "measured {:.2} s after {} of warm-up",
            r.secs,
            fmt_duration(info.asked.warmup)
        ),
    }
}

/// The latency percentiles, or why there are none.
fn latency(r: &RunResult) -> String {
    if r.msgs == 0 {
        return "- (nothing was echoed while measuring)".into();
    }
    let us = |v: f64| fmt_ns(v * 1e3);
    format!(
        "p50 {}   p90 {}   p99 {}   p99.9 {}   max {}   (mean {})",
        us(r.p50_us),
        us(r.p90_us),
        us(r.p99_us),
        us(r.p999_us),
        us(r.max_us),
        us(r.mean_us)
    )
}

/// The server's CPU per message and memory, when they were measured.
fn server(r: &RunResult) -> Option<String> {
    let mut server = Vec::new();
    if let Some(cpu) = r.server_cpu_ns_per_msg {
        server.push(format!("{} CPU per message", fmt_ns(cpu)));
    }
    if let Some(rss) = r.server_rss_peak {
        server.push(format!("{} peak RSS", fmt_bytes(rss as f64)));
    }
    if let Some(per) = r.rss_per_conn {
        server.push(format!("{} RSS per held connection", fmt_bytes(per)));
    }
    (!server.is_empty()).then(|| server.join(", "))
}

/// What failed, counted, and the first failure in words.
pub fn failures(r: &RunResult) -> String {
    format!(
        "{} connection errors, {} mismatches, {} messages never echoed; first: {}",
        fmt_count(r.errors),
        fmt_count(r.mismatches),
        fmt_count(r.lost),
        r.first_error.as_deref().unwrap_or("-")
    )
}

/// The open loop's warning that some of its schedule was not kept.
pub fn not_sent(r: &RunResult) -> String {
    format!(
        "WARNING: {} scheduled messages were not sent: their connection had {} outstanding or had failed",
        fmt_count(r.not_sent),
        fmt_count(crate::load::OPEN_LOOP_MAX_OUTSTANDING as u64)
    )
}

/// The latency at each of [`PERCENTILES`], in nanoseconds.
pub fn distribution(hist: &Histogram<u64>) -> Vec<(f64, u64)> {
    PERCENTILES
        .iter()
        .map(|&p| {
            let v = if p == 0.0 {
                hist.min()
            } else {
                hist.value_at_percentile(p)
            };
            (p, v)
        })
        .collect()
}

/// The `--latency` table.
pub fn distribution_table(hist: &Histogram<u64>) -> String {
    let mut out = format!(
        "latency distribution ({} samples, 3 significant digits)\n",
        fmt_count(hist.len())
    );
    for (p, ns) in distribution(hist) {
        let name = match p {
            0.0 => "min".to_string(),
            100.0 => "max".to_string(),
            _ => format!("{p:.3}%"),
        };
        out.push_str(&format!("  {name:>9}  {:>9}\n", fmt_ns(ns as f64)));
    }
    out
}

/// The distribution as JSON: `[{"percentile": 50.0, "us": 118.0}, ...]`.
pub fn distribution_json(hist: &Histogram<u64>) -> Value {
    Value::Array(
        distribution(hist)
            .into_iter()
            .map(|(p, ns)| json!({"percentile": p, "us": ns as f64 / 1e3}))
            .collect(),
    )
}

/// The run as a JSON object with what was asked for; with `full`, the latency distribution too.
pub fn run_json(info: &RunInfo, r: &RunResult, full: bool) -> Value {
    let mut v = r.to_json(&[
        ("kind", info.asked.kind.into()),
        ("target", info.target.clone().into()),
        ("addr", info.addr.to_string().into()),
        ("rate", info.asked.rate.into()),
        ("duration_secs", info.asked.duration.as_secs_f64().into()),
        ("warmup_secs", info.asked.warmup.as_secs_f64().into()),
    ]);
    if let (true, Some(h), Some(map)) = (full, &r.hist, v.as_object_mut()) {
        map.insert("latency_distribution".into(), distribution_json(h));
    }
    v
}

/// Writes hyperfine's export shape, `{"results": [run]}`, with the full distribution.
pub fn export_json(w: &mut impl Write, info: &RunInfo, r: &RunResult) -> io::Result<()> {
    let doc = json!({ "results": [run_json(info, r, true)] });
    serde_json::to_writer_pretty(&mut *w, &doc)?;
    writeln!(w)
}

/// Writes the HDR histogram interval log of a run: one compressed histogram per second of the
/// measured phase, in nanoseconds, timestamps relative to its start (the BaseTime header).
pub fn write_hdr_log(w: &mut impl Write, info: &RunInfo, r: &RunResult) -> io::Result<()> {
    let mut serializer = V2DeflateSerializer::new();
    let mut builder = IntervalLogWriterBuilder::new();
    builder.add_comment(&format!(
        "[echo-bench {} {}: latency in nanoseconds, Interval_Max in milliseconds]",
        info.asked.kind, info.addr
    ));
    if let Some(t) = r.began_at {
        builder.with_start_time(t).with_base_time(t);
    }
    builder.with_max_value_divisor(1e6);
    let mut log = builder.begin_log_with(w, &mut serializer)?;
    log.write_comment(
        "Legend: StartTimestamp,Interval_Length,Interval_Max,Interval_Compressed_Histogram",
    )?;
    for iv in &r.intervals {
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &iv.encoded[..])
            .map_err(|e| io::Error::other(format!("interval histogram: {e:?}")))?;
        log.write_histogram(&h, iv.start, iv.length, Tag::new(info.asked.kind))
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: &'static str) -> RunInfo {
        RunInfo {
            asked: Asked {
                conns: 50,
                depth: 16,
                size: 64,
                rate: Some(10_000.0),
                duration: Duration::from_secs(3),
                warmup: Duration::from_millis(500),
                ..Asked::of(kind)
            },
            target: "localhost:8080".into(),
            addr: "127.0.0.1:8080".parse().expect("literal"),
        }
    }

    fn result() -> RunResult {
        RunResult {
            secs: 3.0,
            msgs: 1_234_567,
            bytes: 1_234_567 * 64,
            mean_us: 121.4,
            p50_us: 118.2,
            p90_us: 140.0,
            p99_us: 210.4,
            p999_us: 455.0,
            max_us: 2_104.0,
            server_cpu_ns_per_msg: Some(1_234.0),
            client_cpu_ns_per_msg: Some(987.0),
            server_rss_peak: Some(3 * 1024 * 1024 + 400 * 1024),
            ..RunResult::default()
        }
    }

    #[test]
    fn units_scale_and_keep_three_digits() {
        assert_eq!(fmt_ns(850.0), "850 ns");
        assert_eq!(fmt_ns(12_345.0), "12.3 µs");
        assert_eq!(fmt_ns(999_999.0), "1.00 ms");
        assert_eq!(fmt_ns(4_560_000.0), "4.56 ms");
        assert_eq!(fmt_ns(1.2e9), "1.20 s");
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_bytes(39.0), "39 B");
        assert_eq!(fmt_bytes(3.4 * 1024.0 * 1024.0), "3.40 MiB");
        assert_eq!(fmt_bytes(-2048.0), "-2.00 KiB");
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(fmt_duration(Duration::from_secs(3)), "3s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn the_ping_summary_is_aligned_with_units() {
        let text = summary(&info("ping"), &result());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ping localhost:8080 (127.0.0.1:8080): 50 connections, 16 in flight each, 64 B messages"
        );
        assert_eq!(lines[1], "measured 3.00 s after 500ms of warm-up");
        assert_eq!(lines[2], "");
        assert_eq!(
            lines[3],
            "  messages     1,234,567 messages echoed, every byte checked"
        );
        assert_eq!(lines[4], "  rate         411,522 msgs/s");
        assert_eq!(lines[5], "  throughput   26.3 MB/s");
        assert_eq!(
            lines[6],
            "  latency      p50 118 µs   p90 140 µs   p99 210 µs   p99.9 455 µs   max 2.10 ms   (mean 121 µs)"
        );
        assert_eq!(lines[7], "  errors       0");
        assert_eq!(
            lines[8],
            "  server       1.23 µs CPU per message, 3.39 MiB peak RSS"
        );
        assert_eq!(lines[9], "  client       987 ns CPU per message");
        assert_eq!(lines.len(), 10);
    }

    #[test]
    fn errors_show_counts_and_the_first_cause() {
        let r = RunResult {
            errors: 2,
            mismatches: 1,
            lost: 3,
            not_sent: 1234,
            first_error: Some("connect to 127.0.0.1:8080: Connection refused".into()),
            ..result()
        };
        let text = summary(&info("stream"), &r);
        assert!(text.contains(
            "  errors       2 connection errors, 1 mismatches, 3 messages never echoed; first: connect to 127.0.0.1:8080: Connection refused"
        ), "{text}");
        assert!(
            text.contains("  not sent     WARNING: 1,234 scheduled messages were not sent"),
            "{text}"
        );
        assert!(
            text.contains("10,000 msgs/s scheduled over 50 connections"),
            "{text}"
        );
        assert!(text.contains("scheduled send time"), "{text}");
    }

    #[test]
    fn idle_and_churn_describe_what_they_count() {
        let idle = summary(
            &info("idle"),
            &RunResult {
                rss_per_conn: Some(39.0),
                ..result()
            },
        );
        assert!(idle.contains("39 B RSS per held connection"), "{idle}");
        assert!(!idle.contains("rate "), "{idle}");
        let churn = summary(&info("churn"), &result());
        assert!(churn.contains("411,522 conns/s"), "{churn}");
        let none = summary(
            &info("churn"),
            &RunResult {
                msgs: 0,
                ..result()
            },
        );
        assert!(
            none.contains("  latency      - (nothing was echoed while measuring)"),
            "{none}"
        );
    }

    #[test]
    fn the_distribution_lists_every_percentile() {
        let mut h = crate::stats::new_histogram();
        for ns in 1..=1000u64 {
            h.saturating_record(ns * 1000);
        }
        let d = distribution(&h);
        assert_eq!(d.len(), PERCENTILES.len());
        assert_eq!(d[0], (0.0, 1000));
        assert!(d.windows(2).all(|w| w[0].1 <= w[1].1));
        let table = distribution_table(&h);
        assert!(table.contains("1,000 samples"), "{table}");
        assert!(table.contains("99.900%"), "{table}");
        assert!(table.contains("max"), "{table}");
        let json = distribution_json(&h);
        assert_eq!(json[1]["percentile"], 50.0);
    }

    #[test]
    fn the_export_has_hyperfines_results_array() {
        let mut r = result();
        r.hist = Some(crate::stats::new_histogram());
        let mut buf = Vec::new();
        export_json(&mut buf, &info("ping"), &r).expect("writes to memory");
        let v: Value = serde_json::from_slice(&buf).expect("valid JSON");
        let run = &v["results"][0];
        assert_eq!(run["kind"], "ping");
        assert_eq!(run["addr"], "127.0.0.1:8080");
        assert_eq!(run["msgs"], 1_234_567);
        assert!(run["latency_distribution"].is_array());
    }
}
