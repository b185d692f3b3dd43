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

/// Named readiness sets for the core's tests.
#[cfg(test)]
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
}

/// What the shell must do next, with what it needs lent from the core: the socket, and for a read
/// or a write the bytes (the worker's scratch buffer or the connection's pending output), so the
/// shell performs it without asking the core again. `Accept`, `Register`, `Read`, `Write` and the
/// measurements each need their outcome fed back, with the `token` named here, before the next
/// `poll_action`.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a, S> {
    /// Accept one connection from the listener; report with `handle_accept`.
    Accept,
    /// Register this new connection with epoll (edge-triggered, in + out); report with
    /// `handle_register`.
    Register { token: Token, sock: &'a S },
    /// Read into `buf` (as many bytes as the core may take now); report with `handle_read`.
    Read {
        token: Token,
        sock: &'a S,
        buf: &'a mut [u8],
    },
    /// Write `bytes`; report with `handle_write`.
    Write {
        token: Token,
        sock: &'a S,
        bytes: &'a [u8],
    },
    /// Shut the write side (sends FIN after everything written). The connection stays open.
    ShutdownWrite { token: Token, sock: &'a S },
    /// Close this connection's socket (dropping it is enough).
    Close(S),
    /// Close the listening socket: the worker is stopping and has accepted what was queued.
    CloseListener,
    /// Ask the kernel how many connections the listener's accept queue holds (the stop's cut of
    /// the queue); report with `handle_backlog`.
    MeasureBacklog,
    /// Ask the kernel how many bytes this connection's receive queue holds (`FIONREAD`: the stop's
    /// cut, which counts past an urgent mark); report with `handle_queued_input`.
    MeasureInput { token: Token, sock: &'a S },
    /// Ask the kernel how many bytes of this connection's output the peer acknowledged
    /// (`tcpi_bytes_acked`); report with `handle_delivery`.
    CheckDelivery { token: Token, sock: &'a S },
    /// Ask the kernel how many bytes of this connection's output the peer acknowledged, as for
    /// `CheckDelivery`, then close it; report with `handle_closed`. Every close of a connection
    /// that wrote something unproven goes this way.
    MeasureAndClose(S),
    /// Close the worker's epoll instance and wake-up channel: the last action of a stop.
    CloseShell,
}

/// The outcome of one action as the shell feeds it back, for
/// [`Dispatcher::handle_outcome`](super::Dispatcher::handle_outcome); each variant is the
/// argument of the matching `handle_*` method.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<S> {
    /// The action asks nothing back (a close or a shutdown).
    Done,
    Accept(AcceptOutcome<S>),
    Register {
        token: Token,
        registered: bool,
    },
    Read {
        token: Token,
        outcome: ReadOutcome,
    },
    Write {
        token: Token,
        outcome: WriteOutcome,
    },
    Delivery {
        token: Token,
        outcome: AckOutcome,
    },
    QueuedInput {
        token: Token,
        queued: Option<usize>,
    },
    Backlog(Option<usize>),
    Closed(AckOutcome),
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
    Failed(ConnError),
}

/// Outcome of `write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The kernel took `n` of the offered bytes (maybe fewer than offered).
    Wrote(usize),
    WouldBlock,
    Interrupted,
    /// `EPIPE`, `ECONNRESET` or any other error: close this connection.
    Failed(ConnError),
}

/// Why a connection failed, as the system call said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// The peer reset the connection (`ECONNRESET`, `EPIPE`).
    Reset,
    /// The peer stopped answering (`ETIMEDOUT`).
    TimedOut,
    /// The peer cannot be reached (`EHOSTUNREACH`, `ENETUNREACH`, `ENETDOWN`).
    Unreachable,
    /// `EPOLLERR` before any call said which, or an error of another kind.
    Other,
}

impl ConnError {
    /// Classifies a failed read or write.
    pub fn of(e: &std::io::Error) -> ConnError {
        match e.raw_os_error() {
            Some(libc::ECONNRESET | libc::EPIPE) => ConnError::Reset,
            Some(libc::ETIMEDOUT) => ConnError::TimedOut,
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ENETDOWN) => ConnError::Unreachable,
            _ => ConnError::Other,
        }
    }
}

impl ReadOutcome {
    /// Classifies a `read` result.
    pub fn from_result(r: std::io::Result<usize>) -> Self {
        match r {
            Ok(0) => ReadOutcome::Eof,
            Ok(n) => ReadOutcome::Data(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => ReadOutcome::Interrupted,
            Err(e) => ReadOutcome::Failed(ConnError::of(&e)),
        }
    }
}

/// Outcome of asking the kernel how much of a connection's output the peer acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// The peer's kernel acknowledged this many bytes of our output (our FIN counts as one more
    /// once acknowledged).
    Acked(u64),
    /// The kernel could not tell: nothing counts as acknowledged.
    Unknown,
}

impl AckOutcome {
    /// Classifies a `tcpi_bytes_acked` result.
    pub fn from_result(r: std::io::Result<u64>) -> Self {
        match r {
            Ok(n) => AckOutcome::Acked(n),
            Err(_) => AckOutcome::Unknown,
        }
    }

    /// True when the peer acknowledged every one of the `written` bytes (our FIN need not be).
    pub fn covers(self, written: u64) -> bool {
        written == 0 || matches!(self, AckOutcome::Acked(n) if n >= written)
    }

    /// Bytes of the `written` ones the peer holds: the kernel's count without our FIN.
    pub fn delivered_of(self, written: u64) -> u64 {
        match self {
            AckOutcome::Acked(n) => n.min(written),
            AckOutcome::Unknown => 0,
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
            Err(e) => WriteOutcome::Failed(ConnError::of(&e)),
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
    use std::io::Error;

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
        let failed = |errno| ReadOutcome::from_result(Err(Error::from_raw_os_error(errno)));
        assert_eq!(
            failed(libc::ECONNRESET),
            ReadOutcome::Failed(ConnError::Reset)
        );
        assert_eq!(
            failed(libc::ETIMEDOUT),
            ReadOutcome::Failed(ConnError::TimedOut)
        );
        assert_eq!(
            failed(libc::EHOSTUNREACH),
            ReadOutcome::Failed(ConnError::Unreachable)
        );
        assert_eq!(failed(libc::EIO), ReadOutcome::Failed(ConnError::Other));
    }

    #[test]
    fn write_results_are_classified() {
        assert_eq!(WriteOutcome::from_result(Ok(3)), WriteOutcome::Wrote(3));
        let epipe = Error::from_raw_os_error(libc::EPIPE);
        assert_eq!(
            WriteOutcome::from_result(Err(epipe)),
            WriteOutcome::Failed(ConnError::Reset)
        );
        let eagain = Error::from_raw_os_error(libc::EAGAIN);
        assert_eq!(
            WriteOutcome::from_result(Err(eagain)),
            WriteOutcome::WouldBlock
        );
    }

    #[test]
    fn an_acknowledgement_counts_data_bytes_never_our_fin() {
        assert_eq!(AckOutcome::Acked(101).delivered_of(100), 100, "FIN acked");
        assert_eq!(AckOutcome::Acked(100).delivered_of(100), 100);
        assert_eq!(AckOutcome::Acked(40).delivered_of(100), 40);
        assert_eq!(AckOutcome::Unknown.delivered_of(100), 0);
        let acked = AckOutcome::from_result(Ok(7));
        assert_eq!(acked, AckOutcome::Acked(7));
        let unknown = AckOutcome::from_result(Err(Error::from_raw_os_error(libc::EBADF)));
        assert_eq!(unknown, AckOutcome::Unknown);
    }

    #[test]
    fn delivery_needs_every_data_byte_acknowledged_and_ignores_our_fin() {
        assert!(!AckOutcome::Acked(99).covers(100));
        assert!(
            AckOutcome::Acked(100).covers(100),
            "a FIN still waiting for window"
        );
        assert!(AckOutcome::Acked(101).covers(100));
        assert!(!AckOutcome::Unknown.covers(1));
        assert!(
            AckOutcome::Unknown.covers(0),
            "nothing written, nothing to prove"
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
