//! The binary's parts besides `main`: its flags and addresses, its non-blocking output, its signals, its metrics
//! endpoint, its advice on a taken port and on overlapping restarts, taking listeners over, and its notifications to a service manager. The library
//! knows none of them.

pub mod address;
pub mod flags;
pub mod in_use;
pub mod metrics;
pub mod migration;
pub mod notify;
pub mod output;
pub mod signals;
pub mod takeover;
