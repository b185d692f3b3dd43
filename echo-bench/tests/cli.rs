//! The echo-bench binary as people run it: each subcommand for about half a second against the
//! package's own reference server, its summary and its JSON fields; targets written as names,
//! IPv4 and IPv6; usage errors; and `compare --quick` with a server given on the command line.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_echo-bench");
const REFERENCE: &str = env!("CARGO_BIN_EXE_epoll-ref");

/// The reference echo server on a free port of `bind`, killed (by its PID) when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts epoll-ref with one thread and reads the address from its first line.
    fn start(bind: &str) -> Result<Server, String> {
        let mut child = Command::new(REFERENCE)
            .args(["--bind", bind, "--port", "0", "--threads", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {REFERENCE}: {e}"))?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Some(out) = stdout else { return };
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = Server {
            child,
            addr: String::new(),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "epoll-ref printed no line".to_string())?;
        server.addr = line
            .trim()
            .strip_prefix("epoll-ref: listening on ")
            .ok_or_else(|| format!("epoll-ref said {line:?}"))?
            .to_string();
        Ok(server)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reference() -> Server {
    Server::start("127.0.0.1").unwrap_or_else(|e| panic!("{e}"))
}

fn bench(args: &[&str]) -> Output {
    Command::new(BENCH)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BENCH}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs echo-bench, expecting exit status 0, and returns its stdout.
fn bench_ok(args: &[&str]) -> String {
    let out = bench(args);
    assert!(
        out.status.success(),
        "echo-bench {args:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `kind` against `addr` with `flags`, expecting exit status 0, and returns its stdout.
fn bench_at(kind: &str, addr: &str, flags: &[&str]) -> String {
    let mut args = vec![kind, "--addr", addr];
    args.extend_from_slice(flags);
    bench_ok(&args)
}

/// Runs `kind` as `bench_at` does, exporting into a temporary directory; returns the summary and
/// the exported run.
fn bench_exported(kind: &str, addr: &str, flags: &[&str]) -> (String, Value) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let export = dir.path().join(format!("{kind}.json"));
    let export_arg = export.to_string_lossy().into_owned();
    let mut args = flags.to_vec();
    args.extend(["--export-json", &export_arg]);
    let summary = bench_at(kind, addr, &args);
    // Indexing, not taking: a missing run reads as null and fails the caller's checks with it.
    let run = read_json(&export)["results"][0].clone();
    (summary, run)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fields every run reports, whatever its kind.
fn check_run_fields(run: &Value, kind: &str) {
    assert_eq!(run["kind"], kind, "{run}");
    assert_eq!(run["errors"], 0, "{run}");
    assert_eq!(run["mismatches"], 0, "{run}");
    assert_eq!(run["lost"], 0, "{run}");
    assert_eq!(run["not_sent"], 0, "{run}");
    assert!(run["first_error"].is_null(), "{run}");
    assert!(run["msgs"].as_u64().is_some_and(|n| n > 0), "{run}");
    assert!(run["bytes"].as_u64().is_some_and(|n| n > 0), "{run}");
    let p: Vec<f64> = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
        .iter()
        .map(|k| {
            run[k]
                .as_f64()
                .unwrap_or_else(|| panic!("{k} missing: {run}"))
        })
        .collect();
    assert!(p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
    assert!(
        run["latency_distribution"]
            .as_array()
            .is_some_and(|d| d.len() == 10),
        "{run}"
    );
    assert!(
        run["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{run}"
    );
}

/// The summary's labels, in order, each starting its line.
fn check_summary(summary: &str, kind: &str, labels: &[&str]) {
    assert!(
        summary.starts_with(&format!("{kind} 127.0.0.1:")),
        "{summary}"
    );
    let mut from = 0;
    for label in labels {
        let needle = format!("\n  {label:<12} ");
        let at = summary[from..]
            .find(&needle)
            .unwrap_or_else(|| panic!("no {label:?} line after byte {from}:\n{summary}"));
        from += at + needle.len();
    }
    assert!(summary.contains("\n  errors       0\n"), "{summary}");
    assert!(!summary.contains("warming"), "{summary}");
}

#[test]
fn ping_reports_a_summary_and_exports_its_fields() {
    let server = reference();
    let pid = server.pid();
    let (summary, run) = bench_exported(
        "ping",
        &server.addr,
        &[
            "--server-pid",
            &pid,
            "--conns",
            "4",
            "--depth",
            "4",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
        ],
    );
    check_summary(
        &summary,
        "ping",
        &[
            "messages",
            "rate",
            "throughput",
            "latency",
            "errors",
            "server",
            "client",
        ],
    );
    assert!(
        summary.contains("4 connections, 4 in flight each, 64 B messages"),
        "{summary}"
    );
    assert!(
        summary.contains("msgs/s") && summary.contains("MB/s"),
        "{summary}"
    );
    assert!(
        summary.contains("CPU per message") && summary.contains("MiB peak RSS"),
        "{summary}"
    );
    check_run_fields(&run, "ping");
    assert_eq!(
        (run["conns"].as_u64(), run["depth"].as_u64()),
        (Some(4), Some(4))
    );
    assert!(run["server_cpu_ns_per_msg"].is_f64(), "{run}");
    assert!(
        run["server_rss_peak"].as_u64().is_some_and(|b| b > 0),
        "{run}"
    );
    assert_eq!(run["warmup_secs"], 0.1);
}

#[test]
fn stream_schedules_its_rate_and_exports_its_fields() {
    let server = reference();
    let (summary, run) = bench_exported(
        "stream",
        &server.addr,
        &[
            "--rate",
            "2000",
            "--conns",
            "4",
            "--duration",
            "0.5",
            "--warmup",
            "0",
        ],
    );
    check_summary(
        &summary,
        "stream",
        &["messages", "rate", "throughput", "latency", "errors"],
    );
    assert!(
        summary.contains("2,000 msgs/s scheduled over 4 connections"),
        "{summary}"
    );
    assert!(summary.contains("scheduled send time"), "{summary}");
    assert!(summary.contains("no warm-up"), "{summary}");
    check_run_fields(&run, "stream");
    assert_eq!(run["rate"], 2000.0);
}

#[test]
fn churn_counts_connections_and_exports_its_fields() {
    let server = reference();
    let (summary, run) = bench_exported(
        "churn",
        &server.addr,
        &["--duration", "500ms", "--warmup", "100ms"],
    );
    check_summary(
        &summary,
        "churn",
        &["messages", "rate", "throughput", "latency", "errors"],
    );
    assert!(summary.contains("conns/s"), "{summary}");
    check_run_fields(&run, "churn");
    assert_eq!(run["conns"], 1);
}

#[test]
fn idle_holds_every_connection_and_reports_memory() {
    let server = reference();
    let pid = server.pid();
    let line = bench_at(
        "idle",
        &server.addr,
        &[
            "--conns",
            "50",
            "--duration",
            "200ms",
            "--server-pid",
            &pid,
            "--json",
            "--latency",
        ],
    );
    assert_eq!(line.lines().count(), 1, "one JSON line: {line}");
    let run: Value = serde_json::from_str(&line).expect("a JSON line");
    check_run_fields(&run, "idle");
    assert_eq!(run["msgs"], 50);
    assert!(run["rss_per_conn"].is_f64(), "{run}");
    let summary = bench_at(
        "idle",
        &server.addr,
        &["--conns", "20", "--duration", "0.2", "--server-pid", &pid],
    );
    check_summary(
        &summary,
        "idle",
        &["messages", "latency", "errors", "server"],
    );
    assert!(summary.contains("20 first messages echoed"), "{summary}");
    assert!(summary.contains("RSS per held connection"), "{summary}");
}

#[test]
fn json_latency_and_hdr_log_on_request() {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let server = reference();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = dir.path().join("ping.hlog");
    let log_arg = log.to_string_lossy().into_owned();
    let out = bench_at(
        "ping",
        &server.addr,
        &[
            "--conns",
            "2",
            "--duration",
            "1.2s",
            "--warmup",
            "0",
            "--json",
            "--latency",
            "--hdr-log",
            &log_arg,
        ],
    );
    let run: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    check_run_fields(&run, "ping");
    let bytes = std::fs::read(&log).expect("the log was written");
    let mut intervals = Vec::new();
    for entry in IntervalLogIterator::new(&bytes) {
        match entry.expect("a valid log entry") {
            LogEntry::Interval(h) => {
                assert_eq!(h.tag().map(|t| t.as_str()), Some("ping"));
                intervals.push((h.start_timestamp(), h.duration()));
            }
            LogEntry::StartTime(_) | LogEntry::BaseTime(_) => {}
        }
    }
    // Intervals of a second each, the last one shorter, tiling the measured phase. How many
    // there are depends on when the load loop woke up, so only their shape is checked.
    assert!(!intervals.is_empty(), "no interval in the log");
    assert_eq!(intervals[0].0, Duration::ZERO);
    for pair in intervals.windows(2) {
        let end = pair[0].0 + pair[0].1;
        let gap = end.abs_diff(pair[1].0);
        assert!(gap <= Duration::from_millis(2), "{intervals:?}");
        assert!(pair[0].1 >= Duration::from_millis(999), "{intervals:?}");
    }
    let total: f64 = intervals.iter().map(|(_, d)| d.as_secs_f64()).sum();
    let secs = run["secs"].as_f64().expect("secs");
    assert!(
        (total - secs).abs() < 0.01,
        "intervals {total} s, run {secs} s"
    );

    let human = bench_at(
        "ping",
        &server.addr,
        &["--conns", "2", "--duration", "0.3", "--latency"],
    );
    let table = human
        .split("latency distribution (")
        .nth(1)
        .unwrap_or_else(|| panic!("no distribution table:\n{human}"));
    for p in ["min", "50.000%", "99.900%", "99.999%", "max"] {
        assert!(table.contains(p), "no {p} in:\n{table}");
    }
}

#[test]
fn targets_by_name_and_by_ipv6_literal() {
    let v4 = reference();
    let localhost = format!("localhost:{}", v4.port());
    let summary = bench_at("ping", &localhost, &["--conns", "2", "--duration", "0.3"]);
    assert!(
        summary.starts_with(&format!("ping {localhost} (127.0.0.1:")),
        "{summary}"
    );

    // A host without an IPv6 loopback cannot run the second half; say so where it shows.
    let v6 = match std::net::TcpListener::bind("[::1]:0") {
        Ok(_) => Server::start("::1").unwrap_or_else(|e| panic!("{e}")),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED the [::1] half of targets_by_name_and_by_ipv6_literal: no IPv6 loopback ({e})"
            );
            return;
        }
    };
    assert!(v6.addr.starts_with("[::1]:"), "{}", v6.addr);
    let line = bench_at(
        "ping",
        &v6.addr,
        &["--conns", "2", "--duration", "0.3", "--json"],
    );
    let run: Value = serde_json::from_str(line.trim()).expect("a JSON line");
    assert_eq!(run["addr"], v6.addr.as_str());
    assert!(run["msgs"].as_u64().is_some_and(|n| n > 0), "{run}");
    assert_eq!(run["errors"], 0);
}

#[test]
fn a_refused_connection_names_the_address_and_exits_1() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let out = bench(&["ping", "--addr", &addr, "--duration", "0.2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("connect to {addr}")), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let cases: [(&[&str], &str); 6] = [
        (&["ping", "--conns", "0"], "--conns"),
        (&["ping", "--duration", "fast"], "not a duration"),
        (&["idle", "--depth", "4"], "--depth"),
        (
            &["compare", "--setup", "pinnned"],
            "[possible values: pinned, unpinned, both]",
        ),
        (
            &["compare", "--only", "NOSUCH", "--server", "a=x {port}"],
            "matches no scenario",
        ),
        (&["compare", "--server", "a=x --port 1"], "{port}"),
    ];
    for (args, says) in cases {
        let out = bench(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let help = bench_ok(&["ping", "--help"]);
    assert!(
        help.contains("Exit status:") && help.contains("2  bad usage"),
        "{help}"
    );
}

#[test]
fn compare_quick_runs_given_servers_and_keeps_every_results_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let spec = |name: &str| format!("{name}='{REFERENCE}' --port {{port}} --threads {{workers}}");
    let (a, b) = (spec("ref-a"), spec("ref-b"));
    let args = [
        "compare",
        "--quick",
        "--server",
        &a,
        "--server",
        &b,
        "--only",
        "16KiB",
        "--duration",
        "300ms",
        "--out-dir",
        &dir_arg,
    ];
    let stdout = bench_ok(&args);
    assert!(stdout.contains("x ref and cpu x against ref-a"), "{stdout}");
    let files = |ext: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .expect("the results directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        v.sort();
        v
    };
    let (jsonl, md, svg) = (files("jsonl"), files("md"), files("svg"));
    assert_eq!((jsonl.len(), md.len(), svg.len()), (1, 1, 1));
    let first = std::fs::read_to_string(&jsonl[0]).expect("results");
    let lines: Vec<Value> = first
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let of = |kind: &str| lines.iter().filter(|l| l["kind"] == kind).count();
    assert_eq!((of("meta"), of("run"), of("median")), (1, 2, 2));
    for l in lines.iter().filter(|l| l["kind"] == "run") {
        assert_eq!(l["scenario"], "16KiB c50 d1");
        assert_eq!(
            (l["errors"].as_u64(), l["mismatches"].as_u64()),
            (Some(0), Some(0)),
            "{l}"
        );
        assert!(l["msgs"].as_u64().is_some_and(|n| n > 0), "{l}");
    }
    let reference_row = lines
        .iter()
        .find(|l| l["kind"] == "median" && l["server"] == "ref-a")
        .expect("a median of ref-a");
    assert_eq!(reference_row["x_ref"], 1.0, "the reference against itself");
    let table = std::fs::read_to_string(&md[0]).expect("tables");
    for row in [
        "| 16KiB c50 d1   | ref-a ",
        "| 16KiB c50 d1   | ref-b ",
        "x ref |",
        "set-up pinned",
        "`echo-bench compare --quick",
    ] {
        assert!(table.contains(row), "no {row:?} in:\n{table}");
    }
    let plot = std::fs::read_to_string(&svg[0]).expect("plot");
    assert!(
        plot.starts_with("<svg") && plot.contains("ref-b (pinned)"),
        "{}",
        &plot[..200.min(plot.len())]
    );

    // A second run writes new files and leaves the first ones as they were.
    bench_ok(&args);
    assert_eq!(
        (files("jsonl").len(), files("md").len(), files("svg").len()),
        (2, 2, 2)
    );
    assert_eq!(std::fs::read_to_string(&jsonl[0]).expect("results"), first);

    // And plot redraws from a results file on request.
    let out = dir.path().join("again.svg");
    let out_arg = out.to_string_lossy().into_owned();
    let results = jsonl[0].to_string_lossy().into_owned();
    bench_ok(&["plot", &results, "--out", &out_arg]);
    let again = std::fs::read_to_string(&out).expect("the plot");
    assert!(
        again.contains("latency percentiles, 16KiB c50 d1"),
        "no latency panel"
    );
    let missing = bench(&["plot", "/nonexistent/results.jsonl"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("/nonexistent/results.jsonl"));
}
