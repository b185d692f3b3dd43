//! The worker loop: wait for events, let the dispatch core decide, perform its actions, feed the
//! outcomes back; until the core says shutdown is complete.

use std::io;
use std::time::{Duration, Instant};

use crate::dispatch::{
    self, AcceptOutcome, Action, Dispatcher, ReadOutcome, Report, Token, WriteOutcome,
};
use crate::io::Io;

/// Least time between two log lines about failing accepts.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Runs one worker until it is woken for shutdown and has drained. Returns its report; an error only
/// when waiting for events itself fails, which no peer can cause.
pub fn run<I: Io>(io: &mut I, config: dispatch::Config) -> io::Result<Report> {
    let mut core = Dispatcher::new(config, io.now());
    let mut descriptors_closed = 0;
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
                    let outcome = AcceptOutcome::from_result(io.accept());
                    if let AcceptOutcome::Exhausted(kind) = &outcome {
                        let now = io.now();
                        if last_accept_log
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
                }
                Action::CloseListener => {
                    io.close_listener();
                    descriptors_closed += 1;
                }
            }
        }
        if core.is_finished() {
            let mut report = core.report();
            report.descriptors_closed = descriptors_closed;
            return Ok(report);
        }
    }
}
