//! epoll-echo: a Linux TCP echo server (RFC 862) with one `SO_REUSEPORT` listener, epoll instance and
//! thread per worker.
//!
//! - [`dispatch`] is the pure core: it decides, and performs no I/O.
//! - [`sys`] is the thin shell over epoll and sockets: it acts, and holds all the `unsafe`.
//! - [`worker`] joins the two over the [`io::Io`] trait; [`Server`] starts, stops and joins workers.
#![deny(unsafe_code)]

/// Logs one line to stderr, best effort: `eprintln!` panics when stderr is closed or full, and
/// nothing in the environment may stop a worker.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod dispatch;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod limit;
mod server;
mod shutdown;
#[doc(hidden)]
pub mod sim;
pub mod stats;
mod sync;
pub mod sys;
pub mod worker;

pub use dispatch::Report;
pub use server::{Config, Server, StartError};
pub use stats::LiveStats;
