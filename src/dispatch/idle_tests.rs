//! Idle-timeout behaviour of the core, driven with a fake clock: no sleeping, no sockets.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::*;

const TIMEOUT: Duration = Duration::from_millis(800);

/// A core over fake sockets (`u32`), with scripted outcomes.
struct Harness {
    core: Dispatcher<u32>,
    now: Instant,
    accepts: VecDeque<u32>,
    reads: VecDeque<ReadOutcome>,
    /// Most bytes a write takes; `0` means would-block.
    write_room: usize,
    closed: Vec<u32>,
}

impl Harness {
    fn new(idle_timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        let config = Config {
            idle_timeout,
            max_pending: 1024,
            scratch_len: 1024,
            ..Config::default()
        };
        Harness {
            core: Dispatcher::new(config, now),
            now,
            accepts: VecDeque::new(),
            reads: VecDeque::new(),
            write_room: usize::MAX,
            closed: Vec::new(),
        }
    }

    /// Advances the fake clock and performs the round that follows.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_time(self.now);
        self.run();
    }

    fn event(&mut self, token: Token, readiness: Readiness) {
        self.core.handle_event(token, readiness);
        self.run();
    }

    fn accept(&mut self, sock: u32) -> Token {
        self.accepts.push_back(sock);
        let before = self.core.active_connections();
        self.event(Token::LISTENER, Readiness::READABLE);
        assert_eq!(self.core.active_connections(), before + 1, "not accepted");
        Token::conn(sock, 0)
    }

    /// Accepts `sock`, whose peer sends `n` bytes and reads nothing: they stay pending.
    fn accept_unread(&mut self, sock: u32, n: usize) -> Token {
        let t = self.accept(sock);
        self.write_room = 0;
        self.reads.push_back(ReadOutcome::Data(n)); // short read: the socket is empty
        self.event(t, Readiness::READABLE);
        t
    }

    /// Performs actions until the core has none left.
    fn run(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Accept => {
                    let outcome = match self.accepts.pop_front() {
                        Some(s) => AcceptOutcome::Accepted(s),
                        None => AcceptOutcome::WouldBlock,
                    };
                    self.core.handle_accept(outcome);
                }
                Action::Register(t) => self.core.handle_register(t, true),
                Action::Read { token, .. } => {
                    let outcome = self.reads.pop_front().unwrap_or(ReadOutcome::WouldBlock);
                    self.core.handle_read(token, outcome);
                }
                Action::Write(token) => {
                    let offered = self.core.write_target(token).1.len();
                    let outcome = match offered.min(self.write_room) {
                        0 => WriteOutcome::WouldBlock,
                        n => WriteOutcome::Wrote(n),
                    };
                    self.core.handle_write(token, outcome);
                }
                Action::Close(s) => self.closed.push(s),
                Action::ShutdownWrite(_) | Action::CloseListener => {}
            }
        }
    }
}

#[test]
fn a_silent_connection_is_closed_after_the_timeout_and_not_before() {
    let mut h = Harness::new(Some(TIMEOUT));
    h.accept(0);
    let step = Duration::from_millis(10);
    let mut waited = Duration::ZERO;
    while h.closed.is_empty() {
        // The shell sleeps until the core's deadline; never longer than a sweep period.
        let deadline = h.core.poll_timeout().expect("a sweep is scheduled");
        assert!(deadline <= h.now + TIMEOUT, "sweep deadline too far away");
        // A deadline already passed would make the worker poll without sleeping: a spin.
        assert!(deadline > h.now, "sweep deadline not in the future");
        h.advance(step);
        waited += step;
        assert!(waited < 2 * TIMEOUT, "never closed");
    }
    assert!(waited >= TIMEOUT, "closed after only {waited:?}");
    assert_eq!(h.closed, [0]);
    assert_eq!(h.core.report().idle_closes, 1);
    assert_eq!(h.core.active_connections(), 0);
    // Nothing left to sweep: the worker may sleep until the next event.
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn input_keeps_a_connection_alive() {
    let mut h = Harness::new(Some(TIMEOUT));
    let t = h.accept(0);
    for _ in 0..20 {
        h.advance(TIMEOUT / 2);
        h.reads.push_back(ReadOutcome::Data(10)); // short read: the socket is empty
        h.event(t, Readiness::READABLE);
    }
    assert!(h.closed.is_empty(), "an active connection was closed");
    assert_eq!(h.core.report().bytes_written, 200);
    h.advance(2 * TIMEOUT);
    assert_eq!(h.closed, [0]);
}

#[test]
fn output_progress_keeps_a_connection_alive_and_a_stall_drops_it() {
    let mut h = Harness::new(Some(TIMEOUT));
    let t = h.accept_unread(0, 1000);
    assert_eq!(h.core.pending_bytes(), 1000);
    // It drains 100 bytes every half timeout: slow, but traffic, and the only traffic.
    h.write_room = 100;
    for _ in 0..5 {
        h.advance(TIMEOUT / 2);
        h.event(t, Readiness::WRITABLE);
    }
    assert!(
        h.closed.is_empty(),
        "a slowly draining connection was closed"
    );
    assert_eq!(h.core.pending_bytes(), 500);
    // Then it stalls for good: closed, and its pending bytes are counted as dropped.
    h.advance(TIMEOUT + TIMEOUT / 2);
    assert_eq!(h.closed, [0]);
    let report = h.core.report();
    assert_eq!(report.bytes_dropped, 500);
    assert!(report.balances());
}

#[test]
fn a_write_that_would_block_is_not_progress() {
    let mut h = Harness::new(Some(TIMEOUT));
    let t = h.accept_unread(0, 1000);
    // Writable edges keep coming, but the peer takes nothing.
    let mut waited = Duration::ZERO;
    while h.closed.is_empty() {
        h.advance(TIMEOUT / 4);
        waited += TIMEOUT / 4;
        h.event(t, Readiness::WRITABLE);
        assert!(
            waited <= 3 * TIMEOUT,
            "a peer that takes nothing was never closed"
        );
    }
    assert_eq!(h.core.report().bytes_dropped, 1000);
}

#[test]
fn only_the_silent_connection_of_two_is_closed() {
    let mut h = Harness::new(Some(TIMEOUT));
    h.accept(0);
    let busy = h.accept(1);
    for _ in 0..4 {
        h.advance(TIMEOUT / 2);
        h.reads.push_back(ReadOutcome::Data(1)); // short read: the socket is empty
        h.event(busy, Readiness::READABLE);
    }
    assert_eq!(h.closed, [0]);
    assert_eq!(h.core.active_connections(), 1);
}

#[test]
fn without_a_timeout_idle_connections_stay_and_no_wake_up_is_scheduled() {
    let mut h = Harness::new(None);
    h.accept(0);
    assert_eq!(h.core.poll_timeout(), None);
    h.advance(Duration::from_secs(3600));
    assert!(h.closed.is_empty());
    assert_eq!(h.core.report().idle_closes, 0);
}

#[test]
fn the_connection_state_stays_small() {
    // The idle tick must not grow a connection: the budget is 64 bytes per idle connection.
    let size = std::mem::size_of::<Slot<std::os::fd::OwnedFd>>();
    assert!(size <= 64, "a connection slot takes {size} bytes");
}
