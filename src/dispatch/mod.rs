//! The pure event-dispatch core of one worker. It performs no I/O, opens nothing, reads no clock and
//! starts no thread: the shell tells it what happened and it answers what to do next.
//!
//! # Call order (the run loop)
//!
//! 1. Wait for events, with the timeout from [`Dispatcher::poll_timeout`].
//! 2. Call [`Dispatcher::handle_time`] with the current time, then [`Dispatcher::handle_event`] for each
//!    event ([`Dispatcher::handle_stop`] for the wake-up).
//! 3. Call [`Dispatcher::poll_action`] until it returns `None`, performing each [`Action`] and, for
//!    `Accept`, `Register`, `Read` and `Write`, feeding the outcome back with the matching `handle_*`
//!    before asking again. `None` ends one round; the loop then waits again.
//! 4. Stop when [`Dispatcher::is_finished`] is true and take the [`Report`].
//!
//! # Decisions it owns
//!
//! - **Echo and partial writes.** Bytes read land in the worker's scratch buffer and are written
//!   straight back; whatever the kernel did not take is kept in that connection's [`OutBuf`] and written
//!   on the next writable edge, before anything read later.
//! - **Backpressure.** A connection whose pending output reaches the cap is not read until it drains.
//!   Its unread data got its edge already, so the connection stays marked readable and is queued again
//!   as soon as a write makes room.
//! - **Edge-triggered drain with fairness.** A readable connection is read until would-block, EOF, a
//!   short read (the socket is empty: new data raises a new edge) or the per-turn budget; a connection
//!   that used its budget goes to the back of the ready queue. Each round serves the queue as it stood
//!   when the round began, so new events are collected between rounds and nobody starves. The listener
//!   takes turns the same way.
//! - **Half-close.** EOF from the peer: flush the pending output, then close (the receive queue is empty,
//!   so the close sends FIN, never RST).
//! - **Errors** close only the connection concerned; `EINTR` repeats the operation.
//! - **Accept failures** for lack of resources stop accepting until a back-off timer (growing, capped
//!   at [`MAX_ACCEPT_BACKOFF`]) fires or a connection of this worker closes, then retry even without a
//!   new edge, since connections may be waiting in the backlog.
//! - **Idle timeout** (optional). A connection with no bytes read or written for the timeout is
//!   closed, its pending bytes counted as dropped. Each connection keeps a coarse `u32` tick of its
//!   last activity and one sweep per tick finds the expired ones (see [`idle`]), so the deadline the
//!   shell waits for is one per worker, not one per connection.
//! - **Shutdown.** Close the listener, stop echoing new input, flush what was read, shut the write side,
//!   then read and discard until the peer closes (a close with unread input would send RST and could
//!   destroy echoed bytes still in flight), all bounded by the drain deadline, at which whatever remains
//!   is closed and its pending bytes counted as dropped.

mod idle;
mod io;
mod outbuf;
mod report;
mod token;

#[cfg(test)]
mod idle_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use idle::IdleClock;
pub use io::{AcceptOutcome, Action, ReadOutcome, Readiness, ResourceError, WriteOutcome};
pub use outbuf::OutBuf;
pub use report::Report;
pub use token::Token;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// First delay after an accept failure for lack of resources.
pub const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Longest delay between accept retries, so a waiting backlog is served within about half a second.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Tunables of the core.
#[derive(Clone, Debug)]
pub struct Config {
    /// Cap on one connection's pending output, in bytes (at least 1).
    pub max_pending: usize,
    /// How long shutdown may spend flushing before closing what remains.
    pub drain_timeout: Duration,
    /// Size of the per-worker read buffer.
    pub scratch_len: usize,
    /// Reads one connection may do in one turn before others are served.
    pub reads_per_turn: u32,
    /// Accepts in one listener turn.
    pub accepts_per_turn: u32,
    /// Close connections silent in both directions for this long (`None`: never; must be non-zero).
    pub idle_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_pending: 64 * 1024,
            drain_timeout: Duration::from_secs(5),
            scratch_len: 64 * 1024,
            reads_per_turn: 16,
            accepts_per_turn: 64,
            idle_timeout: None,
        }
    }
}

/// Per-connection state. Flags record what the last edges and outcomes said.
#[derive(Debug)]
struct Conn<S> {
    sock: S,
    pending: OutBuf,
    /// Input may be waiting (an edge came and no read has shown the socket empty since).
    readable: bool,
    /// The send buffer may have room (no would-block or partial write since the last writable edge).
    writable: bool,
    /// The peer announced the end of its input (RDHUP/HUP): only a 0-byte read proves the socket empty.
    peer_finished: bool,
    /// `read` returned 0.
    eof: bool,
    /// Shutdown sent our FIN; reads are now only discarded.
    write_shut: bool,
    /// An error edge came: close at the next turn.
    failed: bool,
    /// The connection's token is in the ready queue.
    queued: bool,
    /// Idle-clock tick of the last byte read or written (0 when there is no idle timeout).
    last_active: u32,
}

impl<S> Conn<S> {
    fn new(sock: S, last_active: u32) -> Self {
        Conn {
            sock,
            pending: OutBuf::default(),
            readable: false,
            writable: true,
            peer_finished: false,
            eof: false,
            write_shut: false,
            failed: false,
            queued: false,
            last_active,
        }
    }
}

#[derive(Debug)]
struct Slot<S> {
    generation: u32,
    conn: Option<Conn<S>>,
}

/// The operation whose outcome the core waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    Accept,
    Register(Token),
    Read(Token, usize),
    /// Writing `scratch[start..end]`, or the pending buffer when `None`.
    Write(Token, Option<(usize, usize)>),
}

/// Whose turn it is.
#[derive(Clone, Copy, Debug)]
enum Turn {
    Listener { accepts_left: u32 },
    Conn { token: Token, reads_left: u32 },
}

#[derive(Debug)]
struct Listener {
    open: bool,
    /// A connection may be waiting in the backlog.
    ready: bool,
    queued: bool,
    /// No accepting before this instant.
    backoff_until: Option<Instant>,
    /// The delay used after the next failure.
    next_backoff: Duration,
}

/// The event-dispatch state machine of one worker; `S` is the shell's socket type.
#[derive(Debug)]
pub struct Dispatcher<S> {
    config: Config,
    now: Instant,
    slots: Vec<Slot<S>>,
    free: Vec<u32>,
    active: usize,
    /// Connections (and the listener) with work to do, in the order they get turns.
    ready: VecDeque<Token>,
    /// Turns left in the current round; `None` between rounds.
    round_left: Option<usize>,
    turn: Option<Turn>,
    /// The operation to issue next, before the turn continues (a write after a read, a retry).
    followup: Option<Awaiting>,
    /// The operation issued and not yet reported.
    awaiting: Option<Awaiting>,
    /// Actions that need no outcome (closes, shutdowns), served first.
    actions: VecDeque<Action<S>>,
    scratch: Box<[u8]>,
    listener: Listener,
    /// Set once shutdown began: when the drain must end.
    drain_deadline: Option<Instant>,
    /// Present when an idle timeout is configured.
    idle: Option<IdleClock>,
    /// When to sweep for idle connections next; `None` while there is nothing to sweep.
    next_sweep: Option<Instant>,
    report: Report,
}

impl<S> Dispatcher<S> {
    /// A dispatcher for a worker whose listener is open and registered.
    pub fn new(config: Config, now: Instant) -> Self {
        assert!(
            config.max_pending > 0 && config.scratch_len > 0,
            "buffers must be non-empty"
        );
        let scratch = vec![0; config.scratch_len].into_boxed_slice();
        let idle = config.idle_timeout.map(|t| IdleClock::new(t, now));
        Dispatcher {
            config,
            now,
            slots: Vec::new(),
            free: Vec::new(),
            active: 0,
            ready: VecDeque::new(),
            round_left: None,
            turn: None,
            followup: None,
            awaiting: None,
            actions: VecDeque::new(),
            scratch,
            listener: Listener {
                open: true,
                ready: false,
                queued: false,
                backoff_until: None,
                next_backoff: MIN_ACCEPT_BACKOFF,
            },
            drain_deadline: None,
            idle,
            next_sweep: None,
            report: Report::default(),
        }
    }

    // ----- inputs -----

    /// Advances the core's clock; expires the accept back-off, idle connections and the drain
    /// deadline. Call it after every wait, before the events.
    pub fn handle_time(&mut self, now: Instant) {
        self.now = now;
        if self.listener.backoff_until.is_some_and(|t| now >= t) {
            self.listener.backoff_until = None;
            // Retry without waiting for a new edge: the backlog may hold connections.
            self.queue_listener();
        }
        if self.next_sweep.is_some_and(|t| now >= t) {
            self.close_idle();
        }
        if self.drain_deadline.is_some_and(|t| now >= t) {
            self.close_all_at_deadline();
        }
    }

    /// Records an epoll event for the listener or a connection. Events for closed connections
    /// (stale tokens) are ignored.
    pub fn handle_event(&mut self, token: Token, readiness: Readiness) {
        if token == Token::LISTENER {
            if readiness.readable {
                self.listener.ready = true;
                self.queue_listener();
            }
            return;
        }
        let Some(conn) = self.conn_mut(token) else {
            return;
        };
        if readiness.readable || readiness.read_closed || readiness.hangup {
            conn.readable = true;
        }
        if readiness.read_closed || readiness.hangup {
            conn.peer_finished = true;
        }
        if readiness.writable || readiness.hangup {
            conn.writable = true;
        }
        if readiness.error {
            conn.failed = true;
        }
        self.queue_if_work(token);
    }

    /// The wake-up came: begin the graceful shutdown. Idempotent.
    pub fn handle_stop(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(self.now + self.config.drain_timeout);
        if self.listener.open {
            self.listener.open = false;
            self.listener.backoff_until = None;
            self.actions.push_back(Action::CloseListener);
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot].conn.is_some() {
                self.queue_if_work(Token::conn(slot as u32, self.slots[slot].generation));
            }
        }
        if self.config.drain_timeout.is_zero() {
            self.close_all_at_deadline();
        }
    }

    /// Outcome of [`Action::Accept`]. Returns the new connection's token, if one was accepted.
    pub fn handle_accept(&mut self, outcome: AcceptOutcome<S>) -> Option<Token> {
        self.take_awaiting(Awaiting::Accept);
        match outcome {
            AcceptOutcome::Accepted(sock) => {
                self.listener.next_backoff = MIN_ACCEPT_BACKOFF;
                self.report.accepted += 1;
                let token = self.insert(sock);
                self.followup = Some(Awaiting::Register(token));
                return Some(token);
            }
            AcceptOutcome::WouldBlock => self.listener.ready = false,
            AcceptOutcome::Interrupted | AcceptOutcome::Aborted => {}
            AcceptOutcome::Exhausted(kind) => {
                self.report.accept_exhausted += 1;
                *self.report.accept_exhausted_by_kind(kind) += 1;
                self.back_off_accepting();
            }
            AcceptOutcome::Failed => {
                self.report.accept_failed += 1;
                self.back_off_accepting();
            }
        }
        None
    }

    /// Outcome of [`Action::Register`]; a connection that cannot be registered is closed.
    pub fn handle_register(&mut self, token: Token, registered: bool) {
        self.take_awaiting(Awaiting::Register(token));
        if !registered {
            self.close(token);
        }
    }

    /// Outcome of [`Action::Read`]; for `Data(n)` the bytes are in `read_target`'s buffer.
    pub fn handle_read(&mut self, token: Token, outcome: ReadOutcome) {
        let asked = match self.awaiting {
            Some(Awaiting::Read(t, len)) if t == token => len,
            other => panic!("handle_read({token:?}) while awaiting {other:?}"),
        };
        self.awaiting = None;
        let cap = self.config.max_pending;
        let Some(conn) = self.slots[token.slot()].conn.as_mut() else {
            return;
        };
        match outcome {
            ReadOutcome::Data(n) => {
                assert!(n > 0 && n <= asked, "read returned {n} of {asked} bytes");
                conn.last_active = self.idle.map_or(0, |c| c.tick(self.now));
                if n < asked && !conn.peer_finished {
                    // A short read emptied the socket; more input raises a new edge.
                    conn.readable = false;
                }
                if conn.write_shut {
                    self.report.bytes_discarded += n as u64;
                } else if conn.pending.is_empty() && conn.writable {
                    self.report.bytes_read += n as u64;
                    self.followup = Some(Awaiting::Write(token, Some((0, n))));
                } else {
                    self.report.bytes_read += n as u64;
                    conn.pending.push(&self.scratch[..n], cap);
                    note_pending(conn, cap, &mut self.report);
                }
            }
            ReadOutcome::Eof => {
                conn.eof = true;
                conn.readable = false;
            }
            ReadOutcome::WouldBlock => conn.readable = false,
            ReadOutcome::Interrupted => self.followup = Some(Awaiting::Read(token, asked)),
            ReadOutcome::Failed => conn.failed = true,
        }
    }

    /// Outcome of [`Action::Write`].
    pub fn handle_write(&mut self, token: Token, outcome: WriteOutcome) {
        let source = match self.awaiting {
            Some(Awaiting::Write(t, source)) if t == token => source,
            other => panic!("handle_write({token:?}) while awaiting {other:?}"),
        };
        self.awaiting = None;
        let cap = self.config.max_pending;
        let Some(conn) = self.slots[token.slot()].conn.as_mut() else {
            return;
        };
        let offered = match source {
            Some((start, end)) => end - start,
            None => conn.pending.len(),
        };
        let written = match outcome {
            WriteOutcome::Wrote(k) => {
                assert!(k <= offered, "wrote {k} of {offered} bytes");
                k
            }
            WriteOutcome::Interrupted => {
                self.followup = Some(Awaiting::Write(token, source));
                return;
            }
            WriteOutcome::WouldBlock => 0,
            WriteOutcome::Failed => {
                conn.failed = true;
                0
            }
        };
        self.report.bytes_written += written as u64;
        if written > 0 {
            conn.last_active = self.idle.map_or(0, |c| c.tick(self.now));
        }
        if written < offered {
            conn.writable = false;
        }
        match source {
            Some((start, end)) => {
                let rest = &self.scratch[start + written..end];
                if conn.failed {
                    self.report.bytes_dropped += rest.len() as u64;
                } else if !rest.is_empty() {
                    conn.pending.push(rest, cap);
                    note_pending(conn, cap, &mut self.report);
                }
            }
            None => conn.pending.consume(written),
        }
    }

    // ----- outputs -----

    /// The next thing the shell must do, or `None` when this round is over.
    pub fn poll_action(&mut self) -> Option<Action<S>> {
        assert!(
            self.awaiting.is_none(),
            "poll_action before the last outcome was handled"
        );
        loop {
            if let Some(action) = self.actions.pop_front() {
                return Some(action);
            }
            if let Some(op) = self.followup.take() {
                self.awaiting = Some(op);
                return Some(match op {
                    Awaiting::Accept => Action::Accept,
                    Awaiting::Register(t) => Action::Register(t),
                    Awaiting::Read(token, len) => Action::Read { token, len },
                    Awaiting::Write(t, _) => Action::Write(t),
                });
            }
            if let Some(turn) = self.turn {
                if !self.step(turn) {
                    self.end_turn(turn);
                }
                continue;
            }
            let left = self.round_left.unwrap_or(self.ready.len());
            let next = if left > 0 {
                self.ready.pop_front()
            } else {
                None
            };
            let Some(token) = next else {
                self.round_left = None;
                return None;
            };
            self.round_left = Some(left - 1);
            self.begin_turn(token);
        }
    }

    /// When the shell must call [`Dispatcher::handle_time`] at the latest (`None`: only on events).
    /// Equals the current time while work is queued, so the shell polls without blocking.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.ready.is_empty() || !self.actions.is_empty() {
            return Some(self.now);
        }
        [
            self.listener.backoff_until,
            self.drain_deadline,
            self.next_sweep,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// True once shutdown completed: listener closed and every connection closed.
    pub fn is_finished(&self) -> bool {
        self.is_stopping() && self.active == 0 && self.actions.is_empty() && self.awaiting.is_none()
    }

    /// True once [`Dispatcher::handle_stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// Counters so far.
    pub fn report(&self) -> Report {
        self.report
    }

    /// Connections open right now.
    pub fn active_connections(&self) -> usize {
        self.active
    }

    /// Bytes held in pending output, summed over connections.
    pub fn pending_bytes(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| s.conn.as_ref())
            .map(|c| c.pending.len())
            .sum()
    }

    /// The socket of a live connection (for `Register` and `ShutdownWrite`).
    pub fn socket(&self, token: Token) -> &S {
        &self
            .conn(token)
            .expect("socket of a closed connection")
            .sock
    }

    /// Socket and buffer for the `Read` in progress.
    pub fn read_target(&mut self, token: Token) -> (&S, &mut [u8]) {
        let len = match self.awaiting {
            Some(Awaiting::Read(t, len)) if t == token => len,
            other => panic!("read_target({token:?}) while awaiting {other:?}"),
        };
        let conn = self.slots[token.slot()]
            .conn
            .as_ref()
            .expect("read of a closed connection");
        (&conn.sock, &mut self.scratch[..len])
    }

    /// Socket and bytes for the `Write` in progress.
    pub fn write_target(&self, token: Token) -> (&S, &[u8]) {
        let source = match self.awaiting {
            Some(Awaiting::Write(t, source)) if t == token => source,
            other => panic!("write_target({token:?}) while awaiting {other:?}"),
        };
        let conn = self.conn(token).expect("write of a closed connection");
        let bytes = match source {
            Some((start, end)) => &self.scratch[start..end],
            None => conn.pending.as_slice(),
        };
        (&conn.sock, bytes)
    }

    // ----- internals -----

    fn take_awaiting(&mut self, expected: Awaiting) {
        assert_eq!(
            self.awaiting.take(),
            Some(expected),
            "outcome for an operation not issued"
        );
    }

    fn conn(&self, token: Token) -> Option<&Conn<S>> {
        let slot = self.slots.get(token.slot())?;
        (slot.generation == token.generation()).then_some(())?;
        slot.conn.as_ref()
    }

    fn conn_mut(&mut self, token: Token) -> Option<&mut Conn<S>> {
        if !token.is_conn() {
            return None;
        }
        let slot = self.slots.get_mut(token.slot())?;
        (slot.generation == token.generation()).then_some(())?;
        slot.conn.as_mut()
    }

    fn insert(&mut self, sock: S) -> Token {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        let tick = self.idle.map_or(0, |c| c.tick(self.now));
        entry.conn = Some(Conn::new(sock, tick));
        self.active += 1;
        if let Some(clock) = self.idle {
            self.next_sweep.get_or_insert(self.now + clock.period());
        }
        Token::conn(slot, entry.generation)
    }

    fn close(&mut self, token: Token) {
        let entry = &mut self.slots[token.slot()];
        let Some(mut conn) = entry.conn.take() else {
            return;
        };
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(token.slot() as u32);
        self.active -= 1;
        self.report.closed += 1;
        self.report.bytes_dropped += conn.pending.discard() as u64;
        self.actions.push_back(Action::Close(conn.sock));
        if self.listener.backoff_until.take().is_some() {
            // A descriptor was just freed: the accept that failed may succeed now.
            self.queue_listener();
        }
    }

    fn close_all_at_deadline(&mut self) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].conn.is_some() {
                self.report.deadline_closes += 1;
                self.close(Token::conn(slot as u32, self.slots[slot].generation));
            }
        }
    }

    /// Closes every connection silent for the idle timeout; schedules the next sweep.
    fn close_idle(&mut self) {
        let Some(clock) = self.idle else { return };
        for slot in 0..self.slots.len() {
            let expired = self.slots[slot]
                .conn
                .as_ref()
                .is_some_and(|c| clock.expired(c.last_active, self.now));
            if expired {
                self.report.idle_closes += 1;
                self.close(Token::conn(slot as u32, self.slots[slot].generation));
            }
        }
        self.next_sweep = (self.active > 0).then(|| self.now + clock.period());
    }

    fn back_off_accepting(&mut self) {
        self.listener.backoff_until = Some(self.now + self.listener.next_backoff);
        self.listener.next_backoff = (self.listener.next_backoff * 2).min(MAX_ACCEPT_BACKOFF);
    }

    fn has_work(&self, conn: &Conn<S>) -> bool {
        let stopping = self.is_stopping();
        let empty = conn.pending.is_empty();
        conn.failed
            || (!empty && conn.writable)
            || (empty && conn.eof)
            || (stopping && empty && (!conn.write_shut || conn.readable))
            || (!stopping
                && conn.readable
                && !conn.eof
                && conn.pending.len() < self.config.max_pending)
    }

    fn queue_if_work(&mut self, token: Token) {
        let Some(conn) = self.conn(token) else { return };
        if conn.queued || !self.has_work(conn) {
            return;
        }
        if let Some(conn) = self.conn_mut(token) {
            conn.queued = true;
        }
        self.ready.push_back(token);
    }

    fn queue_listener(&mut self) {
        if self.listener.open && !self.listener.queued {
            self.listener.queued = true;
            self.ready.push_back(Token::LISTENER);
        }
    }

    fn begin_turn(&mut self, token: Token) {
        if token == Token::LISTENER {
            self.turn = Some(Turn::Listener {
                accepts_left: self.config.accepts_per_turn,
            });
        } else if self.conn(token).is_some() {
            self.turn = Some(Turn::Conn {
                token,
                reads_left: self.config.reads_per_turn,
            });
        }
    }

    /// Ends a turn; whoever still has work goes to the back of the queue.
    fn end_turn(&mut self, turn: Turn) {
        self.turn = None;
        match turn {
            Turn::Listener { .. } => {
                let l = &mut self.listener;
                l.queued = l.open && l.ready && l.backoff_until.is_none();
                if l.queued {
                    self.ready.push_back(Token::LISTENER);
                }
            }
            Turn::Conn { token, .. } => {
                let Some(conn) = self.conn(token) else { return };
                let again = self.has_work(conn);
                if let Some(conn) = self.conn_mut(token) {
                    conn.queued = again;
                }
                if again {
                    self.ready.push_back(token);
                }
            }
        }
    }

    /// Decides the next operation of the current turn; false when the turn is over.
    fn step(&mut self, turn: Turn) -> bool {
        match turn {
            Turn::Listener { accepts_left } => {
                let l = &self.listener;
                if !l.open || !l.ready || l.backoff_until.is_some() || accepts_left == 0 {
                    return false;
                }
                self.turn = Some(Turn::Listener {
                    accepts_left: accepts_left - 1,
                });
                self.followup = Some(Awaiting::Accept);
                true
            }
            Turn::Conn { token, reads_left } => self.step_conn(token, reads_left),
        }
    }

    fn step_conn(&mut self, token: Token, reads_left: u32) -> bool {
        let stopping = self.is_stopping();
        let cap = self.config.max_pending;
        let scratch_len = self.config.scratch_len;
        let Some(conn) = self.conn_mut(token) else {
            return false;
        };
        if conn.failed {
            self.close(token);
            return false;
        }
        if !conn.pending.is_empty() {
            if conn.writable {
                self.followup = Some(Awaiting::Write(token, None));
                return true;
            }
        } else if conn.eof {
            // Everything read was written back: closing sends FIN after it.
            self.close(token);
            return false;
        } else if stopping && !conn.write_shut {
            conn.write_shut = true;
            self.actions.push_back(Action::ShutdownWrite(token));
            return true;
        }
        if !conn.readable || conn.eof || reads_left == 0 {
            return false;
        }
        let len = if stopping {
            if !conn.write_shut {
                return false;
            }
            scratch_len
        } else {
            let room = cap - conn.pending.len();
            if room == 0 {
                return false;
            }
            room.min(scratch_len)
        };
        self.turn = Some(Turn::Conn {
            token,
            reads_left: reads_left - 1,
        });
        self.followup = Some(Awaiting::Read(token, len));
        true
    }
}

/// Records a connection's pending output after it grew: the high-water mark, and a backpressure
/// pause when it reached the cap (reading stops until it drains, whatever readiness says).
/// A push always adds at least one byte, so reaching the cap here is a new pause, never a repeat.
fn note_pending<S>(conn: &Conn<S>, cap: usize, report: &mut Report) {
    let len = conn.pending.len();
    report.max_pending = report.max_pending.max(len as u64);
    if len == cap {
        report.backpressure_pauses += 1;
    }
}
