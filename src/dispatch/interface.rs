//! The vocabulary between the core and the shell: readiness in, actions out, and the outcome of each
//! action fed back. Plain data; the only logic is the classification of system-call results.

use super::Token;

/// What epoll said about a registration, already translated from `EPOLL*` bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer shut its write side (`EPOLLRDHUP`): a read will reach EOF.
    pub read_closed: bool,
    /// Both directions are gone (`EPOLLHUP`).
    pub hangup: bool,
    /// The socket has a pending error (`EPOLLERR`).
    pub error: bool,
    /// TCP urgent data arrived (`EPOLLPRI`): a read may stop short at its mark with more queued.
    pub urgent: bool,
}

/// Named readiness sets and the merge of two, for the simulated kernel and the tests.
#[cfg(any(test, feature = "sim"))]
impl Readiness {
    /// Nothing ready.
    pub const NONE: Readiness = Readiness {
        readable: false,
        writable: false,
        read_closed: false,
        hangup: false,
        error: false,
        urgent: false,
    };
    /// Input is waiting (`EPOLLIN`).
    pub const READABLE: Readiness = Readiness {
        readable: true,
        ..Readiness::NONE
    };
    /// The send buffer has room (`EPOLLOUT`).
    pub const WRITABLE: Readiness = Readiness {
        writable: true,
        ..Readiness::NONE
    };

    /// Both sets of flags, as epoll merges edges that come before a wait.
    pub fn or(self, other: Readiness) -> Readiness {
        Readiness {
            readable: self.readable || other.readable,
            writable: self.writable || other.writable,
            read_closed: self.read_closed || other.read_closed,
            hangup: self.hangup || other.hangup,
            error: self.error || other.error,
            urgent: self.urgent || other.urgent,
        }
    }
}

/// What the shell must do next. Actions that name a [`Token`] concern a live connection; `Accept`,
/// `Register`, `Read` and `Write` each need their outcome fed back before the next `poll_action`.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Action<S> {
    /// Accept one connection from the listener; report with `handle_accept`.
    Accept,
    /// Register this new connection with epoll (edge-triggered, in + out); report with `handle_register`.
    Register(Token),
    /// Read up to `len` bytes into the buffer from `read_target`; report with `handle_read`.
    Read { token: Token, len: usize },
    /// Write the bytes from `write_target`; report with `handle_write`.
    Write(Token),
    /// Shut the write side (sends FIN after everything written). The connection stays open.
    ShutdownWrite(Token),
    /// Close this connection's socket (dropping it is enough).
    Close(S),
    /// Close the listening socket: the worker is stopping and has accepted what was queued.
    CloseListener,
    /// Ask the kernel how many bytes it still holds unsent or unacknowledged on this connection
    /// (`SIOCOUTQ`, which after our FIN counts the FIN too); report with `handle_delivery`.
    CheckDelivery(Token),
    /// Close this connection without proof of delivery (drain deadline, idle timeout): first ask
    /// the kernel what it still holds, as for `CheckDelivery`, then close; report with
    /// `handle_abandoned`.
    Abandon(S),
    /// Close the worker's epoll instance and wake-up channel: the last action of a stop.
    CloseShell,
}

/// Outcome of `accept4`.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptOutcome<S> {
    Accepted(S),
    WouldBlock,
    Interrupted,
    /// The connection died in the backlog (`ECONNABORTED`, `EPROTO`, ...): skip it.
    Aborted,
    /// Out of descriptors or kernel memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): back off.
    Exhausted(ResourceError),
    /// Anything else: also back off, so an unexpected error cannot spin the worker.
    Failed,
}

/// Which resource ran out when accepting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceError {
    ProcessDescriptors,
    SystemDescriptors,
    Buffers,
    Memory,
}

/// Outcome of `read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// `n > 0` bytes are in the read buffer.
    Data(usize),
    /// `read` returned 0: the peer finished sending.
    Eof,
    WouldBlock,
    Interrupted,
    /// Reset or any other error: close this connection.
    Failed,
}

/// Outcome of `write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The kernel took `n` of the offered bytes (maybe fewer than offered).
    Wrote(usize),
    WouldBlock,
    Interrupted,
    /// `EPIPE`, `ECONNRESET` or any other error: close this connection.
    Failed,
}

impl ReadOutcome {
    /// Classifies a `read` result.
    pub fn from_result(r: std::io::Result<usize>) -> Self {
        match r {
            Ok(0) => ReadOutcome::Eof,
            Ok(n) => ReadOutcome::Data(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => ReadOutcome::Interrupted,
            Err(_) => ReadOutcome::Failed,
        }
    }
}

/// Outcome of asking the kernel what it still holds of a connection's output (`SIOCOUTQ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Nothing: the peer acknowledged every byte (and our FIN, once sent).
    Delivered,
    /// This many bytes (counting our FIN, once sent) are unsent or unacknowledged.
    Held(usize),
    /// The kernel could not tell.
    Unknown,
}

impl DeliveryOutcome {
    /// Classifies a `SIOCOUTQ` result.
    pub fn from_result(r: std::io::Result<usize>) -> Self {
        match r {
            Ok(0) => DeliveryOutcome::Delivered,
            Ok(n) => DeliveryOutcome::Held(n),
            Err(_) => DeliveryOutcome::Unknown,
        }
    }
}

impl WriteOutcome {
    /// Classifies a `write` result.
    pub fn from_result(r: std::io::Result<usize>) -> Self {
        match r {
            Ok(n) => WriteOutcome::Wrote(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => WriteOutcome::WouldBlock,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => WriteOutcome::Interrupted,
            Err(_) => WriteOutcome::Failed,
        }
    }
}

impl<S> AcceptOutcome<S> {
    /// Classifies an `accept4` result.
    pub fn from_result(r: std::io::Result<S>) -> Self {
        let e = match r {
            Ok(s) => return AcceptOutcome::Accepted(s),
            Err(e) => e,
        };
        match e.raw_os_error() {
            Some(libc::EAGAIN) => AcceptOutcome::WouldBlock,
            Some(libc::EINTR) => AcceptOutcome::Interrupted,
            Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => AcceptOutcome::Aborted,
            Some(libc::EMFILE) => AcceptOutcome::Exhausted(ResourceError::ProcessDescriptors),
            Some(libc::ENFILE) => AcceptOutcome::Exhausted(ResourceError::SystemDescriptors),
            Some(libc::ENOBUFS) => AcceptOutcome::Exhausted(ResourceError::Buffers),
            Some(libc::ENOMEM) => AcceptOutcome::Exhausted(ResourceError::Memory),
            _ => AcceptOutcome::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn merged_edges_keep_every_flag_of_either() {
        let flags = |r: Readiness| {
            [
                r.readable,
                r.writable,
                r.read_closed,
                r.hangup,
                r.error,
                r.urgent,
            ]
        };
        let one = |i: usize| {
            let mut f = [false; 6];
            f[i] = true;
            Readiness {
                readable: f[0],
                writable: f[1],
                read_closed: f[2],
                hangup: f[3],
                error: f[4],
                urgent: f[5],
            }
        };
        for i in 0..6 {
            for j in 0..6 {
                let merged = flags(one(i).or(one(j)));
                let want: Vec<bool> = (0..6).map(|k| k == i || k == j).collect();
                assert_eq!(merged.to_vec(), want, "{i} or {j}");
            }
        }
    }

    #[test]
    fn read_results_are_classified() {
        assert_eq!(ReadOutcome::from_result(Ok(0)), ReadOutcome::Eof);
        assert_eq!(ReadOutcome::from_result(Ok(5)), ReadOutcome::Data(5));
        let eagain = Error::from_raw_os_error(libc::EAGAIN);
        assert_eq!(
            ReadOutcome::from_result(Err(eagain)),
            ReadOutcome::WouldBlock
        );
        let eintr = Error::from_raw_os_error(libc::EINTR);
        assert_eq!(
            ReadOutcome::from_result(Err(eintr)),
            ReadOutcome::Interrupted
        );
        let reset = Error::from(ErrorKind::ConnectionReset);
        assert_eq!(ReadOutcome::from_result(Err(reset)), ReadOutcome::Failed);
    }

    #[test]
    fn write_results_are_classified() {
        assert_eq!(WriteOutcome::from_result(Ok(3)), WriteOutcome::Wrote(3));
        let epipe = Error::from_raw_os_error(libc::EPIPE);
        assert_eq!(WriteOutcome::from_result(Err(epipe)), WriteOutcome::Failed);
        let eagain = Error::from_raw_os_error(libc::EAGAIN);
        assert_eq!(
            WriteOutcome::from_result(Err(eagain)),
            WriteOutcome::WouldBlock
        );
    }

    #[test]
    fn accept_errors_are_classified() {
        use AcceptOutcome::*;
        let cases = [
            (libc::EAGAIN, WouldBlock),
            (libc::EINTR, Interrupted),
            (libc::ECONNABORTED, Aborted),
            (libc::EMFILE, Exhausted(ResourceError::ProcessDescriptors)),
            (libc::ENFILE, Exhausted(ResourceError::SystemDescriptors)),
            (libc::ENOBUFS, Exhausted(ResourceError::Buffers)),
            (libc::ENOMEM, Exhausted(ResourceError::Memory)),
            (libc::EBADF, Failed),
        ];
        for (errno, want) in cases {
            let got = AcceptOutcome::<()>::from_result(Err(Error::from_raw_os_error(errno)));
            assert_eq!(got, want, "errno {errno}");
        }
    }
}
