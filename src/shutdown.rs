//! Stop coordination: wake every worker, join them all and sum their reports, exactly once, from any
//! thread, however many threads ask.
//!
//! Lost wake-ups are impossible by construction: a wake is sticky (an eventfd counter) until the
//! worker consumes it, so a stop that comes before a worker first waits is seen by that first wait.

use std::mem;
use std::sync::PoisonError;

use crate::report::Report;
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

/// Loom models of stop coordination: `RUSTFLAGS="--cfg loom" cargo test --release --lib shutdown`.
/// The model worker waits on a sticky flag (as the real one waits on its eventfd), so a lost or
/// skipped wake-up shows as a deadlock, and a join that never completes fails the model.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::report::Counter;
    use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use loom::sync::{Arc, Condvar};
    use loom::thread;

    /// Runs a model under loom and prints how many executions it explored.
    fn explore(name: &str, model: impl Fn() + Sync + Send + 'static) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Outside the model: std, not loom, and one counter per model.
        let explored = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&explored);
        loom::model(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            model();
        });
        let n = explored.load(Ordering::Relaxed);
        println!("loom model {name}: {n} interleavings explored");
    }

    /// What the model workers and their handles did, shared with the checks.
    #[derive(Default)]
    struct Counts {
        /// Workers that returned (after their wake-up).
        finished: AtomicUsize,
        joins: AtomicUsize,
        wakers_dropped: AtomicUsize,
    }

    /// A sticky wake-up flag: set before the wait, it is seen by the wait (like an eventfd).
    #[derive(Default)]
    struct Flag {
        set: Mutex<bool>,
        changed: Condvar,
    }

    struct ModelWake {
        flag: Arc<Flag>,
        counts: Arc<Counts>,
    }

    impl Wake for ModelWake {
        fn wake(&self) {
            *self.flag.set.lock().expect("flag lock") = true;
            self.flag.changed.notify_all();
        }
    }

    impl Drop for ModelWake {
        fn drop(&mut self) {
            self.counts.wakers_dropped.fetch_add(1, SeqCst);
        }
    }

    struct ModelJoin {
        handle: thread::JoinHandle<Report>,
        counts: Arc<Counts>,
    }

    impl Join for ModelJoin {
        fn join(self) -> Option<Report> {
            self.counts.joins.fetch_add(1, SeqCst);
            self.handle.join().ok()
        }
    }

    /// Spawns a model worker that starts, waits for its wake-up and reports one accepted connection.
    fn worker(counts: &Arc<Counts>) -> (ModelWake, ModelJoin) {
        let flag = Arc::new(Flag::default());
        let (wflag, wcounts) = (Arc::clone(&flag), Arc::clone(counts));
        let handle = thread::spawn(move || {
            let mut set = wflag.set.lock().expect("flag lock");
            while !*set {
                set = wflag.changed.wait(set).expect("flag lock");
            }
            wcounts.finished.fetch_add(1, SeqCst);
            let mut report = Report::default();
            report.count(Counter::Accepted);
            report
        });
        let wake = ModelWake {
            flag,
            counts: Arc::clone(counts),
        };
        let join = ModelJoin {
            handle,
            counts: Arc::clone(counts),
        };
        (wake, join)
    }

    fn assert_done(counts: &Counts, workers: usize) {
        assert_eq!(counts.finished.load(SeqCst), workers, "every worker ended");
        assert_eq!(
            counts.joins.load(SeqCst),
            workers,
            "each joined exactly once"
        );
        assert_eq!(
            counts.wakers_dropped.load(SeqCst),
            workers,
            "each waker dropped once"
        );
    }

    /// Stop races the workers' start and their first wait: no wake-up is lost, every join completes.
    #[test]
    fn stop_racing_worker_start_and_wait() {
        explore("stop_racing_worker_start_and_wait", || {
            let counts = Arc::new(Counts::default());
            let coordinator = Coordinator::new(vec![worker(&counts), worker(&counts)]);
            assert_eq!(coordinator.stop()[Counter::Accepted], 2);
            assert_done(&counts, 2);
        });
    }

    /// Stop from two threads at once, then again: all return after the joins with the same report;
    /// workers are joined and wakers dropped exactly once.
    #[test]
    fn stop_twice_and_from_two_threads() {
        explore("stop_twice_and_from_two_threads", || {
            let counts = Arc::new(Counts::default());
            let coordinator = Arc::new(Coordinator::new(vec![worker(&counts)]));
            let stoppers: Vec<_> = (0..2)
                .map(|_| {
                    let (coordinator, counts) = (Arc::clone(&coordinator), Arc::clone(&counts));
                    thread::spawn(move || {
                        let report = coordinator.stop();
                        // Returned only after the join, whichever thread did it.
                        assert_eq!(counts.finished.load(SeqCst), 1);
                        report
                    })
                })
                .collect();
            for stopper in stoppers {
                assert_eq!(stopper.join().expect("stopper")[Counter::Accepted], 1);
            }
            assert_eq!(coordinator.stop()[Counter::Accepted], 1);
            assert_done(&counts, 1);
        });
    }

    /// An owner that stops on drop, like `Server`.
    struct Owner(Coordinator<ModelWake, ModelJoin>);

    impl Drop for Owner {
        fn drop(&mut self) {
            self.0.stop();
        }
    }

    /// Dropping a running owner stops it, also while another thread is stopping it.
    #[test]
    fn drop_of_a_running_owner() {
        explore("drop_of_a_running_owner", || {
            let counts = Arc::new(Counts::default());
            let owner = Arc::new(Owner(Coordinator::new(vec![worker(&counts)])));
            let other = Arc::clone(&owner);
            let stopper = thread::spawn(move || {
                other.0.stop();
            });
            drop(owner);
            stopper.join().expect("stopper");
            assert_done(&counts, 1);
        });
    }
}
