//! One epoll instance, its event buffer, and the translation from `EPOLL*` bits to [`Readiness`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::syscall;
use crate::dispatch::{Readiness, Token};

/// What a registration asks to hear about.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Interest {
    /// A listener or waker: readable, edge-triggered.
    ReadEdge,
    /// A connection: in, urgent, out and peer half-close, edge-triggered, registered once for its
    /// lifetime.
    ConnEdge,
}

impl Interest {
    fn bits(self) -> u32 {
        let bits = match self {
            Interest::ReadEdge => libc::EPOLLIN | libc::EPOLLET,
            Interest::ConnEdge => {
                libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET
            }
        };
        bits as u32
    }
}

/// Translates the `events` field of an `epoll_event`.
pub(crate) fn readiness_from_epoll(bits: u32) -> Readiness {
    let has = |flag: libc::c_int| bits & flag as u32 != 0;
    Readiness {
        readable: has(libc::EPOLLIN),
        writable: has(libc::EPOLLOUT),
        read_closed: has(libc::EPOLLRDHUP),
        hangup: has(libc::EPOLLHUP),
        error: has(libc::EPOLLERR),
        urgent: has(libc::EPOLLPRI),
    }
}

/// An epoll instance (closed on drop).
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
}

/// Buffer for the events of one `epoll_wait`.
pub(crate) struct Events {
    buf: Vec<libc::epoll_event>,
    len: usize,
}

impl Events {
    pub fn with_capacity(n: usize) -> Self {
        Events {
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; n.max(1)],
            len: 0,
        }
    }

    /// The events of the last wait, as (token, readiness).
    pub fn iter(&self) -> impl Iterator<Item = (Token, Readiness)> + '_ {
        self.buf[..self.len].iter().map(|e| {
            let (bits, data) = (e.events, e.u64);
            (Token::from_epoll(data), readiness_from_epoll(bits))
        })
    }
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers and only flags.
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: epoll_create1 just returned this descriptor and nothing else owns it.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn add(&self, fd: BorrowedFd<'_>, token: Token, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.bits(),
            u64: token.to_epoll(),
        };
        // SAFETY: both descriptors are open; `ev` is a valid epoll_event for the duration of the call.
        syscall!(epoll_ctl(
            self.fd.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &mut ev
        ))?;
        Ok(())
    }

    /// Waits for events; `None` waits without limit. `EINTR` returns zero events.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        let ms = match timeout {
            None => -1,
            // Round up so a deadline is never woken for early and spun on.
            Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
        };
        let cap = events.buf.len().min(i32::MAX as usize) as i32;
        // SAFETY: the buffer holds `cap` writable epoll_event entries and outlives the call.
        match syscall!(epoll_wait(
            self.fd.as_raw_fd(),
            events.buf.as_mut_ptr(),
            cap,
            ms
        )) {
            Ok(n) => events.len = n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => events.len = 0,
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_bits_translate_to_readiness() {
        let r = readiness_from_epoll((libc::EPOLLIN | libc::EPOLLRDHUP) as u32);
        assert!(r.readable && r.read_closed && !r.writable && !r.hangup && !r.error);
        let r = readiness_from_epoll((libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32);
        assert!(r.writable && r.error && r.hangup && !r.readable && !r.urgent);
        let r = readiness_from_epoll((libc::EPOLLIN | libc::EPOLLPRI) as u32);
        assert!(r.readable && r.urgent);
    }

    /// A wait without a deadline sleeps until an event: an idle worker costs nothing. Counted in
    /// returns, not time: a wait that timed out each millisecond would return hundreds of times.
    #[test]
    fn a_wait_without_a_deadline_returns_only_for_an_event() {
        use crate::dispatch::Token;
        use crate::sys::Waker;
        use std::sync::Arc;
        let epoll = Epoll::new().unwrap();
        let waker = Arc::new(Waker::new().unwrap());
        epoll
            .add(waker.as_fd(), Token::WAKER, Interest::ReadEdge)
            .unwrap();
        let woken = Arc::clone(&waker);
        let waiting = std::thread::spawn(move || {
            let mut events = Events::with_capacity(4);
            let mut returns = 0;
            loop {
                epoll.wait(&mut events, None).unwrap();
                returns += 1;
                if events.iter().any(|(t, _)| t == Token::WAKER) {
                    return returns;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        woken.wake().unwrap();
        let returns = waiting.join().unwrap();
        assert!(returns <= 3, "{returns} returns for one event");
    }

    #[test]
    fn connection_interest_is_edge_triggered_in_out_and_rdhup() {
        let bits = Interest::ConnEdge.bits();
        for flag in [
            libc::EPOLLIN,
            libc::EPOLLPRI,
            libc::EPOLLOUT,
            libc::EPOLLRDHUP,
            libc::EPOLLET,
        ] {
            assert_ne!(bits & flag as u32, 0);
        }
    }
}
