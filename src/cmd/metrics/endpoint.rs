//! The metrics thread's poll loop: the stop signal, the listener and every open scrape, each
//! non-blocking and bounded in time, the oldest closed first at the connection cap.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::exposition::render;
use super::http::{read_head, respond};
use super::Source;

/// How long one connection may take from accept to close, however it trickles.
const DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; a new one beyond this closes the oldest.
const MAX_CONNS: usize = 64;
/// Connections accepted per turn of the loop, so the open ones are not kept waiting.
const ACCEPTS_PER_TURN: usize = 64;
/// How long to leave the listener alone after an accept failure such as EMFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The thread's state: the listener, the stop signal, and the open connections, oldest first.
pub(super) struct Endpoint {
    listener: TcpListener,
    stopped: UnixStream,
    workers: usize,
    source: Source,
    conns: Vec<Conn>,
    /// While set, the listener is not polled (an accept failure such as EMFILE).
    accept_paused_until: Option<Instant>,
}

impl Endpoint {
    pub(super) fn new(
        listener: TcpListener,
        stopped: UnixStream,
        workers: usize,
        source: Source,
    ) -> Self {
        Endpoint {
            listener,
            stopped,
            workers,
            source,
            conns: Vec::new(),
            accept_paused_until: None,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let now = Instant::now();
            self.conns.retain(|c| c.deadline > now);
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
            }
            let accepting = self.accept_paused_until.is_none();
            let ready = match self.wait(now, accepting) {
                Ok(Some(ready)) => ready,
                Ok(None) => continue,
                Err(e) => {
                    log::error!("metrics endpoint: cannot wait for events ({e}); closing it");
                    return;
                }
            };
            if !ready.stop.is_empty() {
                return;
            }
            let (workers, source) = (self.workers, &self.source);
            let metrics = || render(workers, source);
            let mut events = ready.conns.into_iter();
            self.conns.retain_mut(|conn| {
                let woken = events.next().is_some_and(|e| !e.is_empty());
                !woken || conn.progress(&metrics)
            });
            if accepting && !ready.listener.is_empty() {
                self.accept();
            }
        }
    }

    /// Polls the stop signal, the listener (when `accepting`) and every connection until one is
    /// ready or the next deadline; returns the events of each, or `None` when interrupted.
    fn wait(&self, now: Instant, accepting: bool) -> nix::Result<Option<Ready>> {
        let next = self
            .conns
            .iter()
            .map(|c| c.deadline)
            .chain(self.accept_paused_until)
            .min();
        let timeout = match next {
            // Deadlines are at most DEADLINE away, which fits in u16 milliseconds; +1 rounds up.
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::from(u16::try_from(ms).unwrap_or(u16::MAX))
            }
            None => PollTimeout::NONE,
        };
        let mut fds = Vec::with_capacity(self.conns.len() + 2);
        fds.push(PollFd::new(self.stopped.as_fd(), PollFlags::POLLIN));
        let listen = if accepting {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        fds.push(PollFd::new(self.listener.as_fd(), listen));
        for conn in &self.conns {
            fds.push(PollFd::new(conn.stream.as_fd(), conn.interest()));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut events = fds
            .iter()
            .map(|fd| fd.revents().unwrap_or(PollFlags::empty()));
        Ok(Some(Ready {
            stop: events.next().unwrap_or(PollFlags::empty()),
            listener: events.next().unwrap_or(PollFlags::empty()),
            conns: events.collect(),
        }))
    }

    /// Accepts what is waiting, closing the oldest connections beyond the cap.
    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.conns.len() >= MAX_CONNS {
                        log::debug!(
                            "metrics endpoint: {MAX_CONNS} connections open, closing the oldest"
                        );
                        self.conns.remove(0);
                    }
                    self.conns.push(Conn::new(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A client that reset while queued: take the next.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    log::warn!("metrics endpoint: accept failed ({e}); retrying shortly");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }
}

/// What one poll found: the events of the stop signal, the listener and each connection in order.
struct Ready {
    stop: PollFlags,
    listener: PollFlags,
    conns: Vec<PollFlags>,
}

/// Where a connection is.
enum Phase {
    /// Reading the request head.
    Head(Vec<u8>),
    /// Sending the response.
    Reply { bytes: Vec<u8>, sent: usize },
    /// Response sent and write side shut: reading what the client still sends until it closes,
    /// so our close does not reset the connection before the client has read the response.
    Linger,
}

/// One client of the endpoint.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    phase: Phase,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            deadline: Instant::now() + DEADLINE,
            phase: Phase::Head(Vec::new()),
        }
    }

    fn interest(&self) -> PollFlags {
        match self.phase {
            Phase::Head(_) | Phase::Linger => PollFlags::POLLIN,
            Phase::Reply { .. } => PollFlags::POLLOUT,
        }
    }

    /// Moves the connection on after `events`; false once it is finished and should be closed.
    /// Its calls are non-blocking, so never interrupted: any error but would-block ends it.
    fn progress(&mut self, metrics: &dyn Fn() -> Option<String>) -> bool {
        loop {
            match &mut self.phase {
                Phase::Head(head) => match read_head(&mut self.stream, head) {
                    Ok(Some(request)) => {
                        self.phase = Phase::Reply {
                            bytes: respond(request, metrics),
                            sent: 0,
                        };
                    }
                    Ok(None) => return true,
                    Err(()) => return false,
                },
                Phase::Reply { bytes, sent } => match self.stream.write(&bytes[*sent..]) {
                    Ok(0) => return false,
                    Ok(n) => {
                        *sent += n;
                        if *sent == bytes.len() {
                            if self.stream.shutdown(Shutdown::Write).is_err() {
                                return false;
                            }
                            self.phase = Phase::Linger;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                },
                Phase::Linger => {
                    let mut sink = [0u8; 4096];
                    match self.stream.read(&mut sink) {
                        Ok(0) => return false,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                        Err(_) => return false,
                    }
                }
            }
        }
    }
}
