//! The worker loop: wait for events, let the dispatch core decide, perform its actions, feed the
//! outcomes back; until the core says shutdown is complete.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dispatch::{
    self, AcceptOutcome, Action, Dispatcher, ReadOutcome, Report, Token, WriteOutcome,
};
use crate::io::Io;
use crate::limit::ConnLimit;
use crate::stats::WorkerStats;

/// Least time between two log lines about failing accepts.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What a worker shares with the rest of the server.
#[derive(Clone, Debug, Default)]
pub struct Shared {
    /// Where the worker publishes its counters once per loop turn.
    pub stats: Option<Arc<WorkerStats>>,
    /// The server-wide connection limit.
    pub limit: Option<Arc<ConnLimit>>,
    /// Whether to print rate-limited warnings to stderr; off for simulated and fuzzed runs, whose
    /// injected failures would flood it.
    pub warnings: bool,
}

/// Runs one worker until it is woken for shutdown and has drained. Returns its report; an error only
/// when waiting for events itself fails, which no peer can cause.
pub fn run<I: Io>(io: &mut I, config: dispatch::Config) -> io::Result<Report> {
    run_with(io, config, &Shared::default())
}

/// [`run`], publishing counters and keeping the connection limit in `shared`.
pub fn run_with<I: Io>(
    io: &mut I,
    config: dispatch::Config,
    shared: &Shared,
) -> io::Result<Report> {
    let mut core = Dispatcher::new(config, io.now());
    let mut descriptors_closed = 0;
    let mut rejected = 0;
    let mut last_accept_log: Option<Instant> = None;
    loop {
        let mut woken = false;
        io.wait(core.poll_timeout(), |token, readiness| {
            if token == Token::WAKER {
                woken = true;
            } else {
                core.handle_event(token, readiness);
            }
        })?;
        core.handle_time(io.now());
        if woken {
            io.clear_wake();
            core.handle_stop();
        }
        while let Some(action) = core.poll_action() {
            match action {
                Action::Accept => {
                    let mut outcome = AcceptOutcome::from_result(io.accept());
                    if let (AcceptOutcome::Accepted(_), Some(limit)) = (&outcome, &shared.limit) {
                        if !limit.try_acquire() {
                            // At --max-conns: close at once and keep draining the backlog.
                            if let AcceptOutcome::Accepted(sock) = outcome {
                                io.close(sock);
                            }
                            descriptors_closed += 1;
                            rejected += 1;
                            outcome = AcceptOutcome::Aborted;
                        }
                    }
                    if let AcceptOutcome::Exhausted(kind) = &outcome {
                        let now = io.now();
                        if shared.warnings
                            && last_accept_log
                                .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_INTERVAL)
                        {
                            last_accept_log = Some(now);
                            log!("epoll-echo: accept failed ({kind:?}); backing off, existing connections still served");
                        }
                    }
                    core.handle_accept(outcome);
                }
                Action::Register(token) => {
                    let registered = io.register(core.socket(token), token).is_ok();
                    core.handle_register(token, registered);
                }
                Action::Read { token, .. } => {
                    let (sock, buf) = core.read_target(token);
                    let outcome = ReadOutcome::from_result(io.read(sock, buf));
                    core.handle_read(token, outcome);
                }
                Action::Write(token) => {
                    let (sock, bytes) = core.write_target(token);
                    let outcome = WriteOutcome::from_result(io.write(sock, bytes));
                    core.handle_write(token, outcome);
                }
                Action::ShutdownWrite(token) => io.shutdown_write(core.socket(token)),
                Action::Close(sock) => {
                    io.close(sock);
                    descriptors_closed += 1;
                    if let Some(limit) = &shared.limit {
                        limit.release();
                    }
                }
                Action::CloseListener => {
                    io.close_listener();
                    descriptors_closed += 1;
                }
            }
        }
        let mut report = core.report();
        report.descriptors_closed = descriptors_closed;
        report.rejected = rejected;
        if let Some(stats) = &shared.stats {
            stats.publish(&report);
        }
        if core.is_finished() {
            return Ok(report);
        }
    }
}
