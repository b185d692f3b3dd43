//! The thin shell: every system call the server makes, each wrapped once. This is the only module
//! allowed `unsafe`; each block says why it is sound.
#![allow(unsafe_code)]

mod epoll;
mod passing;
mod shell;
mod socket;
mod waker;

pub(crate) use passing::{recv_fds, send_fds};
pub(crate) use shell::EpollShell;
#[cfg(test)]
pub(crate) use socket::{acked, find_connection, peer_window, unacked};
pub(crate) use socket::{adopt_listener, bind_listener, Claim};
pub(crate) use waker::Waker;

/// Calls a libc function and turns its `-1` return into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: each caller passes valid descriptors and pointers that outlive the call, as its own
        // SAFETY comment explains.
        #[allow(unused_unsafe)]
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;
