//! Unit tests of the core's decisions, one per decision in the module doc and per contract item that
//! lives here. Each reads as a trace: an event or outcome in, the action the core must answer with.
//! Sockets are plain numbers; the harness plays the shell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::outbuf::OutBuf;
use super::timers::MIN_ACCEPT_BACKOFF;
use super::*;
use crate::report::Derived;

/// Small numbers so that caps and budgets are reached in a few steps.
fn small() -> Settings {
    Settings {
        max_pending: 8,
        drain_timeout: Duration::from_secs(1),
        scratch_len: 8,
        reads_per_turn: 2,
        accepts_per_turn: 2,
        idle_timeout: None,
        limit: None,
    }
}

const READABLE: Readiness = Readiness::READABLE;
const WRITABLE: Readiness = Readiness::WRITABLE;
/// `EPOLLIN | EPOLLRDHUP`: data and the peer's FIN.
const RDHUP: Readiness = Readiness {
    read_closed: true,
    ..READABLE
};
const HANGUP: Readiness = Readiness {
    hangup: true,
    ..NONE
};
const ERROR: Readiness = Readiness {
    error: true,
    ..NONE
};
const NONE: Readiness = Readiness::NONE;

/// The core plus a clock; the test plays the shell step by step.
struct Shell {
    d: Dispatcher<u32>,
    now: Instant,
    next_sock: u32,
    /// The socket of each connection the harness accepted.
    socks: Vec<(Token, u32)>,
}

/// Polls the next action and checks it against a pattern.
macro_rules! expect {
    ($s:expr, $pat:pat $(if $guard:expr)?) => {
        match $s.d.poll_action() {
            Some($pat) $(if $guard)? => {}
            other => panic!("expected {}, got {:?}", stringify!($pat), other),
        }
    };
}

impl Shell {
    fn new(config: Settings) -> Shell {
        let now = Instant::now();
        Shell {
            d: Dispatcher::new(config, now),
            now,
            next_sock: 1,
            socks: Vec::new(),
        }
    }

    fn event(&mut self, token: Token, r: Readiness) {
        self.d.handle_event(token, r);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.d.handle_time(self.now);
    }

    /// The round is over: the core wants nothing more until the next event or timer.
    fn idle(&mut self) {
        if let Some(a) = self.d.poll_action() {
            panic!("expected the round to end, got {a:?}");
        }
    }

    /// Answers a pending `Accept` with a new socket; checks the core asks to register it.
    fn accepted(&mut self) -> Token {
        let sock = self.next_sock;
        self.next_sock += 1;
        let token = self
            .d
            .handle_accept(AcceptOutcome::Accepted(sock))
            .expect("an accepted socket gets a token");
        assert_eq!(
            self.d.poll_action(),
            Some(Action::Register { token, sock: &sock })
        );
        self.d.handle_register(token, true);
        self.socks.push((token, sock));
        token
    }

    /// The socket the harness accepted as `token`.
    fn sock_of(&self, token: Token) -> u32 {
        let found = self.socks.iter().find(|(t, _)| *t == token);
        found.expect("a connection the harness accepted").1
    }

    /// A listener edge with one connection waiting: accept it, then find the backlog empty.
    fn open(&mut self) -> Token {
        self.event(Token::LISTENER, READABLE);
        expect!(self, Action::Accept);
        let token = self.accepted();
        expect!(self, Action::Accept);
        assert_eq!(self.d.handle_accept(AcceptOutcome::WouldBlock), None);
        self.idle();
        token
    }

    /// Expects a read of `token` into the scratch buffer, on its socket; returns the length
    /// offered. The outcome is the caller's to feed.
    fn expect_read(&mut self, token: Token) -> usize {
        self.read_with(token, None)
    }

    /// Expects a read of `token` and answers it with `data`; returns the length offered.
    fn read_offering(&mut self, token: Token, data: &[u8]) -> usize {
        let len = self.read_with(token, Some(data));
        self.d.handle_read(token, ReadOutcome::Data(data.len()));
        len
    }

    /// Expects a read of `token` and answers it with `data`.
    fn read(&mut self, token: Token, data: &[u8]) {
        self.read_offering(token, data);
    }

    /// Expects a read of `token`, puts `data` in the buffer it lends, returns the length offered.
    fn read_with(&mut self, token: Token, data: Option<&[u8]>) -> usize {
        let sock = self.sock_of(token);
        let action = self.d.poll_action();
        let Some(Action::Read {
            token: t,
            sock: &s,
            buf,
        }) = action
        else {
            panic!("expected a read of {token:?}, got {action:?}");
        };
        assert_eq!((t, s), (token, sock), "a read of another connection");
        let data = data.unwrap_or_default();
        assert!(data.len() <= buf.len(), "read offers {} bytes", buf.len());
        buf[..data.len()].copy_from_slice(data);
        buf.len()
    }

    /// Expects a write to `token`, on its socket; returns the bytes offered.
    fn expect_write(&mut self, token: Token) -> Vec<u8> {
        let sock = self.sock_of(token);
        match self.d.poll_action() {
            Some(Action::Write {
                token: t,
                sock: s,
                bytes,
            }) if t == token && *s == sock => bytes.to_vec(),
            other => panic!("expected a write to {token:?}, got {other:?}"),
        }
    }

    /// Expects our FIN to `token`, on its socket.
    fn expect_shutdown(&mut self, token: Token) {
        let sock = self.sock_of(token);
        let want = Action::ShutdownWrite { token, sock: &sock };
        assert_eq!(self.d.poll_action(), Some(want));
    }

    /// Expects the question whether `token`'s peer holds every byte, on its socket.
    fn expect_check(&mut self, token: Token) {
        let sock = self.sock_of(token);
        let want = Action::CheckDelivery { token, sock: &sock };
        assert_eq!(self.d.poll_action(), Some(want));
    }

    /// Expects the stop's question how much input `token` had received, on its socket.
    fn expect_measure_input(&mut self, token: Token) {
        let sock = self.sock_of(token);
        let want = Action::MeasureInput { token, sock: &sock };
        assert_eq!(self.d.poll_action(), Some(want));
    }

    /// Expects a write of exactly `bytes` and lets the kernel take `k` of them.
    fn write(&mut self, token: Token, bytes: &[u8], k: usize) {
        assert_eq!(self.expect_write(token), bytes, "bytes offered");
        self.d.handle_write(token, WriteOutcome::Wrote(k));
    }

    /// Expects a close that needs no question: nothing written, or delivery already proven.
    fn expect_close(&mut self) -> u32 {
        match self.d.poll_action() {
            Some(Action::Close(sock)) => sock,
            other => panic!("expected a close, got {other:?}"),
        }
    }

    /// Expects a close that asks the kernel first, and answers that the peer acknowledged `acked`
    /// bytes.
    fn expect_measured_close(&mut self, acked: u64) -> u32 {
        match self.d.poll_action() {
            Some(Action::MeasureAndClose(sock)) => {
                self.d.handle_closed(AckOutcome::Acked(acked));
                sock
            }
            other => panic!("expected a measured close, got {other:?}"),
        }
    }

    /// Echoes `bytes` on an idle connection, all taken by the kernel.
    fn echo(&mut self, token: Token, bytes: &[u8]) {
        self.event(token, READABLE);
        self.read(token, bytes);
        self.write(token, bytes, bytes.len());
        self.idle();
    }

    /// Listener edge answered by `outcome` (nothing accepted).
    fn accept_fails(&mut self, outcome: AcceptOutcome<u32>) {
        expect!(self, Action::Accept);
        assert_eq!(self.d.handle_accept(outcome), None);
    }

    /// The stop, with nothing queued at the cut: no connection in the accept queue and no input
    /// on any connection; the listener closes.
    fn stop(&mut self) {
        self.d.handle_stop(self.now);
        self.cut(0, &[]);
    }

    /// Answers the stop's questions: `backlog` connections in the accept queue, `input[token]`
    /// bytes on each connection (none if not listed). Returns once the questions are answered:
    /// with an empty queue once the listener is closed, else with the first accept issued.
    fn cut(&mut self, backlog: usize, input: &[(Token, usize)]) {
        assert_eq!(self.d.poll_action(), Some(Action::MeasureBacklog));
        self.d.handle_backlog(Some(backlog));
        loop {
            match self.d.poll_action() {
                Some(Action::MeasureInput { token: t, .. }) => {
                    let n = input.iter().find(|(i, _)| *i == t).map_or(0, |(_, n)| *n);
                    self.d.handle_queued_input(t, Some(n));
                }
                Some(Action::CloseListener) if backlog == 0 => return,
                other if backlog > 0 => {
                    assert_eq!(other, Some(Action::Accept), "the queue is accepted next");
                    return;
                }
                other => panic!("expected the stop's cut, got {other:?}"),
            }
        }
    }

    /// After the stop: our FIN goes to `token`, its input reads empty, and the round ends.
    fn shut_and_drained(&mut self, token: Token) {
        self.expect_shutdown(token);
        self.expect_read(token);
        self.d.handle_read(token, ReadOutcome::WouldBlock);
        self.idle();
    }

    /// A connection whose 8 bytes of echo the kernel refused (the cap reached: reading paused),
    /// then the stop, whose cut finds `queued` more bytes waiting.
    fn paused_at_the_cap_then_stopped(&mut self, queued: usize) -> Token {
        let c = self.open();
        self.event(c, READABLE);
        self.read(c, &[1; 8]);
        self.write(c, &[1; 8], 0);
        self.idle();
        self.d.handle_stop(self.now);
        self.cut(0, &[(c, queued)]);
        self.idle();
        c
    }

    /// After the stop: our FIN goes to `token`, which was read empty before, and the round ends.
    fn shut(&mut self, token: Token) {
        self.expect_shutdown(token);
        self.idle();
    }

    /// After the stop: every connection's peer holds everything; runs the checks to the end.
    fn deliver_all(&mut self) {
        for _ in 0..100 {
            match self.d.poll_action() {
                Some(Action::CheckDelivery { token: t, .. }) => {
                    self.d.handle_delivery(t, AckOutcome::Acked(u64::MAX))
                }
                Some(Action::Read { token, .. }) => {
                    self.d.handle_read(token, ReadOutcome::WouldBlock)
                }
                Some(Action::Close(_) | Action::CloseShell | Action::ShutdownWrite { .. }) => {}
                None => {
                    if self.d.is_finished() {
                        return;
                    }
                    let wait = self.timeout_in().expect("a check is scheduled");
                    self.advance(wait);
                }
                Some(other) => panic!("expected a delivery check, got {other:?}"),
            }
        }
        panic!("the stop never finished");
    }

    /// The values of these counters, in this order.
    fn counts<const N: usize>(&self, which: [Counter; N]) -> [u64; N] {
        let report = self.d.report();
        which.map(|c| report[c])
    }

    fn timeout_in(&self) -> Option<Duration> {
        self.d.poll_timeout().map(|t| t - self.now)
    }
}

// ----- echo and partial writes (DESIGN 1, 2) -----

#[test]
fn echo_from_scratch_holds_no_buffer() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, b"hello");
    // Written straight from the scratch buffer.
    assert_eq!(s.d.pending_bytes(), 0);
    s.write(c, b"hello", 5);
    // A short read emptied the socket: wait for the next edge.
    s.idle();
    assert_eq!(s.d.pending_bytes(), 0);
    assert_eq!(
        s.counts([
            Counter::BytesRead,
            Counter::BytesWritten,
            Counter::PendingHighWater
        ]),
        [5, 5, 0]
    );
}

#[test]
fn the_echo_is_written_from_the_very_buffer_the_read_filled() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    let filled = match s.d.poll_action() {
        Some(Action::Read { buf, .. }) => {
            buf[..2].copy_from_slice(b"hi");
            buf.as_ptr()
        }
        other => panic!("expected a read, got {other:?}"),
    };
    s.d.handle_read(c, ReadOutcome::Data(2));
    match s.d.poll_action() {
        Some(Action::Write { bytes, .. }) => {
            assert_eq!(bytes, b"hi");
            assert_eq!(
                bytes.as_ptr(),
                filled,
                "no copy between the read and the write"
            );
        }
        other => panic!("expected a write, got {other:?}"),
    }
}

#[test]
fn partial_write_keeps_the_remainder_and_orders_later_bytes_after_it() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, b"abcd");
    s.write(c, b"abcd", 1);
    assert_eq!(s.d.pending_bytes(), 3);
    s.idle();
    // More input while the remainder waits: appended after it, not written ahead of it.
    s.event(c, READABLE);
    assert_eq!(
        s.read_offering(c, b"ef"),
        8 - 3,
        "a read never overfills the cap"
    );
    s.idle();
    s.event(c, WRITABLE);
    s.write(c, b"bcdef", 5);
    assert_eq!(s.d.pending_bytes(), 0);
    s.idle();
    assert!(s.d.report().consistent());
}

#[test]
fn would_block_write_waits_for_the_writable_edge() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, b"xyz");
    expect!(s, Action::Write { .. });
    s.d.handle_write(c, WriteOutcome::WouldBlock);
    s.idle();
    // Nothing to do until the kernel says there is room: no busy polling.
    assert_eq!(s.d.poll_timeout(), None);
    // More input is read into the pending output, behind what waits, with no write attempted.
    s.event(c, READABLE);
    assert_eq!(s.read_offering(c, b"uv"), 8 - 3);
    s.idle();
    s.event(c, WRITABLE);
    s.write(c, b"xyzuv", 5);
    s.idle();
}

#[test]
fn writable_edge_without_pending_output_does_nothing() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, WRITABLE);
    assert_eq!(s.d.poll_timeout(), None, "no work queued");
    s.idle();
}

// ----- backpressure (DESIGN 3) -----

#[test]
fn at_the_cap_reading_pauses_and_resumes_after_drain_without_a_new_edge() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, &[1; 8]); // a full read: more input may wait
    expect!(s, Action::Write { .. });
    s.d.handle_write(c, WriteOutcome::WouldBlock);
    // Pending is at the cap: no read although the socket may hold more.
    s.idle();
    assert_eq!(s.d.pending_bytes(), 8);
    assert_eq!(s.d.report()[Counter::BackpressurePauses], 1);
    s.event(c, READABLE);
    s.idle();
    assert_eq!(
        s.d.report()[Counter::BackpressurePauses],
        1,
        "one pause, counted once"
    );
    // A partial drain makes room: the read resumes for just that room.
    s.event(c, WRITABLE);
    s.write(c, &[1; 8], 3);
    assert_eq!(s.read_offering(c, &[2; 3]), 3);
    // At the cap again: paused until the next writable edge.
    s.idle();
    assert_eq!(s.d.poll_timeout(), None);
    assert_eq!(s.d.report()[Counter::BackpressurePauses], 2);
    s.event(c, WRITABLE);
    s.write(c, &[1, 1, 1, 1, 1, 2, 2, 2], 8);
    assert_eq!(s.expect_read(c), 8);
    s.d.handle_read(c, ReadOutcome::WouldBlock);
    s.idle();
    assert_eq!(s.d.pending_bytes(), 0);
}

/// The read that fills the cap is a pause even when it also used up the turn's read budget:
/// the connection is not read again until its output drains.
#[test]
fn filling_the_cap_on_the_last_read_of_a_turn_counts_as_a_pause() {
    let mut s = Shell::new(small()); // cap 8, two reads per turn
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, &[1; 8]);
    s.write(c, &[1; 8], 4); // 4 pending, unwritable
    assert_eq!(s.read_offering(c, &[2; 4]), 4); // the second and last read of the turn fills the cap
    s.idle();
    assert_eq!(s.d.pending_bytes(), 8);
    assert_eq!(s.d.report()[Counter::BackpressurePauses], 1);
}

#[test]
fn pending_output_never_exceeds_the_cap() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, &[0; 5]);
    s.write(c, &[0; 5], 0);
    s.idle(); // short read: drained
    s.event(c, READABLE);
    s.read(c, &[0; 3]);
    assert_eq!(s.d.pending_bytes(), 8);
    s.idle();
    assert_eq!(s.d.report()[Counter::PendingHighWater], 8);
}

// ----- edge-triggered drain with fairness (DESIGN 4) -----

#[test]
fn read_budget_requeues_at_the_back_and_others_are_served_between() {
    let mut s = Shell::new(small());
    let a = s.open();
    let b = s.open();
    s.event(a, READABLE);
    s.event(a, READABLE); // a second edge does not buy a second turn
    s.event(b, READABLE);
    for _ in 0..2 {
        s.read(a, &[b'a'; 8]);
        s.write(a, &[b'a'; 8], 8);
    }
    // a used its budget with input left: b comes first.
    s.read(b, b"b");
    s.write(b, b"b", 1);
    // The round that began with [a, b] is over; a waits at the back for the next one.
    s.idle();
    assert_eq!(
        s.d.poll_timeout(),
        Some(s.now),
        "queued work: poll without blocking"
    );
    // Continued without a new edge.
    s.read(a, b"a");
    s.write(a, b"a", 1);
    s.idle();
    assert_eq!(s.d.poll_timeout(), None);
}

#[test]
fn short_read_means_drained() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, b"abc");
    s.write(c, b"abc", 3);
    s.idle();
    assert_eq!(s.d.poll_timeout(), None);
}

#[test]
fn short_read_after_rdhup_reads_on_to_eof() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, RDHUP);
    s.read(c, b"abc");
    s.write(c, b"abc", 3);
    // Only a 0-byte read proves the socket empty once the peer has finished.
    s.expect_read(c);
    s.d.handle_read(c, ReadOutcome::Eof);
    assert_eq!(s.expect_measured_close(3), 1);
    s.idle();
}

#[test]
fn full_reads_continue_until_would_block() {
    let mut s = Shell::new(Settings {
        reads_per_turn: 16,
        ..small()
    });
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, &[7; 8]);
    s.write(c, &[7; 8], 8);
    s.read(c, &[7; 8]);
    s.write(c, &[7; 8], 8);
    s.expect_read(c);
    s.d.handle_read(c, ReadOutcome::WouldBlock);
    s.idle();
}

#[test]
fn listener_takes_turns_like_connections() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(Token::LISTENER, READABLE);
    s.event(Token::LISTENER, READABLE);
    s.event(c, READABLE);
    // Budget of two accepts, then the connection, then the listener again.
    expect!(s, Action::Accept);
    s.accepted();
    expect!(s, Action::Accept);
    s.accepted();
    s.read(c, b"x");
    s.write(c, b"x", 1);
    s.idle();
    assert_eq!(s.d.poll_timeout(), Some(s.now));
    expect!(s, Action::Accept);
    s.accepted();
    s.accept_fails(AcceptOutcome::WouldBlock);
    s.idle();
    assert_eq!(s.d.active_connections(), 4);
    assert_eq!(s.d.report()[Counter::Accepted], 4);
}

// ----- half-close (DESIGN 5) -----

#[test]
fn eof_flushes_pending_output_then_closes() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, RDHUP);
    s.read(c, b"abc");
    expect!(s, Action::Write { .. });
    s.d.handle_write(c, WriteOutcome::WouldBlock);
    s.expect_read(c);
    s.d.handle_read(c, ReadOutcome::Eof);
    // EOF seen, but "abc" is still owed: no close yet.
    s.idle();
    assert_eq!(s.d.active_connections(), 1);
    s.event(c, WRITABLE);
    s.write(c, b"abc", 2);
    s.idle();
    s.event(c, WRITABLE);
    s.write(c, b"c", 1);
    // Asked at the close: one byte is still on its way, and the kernel still sends it.
    assert_eq!(s.expect_measured_close(2), 1);
    s.idle();
    let r = s.d.report();
    assert_eq!(
        s.counts([
            Counter::Closed,
            Counter::BytesDropped,
            Counter::BytesDelivered,
            Counter::BytesInFlight
        ]),
        [1, 0, 2, 1]
    );
    assert!(r.balances());
}

#[test]
fn eof_with_nothing_pending_closes_at_once() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.expect_read(c);
    s.d.handle_read(c, ReadOutcome::Eof);
    assert_eq!(s.expect_close(), 1);
    s.idle();
    assert_eq!(s.d.active_connections(), 0);
}

// ----- errors (DESIGN 6) -----

#[test]
fn read_error_closes_only_that_connection() {
    let mut s = Shell::new(small());
    let a = s.open();
    let b = s.open();
    s.event(a, READABLE);
    s.event(b, READABLE);
    s.expect_read(a);
    s.d.handle_read(a, ReadOutcome::Failed(ConnError::Reset));
    assert_eq!(s.expect_close(), 1);
    s.read(b, b"ok");
    s.write(b, b"ok", 2);
    s.idle();
    assert_eq!(s.d.active_connections(), 1);
}

#[test]
fn broken_pipe_closes_and_counts_the_unwritten_bytes_as_dropped() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, b"abcd");
    expect!(s, Action::Write { .. });
    s.d.handle_write(c, WriteOutcome::Failed(ConnError::Reset));
    assert_eq!(s.expect_close(), 1);
    s.idle();
    assert_eq!(
        s.counts([
            Counter::BytesRead,
            Counter::BytesWritten,
            Counter::BytesDropped
        ]),
        [4, 0, 4]
    );
}

#[test]
fn broken_pipe_on_pending_output_drops_it() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, b"abcd");
    s.write(c, b"abcd", 1);
    s.idle();
    s.event(c, WRITABLE);
    s.write(c, b"bcd", 2);
    s.idle();
    s.event(c, WRITABLE);
    expect!(s, Action::Write { .. });
    s.d.handle_write(c, WriteOutcome::Failed(ConnError::Reset));
    // The reset destroyed what the peer had not acknowledged.
    s.expect_measured_close(1);
    let r = s.d.report();
    assert_eq!(
        s.counts([
            Counter::BytesWritten,
            Counter::BytesDropped,
            Counter::BytesDelivered,
            Counter::BytesLostToErrors,
            Counter::ErrorCloses
        ]),
        [3, 1, 1, 2, 1]
    );
    assert!(r.balances());
}

#[test]
fn error_edge_closes_that_connection_without_reading() {
    let mut s = Shell::new(small());
    let a = s.open();
    let b = s.open();
    s.event(a, ERROR);
    s.event(b, READABLE);
    assert_eq!(s.expect_close(), 1);
    s.read(b, b"x");
    s.write(b, b"x", 1);
    s.idle();
}

#[test]
fn hangup_reads_what_is_left_then_closes() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, HANGUP);
    s.read(c, b"z");
    s.write(c, b"z", 1);
    s.expect_read(c);
    s.d.handle_read(c, ReadOutcome::Eof);
    s.expect_measured_close(1);
}

#[test]
fn interrupted_operations_are_repeated() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    let len = s.expect_read(c);
    s.d.handle_read(c, ReadOutcome::Interrupted);
    assert_eq!(s.read_offering(c, b"hi"), len, "same read again");
    assert_eq!(s.expect_write(c), b"hi");
    s.d.handle_write(c, WriteOutcome::Interrupted);
    s.write(c, b"hi", 1);
    s.idle();
    s.event(c, WRITABLE);
    assert_eq!(s.expect_write(c), b"i");
    s.d.handle_write(c, WriteOutcome::Interrupted);
    s.write(c, b"i", 1);
    s.idle();
    s.event(Token::LISTENER, READABLE);
    s.accept_fails(AcceptOutcome::Interrupted);
    expect!(s, Action::Accept);
    s.accepted();
}

#[test]
fn failed_registration_closes_the_connection() {
    let mut s = Shell::new(small());
    s.event(Token::LISTENER, READABLE);
    expect!(s, Action::Accept);
    let t =
        s.d.handle_accept(AcceptOutcome::Accepted(9))
            .expect("token");
    assert_eq!(
        s.d.poll_action(),
        Some(Action::Register { token: t, sock: &9 })
    );
    s.d.handle_register(t, false);
    assert_eq!(s.expect_close(), 9);
    assert_eq!(s.d.active_connections(), 0);
}

// ----- accept failures (DESIGN 7) -----

#[test]
fn accept_back_off_grows_and_is_capped() {
    let mut s = Shell::new(small());
    s.event(Token::LISTENER, READABLE);
    let mut delays = Vec::new();
    for _ in 0..9 {
        s.accept_fails(AcceptOutcome::Exhausted(ResourceError::ProcessDescriptors));
        // No spinning: the listener waits for its timer.
        s.idle();
        let delay = s.timeout_in().expect("a retry timer");
        delays.push(delay.as_millis());
        // Retried when the timer fires, without a new edge.
        s.advance(delay);
    }
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 200, 200, 200]);
    let report = s.d.report();
    assert_eq!(report.derived(Derived::AcceptExhausted), 9);
    // Counted under its kind too, and under no other.
    assert_eq!(report[Counter::AcceptEmfile], 9);
    assert_eq!(
        (
            report[Counter::AcceptEnfile],
            report[Counter::AcceptEnobufs],
            report[Counter::AcceptEnomem]
        ),
        (0, 0, 0)
    );
    // Success resets the back-off.
    expect!(s, Action::Accept);
    s.accepted();
    s.accept_fails(AcceptOutcome::Failed);
    s.idle();
    assert_eq!(s.timeout_in(), Some(MIN_ACCEPT_BACKOFF));
    assert_eq!(s.d.report()[Counter::AcceptFailed], 1);
}

#[test]
fn accept_waits_for_the_whole_back_off() {
    let mut s = Shell::new(small());
    s.event(Token::LISTENER, READABLE);
    s.accept_fails(AcceptOutcome::Exhausted(ResourceError::Memory));
    s.idle();
    s.advance(MIN_ACCEPT_BACKOFF - Duration::from_millis(1));
    s.event(Token::LISTENER, READABLE);
    s.idle();
    s.advance(Duration::from_millis(1));
    expect!(s, Action::Accept);
}

#[test]
fn accept_is_retried_when_a_connection_closes() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(Token::LISTENER, READABLE);
    s.accept_fails(AcceptOutcome::Exhausted(ResourceError::ProcessDescriptors));
    s.idle();
    // A descriptor is freed: the listener is retried at once, before the timer.
    s.event(c, READABLE);
    s.expect_read(c);
    s.d.handle_read(c, ReadOutcome::Eof);
    s.expect_close();
    s.idle();
    assert_eq!(s.d.poll_timeout(), Some(s.now), "listener queued");
    expect!(s, Action::Accept);
    s.accepted();
}

#[test]
fn aborted_connections_are_skipped() {
    let mut s = Shell::new(small());
    s.event(Token::LISTENER, READABLE);
    s.accept_fails(AcceptOutcome::Aborted);
    expect!(s, Action::Accept);
    s.accepted();
    s.idle();
    assert_eq!(
        s.d.poll_timeout(),
        Some(s.now),
        "budget used, listener queued"
    );
    let r = s.d.report();
    assert_eq!(
        (
            r.derived(Derived::AcceptExhausted),
            r[Counter::AcceptFailed]
        ),
        (0, 0)
    );
}

#[test]
fn listener_would_block_waits_for_a_new_edge() {
    let mut s = Shell::new(small());
    s.event(Token::LISTENER, READABLE);
    s.accept_fails(AcceptOutcome::WouldBlock);
    s.idle();
    assert_eq!(s.d.poll_timeout(), None);
}

#[test]
fn only_a_readable_listener_edge_starts_accepting() {
    let mut s = Shell::new(small());
    for edge in [WRITABLE, HANGUP, ERROR] {
        s.event(Token::LISTENER, edge);
        s.idle();
        assert_eq!(s.d.poll_timeout(), None, "{edge:?}");
    }
}

// ----- connection limit and descriptors -----

#[test]
fn at_the_connection_limit_a_new_connection_is_closed_and_counted_until_one_leaves() {
    let limit = Arc::new(ConnLimit::new(1));
    let mut s = Shell::new(Settings {
        limit: Some(Arc::clone(&limit)),
        ..small()
    });
    let c = s.open();
    s.event(Token::LISTENER, READABLE);
    expect!(s, Action::Accept);
    assert_eq!(s.d.handle_accept(AcceptOutcome::Accepted(7)), None);
    assert_eq!(s.expect_close(), 7, "closed at once");
    // The backlog keeps draining.
    s.accept_fails(AcceptOutcome::WouldBlock);
    s.idle();
    assert_eq!(s.counts([Counter::Accepted, Counter::Rejected]), [1, 1]);
    assert_eq!(limit.open(), 1);
    // The close of the admitted connection gives its slot back.
    s.event(c, RDHUP);
    s.expect_read(c);
    s.d.handle_read(c, ReadOutcome::Eof);
    s.expect_close();
    s.idle();
    assert_eq!(limit.open(), 0);
    s.open();
    assert_eq!(s.d.report()[Counter::Accepted], 2);
}

#[test]
fn a_dropped_core_gives_back_its_connection_slots() {
    // A worker that ends early (a panic unwinds its core) must not keep its slots.
    let limit = Arc::new(ConnLimit::new(5));
    let mut s = Shell::new(Settings {
        limit: Some(Arc::clone(&limit)),
        ..small()
    });
    s.open();
    s.open();
    assert_eq!(limit.open(), 2);
    drop(s);
    assert_eq!(limit.open(), 0);
}

#[test]
fn every_descriptor_the_core_closes_is_counted() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, ERROR);
    s.expect_close();
    s.idle();
    s.stop();
    assert_eq!(s.d.poll_action(), Some(Action::CloseShell));
    let r = s.d.report();
    // The connection, the listener, the epoll instance and the wake-up channel.
    assert_eq!(r[Counter::DescriptorsClosed], 4, "{r}");
}

// ----- idle timeout (the clock and the sweeps are tested over the simulated kernel) -----

#[test]
fn the_first_idle_sweep_comes_one_period_after_the_first_accept() {
    let mut s = Shell::new(Settings {
        idle_timeout: Some(Duration::from_millis(800)),
        ..small()
    });
    assert_eq!(s.timeout_in(), None, "nothing to sweep yet");
    s.open();
    // An eighth of the timeout: never at once, which would make the worker poll in a loop.
    assert_eq!(s.timeout_in(), Some(Duration::from_millis(100)));
}

#[test]
fn the_idle_sweep_ends_at_the_stop_and_the_deadline_decides() {
    let mut s = Shell::new(Settings {
        idle_timeout: Some(Duration::from_millis(800)),
        drain_timeout: Duration::from_secs(5),
        ..small()
    });
    let c = s.open();
    s.echo(c, b"hi");
    s.stop();
    s.shut(c);
    // Long past the idle timeout, with the peer silent and never acknowledging: only delivery
    // checks and then the deadline close it.
    let deadline = s.now + Duration::from_secs(5);
    while s.d.poll_timeout() < Some(deadline) {
        s.advance(s.timeout_in().expect("a check"));
        s.expect_check(c);
        s.d.handle_delivery(c, AckOutcome::Acked(0));
        s.idle();
    }
    s.advance(s.timeout_in().expect("the deadline"));
    s.expect_measured_close(0);
    assert_eq!(
        s.counts([Counter::IdleCloses, Counter::DeadlineCloses]),
        [0, 1]
    );
}

// ----- tokens -----

#[test]
fn stale_tokens_are_ignored_after_slot_reuse() {
    let mut s = Shell::new(small());
    let old = s.open();
    s.event(old, READABLE);
    s.expect_read(old);
    s.d.handle_read(old, ReadOutcome::Eof);
    s.expect_close();
    s.idle();
    let new = s.open();
    assert_eq!(new.slot(), old.slot(), "the slot is reused");
    assert_ne!(new, old);
    for r in [READABLE, WRITABLE, ERROR, HANGUP] {
        s.event(old, r);
    }
    s.idle();
    assert_eq!(s.d.active_connections(), 1);
    s.event(Token::WAKER, READABLE);
    s.event(Token::from_epoll(77), READABLE);
    s.idle();
    s.event(new, READABLE);
    s.read(new, b"n");
    s.write(new, b"n", 1);
}

// ----- shutdown (DESIGN 9, 10) -----

#[test]
fn stop_accepts_the_connections_queued_at_the_stop_and_echoes_what_they_sent() {
    let mut s = Shell::new(small());
    s.d.handle_stop(s.now);
    // Two handshakes the kernel completed wait in the queue: accept them rather than have them
    // reset, and no more (under steady load the queue never reads empty).
    s.cut(2, &[]);
    let first = s.accepted();
    // Its cut is what it sent by its accept: echoed like any byte read before the stop.
    s.expect_measure_input(first);
    s.d.handle_queued_input(first, Some(3));
    expect!(s, Action::Accept);
    let second =
        s.d.handle_accept(AcceptOutcome::Accepted(9))
            .expect("admitted");
    assert_eq!(
        s.d.poll_action(),
        Some(Action::CloseListener),
        "the last one queued at the stop"
    );
    let want = Action::Register {
        token: second,
        sock: &9,
    };
    assert_eq!(s.d.poll_action(), Some(want));
    s.d.handle_register(second, true);
    s.socks.push((second, 9));
    s.expect_measure_input(second);
    s.d.handle_queued_input(second, Some(0));
    s.idle();
    s.read(first, b"req");
    s.write(first, b"req", 3);
    s.expect_shutdown(first);
    s.expect_read(first);
    s.d.handle_read(first, ReadOutcome::WouldBlock);
    // The second had sent nothing: its first request may still come, until the first check.
    s.idle();
    s.deliver_all();
    let r = s.d.report();
    assert_eq!(
        s.counts([
            Counter::Accepted,
            Counter::BytesRead,
            Counter::BytesWritten,
            Counter::BytesDiscarded
        ]),
        [2, 3, 3, 0]
    );
    assert_eq!(r[Counter::DeadlineCloses], 0, "{r}");
    // Listener, two connections, epoll and waker.
    assert_eq!(r[Counter::DescriptorsClosed], 5, "{r}");
}

#[test]
fn when_the_kernel_cannot_say_how_many_are_queued_the_queue_is_accepted_until_empty() {
    let mut s = Shell::new(small());
    s.d.handle_stop(s.now);
    assert_eq!(s.d.poll_action(), Some(Action::MeasureBacklog));
    s.d.handle_backlog(None);
    expect!(s, Action::Accept);
    let late = s.accepted();
    s.expect_measure_input(late);
    s.d.handle_queued_input(late, None);
    s.accept_fails(AcceptOutcome::WouldBlock);
    assert_eq!(s.d.poll_action(), Some(Action::CloseListener));
}

#[test]
fn input_queued_behind_a_backpressure_pause_at_the_stop_is_all_echoed() {
    let mut s = Shell::new(small());
    // The cap is reached: reading stops, and 20 more bytes wait in the kernel.
    let c = s.paused_at_the_cap_then_stopped(20);
    s.event(c, WRITABLE);
    let (mut read, mut echoed) = (8, 0);
    for _ in 0..100 {
        match s.d.poll_action() {
            Some(Action::Write { token, bytes, .. }) => {
                let n = bytes.len();
                s.d.handle_write(token, WriteOutcome::Wrote(n));
                echoed += n;
            }
            Some(Action::Read { token, buf, .. }) => {
                let len = buf.len();
                assert!(read + len <= 28, "a read past the cut: {read} + {len}");
                buf.fill(2);
                s.d.handle_read(token, ReadOutcome::Data(len));
                read += len;
            }
            Some(Action::ShutdownWrite { token: t, .. }) if t == c => break,
            // A round ended (the read budget): the next one goes on.
            None => {}
            other => panic!("expected the echo of what was owed, got {other:?}"),
        }
    }
    assert_eq!((read, echoed), (28, 28));
    assert_eq!(
        s.counts([Counter::BytesRead, Counter::BytesWritten]),
        [28, 28]
    );
}

#[test]
fn at_the_deadline_input_that_arrived_before_the_stop_is_read_out_and_dropped() {
    let mut s = Shell::new(small());
    let c = s.paused_at_the_cap_then_stopped(12);
    // The peer never reads: nothing can be echoed before the deadline.
    s.advance(Duration::from_secs(1));
    // Read out, so the close sends no reset, and counted as dropped.
    assert_eq!(s.read_offering(c, &[2; 8]), 8);
    assert_eq!(s.read_offering(c, &[2; 4]), 4);
    s.expect_close();
    assert_eq!(
        s.counts([
            Counter::BytesRead,
            Counter::BytesDropped,
            Counter::DeadlineCloses
        ]),
        [20, 20, 1]
    );
    assert!(s.d.report().balances());
}

#[test]
fn stop_flushes_shuts_the_write_side_discards_input_and_closes_on_delivery() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, b"abcd");
    s.write(c, b"abcd", 2);
    s.idle();
    s.stop();
    // New input is not echoed: nothing to do until the pending output can go.
    s.event(c, READABLE);
    s.idle();
    s.event(c, WRITABLE);
    s.write(c, b"cd", 2);
    s.expect_shutdown(c);
    // Input after the FIN is read and discarded, so the close never sends RST.
    assert_eq!(s.read_offering(c, &[9; 8]), 8);
    s.read(c, b"zz");
    s.idle();
    assert!(!s.d.is_finished());
    // The peer's EOF does not end it: the peer's acknowledgement does.
    s.event(c, RDHUP);
    s.expect_read(c);
    s.d.handle_read(c, ReadOutcome::Eof);
    s.idle();
    s.advance(s.timeout_in().expect("a check"));
    s.expect_check(c);
    s.d.handle_delivery(c, AckOutcome::Acked(5));
    s.expect_close();
    assert_eq!(s.d.poll_action(), Some(Action::CloseShell));
    s.idle();
    assert!(s.d.is_finished());
    assert_eq!(
        s.counts([Counter::BytesRead, Counter::BytesWritten]),
        [4, 4]
    );
    assert_eq!(
        s.counts([Counter::BytesDiscarded, Counter::DeadlineCloses]),
        [10, 0]
    );
    assert!(s.d.report().balances());
}

#[test]
fn stop_closes_a_connection_once_its_peer_acknowledged_every_byte() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.echo(c, b"hi");
    s.stop();
    s.shut(c);
    // No event announces the last acknowledgement: the core asks, soon, then less often.
    assert_eq!(s.timeout_in(), Some(Duration::from_millis(1)));
    s.advance(Duration::from_millis(1));
    s.expect_check(c);
    s.d.handle_delivery(c, AckOutcome::Acked(1));
    s.idle();
    assert_eq!(s.timeout_in(), Some(Duration::from_millis(2)));
    s.advance(Duration::from_millis(2));
    s.expect_check(c);
    // Both bytes acknowledged; our FIN waits for window (an echo that filled it exactly): that
    // does not count against delivery.
    s.d.handle_delivery(c, AckOutcome::Acked(2));
    // Whatever came since the last read is read and discarded, so the close sends no RST.
    s.read(c, b"bye");
    assert_eq!(s.expect_close(), 1, "delivery proven: no second question");
    assert_eq!(s.d.poll_action(), Some(Action::CloseShell));
    assert!(s.d.is_finished(), "long before the drain deadline");
    assert_eq!(
        s.counts([
            Counter::DeadlineCloses,
            Counter::BytesDelivered,
            Counter::BytesDiscarded
        ]),
        [0, 2, 3]
    );
    assert!(s.d.report().balances());
}

#[test]
fn a_delivery_proven_before_the_deadline_is_not_asked_about_again_at_it() {
    let mut s = Shell::new(small()); // two reads per turn, a drain deadline of 1 s
    let c = s.open();
    s.echo(c, b"abc");
    s.stop();
    s.shut(c);
    s.advance(s.timeout_in().expect("the first check"));
    s.expect_check(c);
    s.d.handle_delivery(c, AckOutcome::Acked(3));
    // Input keeps coming: the reads before the close use up the turn.
    s.read(c, &[7; 8]);
    s.read(c, &[7; 8]);
    s.idle();
    s.advance(Duration::from_secs(1));
    let [deadline_closes, delivered] = s.counts([Counter::DeadlineCloses, Counter::BytesDelivered]);
    assert_eq!(
        (deadline_closes, delivered),
        (1, 3),
        "counted as it was proven"
    );
    assert_eq!(s.expect_close(), s.sock_of(c), "no second question");
}

#[test]
fn a_peer_heard_from_before_the_stop_gets_no_first_request_grace() {
    let mut s = Shell::new(small());
    // Its echo waits for the writable edge: nothing is due before our FIN but the deadline.
    s.paused_at_the_cap_then_stopped(4);
    assert_eq!(s.timeout_in(), Some(Duration::from_secs(1)));
}

#[test]
fn a_peer_that_keeps_sending_after_the_stop_cannot_put_off_the_delivery_check() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.echo(c, b"hi");
    s.stop();
    s.shut(c);
    let mut wait = Duration::from_millis(1);
    for _ in 0..5 {
        // Data arrives before every check; its edge comes with the wait.
        s.event(c, READABLE);
        s.advance(wait);
        let want = Action::CheckDelivery {
            token: c,
            sock: &s.sock_of(c),
        };
        assert_eq!(s.d.poll_action(), Some(want), "the check comes first");
        s.d.handle_delivery(c, AckOutcome::Acked(0));
        s.read(c, b"more");
        s.idle();
        wait = s.timeout_in().expect("the next check");
    }
    s.advance(wait);
    s.expect_check(c);
    s.d.handle_delivery(c, AckOutcome::Acked(3));
    expect!(s, Action::Read { .. });
    s.d.handle_read(c, ReadOutcome::WouldBlock);
    s.expect_close();
    assert_eq!(s.counts([Counter::BytesDiscarded]), [20]);
}

#[test]
fn drain_deadline_closes_what_remains_and_counts_what_the_kernel_says() {
    let mut s = Shell::new(small());
    let stuck = s.open();
    let silent = s.open();
    s.event(stuck, READABLE);
    s.read(stuck, b"abcdef");
    s.write(stuck, b"abcdef", 3);
    s.idle();
    s.echo(silent, b"zz");
    s.stop();
    s.shut(silent);
    // Until the deadline: the silent peer never acknowledges anything.
    let deadline = s.now + Duration::from_secs(1);
    while s.d.poll_timeout() < Some(deadline) {
        let wait = s.timeout_in().expect("a check or the deadline");
        s.advance(wait);
        s.expect_check(silent);
        s.d.handle_delivery(silent, AckOutcome::Acked(0));
        s.idle();
        assert!(!s.d.is_finished());
    }
    s.advance(s.timeout_in().expect("the deadline"));
    // Asked just before each close: 1 of stuck's 3 written bytes acknowledged, none of silent's.
    let mut acked = [(1, 1), (2, 0)]
        .into_iter()
        .collect::<std::collections::HashMap<u32, u64>>();
    for _ in 0..2 {
        match s.d.poll_action() {
            Some(Action::MeasureAndClose(sock)) => {
                let n = acked.remove(&sock).expect("each closed once");
                s.d.handle_closed(AckOutcome::Acked(n));
            }
            other => panic!("expected a measured close, got {other:?}"),
        }
    }
    assert_eq!(s.d.poll_action(), Some(Action::CloseShell));
    assert!(s.d.is_finished());
    assert_eq!(
        s.counts([
            Counter::DeadlineCloses,
            Counter::BytesDropped,
            Counter::BytesUnacked,
            Counter::BytesDelivered
        ]),
        [2, 3, 4, 1]
    );
    let r = s.d.report();
    assert!(r.balances(), "{r}");
}

/// A connection that failed is closed for its error even when the deadline comes first: what its
/// peer did not acknowledge was destroyed by the error, not cut by the deadline.
#[test]
fn an_error_at_the_deadline_is_counted_as_an_error_close() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.echo(c, b"hey");
    s.stop();
    s.shut(c);
    // The error and the deadline come in the same turn, before the failed connection is closed.
    s.event(c, ERROR);
    s.advance(Duration::from_secs(3600));
    // The kernel's count includes our FIN: it is not a byte of echo.
    s.expect_measured_close(2);
    assert_eq!(s.d.poll_action(), Some(Action::CloseShell));
    assert!(s.d.is_finished());
    assert_eq!(
        s.counts([
            Counter::DeadlineCloses,
            Counter::ErrorCloses,
            Counter::BytesUnacked,
            Counter::BytesLostToErrors,
            Counter::BytesDelivered
        ]),
        [0, 1, 0, 1, 2]
    );
    assert!(s.d.report().balances());
}

#[test]
fn a_reset_peer_is_asked_what_it_acknowledged_and_the_rest_is_lost_to_the_error() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.echo(c, b"0123456");
    s.event(c, ERROR);
    s.expect_measured_close(3);
    s.idle();
    assert_eq!(
        s.counts([
            Counter::ErrorCloses,
            Counter::BytesDelivered,
            Counter::BytesLostToErrors,
            Counter::BytesInFlight
        ]),
        [1, 3, 4, 0]
    );
    assert!(s.d.report().balances());
}

#[test]
fn an_orderly_close_outside_a_stop_counts_what_is_unacknowledged_as_in_flight() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.echo(c, b"abc");
    s.event(c, RDHUP);
    expect!(s, Action::Read { .. });
    s.d.handle_read(c, ReadOutcome::Eof);
    s.expect_measured_close(1);
    s.idle();
    assert_eq!(
        s.counts([Counter::BytesDelivered, Counter::BytesInFlight]),
        [1, 2]
    );
    // The kernel could not tell: nothing counts as delivered.
    let d = s.open();
    s.echo(d, b"xy");
    s.event(d, RDHUP);
    expect!(s, Action::Read { .. });
    s.d.handle_read(d, ReadOutcome::Eof);
    expect!(s, Action::MeasureAndClose(_));
    s.d.handle_closed(AckOutcome::Unknown);
    assert_eq!(
        s.counts([Counter::BytesDelivered, Counter::BytesInFlight]),
        [1, 4]
    );
    assert!(s.d.report().balances());
}

#[test]
fn a_half_closed_peer_at_the_stop_gets_our_fin_and_waits_for_delivery() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.stop();
    // Its FIN arrives after the stop (in the grace for a first request, so it is read at once):
    // it still gets our FIN, then delivery decides.
    s.event(c, RDHUP);
    s.expect_read(c);
    s.d.handle_read(c, ReadOutcome::Eof);
    s.expect_shutdown(c);
    s.idle();
    s.advance(Duration::from_millis(1));
    s.expect_check(c);
    s.d.handle_delivery(c, AckOutcome::Acked(0));
    s.expect_close();
}

#[test]
fn a_first_request_racing_the_stop_is_echoed_and_one_that_never_comes_gets_our_fin() {
    let mut s = Shell::new(small());
    let early = s.open();
    let silent = s.open();
    s.stop();
    // Neither had sent anything at the cut: no FIN yet.
    s.idle();
    // The early one's request arrives just after the cut: echoed, then our FIN.
    s.event(early, READABLE);
    s.read(early, b"req");
    s.write(early, b"req", 3);
    s.expect_shutdown(early);
    s.idle();
    // The silent one gets our FIN when the first check ends the grace.
    s.advance(s.timeout_in().expect("the first check"));
    let mut shut = false;
    for _ in 0..10 {
        match s.d.poll_action() {
            Some(Action::ShutdownWrite { token: t, .. }) if t == silent => shut = true,
            Some(Action::CheckDelivery { token: t, .. }) => {
                s.d.handle_delivery(t, AckOutcome::Acked(3))
            }
            Some(Action::Read { token, .. }) => s.d.handle_read(token, ReadOutcome::WouldBlock),
            Some(Action::Close(_)) | None => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(shut, "the silent connection never got our FIN");
    assert_eq!(
        s.counts([Counter::BytesRead, Counter::BytesWritten]),
        [3, 3]
    );
}

#[test]
fn a_half_closed_peer_with_echo_unacknowledged_at_the_stop_is_not_closed_until_delivery() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.echo(c, b"abcd");
    s.event(c, RDHUP);
    expect!(s, Action::Read { .. });
    // The stop comes between the read that finds EOF and the close.
    s.d.handle_stop(s.now);
    s.d.handle_read(c, ReadOutcome::Eof);
    s.cut(0, &[]);
    s.expect_shutdown(c);
    s.idle();
    // The listener's turn, queued by the stop, finds it closed.
    s.idle();
    let deadline = s.now + Duration::from_secs(1);
    while s.d.poll_timeout() < Some(deadline) {
        s.advance(s.timeout_in().expect("a check"));
        s.expect_check(c);
        s.d.handle_delivery(c, AckOutcome::Acked(2));
        s.idle();
    }
    s.advance(s.timeout_in().expect("the deadline"));
    s.expect_measured_close(2);
    assert_eq!(
        s.counts([
            Counter::DeadlineCloses,
            Counter::BytesDelivered,
            Counter::BytesUnacked,
            Counter::BytesInFlight
        ]),
        [1, 2, 2, 0]
    );
}

#[test]
fn zero_drain_timeout_closes_everything_on_stop() {
    let mut s = Shell::new(Settings {
        drain_timeout: Duration::ZERO,
        ..small()
    });
    let c = s.open();
    s.event(c, READABLE);
    s.read(c, b"ab");
    s.write(c, b"ab", 1);
    s.idle();
    s.d.handle_stop(s.now);
    // Only closes are left, queued and no timer set: the shell must not sleep before them.
    assert_eq!(s.d.poll_timeout(), Some(s.now));
    assert_eq!(s.d.poll_action(), Some(Action::CloseListener));
    s.expect_measured_close(0);
    assert_eq!(s.d.poll_action(), Some(Action::CloseShell));
    assert!(s.d.is_finished());
    assert_eq!(
        s.counts([Counter::BytesDropped, Counter::BytesUnacked]),
        [1, 1]
    );
}

#[test]
fn stop_during_back_off_closes_pending_connections_without_reopening_accept() {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(Token::LISTENER, READABLE);
    s.accept_fails(AcceptOutcome::Exhausted(ResourceError::ProcessDescriptors));
    s.idle();
    s.d.handle_stop(s.now);
    s.cut(1, &[]);
    // Still out of descriptors: what remains queued cannot be accepted.
    assert_eq!(
        s.d.handle_accept(AcceptOutcome::Exhausted(ResourceError::ProcessDescriptors)),
        None
    );
    assert_eq!(s.d.poll_action(), Some(Action::CloseListener));
    // Silent so far: in the grace for its first request.
    s.idle();
    s.event(c, ERROR);
    s.expect_close();
    // The freed descriptor must not bring the closed listener back.
    assert_eq!(s.d.poll_action(), Some(Action::CloseShell));
    s.idle();
    assert!(s.d.is_finished());
}

// ----- poll_timeout -----

#[test]
fn poll_timeout_is_the_earliest_timer_or_now_when_work_is_queued() {
    let mut s = Shell::new(small());
    assert_eq!(s.d.poll_timeout(), None, "idle: wait for events only");
    let c = s.open();
    s.event(Token::LISTENER, READABLE);
    assert_eq!(s.d.poll_timeout(), Some(s.now), "queued work");
    s.accept_fails(AcceptOutcome::Exhausted(ResourceError::ProcessDescriptors));
    s.idle();
    assert_eq!(s.timeout_in(), Some(MIN_ACCEPT_BACKOFF));
    s.d.handle_stop(s.now);
    // Stop drops the back-off and takes its cut first.
    assert_eq!(s.d.poll_timeout(), Some(s.now), "the cut is taken first");
    s.cut(0, &[]);
    s.idle();
    // The first check (ending the grace for the silent connection's first request) comes before
    // the drain deadline.
    assert_eq!(s.timeout_in(), Some(Duration::from_millis(1)));
    s.advance(Duration::from_millis(1));
    s.shut_and_drained(c);
    assert_eq!(s.timeout_in(), Some(Duration::from_millis(2)));
}

#[test]
fn is_finished_only_after_stop_and_the_shell_closed() {
    let mut s = Shell::new(small());
    assert!(!s.d.is_finished());
    assert!(!s.d.is_stopping());
    s.d.handle_stop(s.now);
    assert!(s.d.is_stopping());
    s.cut(0, &[]);
    assert!(!s.d.is_finished(), "the shell is not closed yet");
    assert_eq!(s.d.poll_action(), Some(Action::CloseShell));
    assert!(s.d.is_finished());
    // The listener, the epoll instance and the wake-up channel.
    assert_eq!(s.d.report()[Counter::DescriptorsClosed], 3);
}

// ----- misuse by the shell is a bug, not an outcome -----

/// A connection whose read is issued and its outcome not reported yet.
fn a_read_in_flight() -> (Shell, Token) {
    let mut s = Shell::new(small());
    let c = s.open();
    s.event(c, READABLE);
    s.expect_read(c);
    (s, c)
}

#[test]
#[should_panic(expected = "before the last outcome was handled")]
fn asking_for_the_next_action_before_reporting_the_last_outcome_is_a_bug() {
    let (mut s, _) = a_read_in_flight();
    let _ = s.d.poll_action();
}

#[test]
#[should_panic(expected = "while awaiting")]
fn read_outcome_for_another_connection_is_a_bug() {
    let mut s = Shell::new(small());
    let a = s.open();
    let b = s.open();
    s.event(a, READABLE);
    s.expect_read(a);
    s.d.handle_read(b, ReadOutcome::WouldBlock);
}

#[test]
#[should_panic(expected = "while awaiting")]
fn a_write_outcome_while_a_read_is_awaited_is_a_bug() {
    // The action lends the buffer of the read in flight only, so the shell cannot reach another
    // one; what it can still get wrong is the outcome it reports.
    let (mut s, a) = a_read_in_flight();
    s.d.handle_write(a, WriteOutcome::Wrote(1));
}

#[test]
#[should_panic(expected = "while awaiting")]
fn write_outcome_for_another_connection_is_a_bug() {
    let mut s = Shell::new(small());
    let a = s.open();
    let b = s.open();
    s.event(a, READABLE);
    s.read(a, b"x");
    s.expect_write(a);
    s.d.handle_write(b, WriteOutcome::Wrote(1));
}

#[test]
#[should_panic(expected = "while awaiting")]
fn a_read_outcome_while_a_write_is_awaited_is_a_bug() {
    let mut s = Shell::new(small());
    let a = s.open();
    s.event(a, READABLE);
    s.read(a, b"x");
    s.expect_write(a);
    s.d.handle_read(a, ReadOutcome::WouldBlock);
}

#[test]
fn interrupted_syscalls_are_classified_for_retry() {
    use std::io::Error;
    let eintr = || Err(Error::from_raw_os_error(libc::EINTR));
    assert_eq!(
        WriteOutcome::from_result(eintr()),
        WriteOutcome::Interrupted
    );
    assert_eq!(ReadOutcome::from_result(eintr()), ReadOutcome::Interrupted);
    let accept = AcceptOutcome::<u32>::from_result(Err(Error::from_raw_os_error(libc::EINTR)));
    assert_eq!(accept, AcceptOutcome::Interrupted);
}

// ----- pending buffer and report, as the core relies on them -----

#[test]
fn pending_buffer_never_allocates_past_the_cap_in_any_chunking() {
    for chunk in (1..=40).chain([100, 300, 500]) {
        let mut b = OutBuf::default();
        while b.len() + chunk <= 1000 {
            b.push(&vec![3; chunk], 1000);
            assert!(
                b.capacity() <= 1000,
                "chunk {chunk}: capacity {}",
                b.capacity()
            );
        }
    }
}

#[test]
fn pending_buffer_reuses_the_written_front_instead_of_growing() {
    let mut b = OutBuf::default();
    b.push(&[1; 8], 8);
    b.consume(5);
    b.push(&[2; 5], 8);
    assert_eq!(b.as_slice(), &[1, 1, 1, 2, 2, 2, 2, 2]);
    assert!(b.capacity() <= 8, "capacity {} over the cap", b.capacity());
}
