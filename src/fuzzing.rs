//! Fuzz harness bodies, kept in the library so each target under `fuzz/` is one line and so
//! `cargo test` can replay the corpus on stable.
//!
//! [`echo_stream`] splits its input into a client byte stream and a schedule, and runs the worker
//! loop over the simulated kernel with every choice taken from the schedule. The first schedule
//! byte picks the shape of the run:
//! - even: a whole network scenario (settings, fault rates, up to three clients sending the
//!   stream, the stop) decoded from the schedule;
//! - odd: one client sending the stream, every fault possible at every operation, so each outcome
//!   (short or refused reads and writes, `EINTR`, resets, accept failures) is a schedule byte.
//!
//! A run panics only when a rule of the echo breaks. When the schedule runs out, every choice
//! becomes the benign one, so each input ends in a run that must complete the echo.

use crate::sim::{self, ByteSource, Entropy, Faults, Scenario};

/// Longest client stream taken from one input.
const MAX_STREAM: usize = 4096;
/// Clients in a scenario run, each sending the same stream.
const MAX_SIM_CLIENTS: usize = 3;
/// The rate of every fault in a one-client run: each operation asks the schedule.
const EVERY_FAULT: u32 = 500;

/// Input layout: two bytes of stream length, the stream, then the schedule.
pub fn echo_stream(data: &[u8]) {
    let mut input = ByteSource::new(data);
    let len = input.below(MAX_STREAM as u64 + 1) as usize;
    let stream = input.take(len);
    let schedule = &data[data.len().min(2 + stream.len())..];
    let mut e = ByteSource::new(schedule);
    let one_client = e.below(2) == 1;
    let mut scenario = Scenario::generate(&mut e, Some(stream));
    if one_client {
        scenario.clients.truncate(1);
        scenario.faults = Faults::all(EVERY_FAULT);
    } else {
        scenario.clients.truncate(MAX_SIM_CLIENTS);
    }
    sim::run(scenario, e);
}
