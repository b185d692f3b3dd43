//! Stop coordination: wake every worker, join them all and sum their reports, exactly once, from any
//! thread, however many threads ask.
//!
//! Lost wake-ups are impossible by construction: a wake is sticky (an eventfd counter) until the
//! worker consumes it, so a stop that comes before a worker first waits is seen by that first wait.

use std::mem;
use std::sync::PoisonError;

use crate::dispatch::Report;
use crate::sync::Mutex;

/// Something that can wake one worker.
pub trait Wake {
    fn wake(&self);
}

/// A running worker that can be waited for. `None`: it ended without a report (it failed).
pub trait Join {
    fn join(self) -> Option<Report>;
}

enum State<W, J> {
    Running(Vec<(W, J)>),
    /// Joining is in progress or done.
    Stopped(Report),
}

/// Owns the workers' wakers and join handles until they are stopped.
pub struct Coordinator<W, J> {
    state: Mutex<State<W, J>>,
}

impl<W: Wake, J: Join> Coordinator<W, J> {
    pub fn new(workers: Vec<(W, J)>) -> Self {
        Coordinator {
            state: Mutex::new(State::Running(workers)),
        }
    }

    /// Wakes and joins every worker and returns the summed report. The first caller does the work
    /// while holding the lock, so any concurrent or later caller returns only after every worker has
    /// joined, with the same report. Wakers are dropped after the joins (closing their descriptors).
    pub fn stop(&self) -> Report {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let workers = match mem::replace(&mut *state, State::Stopped(Report::default())) {
            State::Running(workers) => workers,
            State::Stopped(report) => {
                *state = State::Stopped(report);
                return report;
            }
        };
        for (waker, _) in &workers {
            waker.wake();
        }
        let mut total = Report::default();
        for (waker, worker) in workers {
            if let Some(report) = worker.join() {
                total += report;
            }
            drop(waker);
        }
        *state = State::Stopped(total);
        total
    }
}
