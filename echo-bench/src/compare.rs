//! `echo-bench compare`: builds and starts each server (each on its own port, a fresh process for
//! every run), runs every scenario against each in interleaved rounds (A B C, B C A, C A B, ...),
//! and prints one table of medians per set-up. Every run is also written as a JSON line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::load::{self, Spec};
use crate::pattern::Pattern;
use crate::stats::{median, spread, RunResult, Spread};
use crate::sys;

#[derive(clap::Args)]
pub struct Options {
    /// A short run (one round, the pinned set-up, short scenarios) to check the set-up works.
    #[arg(long)]
    quick: bool,
    /// Rounds per scenario (each server once per round); medians are reported.
    #[arg(long)]
    rounds: Option<usize>,
    /// Measured time per run, e.g. 2s or 500ms [default: 2s, 400ms with --quick].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    duration: Option<Duration>,
    /// Which set-ups: pinned, unpinned or both.
    #[arg(long, default_value = "both")]
    setup: String,
    /// Idle connections held in the memory scenario.
    #[arg(long, default_value_t = 10_000)]
    idle_conns: usize,
    /// Where to write one JSON line per run and per median.
    #[arg(long, default_value = "target/echo-bench/compare.jsonl")]
    out: PathBuf,
    /// Run only the scenarios whose label contains this text (e.g. "16KiB", "c1000").
    #[arg(long)]
    only: Option<String>,
    /// Use the release binaries already built.
    #[arg(long)]
    no_build: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Ours,
    Tokio,
    Reference,
}

impl Server {
    const ALL: [Server; 3] = [Server::Ours, Server::Tokio, Server::Reference];

    fn name(self) -> &'static str {
        match self {
            Server::Ours => "epoll-echo",
            Server::Tokio => "tokio-echo",
            Server::Reference => "epoll-ref",
        }
    }

    fn command(self, bin: &Path, workers: usize) -> Command {
        let mut cmd = Command::new(bin.join(self.name()));
        let workers = workers.to_string();
        match self {
            Server::Ours => cmd.args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--maxListeners",
                &workers,
                "--drain-timeout",
                "200ms",
            ]),
            Server::Tokio | Server::Reference => cmd.args(["--port", "0", "--threads", &workers]),
        };
        cmd
    }
}

struct Setup {
    name: &'static str,
    workers: usize,
    server_cpus: Vec<usize>,
    client_cpus: Vec<usize>,
}

#[derive(Clone, Copy)]
enum Kind {
    Ping,
    /// Open loop at this many messages per second in total.
    Stream(f64),
    Churn,
    Idle,
}

#[derive(Clone)]
struct Scenario {
    label: String,
    kind: Kind,
    conns: usize,
    depth: usize,
    size: usize,
}

/// Total rate of the open-loop scenario, messages per second.
const OPEN_LOOP_RATE: f64 = 10_000.0;
/// How long the idle scenario holds its connections before reading the server's memory.
const IDLE_HOLD: Duration = Duration::from_millis(300);

fn scenarios(idle_conns: usize) -> Vec<Scenario> {
    let ping = |size: usize, conns, depth| Scenario {
        label: format!(
            "{}{} c{conns} d{depth}",
            if size >= 1024 { size / 1024 } else { size },
            if size >= 1024 { "KiB" } else { "B" }
        ),
        kind: Kind::Ping,
        conns,
        depth,
        size,
    };
    let mut v = Vec::new();
    for conns in [1, 50, 1000] {
        for depth in [1, 16] {
            v.push(ping(64, conns, depth));
        }
    }
    v.push(ping(16 * 1024, 50, 1));
    // Below every server's capacity: tails then show scheduling, not queueing at saturation.
    v.push(Scenario {
        label: "64B c1000 open".into(),
        kind: Kind::Stream(OPEN_LOOP_RATE),
        conns: 1000,
        depth: 1,
        size: 64,
    });
    v.push(Scenario {
        label: "churn 64B".into(),
        kind: Kind::Churn,
        conns: 1,
        depth: 1,
        size: 64,
    });
    v.push(Scenario {
        label: format!("idle c{idle_conns}"),
        kind: Kind::Idle,
        conns: idle_conns,
        depth: 1,
        size: 16,
    });
    v
}

struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Running {
    fn start(server: Server, bin: &Path, setup: &Setup) -> io::Result<Running> {
        let mut cmd = server.command(bin, setup.workers);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        sys::pin_command(&mut cmd, setup.server_cpus.clone());
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        // The first stdout line names the address; the thread then drains stdout until exit.
        std::thread::spawn(move || {
            let Some(out) = stdout else { return };
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .and_then(|line| {
                let rest = &line[line.find("listening on ")? + "listening on ".len()..];
                rest.split_whitespace().next()?.parse().ok()
            });
        let mut running = Running {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        match addr {
            Some(a) => {
                running.addr = a;
                Ok(running)
            }
            None => {
                running.stop();
                Err(io::Error::other(format!(
                    "{} did not report its address",
                    server.name()
                )))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not exited within five seconds.
    fn stop(&mut self) {
        let _ = sys::signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn build(root: &Path) -> io::Result<()> {
    eprintln!("echo-bench: building release binaries");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "epoll-echo",
            "-p",
            "echo-bench",
            "--bins",
        ])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other("cargo build failed"))
    }
}

/// The release binaries: beside this one when it is a release build, else in `../release`.
fn release_dir() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| io::Error::other("no executable directory"))?;
    if dir.file_name().is_some_and(|n| n == "release") {
        return Ok(dir.to_path_buf());
    }
    let target = dir
        .parent()
        .ok_or_else(|| io::Error::other("no target directory"))?;
    Ok(target.join("release"))
}

fn run_one(
    sc: &Scenario,
    server: Server,
    bin: &Path,
    setup: &Setup,
    duration: Duration,
    warmup: Duration,
    pattern: &Pattern,
) -> io::Result<RunResult> {
    let running = Running::start(server, bin, setup)?;
    let spec = Spec {
        addr: running.addr,
        conns: sc.conns,
        depth: sc.depth,
        size: sc.size,
        duration: match sc.kind {
            Kind::Idle => duration.min(IDLE_HOLD),
            _ => duration,
        },
        warmup,
        rate: match sc.kind {
            Kind::Stream(rate) => Some(rate),
            _ => None,
        },
        sources: 8,
        server_pid: Some(running.pid()),
        intervals: false,
    };
    let label = format!("{} {} {}", setup.name, sc.label, server.name());
    let mut res = match sc.kind {
        Kind::Ping | Kind::Stream(_) => load::run_load(&spec, pattern, &label),
        Kind::Churn => load::run_churn(&spec, pattern, &label),
        Kind::Idle => load::run_idle(&spec, pattern, &label),
    }?;
    res.scenario = sc.label.clone();
    drop(running);
    Ok(res)
}

struct Row {
    msgs_per_s: f64,
    mb_per_s: f64,
    p50: f64,
    p99: f64,
    cpu: Option<f64>,
    client_cpu: Option<f64>,
    rss: Option<f64>,
    per_conn: Option<f64>,
    /// Throughput over the reference's in the same round, across rounds.
    x_ref: Option<Spread>,
    /// CPU per message over the reference's in the same round, across rounds.
    cpu_x: Option<Spread>,
    /// p99 over the mean latency: near 1 when every connection is served in turn.
    tail: Option<f64>,
    errors: u64,
}

/// One finished run: its round, its server and what it measured.
type Run = (usize, Server, RunResult);

fn summarize(server: Server, results: &[Run]) -> Row {
    let runs: Vec<&RunResult> = results
        .iter()
        .filter(|(_, s, _)| *s == server)
        .map(|(_, _, r)| r)
        .collect();
    let med =
        |f: &dyn Fn(&RunResult) -> Option<f64>| median(runs.iter().filter_map(|r| f(r)).collect());
    // Paired by round: both runs are close in time, so the machine's drift cancels out.
    let paired = |f: &dyn Fn(&RunResult) -> Option<f64>| {
        spread(
            results
                .iter()
                .filter(|(_, s, _)| *s == server)
                .filter_map(|(round, _, r)| {
                    let (_, _, base) = results
                        .iter()
                        .find(|(k, s, _)| k == round && *s == Server::Reference)?;
                    Some(f(r)? / f(base)?)
                })
                .collect(),
        )
    };
    Row {
        msgs_per_s: med(&|r| Some(r.msgs_per_s())).unwrap_or(0.0),
        mb_per_s: med(&|r| Some(r.mb_per_s())).unwrap_or(0.0),
        p50: med(&|r| Some(r.p50_us)).unwrap_or(0.0),
        p99: med(&|r| Some(r.p99_us)).unwrap_or(0.0),
        cpu: med(&|r| r.server_cpu_ns_per_msg),
        client_cpu: med(&|r| r.client_cpu_ns_per_msg),
        rss: med(&|r| r.server_rss_peak.map(|b| b as f64)),
        per_conn: med(&|r| r.rss_per_conn),
        x_ref: paired(&|r| Some(r.msgs_per_s())),
        cpu_x: paired(&|r| r.server_cpu_ns_per_msg),
        tail: med(&|r| (r.mean_us > 0.0).then(|| r.p99_us / r.mean_us)),
        errors: runs.iter().map(|r| r.errors + r.mismatches).sum(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// `median (min-max)`, or the median alone after a single round.
fn opt_spread(v: Option<Spread>) -> String {
    match v {
        Some(s) if s.min < s.max => format!("{:.2} ({:.2}-{:.2})", s.median, s.min, s.max),
        Some(s) => format!("{:.2}", s.median),
        None => "-".into(),
    }
}

pub fn run(opts: &Options, pattern: &Pattern) -> ExitCode {
    match compare(opts, pattern) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("echo-bench: some runs had errors or mismatches");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("echo-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn compare(opts: &Options, pattern: &Pattern) -> io::Result<bool> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| io::Error::other("no workspace root"))?;
    if !opts.no_build {
        build(root)?;
    }
    let bin = release_dir()?;
    let rounds = opts.rounds.unwrap_or(if opts.quick { 1 } else { 5 }).max(1);
    let duration = opts
        .duration
        .unwrap_or(if opts.quick {
            Duration::from_millis(400)
        } else {
            Duration::from_secs(2)
        })
        .max(Duration::from_millis(100));
    let warmup = if opts.quick {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(300)
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all: Vec<usize> = (0..cpus).collect();
    let pinned = Setup {
        name: "pinned",
        workers: 1,
        server_cpus: vec![0],
        client_cpus: vec![cpus.saturating_sub(1)],
    };
    let unpinned = Setup {
        name: "unpinned",
        workers: 2,
        server_cpus: all.clone(),
        client_cpus: all,
    };
    let setups = match (opts.setup.as_str(), opts.quick) {
        ("pinned", _) | (_, true) => vec![pinned],
        ("unpinned", _) => vec![unpinned],
        _ => vec![pinned, unpinned],
    };
    let out_path = if opts.out.is_relative() {
        root.join(&opts.out)
    } else {
        opts.out.clone()
    };
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = File::create(&out_path)?;
    let idle = if opts.quick {
        opts.idle_conns.min(2000)
    } else {
        opts.idle_conns
    };
    let mut scenarios = scenarios(idle);
    if let Some(only) = &opts.only {
        scenarios.retain(|s| s.label.contains(only.as_str()));
    }
    let mut all_clean = true;
    for setup in &setups {
        let load_before = loadavg();
        sys::set_affinity(0, &setup.client_cpus)?;
        let mut table: Vec<(String, Server, Row)> = Vec::new();
        for sc in &scenarios {
            let mut results: Vec<Run> = Vec::new();
            for round in 0..rounds {
                for k in 0..Server::ALL.len() {
                    let server = Server::ALL[(k + round) % Server::ALL.len()];
                    let res = match run_one(sc, server, &bin, setup, duration, warmup, pattern) {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!(
                                "echo-bench: {} {} {}: {e}",
                                setup.name,
                                sc.label,
                                server.name()
                            );
                            RunResult {
                                scenario: sc.label.clone(),
                                errors: 1,
                                first_error: Some(e.to_string()),
                                ..RunResult::default()
                            }
                        }
                    };
                    all_clean &= res.clean();
                    let extra: [(&str, Value); 5] = [
                        ("kind", "run".into()),
                        ("setup", setup.name.into()),
                        ("server", server.name().into()),
                        ("round", round.into()),
                        ("workers", setup.workers.into()),
                    ];
                    writeln!(out, "{}", res.to_json(&extra))?;
                    results.push((round, server, res));
                }
            }
            for server in Server::ALL {
                let row = summarize(server, &results);
                writeln!(
                    out,
                    "{}",
                    json!({
                        "kind": "median", "setup": setup.name, "server": server.name(), "scenario": sc.label,
                        "conns": sc.conns, "depth": sc.depth, "size": sc.size, "rounds": rounds,
                        "msgs_per_s": row.msgs_per_s, "mb_per_s": row.mb_per_s, "p50_us": row.p50, "p99_us": row.p99,
                        "server_cpu_ns_per_msg": row.cpu, "client_cpu_ns_per_msg": row.client_cpu, "server_rss_peak": row.rss, "rss_per_conn": row.per_conn,
                        "x_ref": row.x_ref.map(|s| s.median), "x_ref_min": row.x_ref.map(|s| s.min),
                        "x_ref_max": row.x_ref.map(|s| s.max), "cpu_x": row.cpu_x.map(|s| s.median),
                        "cpu_x_min": row.cpu_x.map(|s| s.min), "cpu_x_max": row.cpu_x.map(|s| s.max),
                        "p99_over_mean": row.tail, "errors": row.errors,
                    })
                )?;
                table.push((sc.label.clone(), server, row));
            }
        }
        println!();
        println!(
            "load average (1, 5, 15 min) before: {load_before}, after: {}",
            loadavg()
        );
        print_table(setup, rounds, &table);
    }
    eprintln!("echo-bench: runs written to {}", out_path.display());
    Ok(all_clean)
}

/// The machine's load averages, since other work on it skews every figure.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn print_table(setup: &Setup, rounds: usize, table: &[(String, Server, Row)]) {
    println!();
    println!(
        "set-up {}: server on cpus {:?} with {} worker(s), client on cpus {:?}; medians of {} round(s)",
        setup.name, setup.server_cpus, setup.workers, setup.client_cpus, rounds
    );
    println!(
        "| {:<14} | {:<10} | {:>10} | {:>8} | {:>8} | {:>8} | {:>8} | {:>7} | {:>9} | {:>8} | {:>7} | {:>17} | {:>17} | {:>4} |",
        "scenario", "server", "msgs/s", "MB/s", "p50 us", "p99 us", "p99/mean", "cpu ns", "client ns", "RSS MiB", "B/conn", "x ref", "cpu x", "err"
    );
    println!("|{}", "---|".repeat(14));
    for (label, server, row) in table {
        println!(
            "| {:<14} | {:<10} | {:>10.0} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8} | {:>7} | {:>9} | {:>8} | {:>7} | {:>17} | {:>17} | {:>4} |",
            label,
            server.name(),
            row.msgs_per_s,
            row.mb_per_s,
            row.p50,
            row.p99,
            opt(row.tail, 2),
            opt(row.cpu, 0),
            opt(row.client_cpu, 0),
            opt(row.rss.map(|b| b / (1024.0 * 1024.0)), 1),
            opt(row.per_conn, 0),
            opt_spread(row.x_ref),
            opt_spread(row.cpu_x),
            row.errors
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(msgs: u64, cpu: f64) -> RunResult {
        RunResult {
            msgs,
            secs: 1.0,
            server_cpu_ns_per_msg: Some(cpu),
            ..RunResult::default()
        }
    }

    #[test]
    fn ratios_pair_each_run_with_the_reference_run_of_the_same_round() {
        // The machine slows down in round 1: paired ratios stay at 1.1 and 0.9 throughout, while
        // a ratio of the medians across rounds would mix fast and slow rounds.
        let results: Vec<Run> = vec![
            (0, Server::Reference, run(1000, 100.0)),
            (0, Server::Ours, run(1100, 90.0)),
            (1, Server::Ours, run(550, 180.0)),
            (1, Server::Reference, run(500, 200.0)),
            (2, Server::Reference, run(2000, 50.0)),
            (2, Server::Ours, run(2200, 45.0)),
        ];
        let row = summarize(Server::Ours, &results);
        let x = row.x_ref.expect("paired throughput");
        let c = row.cpu_x.expect("paired cpu");
        for v in [x.median, x.min, x.max] {
            assert!((v - 1.1).abs() < 1e-9, "throughput ratio {v}");
        }
        for v in [c.median, c.min, c.max] {
            assert!((v - 0.9).abs() < 1e-9, "cpu ratio {v}");
        }
        assert_eq!(row.msgs_per_s, 1100.0);
    }
}
