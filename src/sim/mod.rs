//! A deterministic simulated network under the real worker loop ([`crate::worker::run`]).
//!
//! One run: draw a [`Scenario`] (settings, fault rates, clients) from an [`Entropy`] source, run the
//! worker over a [`SimNet`] until it finishes, then check the whole run. Nothing real is touched: no
//! sockets, no threads, a virtual clock. The same seed always gives the same run, so a failure is
//! reproduced by its seed alone.
//!
//! What the clients do: arrive over time into a bounded backlog, send their payload in chunks
//! (half-closing, closing after the echo, waiting for the server's FIN, or resetting midway), read
//! what comes back, sometimes pausing. What the network injects: short reads and writes,
//! would-block, `EINTR`, `EMFILE` and `ECONNABORTED` on accept, failed registrations, spurious and
//! stale events, partial event batches, and the stop at a random moment (or once all is quiet).
//!
//! What is checked, each with a panic that says which rule broke:
//! - every byte written is the next byte its client sent (echo is a prefix of the input);
//! - no operation on a closed or never-accepted socket, no accept after the listener closed, no
//!   write after the write side was shut;
//! - bytes read and not yet written never exceed the pending-output cap;
//! - a close never leaves unread input behind (that would send RST over echoed bytes), except at
//!   the drain deadline;
//! - liveness: when the network goes quiet nobody is left waiting on the worker; the worker neither
//!   spins without progress nor outlives its drain deadline;
//! - at the end: listener and every socket closed exactly once; each client that did not reset got
//!   back all the server read from it before the stop, then EOF, and was never reset (the whole
//!   payload when the server saw its EOF before the stop); the [`Report`](crate::Report) balances
//!   and each counter equals what the network saw.

mod entropy;
mod net;
mod scenario;

pub use entropy::{ByteSource, Entropy, SeedRng};
pub use net::{SimNet, SimSocket, Stats};
pub use scenario::{ClientSpec, Faults, Finish, Scenario};

use std::panic::{self, AssertUnwindSafe};

use crate::worker;

/// Runs one scenario to the end and checks it; panics (after printing the trace) on any broken rule.
pub fn run<E: Entropy>(scenario: Scenario, entropy: E) -> Stats {
    let config = scenario.config.clone();
    let mut net = SimNet::new(scenario, entropy);
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let report = worker::run(&mut net, config).expect("a simulated wait cannot fail");
        net.finish(report)
    }));
    match result {
        Ok(stats) => stats,
        Err(cause) => {
            eprintln!("simulation trace, oldest first:\n{}", net.trace_tail());
            panic::resume_unwind(cause)
        }
    }
}

/// The run for `seed`: scenario and schedule both drawn from it.
pub fn run_seed(seed: u64) -> Stats {
    let mut rng = SeedRng::new(seed);
    let scenario = Scenario::generate(&mut rng, None);
    run(scenario, rng)
}
