//! The simulated kernel, and the layers of tests that run the real worker loop over it.
//!
//! The simulation is three parts that meet in one place:
//!
//! - the model of Linux ([`model`]): sockets as links, the listener's backlog, an epoll ready
//!   list, the waker, a descriptor limit, a virtual clock and the [`faults`] schedule, and what
//!   each system call does to them. It answers; it never judges.
//! - the oracle ([`oracle`]): the rules a worker must keep, checked at each call against its own
//!   record of every connection, and the end-of-run audit of the worker's report, counter by
//!   counter.
//! - the simulated shell ([`shell`]): the worker's `Io`, which hands each call to the model and
//!   shows the call and the answer to the oracle.
//!
//! Every layer drives the same worker loop ([`crate::worker::Worker`]) through that shell:
//!
//! - the network runs ([`run`], [`run_seed`], `tests/sim.rs`): scheduled clients of a drawn
//!   [`Scenario`] act over virtual time ([`network`]);
//! - the model properties (`model_tests.rs`): proptest steps clients and the worker one turn at a
//!   time and checks named properties against the oracle's record of each connection;
//! - the idle-timeout tests (`idle_tests.rs`): a few clients and a clock moved by hand;
//! - the fuzz target (`crate::fuzzing`): the scenario and the faults decoded from the input bytes.
//!
//! The fidelity tests (`fidelity_tests.rs`) check the model alone against real sockets: no oracle
//! is involved. Nothing real is touched by the other layers: no sockets, no threads. The same seed
//! (or input) always gives the same run.
//!
//! Files, one job each:
//!
//! ```text
//! mod.rs             this map; a network run from a scenario or a seed
//! model/mod.rs       the model of Linux: state, clock, and the worker's system calls
//! model/epoll.rs     the model's ready list, edges merged per token, a wait's delivery
//! model/clients.rs   the clients' ends: connect, send, FIN, read, reset, vanish
//! model/link.rs      one connection's two ends: queues, windows, FINs, resets, urgent mark
//! oracle/mod.rs      the rules that judge the worker, against a per-connection record
//! oracle/audit.rs    the end-of-run audit: the worker's report against the record
//! shell.rs           the `Io` adapter joining model, oracle and the world around them
//! readiness.rs       readiness sets and their merge, the simulation's own
//! faults.rs          the fault schedule: a rate per place a fault can strike
//! entropy.rs         where choices come from: a seed, or fuzzer bytes
//! trace.rs           the last operations, printed when a run fails
//! scenario.rs        what one network run is made of, drawn before it starts
//! network.rs         scheduled clients over virtual time, and the whole-run checks
//! fidelity_tests.rs  the model against real loopback sockets
//! model_tests.rs     proptest properties of the worker over the model
//! idle_tests.rs      the idle timeout with a hand-moved clock
//! ```

// The kernel's API serves every layer; the model and idle layers are built only for tests.
#![cfg_attr(not(test), allow(dead_code))]

mod entropy;
mod faults;
mod model;
mod network;
mod oracle;
mod readiness;
mod scenario;
mod shell;
mod trace;

#[cfg(test)]
mod fidelity_tests;
#[cfg(test)]
mod idle_tests;
#[cfg(test)]
mod model_tests;

pub use entropy::{ByteSource, Entropy, SeedRng};
pub use network::Stats;

pub(crate) use faults::Faults;
pub(crate) use scenario::Scenario;

use std::panic::{self, AssertUnwindSafe};

#[cfg(test)]
use crate::dispatch::Readiness;
use crate::worker::Worker;
#[cfg(test)]
use faults::Fault;
use model::{Kernel, Setup};
use network::Network;
#[cfg(test)]
use oracle::Rule;
use oracle::{Oracle, Terms};
#[cfg(test)]
use readiness::{Union, READABLE, WRITABLE};
use shell::Sim;
#[cfg(test)]
use shell::Steps;
#[cfg(test)]
use trace::Ev;

/// Runs one network scenario to the end and checks it; panics (after printing the trace) on any
/// broken rule.
pub(crate) fn run<E: Entropy>(scenario: Scenario, entropy: E) -> Stats {
    let settings = scenario.settings.clone();
    let setup = Setup {
        backlog_cap: scenario.backlog_cap,
        fd_limit: scenario.fd_limit,
        ..Setup::new(scenario.faults.clone())
    };
    let sim = Sim {
        kernel: Kernel::new(entropy, setup),
        oracle: Oracle::new(Terms::of(&settings)),
        world: Network::new(&scenario),
    };
    let mut worker = Worker::new(sim, settings, None, false);
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        while !worker.turn().expect("a simulated wait cannot fail") {}
        let report = worker.core().report();
        let sim = worker.io_mut();
        sim.world.finish(&mut sim.kernel, &sim.oracle, report)
    }));
    match result {
        Ok(stats) => stats,
        Err(cause) => {
            eprintln!(
                "simulation trace, oldest first:\n{}",
                worker.io().kernel.trace()
            );
            panic::resume_unwind(cause)
        }
    }
}

/// A worker over a kernel with no world around it: the test moves clients and time by hand.
#[cfg(test)]
fn stepped(
    setup: Setup,
    terms: Terms,
    settings: crate::dispatch::Settings,
) -> Worker<Sim<SeedRng, Steps>> {
    let sim = Sim {
        kernel: Kernel::new(SeedRng::new(0), setup),
        oracle: Oracle::new(terms),
        world: Steps,
    };
    Worker::new(sim, settings, None, false)
}

/// The network run for `seed`: scenario and schedule both drawn from it.
pub fn run_seed(seed: u64) -> Stats {
    let mut rng = SeedRng::new(seed);
    let scenario = Scenario::generate(&mut rng, None);
    run(scenario, rng)
}
