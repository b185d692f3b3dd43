//! The `epoll-echo` binary: flags, signals, logging and exit codes; the server does the rest.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use epoll_echo::{Config, LiveStats, Server};
use nix::sys::signal::{SigSet, Signal};

/// A Linux epoll TCP echo server: every byte received is sent back on the same connection.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TCP port to listen on (0 picks a free port)
    #[arg(long, default_value_t = 8080)]
    port: u16,

    /// Worker threads, each with its own listener and epoll [default: number of CPUs]
    #[arg(long = "maxListeners", visible_alias = "max-listeners", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_listeners: Option<u32>,

    /// Address to listen on (IPv4 or IPv6)
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,

    /// Cap on one connection's unsent echo, in bytes; at the cap the connection is not read
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    max_pending: u64,

    /// How long a graceful stop may flush before closing what remains (e.g. 5s, 500ms)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,

    /// Most connections open at once over all workers; at the limit new ones are accepted and
    /// closed at once (counted as rejected) [default: no limit]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    max_conns: Option<u64>,

    /// Close connections with no traffic in either direction for this long (e.g. 60s; 0 = never)
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    idle_timeout: Duration,
}

/// Parses `500ms`, `5s` or a bare number of seconds (fractions allowed).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, scale) = match s.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 5s or 500ms"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("'{s}' is not a duration like 5s or 500ms"))
}

/// Writes each log record as one line to stderr, best effort: `eprintln!` panics when stderr is
/// closed, and nothing in the environment may stop the server.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let _ = writeln!(std::io::stderr(), "epoll-echo: {}", record.args());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

macro_rules! log {
    ($($arg:tt)*) => { log::info!($($arg)*) };
}

fn main() -> ExitCode {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            log!("{}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let mut config = Config {
        addr: SocketAddr::new(cli.bind, cli.port),
        max_pending: cli.max_pending as usize,
        drain_timeout: cli.drain_timeout,
        max_conns: cli
            .max_conns
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        idle_timeout: (!cli.idle_timeout.is_zero()).then_some(cli.idle_timeout),
        ..Config::default()
    };
    if let Some(n) = cli.max_listeners {
        config.workers = n as usize;
    }

    // Block the stop signals (and SIGUSR1, the counters request) before any worker exists so every
    // thread inherits the mask and the signals are only ever taken by `wait` below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGUSR1);
    if let Err(e) = signals.thread_block() {
        log!("cannot block signals: {e}");
        return ExitCode::FAILURE;
    }

    let server = match Server::start(config) {
        Ok(server) => server,
        Err(e) => {
            log!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let listening = format!(
        "listening on {} with {} workers",
        server.local_addr(),
        server.workers()
    );
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "epoll-echo: {listening}").and_then(|()| stdout.flush()) {
        // Keep serving; the address still reaches the log.
        log!("{listening} (cannot write to stdout: {e})");
    }
    drop(stdout);

    let stats = server.live_stats();
    match wait_for_stop(&signals, &stats) {
        Ok(signal) => {
            log!("{signal}: stopping gracefully (send it again to exit at once)")
        }
        Err(e) => log!("waiting for signals failed ({e}); stopping"),
    }
    std::thread::spawn(move || {
        if let Ok(signal) = wait_for_stop(&signals, &stats) {
            log!("{signal} again: exiting at once");
            std::process::exit(128 + signal as i32);
        }
    });
    let report = server.stop();
    log!("stopped: {report}");
    ExitCode::SUCCESS
}

/// Waits for a stop signal, printing the live counters on each `SIGUSR1` meanwhile.
fn wait_for_stop(signals: &SigSet, stats: &LiveStats) -> nix::Result<Signal> {
    loop {
        match signals.wait()? {
            Signal::SIGUSR1 => {
                let workers = stats.per_worker();
                for (i, report) in workers.iter().enumerate() {
                    log!("stats worker={i} {report}");
                }
                log!("stats total {}", stats.total());
            }
            signal => return Ok(signal),
        }
    }
}
