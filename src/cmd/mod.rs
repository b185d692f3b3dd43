//! The binary's parts besides `main`: its flags, its non-blocking output and its signals. The
//! library knows none of them.

pub mod flags;
pub mod output;
pub mod signals;
