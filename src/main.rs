//! The `epoll-echo` binary: flags, signals, logging, metrics, service-manager notifications and exit
//! codes; the server does the rest.

mod cmd;

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;
use cmd::flags::Cli;
use cmd::metrics::{self, Metrics, Sample};
use cmd::notify;
use cmd::output::Output;
use cmd::signals::{Request, Signals};
use epoll_echo::handover::Offer;
use epoll_echo::{Config, Counter, Derived, LiveStats, Report, Server, StartError};
use nix::sys::signal::Signal;

/// How often the main thread looks at the workers' health while it waits for a signal.
const HEALTH_CHECK: Duration = Duration::from_millis(100);
/// How long the last lines may take to reach stdout and stderr before the process exits anyway.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// Exit status of a stop after a worker failed (documented in `--help`).
const WORKER_FAILED: u8 = 3;

/// Blocks the stop signals before `main`, while the program is still being set up: a signal that
/// comes then waits for `main` instead of killing the process. Only the loader's own work comes
/// earlier. `main` blocks them again, in case this did not run.
#[used]
#[link_section = ".init_array"]
static BLOCK_SIGNALS_AT_LOAD: extern "C" fn() = block_signals_at_load;

extern "C" fn block_signals_at_load() {
    let _ = cmd::signals::block_mask();
}

fn main() -> ExitCode {
    // First of all: from here on no signal can kill the process before it is handled.
    let signals = Signals::block();
    let output = Output::start();
    let code = match signals {
        Ok(signals) => run(signals, &output),
        Err(e) => {
            log::error!("cannot take the stop signals: {e}");
            1
        }
    };
    output.finish(LAST_WORDS);
    ExitCode::from(code)
}

/// Parses the flags, serves until asked to stop, and stops; returns the exit status.
fn run(mut signals: Signals, output: &Output) -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e, output),
    };
    match cli.generate() {
        None => {}
        Some(Ok(())) => return 0,
        Some(Err(why)) => {
            output.stderr.line(&format!("epoll-echo: {why}"));
            return 1;
        }
    }
    let Some((server, metrics)) = start(&cli) else {
        return 1;
    };
    // Offered before anyone is told the server listens: a successor may come at once.
    let offer = match cli
        .handover
        .as_deref()
        .map(|p| (p, Offer::start(p, Arc::clone(&server))))
    {
        None => None,
        Some((_, Ok(offer))) => Some(offer),
        Some((path, Err(e))) => {
            log::error!("cannot offer the listeners at {}: {e}", path.display());
            server.stop();
            return 1;
        }
    };
    let listening = format!(
        "listening on {} with {} workers",
        server.local_addr(),
        server.workers()
    );
    // Scripts read stdout; the log keeps it too, in case stdout goes nowhere.
    output.stdout.line(&format!("epoll-echo: {listening}"));
    log::info!("{listening}");
    let restart_warning = cli.reuse_port.then(cmd::migration::warning).flatten();
    if let Some(warning) = &restart_warning {
        log::warn!("{warning}");
    }
    notify::ready(&listening);
    let stats = server.live_stats();
    let code = match wait_for_stop(&mut signals, &server, &stats, output) {
        Ok(Why::Signal(signal)) => {
            log::info!("{signal}: stopping gracefully (send it again to exit at once)");
            0
        }
        Ok(Why::WorkerFailed) => {
            log::error!("stopping the other workers after a failure");
            WORKER_FAILED
        }
        Err(e) => {
            log::error!("waiting for signals failed ({e}); stopping");
            1
        }
    };
    // A later stop signal exits at once; the graceful stop below goes on meanwhile.
    let finishing = output.clone();
    let _ = thread::Builder::new()
        .name("epoll-echo-signals".into())
        .spawn(move || watch_during_stop(signals, &stats, &finishing));
    // The old instance of an overlapping restart: say it again where its stop is logged.
    if let Some(warning) = &restart_warning {
        log::warn!("{warning}");
    }
    notify::stopping("stopping: flushing to the clients");
    // No successor may take the listeners from here on: the stop closes them.
    drop(offer);
    let report = server.stop();
    // Scrapes go on during the drain; the endpoint closes once every worker has joined.
    drop(metrics);
    summarize(&report, output);
    if report[Counter::WorkersFailed] > 0 {
        WORKER_FAILED
    } else {
        code
    }
}

/// Starts the server on the listeners taken over, if any; a test build (the `sim` feature) first
/// reads `EPOLL_ECHO_FAIL_WORKER`.
fn start_server(config: Config, taken: Vec<TcpListener>) -> Result<Server, StartError> {
    #[cfg(feature = "sim")]
    if let Some((worker, after)) = cmd::flags::planted_failure() {
        return epoll_echo::failing::start(config, worker, after);
    }
    if taken.is_empty() {
        Server::start(config)
    } else {
        Server::start_on(config, taken)
    }
}

/// Binds the metrics address, starts the server, then serves the metrics; `None` after logging
/// why one of them failed.
fn start(cli: &Cli) -> Option<(Arc<Server>, Option<Metrics>)> {
    // Bound before the echo listeners, so a taken metrics address fails before anything serves.
    let metrics_listener = match cli.metrics_addr.map(|a| (a, metrics::Listener::bind(a))) {
        None => None,
        Some((_, Ok(listener))) => Some(listener),
        Some((addr, Err(e))) => {
            log::error!("{}", cannot_serve_metrics(addr, &e));
            return None;
        }
    };
    let config = cli.config();
    let taken = match cli
        .handover
        .as_deref()
        .map(|p| cmd::takeover::take(p, config.addr))
    {
        None => Vec::new(),
        Some(Ok(taken)) => taken,
        Some(Err(why)) => {
            log::error!("{why}");
            return None;
        }
    };
    let server = match start_server(config.clone(), taken) {
        Ok(server) => Arc::new(server),
        Err(e @ StartError::Bind { .. }) if in_use(&e) => {
            let metrics = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
            match cmd::in_use::advice(config.addr, config.reuse_port, metrics) {
                Some(advice) => log::error!("{e}; {advice}"),
                None => log::error!("{e}"),
            }
            return None;
        }
        Err(e) => {
            log::error!("{e}");
            return None;
        }
    };
    let metrics = match metrics_listener.map(|l| serve_metrics(l, &server)) {
        None => None,
        Some(Ok(metrics)) => Some(metrics),
        Some(Err(e)) => {
            log::error!("cannot start the metrics endpoint: {e}");
            return None;
        }
    };
    Some((server, metrics))
}

/// clap's message: `--help` and `--version` on stdout (exit 0), an error as its first line and
/// its tip on stderr (exit 2).
fn usage(e: &clap::Error, output: &Output) -> u8 {
    let rendered = e.render().to_string();
    if !e.use_stderr() {
        for line in rendered.lines() {
            output.stdout.line(line);
        }
        return 0;
    }
    let mut lines = rendered.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    output.stderr.line(&format!(
        "epoll-echo: {}",
        first.trim_start_matches("error: ")
    ));
    if let Some(tip) = lines.find(|l| l.trim_start().starts_with("tip:")) {
        output.stderr.line(tip);
    }
    2
}

/// Why the server stops.
enum Why {
    Signal(Signal),
    WorkerFailed,
}

/// Waits for a stop signal or a failed worker, printing the live counters on each SIGUSR1.
fn wait_for_stop(
    signals: &mut Signals,
    server: &Server,
    stats: &LiveStats,
    output: &Output,
) -> nix::Result<Why> {
    loop {
        if server.failed_workers() > 0 {
            return Ok(Why::WorkerFailed);
        }
        match signals.next(HEALTH_CHECK)? {
            Some(Request::Stats) => print_stats(stats, output),
            Some(Request::Stop(signal) | Request::Exit(signal)) => return Ok(Why::Signal(signal)),
            None => {}
        }
    }
}

/// During the graceful stop: counters on SIGUSR1, and a later stop signal exits at once. When a
/// worker failure began the stop, the first stop signal is the first request, not a second one.
fn watch_during_stop(mut signals: Signals, stats: &LiveStats, output: &Output) {
    loop {
        match signals.next(Duration::from_secs(3600)) {
            Ok(Some(Request::Stats)) => print_stats(stats, output),
            Ok(Some(Request::Stop(signal))) => {
                log::info!("{signal}: already stopping after a worker failure (send it again to exit at once)");
            }
            Ok(Some(Request::Exit(signal))) => {
                log::warn!("{signal} again: exiting at once");
                output.finish(LAST_WORDS);
                std::process::exit(128 + signal as i32);
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// The live counters as one block of log lines: one queue entry per signal, however many workers.
fn print_stats(stats: &LiveStats, output: &Output) {
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    let info = |text: String| cmd::output::log_line(log::Level::Info, &text);
    let mut lines: Vec<String> = stats
        .per_worker()
        .iter()
        .enumerate()
        .map(|(i, report)| info(format!("stats worker={i} {report}")))
        .collect();
    lines.push(info(format!("stats total {}", stats.total())));
    output.stderr.block(&lines);
}

/// The summary: every counter, then the balance of the bytes, and what it cannot prove.
fn summarize(report: &Report, output: &Output) {
    log::info!("stopped: {report}");
    log::info!("{}", balance_line(report));
    if let Some(warning) = dropped_warning(output.stdout.dropped(), output.stderr.dropped()) {
        log::warn!("{warning}");
    }
}

/// The warning for lines the output queues dropped, if any were.
fn dropped_warning(stdout: u64, stderr: u64) -> Option<String> {
    let dropped = stdout + stderr;
    (dropped > 0).then(|| {
        format!(
            "{dropped} log lines were dropped: the log queue was full (the output did not keep up)"
        )
    })
}

/// `bytes_read` against the fate of every byte. It holds by construction of the counts (each byte
/// gets exactly one fate); the delivered figure is the kernels' own. After a worker failure the
/// bytes that worker still held are named, since their fate is unknown.
fn balance_line(report: &Report) -> String {
    let fates = format!(
        "bytes_read {} = bytes_delivered {} + bytes_in_flight {} + bytes_unacked {} + \
         bytes_lost_to_errors {} + bytes_dropped {}",
        report[Counter::BytesRead],
        report[Counter::BytesDelivered],
        report[Counter::BytesInFlight],
        report[Counter::BytesUnacked],
        report[Counter::BytesLostToErrors],
        report[Counter::BytesDropped],
    );
    let (pending, outstanding) = (
        report.derived(Derived::BytesPending),
        report.derived(Derived::BytesOutstanding),
    );
    if report.balances() {
        format!("balance holds: {fates}")
    } else if report.consistent() && report[Counter::WorkersFailed] > 0 {
        format!(
            "balance open: {fates} + bytes_pending {pending} + bytes_outstanding {outstanding}, \
             held by failed workers when they ended: whether they reached the peers is unknown"
        )
    } else {
        format!(
            "balance DOES NOT HOLD: {fates} + bytes_pending {pending} + bytes_outstanding {outstanding}"
        )
    }
}

/// Serves `/metrics` from the server's live counters on a thread of its own.
fn serve_metrics(listener: metrics::Listener, server: &Arc<Server>) -> std::io::Result<Metrics> {
    let addr = listener.local_addr()?;
    let stats = server.live_stats();
    let failures = Arc::clone(server);
    let source = Box::new(move || Sample {
        per_worker: stats.per_worker(),
        failed_workers: failures.failed_workers() as u64,
    });
    let metrics = Metrics::serve(listener, server.workers(), source)?;
    log::info!("metrics on http://{addr}/metrics");
    Ok(metrics)
}

/// The one line for a metrics address that cannot be bound.
fn cannot_serve_metrics(addr: SocketAddr, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        format!("cannot serve metrics on {addr}: another socket already listens there")
    } else {
        format!("cannot serve metrics on {addr}: {e}")
    }
}

/// The error says another socket already listens on the address.
fn in_use(e: &StartError) -> bool {
    matches!(e, StartError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report with these counters set and every other one zero.
    fn report(values: &[(Counter, u64)]) -> Report {
        let line: Vec<String> = Counter::ALL
            .into_iter()
            .map(|c| {
                let v = values.iter().find(|(k, _)| *k == c).map_or(0, |(_, v)| *v);
                format!("{}={v}", c.name())
            })
            .collect();
        Report::parse(&line.join(" ")).expect("a report line")
    }

    #[test]
    fn the_balance_line_says_holds_open_only_after_a_failure_or_does_not_hold() {
        use Counter::*;
        let settled = report(&[(BytesRead, 10), (BytesWritten, 10), (BytesDelivered, 10)]);
        assert!(balance_line(&settled).starts_with("balance holds: bytes_read 10 = "));
        // Bytes written and not yet settled: open after a failure, else a broken count.
        let held = [(BytesRead, 10), (BytesWritten, 10), (BytesDelivered, 4)];
        let mut failed = held.to_vec();
        failed.push((WorkersFailed, 1));
        let line = balance_line(&report(&failed));
        assert!(line.starts_with("balance open: "), "{line}");
        assert!(
            line.contains("+ bytes_outstanding 6, held by failed workers"),
            "{line}"
        );
        let line = balance_line(&report(&held));
        assert!(line.starts_with("balance DOES NOT HOLD: "), "{line}");
        // More written than read is never explained by a failure.
        let impossible = [(BytesRead, 4), (BytesWritten, 10), (WorkersFailed, 1)];
        let line = balance_line(&report(&impossible));
        assert!(line.starts_with("balance DOES NOT HOLD: "), "{line}");
    }

    #[test]
    fn dropped_lines_of_either_stream_are_warned_of_in_one_sum() {
        assert_eq!(dropped_warning(0, 0), None);
        for (stdout, stderr, sum) in [(2, 0, 2), (0, 3, 3), (2, 3, 5)] {
            let line = dropped_warning(stdout, stderr).expect("a warning");
            assert!(
                line.starts_with(&format!("{sum} log lines were dropped")),
                "{line}"
            );
        }
    }
}
