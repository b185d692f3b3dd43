//! Stop coordination: wake every worker, join them all and sum their reports, exactly once, from any
//! thread, however many threads ask.
//!
//! Lost wake-ups are impossible by construction: a wake is sticky (an eventfd counter) until the
//! worker consumes it, so a stop that comes before a worker first waits is seen by that first wait.
//! A worker that failed is joined like the others and contributes the counters it last published;
//! one that cannot be woken is not waited for (it would never end), and counts as failed.

use std::io;
use std::mem;
use std::sync::PoisonError;

use crate::report::Report;
use crate::sync::Mutex;

/// Something that can wake one worker.
pub trait Wake {
    fn wake(&self) -> io::Result<()>;
}

/// A running worker that can be waited for.
pub trait Join {
    /// Waits for the worker to end. Its report; for a worker that failed, the counters it last
    /// published with `workers_failed` counted.
    fn join(self) -> Report;
    /// Gives up on a worker that cannot be woken, without waiting: the counters it last published,
    /// counted as failed.
    fn abandon(self) -> Report;
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
    /// joined (or was given up), with the same report. Wakers are dropped after the joins (closing
    /// their descriptors).
    pub fn stop(&self) -> Report {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let workers = match mem::replace(&mut *state, State::Stopped(Report::default())) {
            State::Running(workers) => workers,
            State::Stopped(report) => {
                *state = State::Stopped(report);
                return report;
            }
        };
        let woken: Vec<bool> = workers.iter().map(|(w, _)| w.wake().is_ok()).collect();
        let mut total = Report::default();
        for ((waker, worker), woken) in workers.into_iter().zip(woken) {
            total += if woken {
                worker.join()
            } else {
                worker.abandon()
            };
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
        abandoned: AtomicUsize,
        wakers_dropped: AtomicUsize,
    }

    /// A sticky wake-up flag: set before the wait, it is seen by the wait (like an eventfd).
    #[derive(Default)]
    struct Flag {
        set: Mutex<bool>,
        changed: Condvar,
    }

    impl Flag {
        fn raise(&self) {
            *self.set.lock().expect("flag lock") = true;
            self.changed.notify_all();
        }

        fn wait(&self) {
            let mut set = self.set.lock().expect("flag lock");
            while !*set {
                set = self.changed.wait(set).expect("flag lock");
            }
        }
    }

    /// How a model worker behaves.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Healthy,
        /// Ends with an error after its wake-up (as a panic or a failed `epoll_wait` would).
        Fails,
        /// Its wake-up channel cannot be written.
        Unwakeable,
    }

    struct ModelWake {
        flag: Arc<Flag>,
        counts: Arc<Counts>,
        fails: bool,
    }

    impl Wake for ModelWake {
        fn wake(&self) -> io::Result<()> {
            if self.fails {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            self.flag.raise();
            Ok(())
        }
    }

    impl Drop for ModelWake {
        fn drop(&mut self) {
            self.counts.wakers_dropped.fetch_add(1, SeqCst);
        }
    }

    struct ModelJoin {
        handle: thread::JoinHandle<Option<Report>>,
        counts: Arc<Counts>,
    }

    /// What every model worker publishes before it waits: one accepted connection.
    fn published() -> Report {
        let mut report = Report::default();
        report.count(Counter::Accepted);
        report
    }

    fn failed() -> Report {
        let mut report = published();
        report.count(Counter::WorkersFailed);
        report
    }

    impl Join for ModelJoin {
        fn join(self) -> Report {
            self.counts.joins.fetch_add(1, SeqCst);
            match self.handle.join() {
                Ok(Some(report)) => report,
                _ => failed(),
            }
        }

        fn abandon(self) -> Report {
            self.counts.abandoned.fetch_add(1, SeqCst);
            failed()
        }
    }

    /// Spawns a model worker that starts, waits for its wake-up and reports one accepted
    /// connection (or fails). Also returns its flag, to let an unwakeable one end after the model.
    fn worker(counts: &Arc<Counts>, kind: Kind) -> ((ModelWake, ModelJoin), Arc<Flag>) {
        let flag = Arc::new(Flag::default());
        let (wflag, wcounts) = (Arc::clone(&flag), Arc::clone(counts));
        let handle = thread::spawn(move || {
            wflag.wait();
            wcounts.finished.fetch_add(1, SeqCst);
            (kind != Kind::Fails).then(published)
        });
        let wake = ModelWake {
            flag: Arc::clone(&flag),
            counts: Arc::clone(counts),
            fails: kind == Kind::Unwakeable,
        };
        let join = ModelJoin {
            handle,
            counts: Arc::clone(counts),
        };
        ((wake, join), flag)
    }

    fn healthy(counts: &Arc<Counts>) -> (ModelWake, ModelJoin) {
        worker(counts, Kind::Healthy).0
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
            let coordinator = Coordinator::new(vec![healthy(&counts), healthy(&counts)]);
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
            let coordinator = Arc::new(Coordinator::new(vec![healthy(&counts)]));
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
            let owner = Arc::new(Owner(Coordinator::new(vec![healthy(&counts)])));
            let other = Arc::clone(&owner);
            let stopper = thread::spawn(move || {
                other.0.stop();
            });
            drop(owner);
            stopper.join().expect("stopper");
            assert_done(&counts, 1);
        });
    }

    /// Stops a healthy worker and one of `kind`; checks the sum keeps the other's published counts,
    /// counted as failed, and returns the counts of what happened.
    fn stop_beside_a(kind: Kind) -> (Arc<Counts>, Arc<Flag>) {
        let counts = Arc::new(Counts::default());
        let (other, flag) = worker(&counts, kind);
        let report = Coordinator::new(vec![healthy(&counts), other]).stop();
        assert_eq!(
            report[Counter::Accepted],
            2,
            "the failed worker's counts are kept"
        );
        assert_eq!(report[Counter::WorkersFailed], 1);
        (counts, flag)
    }

    /// A worker that fails is joined like the others.
    #[test]
    fn a_worker_whose_join_fails() {
        explore("a_worker_whose_join_fails", || {
            let (counts, _) = stop_beside_a(Kind::Fails);
            assert_done(&counts, 2);
        });
    }

    /// A worker whose wake-up cannot be sent is not waited for (it would never end).
    #[test]
    fn a_wake_that_fails() {
        explore("a_wake_that_fails", || {
            let (counts, flag) = stop_beside_a(Kind::Unwakeable);
            let joined = counts.joins.load(SeqCst);
            assert_eq!(joined, 1, "only the woken worker is joined");
            assert_eq!(counts.abandoned.load(SeqCst), 1);
            assert_eq!(counts.wakers_dropped.load(SeqCst), 2);
            // The process would end it; the model lets it end so every thread finishes.
            flag.raise();
        });
    }
}
