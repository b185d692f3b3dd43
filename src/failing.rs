//! Test machinery (the `sim` feature): a server one of whose workers fails on purpose, so tests can
//! check what a failed worker leaves (its last counts, its connection-limit slots, exit status 3).
//!
//! The failure lives in an [`Io`] wrapper, [`PanicAfter`], not in the worker or the config: the
//! production types carry no hook, and only `Server`'s worker spawn chooses the wrapper.

use std::io;
use std::time::Instant;

use crate::dispatch::{Readiness, Token};
use crate::io::Io;
use crate::{Config, Server, StartError};

/// Starts a server like [`Server::start`] whose worker `worker` panics once it has accepted
/// `after` connections (at its next wait, so after it published the counts of that turn).
pub fn start(config: Config, worker: usize, after: u64) -> Result<Server, StartError> {
    Server::launch(config, Some(Planted { worker, after }))
}

/// Which worker fails, and after how many accepted connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Planted {
    pub worker: usize,
    pub after: u64,
}

/// An [`Io`] that passes every call through and panics in [`Io::wait`] once `after` connections
/// were accepted and served. It counts registrations, not accepts: the core registers exactly the
/// connections it counts as accepted, not those the connection limit rejects.
pub(crate) struct PanicAfter<I> {
    inner: I,
    after: u64,
    registered: u64,
}

impl<I: Io> PanicAfter<I> {
    pub fn new(inner: I, after: u64) -> Self {
        PanicAfter {
            inner,
            after,
            registered: 0,
        }
    }
}

impl<I: Io> Io for PanicAfter<I> {
    type Socket = I::Socket;

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        on_event: impl FnMut(Token, Readiness),
    ) -> io::Result<()> {
        let n = self.after;
        assert!(
            self.registered < n,
            "a failure planted by a test, after {n} accepts"
        );
        self.inner.wait(deadline, on_event)
    }

    fn accept(&mut self) -> io::Result<Self::Socket> {
        self.inner.accept()
    }

    fn register(&mut self, sock: &Self::Socket, token: Token) -> io::Result<()> {
        self.registered += 1;
        self.inner.register(sock, token)
    }

    fn read(&mut self, sock: &Self::Socket, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(sock, buf)
    }

    fn write(&mut self, sock: &Self::Socket, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(sock, buf)
    }

    fn shutdown_write(&mut self, sock: &Self::Socket) {
        self.inner.shutdown_write(sock)
    }

    fn close(&mut self, sock: Self::Socket) {
        self.inner.close(sock)
    }

    fn close_listener(&mut self) {
        self.inner.close_listener()
    }

    fn acked(&mut self, sock: &Self::Socket) -> io::Result<u64> {
        self.inner.acked(sock)
    }

    fn queued_input(&mut self, sock: &Self::Socket) -> io::Result<usize> {
        self.inner.queued_input(sock)
    }

    fn queued_connections(&mut self) -> io::Result<usize> {
        self.inner.queued_connections()
    }

    fn close_shell(&mut self) {
        self.inner.close_shell()
    }

    fn clear_wake(&mut self) {
        self.inner.clear_wake()
    }
}
