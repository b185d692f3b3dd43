//! The binary's parts besides `main`: its flags, its non-blocking output, its signals and its
//! metrics endpoint. The library knows none of them.

pub mod flags;
pub mod metrics;
pub mod output;
pub mod signals;
