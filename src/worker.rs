//! The worker loop: wait for events, let the dispatch core decide, perform its actions, feed the
//! outcomes back; until the core says shutdown is complete. [`perform`] is the one place an action
//! is carried out, over the real shell and the simulated kernel alike.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dispatch::{
    AcceptOutcome, AckOutcome, Action, Dispatcher, Outcome, ReadOutcome, ResourceError, Settings,
    Token, WriteOutcome,
};
use crate::io::Io;
use crate::report::Report;
use crate::stats::WorkerStats;

/// Least time between two log lines about failing accepts.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// One worker: its core and its view of the operating system.
pub(crate) struct Worker<I: Io> {
    io: I,
    core: Dispatcher<I::Socket>,
    /// Where the counters are published once per loop turn.
    stats: Option<Arc<WorkerStats>>,
    /// When the last accept-failure warning was logged; `None` also when warnings are off.
    warned: Warnings,
}

/// Rate-limited warnings about failing accepts; off for simulated and fuzzed runs, whose injected
/// failures would flood the log.
enum Warnings {
    Off,
    On { last: Option<Instant> },
}

impl<I: Io> Worker<I> {
    /// A worker whose counters are published to `stats` and whose accept failures are logged when
    /// `warn` is true.
    pub fn new(io: I, settings: Settings, stats: Option<Arc<WorkerStats>>, warn: bool) -> Self {
        let core = Dispatcher::new(settings, io.now());
        Worker {
            io,
            core,
            stats,
            warned: if warn {
                Warnings::On { last: None }
            } else {
                Warnings::Off
            },
        }
    }

    /// Runs until woken for shutdown and drained. Returns the report; an error only when waiting
    /// for events itself fails, which no peer can cause.
    pub fn run(mut self) -> io::Result<Report> {
        while !self.turn()? {}
        Ok(self.core.report())
    }

    /// One turn of the loop: wait, feed events, time and the stop to the core, perform every action
    /// of the round, publish the counters. Returns true once the core has finished.
    pub fn turn(&mut self) -> io::Result<bool> {
        let mut woken = false;
        let core = &mut self.core;
        self.io.wait(core.poll_timeout(), |token, readiness| {
            if token == Token::WAKER {
                woken = true;
            } else {
                core.handle_event(token, readiness);
            }
        })?;
        let now = self.io.now();
        // A stop that came during the wait goes first: timers that fell due meanwhile (an idle
        // sweep) act on a stopping worker, as everything after the stop's cut does.
        if woken {
            self.io.clear_wake();
            self.core.handle_stop(now);
        }
        self.core.handle_time(now);
        while let Some(action) = self.core.poll_action() {
            let outcome = perform(&mut self.io, &mut self.warned, action);
            self.core.handle_outcome(outcome);
        }
        if let Some(stats) = &self.stats {
            stats.publish(&self.core.report());
        }
        Ok(self.core.is_finished())
    }

    /// The core, for tests that check it between turns.
    #[cfg(any(test, feature = "sim"))]
    pub fn core(&self) -> &Dispatcher<I::Socket> {
        &self.core
    }

    /// The shell, for tests that act on the simulated network between turns.
    #[cfg(any(test, feature = "sim"))]
    pub fn io_mut(&mut self) -> &mut I {
        &mut self.io
    }

    #[cfg(any(test, feature = "sim"))]
    pub fn io(&self) -> &I {
        &self.io
    }
}

/// Carries out one action with the socket and bytes it lends; the one place an action is carried
/// out. Returns its outcome, for the core.
fn perform<I: Io>(
    io: &mut I,
    warned: &mut Warnings,
    action: Action<'_, I::Socket>,
) -> Outcome<I::Socket> {
    match action {
        Action::Accept => {
            let outcome = AcceptOutcome::from_result(io.accept());
            if let AcceptOutcome::Exhausted(kind) = &outcome {
                warned.accept_failed(*kind, io.now());
            }
            Outcome::Accept(outcome)
        }
        Action::Register { token, sock } => Outcome::Register {
            token,
            registered: io.register(sock, token).is_ok(),
        },
        Action::Read { token, sock, buf } => Outcome::Read {
            token,
            outcome: ReadOutcome::from_result(io.read(sock, buf)),
        },
        Action::Write { token, sock, bytes } => Outcome::Write {
            token,
            outcome: WriteOutcome::from_result(io.write(sock, bytes)),
        },
        Action::ShutdownWrite { sock, .. } => {
            io.shutdown_write(sock);
            Outcome::Done
        }
        Action::Close(sock) => {
            io.close(sock);
            Outcome::Done
        }
        Action::CloseListener => {
            io.close_listener();
            Outcome::Done
        }
        Action::CheckDelivery { token, sock } => Outcome::Delivery {
            token,
            outcome: AckOutcome::from_result(io.acked(sock)),
        },
        Action::MeasureAndClose(sock) => {
            let acked = io.acked(&sock);
            io.close(sock);
            Outcome::Closed(AckOutcome::from_result(acked))
        }
        Action::MeasureBacklog => Outcome::Backlog(io.queued_connections().ok()),
        Action::MeasureInput { token, sock } => Outcome::QueuedInput {
            token,
            queued: io.queued_input(sock).ok(),
        },
        Action::CloseShell => {
            io.close_shell();
            Outcome::Done
        }
    }
}

impl Warnings {
    fn accept_failed(&mut self, kind: ResourceError, now: Instant) {
        let Warnings::On { last } = self else { return };
        if last.is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_INTERVAL) {
            *last = Some(now);
            log::warn!("accept failed ({kind:?}); backing off, existing connections still served");
        }
    }
}
