//! The real network: one worker's epoll, listener and waker behind the [`Io`] trait.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use super::epoll::{Epoll, Events, Interest};
use super::socket::{accept, accept_queue, acked, queued_input, read, shutdown_write, write};
use super::Waker;
use crate::dispatch::{Readiness, Token};
use crate::io::Io;

/// Events fetched per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;

/// A worker's descriptors. Dropping it closes the epoll instance (and the listener, if still open).
pub(crate) struct EpollShell {
    /// The epoll instance and the worker's share of its wake-up channel, until the stop ends.
    epoll: Option<(Epoll, Arc<Waker>)>,
    events: Events,
    listener: Option<OwnedFd>,
}

impl EpollShell {
    /// Creates the epoll instance and registers the listener and the waker.
    pub fn new(listener: OwnedFd, waker: Arc<Waker>) -> io::Result<EpollShell> {
        let epoll = Epoll::new()?;
        epoll.add(listener.as_fd(), Token::LISTENER, Interest::ReadEdge)?;
        epoll.add(waker.as_fd(), Token::WAKER, Interest::ReadEdge)?;
        Ok(EpollShell {
            epoll: Some((epoll, waker)),
            events: Events::with_capacity(EVENTS_PER_WAIT),
            listener: Some(listener),
        })
    }
}

impl Io for EpollShell {
    type Socket = OwnedFd;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        mut on_event: impl FnMut(Token, Readiness),
    ) -> io::Result<()> {
        let Some((epoll, _)) = &self.epoll else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        epoll.wait(&mut self.events, timeout)?;
        for (token, readiness) in self.events.iter() {
            on_event(token, readiness);
        }
        Ok(())
    }

    fn accept(&mut self) -> io::Result<OwnedFd> {
        match &self.listener {
            Some(l) => accept(l.as_fd()),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    fn register(&mut self, sock: &OwnedFd, token: Token) -> io::Result<()> {
        match &self.epoll {
            Some((epoll, _)) => epoll.add(sock.as_fd(), token, Interest::ConnEdge),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    fn read(&mut self, sock: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
        read(sock.as_fd(), buf)
    }

    fn write(&mut self, sock: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
        write(sock.as_fd(), buf)
    }

    fn shutdown_write(&mut self, sock: &OwnedFd) {
        // The peer may already be gone; the next read or the deadline closes the connection then.
        let _ = shutdown_write(sock.as_fd());
    }

    fn close(&mut self, sock: OwnedFd) {
        // Closing also removes it from the epoll set: it is never dup'ed.
        drop(sock);
    }

    fn close_listener(&mut self) {
        self.listener = None;
    }

    fn clear_wake(&mut self) {
        if let Some((_, waker)) = &self.epoll {
            waker.drain();
        }
    }

    fn acked(&mut self, sock: &OwnedFd) -> io::Result<u64> {
        acked(sock.as_fd())
    }

    fn queued_input(&mut self, sock: &OwnedFd) -> io::Result<usize> {
        queued_input(sock.as_fd())
    }

    fn queued_connections(&mut self) -> io::Result<usize> {
        match &self.listener {
            Some(l) => accept_queue(l.as_fd()),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    fn close_shell(&mut self) {
        // The wake-up channel closes once the stopper lets go of its share too.
        self.epoll = None;
    }
}
