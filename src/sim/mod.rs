//! The simulated kernel, and the layers of tests that run the real worker loop over it.
//!
//! One kernel ([`kernel`]: sockets as [`link`]s, the listener's backlog, an epoll ready list, the
//! waker, a descriptor limit, a virtual clock, the [`faults`] schedule and the rules a worker must
//! keep) stands under every layer:
//!
//! - the network runs ([`run`], [`run_seed`], `tests/sim.rs`): scheduled clients of a drawn
//!   [`Scenario`] act over virtual time ([`network`]);
//! - the model properties (`model_tests.rs`): proptest steps clients and the worker one turn at a
//!   time and checks named properties against the kernel's record of each connection;
//! - the idle-timeout tests (`idle_tests.rs`): a few clients and a clock moved by hand;
//! - the fuzz target (`crate::fuzzing`): the scenario and the faults decoded from the input bytes.
//!
//! Each layer drives the same worker loop ([`crate::worker::Worker`]) through the same `Io`, so an
//! action is performed and its outcome fed back in one place. Nothing real is touched: no sockets,
//! no threads. The same seed (or input) always gives the same run.

// The kernel's API serves every layer; the model and idle layers are built only for tests.
#![cfg_attr(not(test), allow(dead_code))]

mod entropy;
mod faults;
mod kernel;
mod link;
mod network;
mod scenario;
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

use crate::dispatch::Readiness;
use crate::worker::Worker;
#[cfg(test)]
use faults::Fault;
use kernel::{Kernel, Setup, Sim};
#[cfg(test)]
use kernel::{Rule, Steps};
use network::Network;
#[cfg(test)]
use trace::Ev;

/// Runs one network scenario to the end and checks it; panics (after printing the trace) on any
/// broken rule.
pub(crate) fn run<E: Entropy>(scenario: Scenario, entropy: E) -> Stats {
    let settings = scenario.settings.clone();
    let setup = Setup {
        backlog_cap: scenario.backlog_cap,
        fd_limit: scenario.fd_limit,
        ..Setup::for_worker(&settings, scenario.faults.clone())
    };
    let sim = Sim {
        kernel: Kernel::new(entropy, setup),
        world: Network::new(&scenario),
    };
    let mut worker = Worker::new(sim, settings, None, false);
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        while !worker.turn().expect("a simulated wait cannot fail") {}
        let report = worker.core().report();
        let sim = worker.io_mut();
        sim.world.finish(&mut sim.kernel, report)
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
fn stepped(setup: Setup, settings: crate::dispatch::Settings) -> Worker<Sim<SeedRng, Steps>> {
    let sim = Sim {
        kernel: Kernel::new(SeedRng::new(0), setup),
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
