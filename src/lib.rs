//! epoll-echo: a Linux TCP echo server (RFC 862) with one `SO_REUSEPORT` listener, epoll instance and
//! thread per worker.
//!
//! The public face is small: [`Server`] started from a [`Config`], stopped into a [`Report`] whose
//! [`Counter`]s can also be read live through [`LiveStats`]. Inside:
//!
//! - `dispatch` is the pure core: it decides, and performs no I/O.
//! - `sys` is the thin shell over epoll and sockets: it acts, and holds all the `unsafe`.
//! - `worker` joins the two over the `io::Io` trait; `server` starts, stops and joins workers,
//!   with `shutdown` coordinating the stop.
//! - `sim` (tests, and the `sim` feature) is the simulated kernel the same worker loop runs over;
//!   `fuzzing` holds the fuzz harness bodies, `failing` a server with a worker that fails on purpose.
//!
//! Warnings go through the `log` facade; the binary installs the logger.
#![deny(unsafe_code)]

mod config;
mod dispatch;
mod error;
pub mod handover;
mod io;
mod report;
mod server;
mod shutdown;
mod stats;
mod sync;
mod sys;
mod worker;

#[cfg(feature = "sim")]
#[doc(hidden)]
pub mod failing;
#[cfg(feature = "sim")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(any(test, feature = "sim"))]
#[doc(hidden)]
pub mod sim;

pub use config::{Config, MAX_TIMEOUT};
pub use error::StartError;
pub use report::{Counter, Derived, ParseError, Report};
pub use server::Server;
pub use stats::LiveStats;
