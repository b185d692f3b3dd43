//! The binary's parts besides `main`: its flags, its non-blocking output, its signals, its metrics
//! endpoint and its notifications to a service manager. The library knows none of them.

pub mod duration;
pub mod flags;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod signals;
