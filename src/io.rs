//! The boundary between the worker loop and the network. The real epoll shell
//! ([`crate::sys::EpollShell`]) implements it, and so does the simulated kernel of the tests, so the
//! same loop runs over both.

use std::io;
use std::time::Instant;

use crate::dispatch::{Readiness, Token};

/// One worker's view of the operating system: its epoll, listener, waker and clock.
pub(crate) trait Io {
    /// A connection's socket. Dropping it (or passing it to [`Io::close`]) closes it.
    type Socket;

    /// The current time.
    fn now(&self) -> Instant;
    /// Waits until an event or `deadline` (`None`: no limit) and reports each event. An interrupted
    /// wait reports nothing and returns `Ok`.
    fn wait(
        &mut self,
        deadline: Option<Instant>,
        on_event: impl FnMut(Token, Readiness),
    ) -> io::Result<()>;
    /// Accepts one connection from the listener.
    fn accept(&mut self) -> io::Result<Self::Socket>;
    /// Registers a new connection, edge-triggered for input, output and peer half-close.
    fn register(&mut self, sock: &Self::Socket, token: Token) -> io::Result<()>;
    fn read(&mut self, sock: &Self::Socket, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes without raising `SIGPIPE`.
    fn write(&mut self, sock: &Self::Socket, buf: &[u8]) -> io::Result<usize>;
    /// Shuts the write side; errors are ignored (the peer may be gone).
    fn shutdown_write(&mut self, sock: &Self::Socket);
    fn close(&mut self, sock: Self::Socket);
    fn close_listener(&mut self);
    /// Bytes of this connection's output the peer's kernel acknowledged, our FIN counting as one
    /// more once acknowledged (`tcpi_bytes_acked`).
    fn acked(&mut self, sock: &Self::Socket) -> io::Result<u64>;
    /// Bytes waiting in this connection's receive queue (`FIONREAD`, past any urgent mark).
    fn queued_input(&mut self, sock: &Self::Socket) -> io::Result<usize>;
    /// Connections waiting in the listener's accept queue.
    fn queued_connections(&mut self) -> io::Result<usize>;
    /// Closes the epoll instance and lets go of the wake-up channel: nothing is waited on after.
    fn close_shell(&mut self);
    /// Consumes a wake-up so that the next one raises a new event.
    fn clear_wake(&mut self);
}
