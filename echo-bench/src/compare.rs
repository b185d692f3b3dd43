//! `echo-bench compare`: starts each server (a fresh process for every run, on its own port), runs
//! every scenario against each in interleaved rounds (A B C, B C A, C A B, ...), and prints one
//! table of medians per set-up.
//!
//! The `x ref` and `cpu x` columns are medians of same-round ratios against the reference server:
//! each round pairs a server's run with the reference's run of that round, so the machine's drift
//! cancels out. Each invocation writes new files, never touching older ones:
//! `compare-<UTC time>.jsonl` (every run and every median, one JSON line each), `.md` (the tables,
//! ready to paste) and `.svg` (the plot).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::args::{count, positive_duration};
use crate::load::{self, Spec};
use crate::pattern::Pattern;
use crate::servers::{Launch, Running, ServerSpec, BUILTINS};
use crate::stats::{median, spread, RunResult, Spread};
use crate::sys;

/// Shown under `compare --help`.
pub const AFTER_HELP: &str = "\
Servers: with no --server, the three built-ins (epoll-echo, tokio-echo, epoll-ref), built in
release mode first. Each --server is a built-in's name or NAME=COMMAND, where COMMAND is split as a
shell would split it and started directly (not through a shell), in the foreground, with {port}
replaced by a free port on 127.0.0.1 and {workers} by the set-up's worker count, e.g.
  --server epoll-ref --server 'mine=./target/release/mine --port {port} --threads {workers}'

Exit status:
  0  every run echoed every byte without error
  1  a run had mismatches or errors, a server did not start, or a file could not be written
  2  bad usage: an unknown flag, a value out of range, or --only/--reference naming nothing";

/// Which set-ups to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SetupChoice {
    /// Server on cpu 0 with one worker, client on the last cpu.
    Pinned,
    /// Two workers, server and client free to move.
    Unpinned,
    /// Pinned, then unpinned.
    Both,
}

#[derive(clap::Args)]
pub struct Options {
    /// A short run (one round, pinned set-up, short scenarios) to check the set-up works.
    #[arg(long)]
    quick: bool,
    /// A server to compare, repeatable: a built-in's name or NAME=COMMAND (see below).
    #[arg(long = "server", value_name = "SPEC", value_parser = crate::servers::parse_server)]
    servers: Vec<ServerSpec>,
    /// The server that `x ref` and `cpu x` divide by [default: epoll-ref if compared, else the
    /// first server].
    #[arg(long, value_name = "NAME")]
    reference: Option<String>,
    /// Rounds per scenario (each server once per round); medians are reported [default: 5, 1 with
    /// --quick].
    #[arg(long, value_name = "N", value_parser = count(1, 1000))]
    rounds: Option<usize>,
    /// Measured time per run, e.g. 2s or 500ms [default: 2s, 400ms with --quick].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    duration: Option<Duration>,
    /// Which set-ups to run [default: both, pinned with --quick].
    #[arg(long, value_enum)]
    setup: Option<SetupChoice>,
    /// Idle connections held in the memory scenario (at most 2,000 with --quick).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = count(1, 1_000_000))]
    idle_conns: usize,
    /// Directory for the results, tables and plot [default: target/echo-bench of the workspace].
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Run only the scenarios whose label contains TEXT (e.g. "16KiB", "c1000", "open").
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Use the built-ins' release binaries as they are, without building them.
    #[arg(long)]
    no_build: bool,
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
    server: &ServerSpec,
    bin: &Path,
    setup: &Setup,
    duration: Duration,
    warmup: Duration,
    pattern: &Pattern,
) -> io::Result<RunResult> {
    let running = Running::start(server, bin, setup.workers, &setup.server_cpus)?;
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
        timeout: load::ECHO_TIMEOUT,
    };
    let label = format!("{} {} {}", setup.name, sc.label, server.name);
    let mut res = match sc.kind {
        Kind::Ping | Kind::Stream(_) => load::run_load(&spec, pattern, &label),
        Kind::Churn => crate::churn::run_churn(&spec, pattern, &label),
        Kind::Idle => crate::idle::run_idle(&spec, pattern, &label),
    }?;
    res.scenario = sc.label.clone();
    drop(running);
    Ok(res)
}

/// One line of a compare table: one field per column.
struct Row {
    msgs_per_s: f64,
    mb_per_s: f64,
    p50: f64,
    p90: Option<f64>,
    p99: f64,
    p999: Option<f64>,
    max: Option<f64>,
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

/// One finished run: its round, its server (an index into the servers compared) and what it
/// measured.
type Run = (usize, usize, RunResult);

fn summarize(server: usize, reference: usize, results: &[Run]) -> Row {
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
                        .find(|(k, s, _)| k == round && *s == reference)?;
                    Some(f(r)? / f(base)?)
                })
                .collect(),
        )
    };
    Row {
        msgs_per_s: med(&|r| Some(r.msgs_per_s())).unwrap_or(0.0),
        mb_per_s: med(&|r| Some(r.mb_per_s())).unwrap_or(0.0),
        p50: med(&|r| Some(r.p50_us)).unwrap_or(0.0),
        p90: med(&|r| Some(r.p90_us)),
        p99: med(&|r| Some(r.p99_us)).unwrap_or(0.0),
        p999: med(&|r| Some(r.p999_us)),
        max: med(&|r| Some(r.max_us)),
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

/// What was chosen on the command line, checked before anything is built or started.
struct Plan {
    servers: Vec<ServerSpec>,
    reference: usize,
    scenarios: Vec<Scenario>,
    rounds: usize,
    duration: Duration,
    warmup: Duration,
    setups: Vec<SetupChoice>,
}

/// Checks the choices that clap cannot: the servers, the reference, `--only`.
fn plan(opts: &Options) -> Result<Plan, String> {
    let servers = if opts.servers.is_empty() {
        BUILTINS.iter().map(|n| ServerSpec::builtin(n)).collect()
    } else {
        opts.servers.clone()
    };
    for (i, s) in servers.iter().enumerate() {
        if servers[..i].iter().any(|t| t.name == s.name) {
            return Err(format!("two servers are named {}", s.name));
        }
    }
    let reference = reference(opts.reference.as_deref(), &servers)?;
    let idle = if opts.quick {
        opts.idle_conns.min(2000)
    } else {
        opts.idle_conns
    };
    let scenarios = only(opts.only.as_deref(), scenarios(idle))?;
    let setups = match opts.setup {
        Some(SetupChoice::Both) => vec![SetupChoice::Pinned, SetupChoice::Unpinned],
        Some(one) => vec![one],
        None if opts.quick => vec![SetupChoice::Pinned],
        None => vec![SetupChoice::Pinned, SetupChoice::Unpinned],
    };
    Ok(Plan {
        servers,
        reference,
        scenarios,
        rounds: opts.rounds.unwrap_or(if opts.quick { 1 } else { 5 }),
        duration: opts.duration.unwrap_or(if opts.quick {
            Duration::from_millis(400)
        } else {
            Duration::from_secs(2)
        }),
        warmup: if opts.quick {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(300)
        },
        setups,
    })
}

/// The index of the server named by `--reference`; without it epoll-ref, or else the first.
fn reference(name: Option<&str>, servers: &[ServerSpec]) -> Result<usize, String> {
    let Some(name) = name else {
        return Ok(servers
            .iter()
            .position(|s| s.name == "epoll-ref")
            .unwrap_or(0));
    };
    servers.iter().position(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        format!(
            "--reference {name} is not compared (servers: {})",
            names.join(", ")
        )
    })
}

/// The scenarios whose label contains `--only`'s text (all without it); none is an error.
fn only(filter: Option<&str>, mut scenarios: Vec<Scenario>) -> Result<Vec<Scenario>, String> {
    let Some(only) = filter else {
        return Ok(scenarios);
    };
    let all: Vec<String> = scenarios.iter().map(|s| s.label.clone()).collect();
    scenarios.retain(|s| s.label.contains(only));
    if scenarios.is_empty() {
        return Err(format!(
            "--only {only:?} matches no scenario (scenarios: {})",
            all.join(", ")
        ));
    }
    Ok(scenarios)
}

pub fn run(opts: &Options, pattern: &Pattern) -> ExitCode {
    let plan = match plan(opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("echo-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match compare(opts, &plan, pattern) {
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

/// `compare-20250101T120000Z`: the UTC time of the run, sortable and safe in a file name.
fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// Creates `<dir>/<base>.jsonl` without touching an existing file: a second run within the same
/// second gets `-2`, `-3`, ... Returns the file and the base path (without extension).
fn create_results(dir: &Path, base: &str) -> io::Result<(File, PathBuf)> {
    for n in 1..1000 {
        let name = if n == 1 {
            base.to_string()
        } else {
            format!("{base}-{n}")
        };
        let stem = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(stem.with_extension("jsonl"))
        {
            Ok(f) => return Ok((f, stem)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create {}: {e}",
                        stem.with_extension("jsonl").display()
                    ),
                ))
            }
        }
    }
    Err(io::Error::other(format!(
        "{}: a thousand results files of the same second",
        dir.join(base).display()
    )))
}

/// Creates a file that must not exist yet.
fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))
}

fn compare(opts: &Options, plan: &Plan, pattern: &Pattern) -> io::Result<bool> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| io::Error::other("no workspace root"))?;
    let needs_builtins = plan.servers.iter().any(|s| s.launch == Launch::Builtin);
    if needs_builtins && !opts.no_build {
        build(root)?;
    }
    let bin = release_dir()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| root.join("target").join("echo-bench"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
    let started = SystemTime::now();
    let (file, stem) = create_results(&dir, &format!("compare-{}", stamp(started)))?;
    let jsonl_path = stem.with_extension("jsonl");
    let md_path = stem.with_extension("md");
    let mut files = Files {
        runs: BufWriter::new(file),
        tables: BufWriter::new(create_new(&md_path)?),
    };
    let command = typed_command();
    writeln!(files.runs, "{}", meta_json(plan, started, &command, cpus))?;
    let started = humantime::format_rfc3339_seconds(started);
    writeln!(files.tables, "`{command}`, started {started}, {cpus} cpus")?;
    let mut all_clean = true;
    for setup in setups(plan, cpus) {
        all_clean &= run_setup(&setup, plan, &bin, pattern, &mut files)?;
    }
    files.runs.flush()?;
    files.tables.flush()?;
    drop(files);
    let svg_path = stem.with_extension("svg");
    let plotted = match crate::plot::plot_file(&jsonl_path, &svg_path) {
        Ok(()) => format!(", plot in {}", svg_path.display()),
        Err(e) => {
            eprintln!("echo-bench: no plot: {e}");
            String::new()
        }
    };
    eprintln!(
        "echo-bench: runs in {}, tables in {}{plotted}",
        jsonl_path.display(),
        md_path.display()
    );
    Ok(all_clean)
}

/// Where a comparison writes: every run and median as a JSON line, every table as Markdown.
struct Files {
    runs: BufWriter<File>,
    tables: BufWriter<File>,
}

/// The setups asked for, on this machine's `cpus`: pinned puts the server on the first CPU and the
/// client on the last; unpinned lets both use every CPU.
fn setups(plan: &Plan, cpus: usize) -> Vec<Setup> {
    let all: Vec<usize> = (0..cpus).collect();
    plan.setups
        .iter()
        .map(|choice| match choice {
            SetupChoice::Unpinned => Setup {
                name: "unpinned",
                workers: 2,
                server_cpus: all.clone(),
                client_cpus: all.clone(),
            },
            _ => Setup {
                name: "pinned",
                workers: 1,
                server_cpus: vec![0],
                client_cpus: vec![cpus.saturating_sub(1)],
            },
        })
        .collect()
}

/// The command as typed, quoted so it can be pasted back into a shell.
fn typed_command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let joined =
        shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "));
    format!("echo-bench {joined}")
}

/// The first line of the results: what was compared, how, and on what.
fn meta_json(plan: &Plan, started: SystemTime, command: &str, cpus: usize) -> Value {
    json!({
        "kind": "meta", "started": humantime::format_rfc3339_seconds(started).to_string(),
        "command": command, "reference": plan.servers[plan.reference].name.as_str(),
        "rounds": plan.rounds,
        "duration_secs": plan.duration.as_secs_f64(), "warmup_secs": plan.warmup.as_secs_f64(),
        "cpus": cpus,
        "servers": plan.servers.iter().map(|s| json!({
            "name": s.name,
            "command": match &s.launch { Launch::Builtin => Value::Null, Launch::Command(w) => json!(w) },
        })).collect::<Vec<_>>(),
    })
}

/// Every scenario on every server in one setup: each run and each median to the results, the
/// table to stdout and the Markdown. False when a run had errors or mismatches.
fn run_setup(
    setup: &Setup,
    plan: &Plan,
    bin: &Path,
    pattern: &Pattern,
    files: &mut Files,
) -> io::Result<bool> {
    let load_before = loadavg();
    sys::set_affinity(0, &setup.client_cpus)?;
    let mut table: Vec<(String, usize, Row)> = Vec::new();
    let mut clean = true;
    for sc in &plan.scenarios {
        let results = run_rounds(sc, setup, plan, bin, pattern, &mut files.runs)?;
        clean &= results.iter().all(|(_, _, res)| res.clean());
        for (server, spec) in plan.servers.iter().enumerate() {
            let row = summarize(server, plan.reference, &results);
            let median = median_json(setup, plan, sc, spec, &row);
            writeln!(files.runs, "{median}")?;
            table.push((sc.label.clone(), server, row));
        }
    }
    let text = format!(
        "load average (1, 5, 15 min) before: {load_before}, after: {}\n\n{}",
        loadavg(),
        format_table(setup, plan, &table)
    );
    println!("\n{text}");
    writeln!(files.tables, "\n{text}")?;
    Ok(clean)
}

/// One scenario in interleaved rounds: each round runs every server once, starting one further
/// along than the round before. Each run goes to `runs` as it ends; a run that could not start
/// counts as one error.
fn run_rounds(
    sc: &Scenario,
    setup: &Setup,
    plan: &Plan,
    bin: &Path,
    pattern: &Pattern,
    runs: &mut impl Write,
) -> io::Result<Vec<Run>> {
    let n = plan.servers.len();
    let mut results: Vec<Run> = Vec::new();
    for round in 0..plan.rounds {
        for k in 0..n {
            let server = (k + round) % n;
            let spec = &plan.servers[server];
            let res = run_one(sc, spec, bin, setup, plan.duration, plan.warmup, pattern)
                .unwrap_or_else(|e| {
                    eprintln!("echo-bench: {} {} {}: {e}", setup.name, sc.label, spec.name);
                    RunResult {
                        scenario: sc.label.clone(),
                        errors: 1,
                        first_error: Some(e.to_string()),
                        ..RunResult::default()
                    }
                });
            let extra: [(&str, Value); 5] = [
                ("kind", "run".into()),
                ("setup", setup.name.into()),
                ("server", spec.name.clone().into()),
                ("round", round.into()),
                ("workers", setup.workers.into()),
            ];
            writeln!(runs, "{}", res.to_json(&extra))?;
            results.push((round, server, res));
        }
    }
    Ok(results)
}

/// One server's medians over the rounds of one scenario, as a results line.
fn median_json(setup: &Setup, plan: &Plan, sc: &Scenario, spec: &ServerSpec, row: &Row) -> Value {
    json!({
        "kind": "median", "setup": setup.name, "server": spec.name, "scenario": sc.label,
        "conns": sc.conns, "depth": sc.depth, "size": sc.size, "rounds": plan.rounds,
        "reference": plan.servers[plan.reference].name.as_str(),
        "msgs_per_s": row.msgs_per_s, "mb_per_s": row.mb_per_s, "p50_us": row.p50,
        "p90_us": row.p90, "p99_us": row.p99, "p999_us": row.p999, "max_us": row.max,
        "server_cpu_ns_per_msg": row.cpu, "client_cpu_ns_per_msg": row.client_cpu, "server_rss_peak": row.rss, "rss_per_conn": row.per_conn,
        "x_ref": row.x_ref.map(|s| s.median), "x_ref_min": row.x_ref.map(|s| s.min),
        "x_ref_max": row.x_ref.map(|s| s.max), "cpu_x": row.cpu_x.map(|s| s.median),
        "cpu_x_min": row.cpu_x.map(|s| s.min), "cpu_x_max": row.cpu_x.map(|s| s.max),
        "p99_over_mean": row.tail, "errors": row.errors,
    })
}

/// The machine's load averages, since other work on it skews every figure.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// One set-up's table in markdown, with the line that says how it ran.
fn format_table(setup: &Setup, plan: &Plan, table: &[(String, usize, Row)]) -> String {
    let mut s = format!(
        "set-up {}: server on cpus {:?} with {} worker(s), client on cpus {:?}; medians of {} \
         round(s); x ref and cpu x against {}\n\n",
        setup.name,
        setup.server_cpus,
        setup.workers,
        setup.client_cpus,
        plan.rounds,
        plan.servers[plan.reference].name
    );
    let width = plan
        .servers
        .iter()
        .map(|sv| sv.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    s.push_str(&format!(
        "| {:<14} | {:<width$} | {:>10} | {:>8} | {:>8} | {:>8} | {:>8} | {:>7} | {:>9} | {:>8} | {:>7} | {:>17} | {:>17} | {:>4} |\n",
        "scenario", "server", "msgs/s", "MB/s", "p50 us", "p99 us", "p99/mean", "cpu ns", "client ns", "RSS MiB", "B/conn", "x ref", "cpu x", "err"
    ));
    s.push_str(&format!("|{}\n", "---|".repeat(14)));
    for (label, server, row) in table {
        s.push_str(&format!(
            "| {:<14} | {:<width$} | {:>10.0} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8} | {:>7} | {:>9} | {:>8} | {:>7} | {:>17} | {:>17} | {:>4} |\n",
            label,
            plan.servers[*server].name,
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
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: Options,
    }

    fn options(args: &[&str]) -> Options {
        match Cli::try_parse_from(std::iter::once("compare").chain(args.iter().copied())) {
            Ok(cli) => cli.opts,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

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
        let (ours, reference) = (0, 2);
        let results: Vec<Run> = vec![
            (0, reference, run(1000, 100.0)),
            (0, ours, run(1100, 90.0)),
            (1, ours, run(550, 180.0)),
            (1, reference, run(500, 200.0)),
            (2, reference, run(2000, 50.0)),
            (2, ours, run(2200, 45.0)),
        ];
        let row = summarize(ours, reference, &results);
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

    #[test]
    fn the_builtins_are_the_default_and_epoll_ref_the_reference() {
        let p = plan(&options(&[])).expect("defaults plan");
        let names: Vec<&str> = p.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, BUILTINS);
        assert_eq!(p.servers[p.reference].name, "epoll-ref");
        assert_eq!(p.setups, [SetupChoice::Pinned, SetupChoice::Unpinned]);
        assert_eq!((p.rounds, p.scenarios.len()), (5, 10));
    }

    #[test]
    fn given_servers_replace_the_builtins_and_the_first_is_the_reference() {
        let p = plan(&options(&[
            "--server",
            "a=srv --port {port}",
            "--server",
            "b=srv --port {port} --fast",
            "--quick",
        ]))
        .expect("plan");
        let names: Vec<&str> = p.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(p.reference, 0);
        assert_eq!(p.setups, [SetupChoice::Pinned]);
        let p = plan(&options(&[
            "--server",
            "a=x {port}",
            "--server",
            "epoll-ref",
        ]))
        .expect("plan");
        assert_eq!(
            p.reference, 1,
            "epoll-ref is the reference whenever it is compared"
        );
        let p = plan(&options(&[
            "--server",
            "a=x {port}",
            "--server",
            "b=x {port}",
            "--reference",
            "b",
        ]))
        .expect("plan");
        assert_eq!(p.reference, 1);
    }

    #[test]
    fn choices_that_name_nothing_are_usage_errors() {
        let err = plan(&options(&["--only", "NOSUCH"]))
            .err()
            .expect("no scenario");
        assert!(err.contains("NOSUCH") && err.contains("64B c1 d1"), "{err}");
        let err = plan(&options(&["--reference", "nginx"]))
            .err()
            .expect("unknown reference");
        assert!(err.contains("epoll-echo, tokio-echo, epoll-ref"), "{err}");
        let err = plan(&options(&[
            "--server",
            "a=x {port}",
            "--server",
            "a=y {port}",
        ]))
        .err()
        .expect("duplicate name");
        assert!(err.contains("two servers are named a"), "{err}");
        let p = plan(&options(&["--only", "16KiB"])).expect("one scenario");
        assert_eq!(p.scenarios.len(), 1);
        let p = plan(&options(&["--quick", "--setup", "unpinned"])).expect("plan");
        assert_eq!(
            p.setups,
            [SetupChoice::Unpinned],
            "an explicit set-up wins over --quick"
        );
    }

    #[test]
    fn results_files_are_never_reused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (_, first) = create_results(dir.path(), "compare-x").expect("first");
        std::fs::write(first.with_extension("jsonl"), "old\n").expect("write");
        let (_, second) = create_results(dir.path(), "compare-x").expect("second");
        assert_ne!(first, second);
        assert!(second.to_string_lossy().ends_with("compare-x-2"));
        let old = std::fs::read_to_string(first.with_extension("jsonl")).expect("read");
        assert_eq!(old, "old\n");
        assert_eq!(
            stamp(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 + 3_661)),
            "19700102T010101Z"
        );
    }
}
