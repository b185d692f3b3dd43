//! The pure event-dispatch core of one worker, and in this file its decisions. It performs no I/O,
//! opens nothing, reads no clock and starts no thread: the shell tells it what happened and it
//! answers what to do next.
//!
//! # Call order (the run loop, as `worker.rs` runs it)
//!
//! 1. Wait for events, at most until [`Dispatcher::poll_timeout`].
//! 2. Feed each event to [`Dispatcher::handle_event`]; if the wake-up came, call
//!    [`Dispatcher::handle_stop`]; then feed the current time to [`Dispatcher::handle_time`].
//! 3. Call [`Dispatcher::poll_action`] until it returns `None`, performing each [`Action`] with the
//!    socket and bytes it lends (a read goes into the worker's scratch buffer, an echo is written
//!    straight from it) and feeding its [`Outcome`] to [`Dispatcher::handle_outcome`] (or the
//!    matching `handle_*`) before asking again (asking first is a bug, and panics). `None` ends
//!    one round; the loop then waits again.
//! 4. Stop when [`Dispatcher::is_finished`] is true and take the [`Report`].
//!
//! # What it is made of (one job per file)
//!
//! - This file: the decisions that join the parts below (each input's and outcome's effect, the
//!   closes and why), and the counting.
//! - [`interface`]: the vocabulary between the core and the shell: readiness, actions, outcomes.
//! - [`outbox`]: the in-flight bookkeeping: the requests queued for the shell and the one
//!   operation whose outcome is awaited.
//! - [`scheduler`]: fairness and turn driving: the ready queue, rounds, turns and budgets, and
//!   what each turn asks of the shell.
//! - [`listener`]: the listening socket's state: open, draining the queue the stop found, closed.
//! - [`conn`]: one connection's state, every change of it, and the one function that decides its
//!   next step.
//! - [`table`]: the connections, in generational slots named by [`Token`]s.
//! - [`outbuf`]: one connection's pending output, bounded by the cap.
//! - [`timers`]: accept back-off, idle sweep, delivery checks and drain deadline in one table.
//! - [`idle`]: the idle clock; [`limit`]: the server-wide connection limit.
//! - `tests`: the decisions as traces, one test per decision below.
//!
//! # Decisions it owns
//!
//! - **Echo and partial writes.** Bytes read land in the worker's scratch buffer and are written
//!   straight back; whatever the kernel did not take is kept in that connection's pending output and
//!   written on the next writable edge, before anything read later.
//! - **Backpressure.** A connection whose pending output reaches the cap is not read until it drains.
//!   Its unread data got its edge already, so it stays known as readable and is queued again as soon
//!   as a write makes room.
//! - **Edge-triggered drain with fairness.** A readable connection is read until would-block, EOF, a
//!   short read (the socket is empty: new data raises a new edge; not after the peer's FIN, where
//!   only EOF proves it) or the per-turn budget; a connection that used its budget goes to the back
//!   of the ready queue. The listener takes turns the same way.
//! - **Half-close.** EOF from the peer: flush the pending output, then close (the receive queue is
//!   empty, so the close sends FIN, never RST); what the peer has not acknowledged yet is counted
//!   as in flight. During a stop a finished peer is served like any other (below).
//! - **Every close asks the kernel** what the peer acknowledged (`MeasureAndClose`), unless nothing
//!   was written or a delivery check already proved it all; the rest is counted by the close's
//!   cause: in flight, unacknowledged (deadline, idle) or lost to an error.
//! - **Errors** close only the connection concerned; `EINTR` repeats the operation.
//! - **Accept failures** for lack of resources stop accepting until a back-off timer (growing, capped
//!   at [`MAX_ACCEPT_BACKOFF`]) fires or a connection of this worker closes, then retry even without
//!   a new edge, since connections may be waiting in the backlog.
//! - **Connection limit.** At the server-wide limit a new connection is closed at once and counted
//!   as rejected; each close gives its slot back.
//! - **Idle timeout** (optional). A connection with no bytes read or written for the timeout is
//!   closed, its pending bytes counted as dropped; one sweep per tick finds them (see [`idle`]).
//!   The sweep ends at the stop: from then on the drain deadline bounds every connection.
//! - **Shutdown.** Take the cut (how many connections the accept queue holds, how many bytes each
//!   connection's receive queue holds), accept exactly those connections and close the listener,
//!   echo everything that arrived before the cut, shut the write side, then read and discard what
//!   comes after it (a close with unread input would send RST), and close each connection once the
//!   kernel says its peer acknowledged every byte (our FIN may still wait for window). All of it is
//!   bounded by the drain deadline, at which input owed is read out and dropped and whatever
//!   remains is closed, its unacknowledged bytes counted.

mod conn;
mod idle;
mod interface;
mod limit;
mod listener;
mod outbox;
mod outbuf;
mod scheduler;
mod table;
mod timers;

#[cfg(test)]
mod tests;

pub(crate) use interface::{
    AcceptOutcome, AckOutcome, Action, ConnError, Outcome, ReadOutcome, Readiness, ResourceError,
    WriteOutcome,
};
pub(crate) use limit::ConnLimit;
pub(crate) use table::Token;
#[cfg(any(test, feature = "sim"))]
pub(crate) use timers::{MAX_ACCEPT_BACKOFF, MAX_DELIVERY_CHECK};

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::{Counter, Report};
use conn::{Conn, Output, Room};
use idle::IdleClock;
use limit::Lease;
use listener::Listener;
use outbox::{Measured, Op, Outbox, Request, Source};
use scheduler::Scheduler;
use table::Table;
use timers::{after, Timer, Timers};

/// The core's tunables, built from the server's validated `Config` (or by a test).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Cap on one connection's pending output, in bytes (at least 1).
    pub max_pending: usize,
    /// How long shutdown may spend flushing before closing what remains.
    pub drain_timeout: Duration,
    /// Size of the per-worker read buffer (at least 1).
    pub scratch_len: usize,
    /// Reads one connection may do in one turn before others are served.
    pub reads_per_turn: u32,
    /// Accepts in one listener turn.
    pub accepts_per_turn: u32,
    /// Close connections silent in both directions for this long (`None`: never; non-zero).
    pub idle_timeout: Option<Duration>,
    /// The server-wide connection limit, if any.
    pub limit: Option<Arc<ConnLimit>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_pending: 64 * 1024,
            drain_timeout: Duration::from_secs(5),
            scratch_len: 64 * 1024,
            reads_per_turn: 16,
            accepts_per_turn: 64,
            idle_timeout: None,
            limit: None,
        }
    }
}

/// Why a connection is closed, which says where the bytes its peer did not acknowledge are
/// counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// The peer finished and everything was written back, outside a stop: the kernel still
    /// sends what is unacknowledged.
    Orderly,
    /// The stop, once the kernel said the peer holds every byte.
    Delivered,
    /// Never served (its registration failed): nothing was written.
    Unserved,
    /// A connection error: the kernel discards what is unacknowledged.
    Error,
    /// The drain deadline cut it.
    Deadline,
    /// The idle timeout cut it.
    Idle,
}

impl Cause {
    /// The counter of bytes written and not acknowledged at a close for this cause.
    fn unacked_counter(self) -> Counter {
        match self {
            Cause::Orderly | Cause::Delivered | Cause::Unserved => Counter::BytesInFlight,
            Cause::Error => Counter::BytesLostToErrors,
            Cause::Deadline | Cause::Idle => Counter::BytesUnacked,
        }
    }

    /// The counter of connections closed for this cause, if it has one.
    fn close_counter(self) -> Option<Counter> {
        match self {
            Cause::Error => Some(Counter::ErrorCloses),
            Cause::Deadline => Some(Counter::DeadlineCloses),
            Cause::Idle => Some(Counter::IdleCloses),
            Cause::Orderly | Cause::Delivered | Cause::Unserved => None,
        }
    }
}

/// Where the worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// The stop came: draining.
    Stopping,
    /// Every descriptor is closed or handed to the shell to close.
    Done,
}

/// The event-dispatch state machine of one worker; `S` is the shell's socket type.
#[derive(Debug)]
pub(crate) struct Dispatcher<S> {
    settings: Settings,
    now: Instant,
    conns: Table<Conn<S>>,
    scheduler: Scheduler,
    timers: Timers,
    /// Present when an idle timeout is configured.
    idle: Option<IdleClock>,
    listener: Listener,
    phase: Phase,
    outbox: Outbox<S>,
    scratch: Box<[u8]>,
    /// This worker's slots of the connection limit, if there is one.
    lease: Option<Lease>,
    counts: Report,
}

impl<S> Dispatcher<S> {
    /// A dispatcher for a worker whose listener is open and registered.
    pub fn new(settings: Settings, now: Instant) -> Self {
        assert!(
            settings.max_pending > 0 && settings.scratch_len > 0,
            "buffers must be non-empty"
        );
        Dispatcher {
            scratch: vec![0; settings.scratch_len].into_boxed_slice(),
            idle: settings.idle_timeout.map(|t| IdleClock::new(t, now)),
            lease: settings.limit.clone().map(Lease::new),
            settings,
            now,
            conns: Table::default(),
            scheduler: Scheduler::default(),
            timers: Timers::default(),
            listener: Listener::new(),
            phase: Phase::Running,
            outbox: Outbox::default(),
            counts: Report::default(),
        }
    }

    // ----- inputs -----

    /// Records an epoll event for the listener or a connection. Events for closed connections
    /// (stale tokens) are ignored.
    pub fn handle_event(&mut self, token: Token, readiness: Readiness) {
        if token == Token::LISTENER {
            if readiness.readable && self.listener.on_readable() {
                self.queue_listener();
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(token) {
            conn.on_readiness(readiness);
            self.queue_if_work(token);
        }
    }

    /// Advances the core's clock and fires the timers that are due: the accept back-off ends,
    /// idle connections are closed, peers are asked again about delivery, the drain deadline
    /// closes what remains.
    pub fn handle_time(&mut self, now: Instant) {
        self.now = now;
        if self.timers.expired(Timer::AcceptRetry, now) {
            self.timers.clear(Timer::AcceptRetry);
            // Retry without waiting for a new edge: the backlog may hold connections.
            self.queue_listener();
        }
        if self.timers.expired(Timer::IdleSweep, now) {
            self.close_idle();
        }
        if self.timers.expired(Timer::DeliveryCheck, now) {
            self.timers.clear(Timer::DeliveryCheck);
            self.recheck_delivery();
        }
        if self.timers.expired(Timer::DrainDeadline, now) {
            self.timers.clear(Timer::DrainDeadline);
            self.close_all_at_deadline();
        }
    }

    /// The wake-up came at `now`: begin the graceful shutdown. Idempotent.
    pub fn handle_stop(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        self.now = self.now.max(now);
        self.phase = Phase::Stopping;
        self.timers.clear(Timer::AcceptRetry);
        // The idle sweep ends with the stop: the drain deadline bounds every connection from now
        // on, and an idle close would cut a peer still being given time to acknowledge (and count
        // as idle what the deadline would count).
        self.timers.clear(Timer::IdleSweep);
        if self.settings.drain_timeout.is_zero() {
            // No time to serve anyone: what the kernel queued is reset with the listener.
            self.close_listener();
            self.close_all_at_deadline();
            return;
        }
        // A deadline beyond what time can express is no deadline.
        if let Some(deadline) = after(self.now, self.settings.drain_timeout) {
            self.timers.set(Timer::DrainDeadline, deadline);
        }
        if self.listener.start_draining() {
            self.outbox.push(Request::Op(Op::MeasureBacklog));
            self.queue_listener();
        }
        // The cut, before anything else happens: how much input each connection had received.
        for token in self.conns.tokens() {
            self.outbox.push(Request::Op(Op::MeasureInput(token)));
            self.queue_if_work(token);
        }
    }

    /// The outcome of the last action, whichever it was: each goes to its `handle_*` below.
    pub fn handle_outcome(&mut self, outcome: Outcome<S>) {
        match outcome {
            Outcome::Done => {}
            Outcome::Accept(outcome) => {
                self.handle_accept(outcome);
            }
            Outcome::Register { token, registered } => self.handle_register(token, registered),
            Outcome::Read { token, outcome } => self.handle_read(token, outcome),
            Outcome::Write { token, outcome } => self.handle_write(token, outcome),
            Outcome::Delivery { token, outcome } => self.handle_delivery(token, outcome),
            Outcome::QueuedInput { token, queued } => self.handle_queued_input(token, queued),
            Outcome::Backlog(queued) => self.handle_backlog(queued),
            Outcome::Closed(outcome) => self.handle_closed(outcome),
        }
    }

    /// Outcome of [`Action::Accept`]. Returns the new connection's token, if one was admitted.
    pub fn handle_accept(&mut self, outcome: AcceptOutcome<S>) -> Option<Token> {
        self.outbox.finish(Op::Accept);
        let draining = self.listener.is_draining();
        let took_one = matches!(outcome, AcceptOutcome::Accepted(_) | AcceptOutcome::Aborted);
        if self.listener.count_accept(took_one) {
            // The last connection queued at the stop: those that came later are the kernel's to
            // refuse.
            self.close_listener();
        }
        match outcome {
            AcceptOutcome::Accepted(sock) => return self.admit(sock),
            AcceptOutcome::WouldBlock if draining => self.close_listener(),
            AcceptOutcome::WouldBlock => self.listener.on_empty(),
            AcceptOutcome::Interrupted | AcceptOutcome::Aborted => {}
            AcceptOutcome::Exhausted(_) | AcceptOutcome::Failed => {
                self.counts.count(match outcome {
                    AcceptOutcome::Exhausted(kind) => exhausted_counter(kind),
                    _ => Counter::AcceptFailed,
                });
                if draining {
                    // No descriptor for the rest of the queue: the kernel resets it.
                    self.close_listener();
                } else {
                    self.timers.back_off_accepting(self.now);
                }
            }
        }
        None
    }

    /// Outcome of [`Action::MeasureBacklog`]: how many connections the accept queue held when the
    /// worker took the stop (`None`: the kernel could not tell, so the queue is accepted until it
    /// reads empty).
    pub fn handle_backlog(&mut self, queued: Option<usize>) {
        self.outbox.finish(Op::MeasureBacklog);
        if self.listener.on_backlog(queued) {
            self.close_listener();
        }
    }

    /// Outcome of [`Action::MeasureInput`]: how many bytes had arrived on this connection when the
    /// worker took the stop (`None`: the kernel could not tell, so none are owed).
    pub fn handle_queued_input(&mut self, token: Token, queued: Option<usize>) {
        self.outbox.finish(Op::MeasureInput(token));
        if let Some(conn) = self.conns.get_mut(token) {
            let queued = queued.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
            conn.on_cut(queued);
            if conn.awaits_first_request() {
                // Its grace ends with the first delivery check.
                self.timers.check_delivery_later(self.now);
            }
        }
        // Work before any edge: the echo of what arrived, or our FIN.
        self.queue_if_work(token);
    }

    /// Outcome of [`Action::Register`]; a connection that cannot be registered is closed.
    pub fn handle_register(&mut self, token: Token, registered: bool) {
        self.outbox.finish(Op::Register(token));
        if registered && self.is_stopping() {
            // Accepted from the queue the stop found: its cut is what it sent by its accept.
            self.outbox.issue(Op::MeasureInput(token));
        } else if registered {
            self.queue_if_work(token);
        } else {
            self.close(token, Cause::Unserved);
        }
    }

    /// Outcome of [`Action::CheckDelivery`]: a connection whose peer acknowledged every byte
    /// written is closed once its input reads empty; the others are asked about again later.
    pub fn handle_delivery(&mut self, token: Token, outcome: AckOutcome) {
        self.outbox.finish(Op::Delivery(token));
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if conn.on_delivery(outcome) {
            self.timers.check_delivery_later(self.now);
        }
    }

    /// Outcome of [`Action::MeasureAndClose`]: what the peer acknowledged is delivered, the rest
    /// counted by why the connection closed.
    pub fn handle_closed(&mut self, outcome: AckOutcome) {
        let Measured { written, cause } = self.outbox.finish_measured();
        let delivered = outcome.delivered_of(written);
        self.counts.add(Counter::BytesDelivered, delivered);
        self.counts
            .add(cause.unacked_counter(), written - delivered);
    }

    /// Outcome of [`Action::Read`]; for `Data(n)` the bytes are in the buffer the action lent.
    pub fn handle_read(&mut self, token: Token, outcome: ReadOutcome) {
        let (asked, tick) = (self.outbox.read_in_flight(token), self.tick());
        self.outbox.finish_io();
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        match outcome {
            ReadOutcome::Data(n) => {
                assert!(n > 0 && n <= asked, "read returned {n} of {asked} bytes");
                conn.on_data(n, asked, tick);
                if matches!(conn.output(), Output::Shut(_)) {
                    self.counts.add(Counter::BytesDiscarded, n as u64);
                } else if conn.output() == Output::Expired {
                    // Arrived before the stop, too late to be echoed.
                    self.counts.add(Counter::BytesRead, n as u64);
                    self.counts.add(Counter::BytesDropped, n as u64);
                } else if conn.pending.is_empty() && conn.output() == Output::Open {
                    self.counts.add(Counter::BytesRead, n as u64);
                    self.outbox.issue(Op::Write(token, Source::Scratch(n)));
                } else {
                    self.counts.add(Counter::BytesRead, n as u64);
                    let cap = self.settings.max_pending;
                    conn.pending.push(&self.scratch[..n], cap);
                    note_pending(conn, cap, &mut self.counts);
                }
            }
            ReadOutcome::Eof => conn.on_eof(),
            ReadOutcome::WouldBlock => conn.on_would_block(),
            ReadOutcome::Interrupted => self.outbox.issue(Op::Read(token, asked)),
            ReadOutcome::Failed(why) => conn.fail(why),
        }
    }

    /// Outcome of [`Action::Write`].
    pub fn handle_write(&mut self, token: Token, outcome: WriteOutcome) {
        let (source, tick) = (self.outbox.write_in_flight(token), self.tick());
        self.outbox.finish_io();
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let offered = match source {
            Source::Scratch(n) => n,
            Source::Pending => conn.pending.len(),
        };
        let written = match outcome {
            WriteOutcome::Wrote(k) => {
                assert!(k <= offered, "wrote {k} of {offered} bytes");
                k
            }
            WriteOutcome::Interrupted => {
                self.outbox.issue(Op::Write(token, source));
                return;
            }
            WriteOutcome::WouldBlock => 0,
            WriteOutcome::Failed(why) => {
                conn.fail(why);
                0
            }
        };
        self.counts.add(Counter::BytesWritten, written as u64);
        conn.on_written(written, offered, tick);
        match source {
            Source::Scratch(n) => {
                let rest = &self.scratch[written..n];
                if conn.has_failed() {
                    self.counts.add(Counter::BytesDropped, rest.len() as u64);
                } else if !rest.is_empty() {
                    let cap = self.settings.max_pending;
                    conn.pending.push(rest, cap);
                    note_pending(conn, cap, &mut self.counts);
                }
            }
            Source::Pending => conn.pending.consume(written),
        }
    }

    // ----- outputs -----

    /// The next thing the shell must do, or `None` when this round is over.
    pub fn poll_action(&mut self) -> Option<Action<'_, S>> {
        assert!(
            !self.outbox.awaits(),
            "poll_action before the last outcome was handled"
        );
        loop {
            if let Some(request) = self.outbox.pop() {
                return Some(self.lend(request));
            }
            if let Some(turn) = self.scheduler.turn() {
                self.continue_turn(turn);
                continue;
            }
            if self.phase == Phase::Stopping && self.listener.is_closed() && self.conns.len() == 0 {
                // The last descriptors: the epoll instance and the wake-up channel.
                self.phase = Phase::Done;
                self.counts.add(Counter::DescriptorsClosed, 2);
                self.outbox.push(Request::CloseShell);
                continue;
            }
            let token = self.scheduler.next_in_round()?;
            self.begin_turn(token);
        }
    }

    /// When the shell must call [`Dispatcher::handle_time`] at the latest (`None`: only on events).
    /// Equals the current time while work is queued, so the shell polls without blocking.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.scheduler.has_queued() || self.outbox.has_queued() {
            return Some(self.now);
        }
        self.timers.next()
    }

    /// True once shutdown completed: every descriptor closed, the shell's last. (`Done` is set
    /// by the `poll_action` that hands out that last close, after everything else was reported,
    /// and nothing can queue anything after it.)
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// True once [`Dispatcher::handle_stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.phase != Phase::Running
    }

    /// Counters so far.
    pub fn report(&self) -> Report {
        self.counts
    }

    /// Connections open right now.
    #[cfg(test)]
    pub fn active_connections(&self) -> usize {
        self.conns.len()
    }

    /// Bytes held in pending output, summed over connections.
    #[cfg(test)]
    pub fn pending_bytes(&self) -> usize {
        self.conns.values().map(|c| c.pending.len()).sum()
    }

    /// The action for `request`, lending the socket and bytes it names. Reads go into the scratch
    /// buffer and an echo is written straight from it: only what the kernel does not take is
    /// copied, into the pending output.
    fn lend(&mut self, request: Request<S>) -> Action<'_, S> {
        match request {
            Request::Op(op) => self.lend_op(op),
            Request::ShutdownWrite(token) => Action::ShutdownWrite {
                token,
                sock: self.socket(token),
            },
            Request::Close(sock) => Action::Close(sock),
            Request::MeasureAndClose(sock, _) => Action::MeasureAndClose(sock),
            Request::CloseListener => Action::CloseListener,
            Request::CloseShell => Action::CloseShell,
        }
    }

    /// The action for an operation named by token, lending its connection's socket and, for a
    /// read or a write, the bytes.
    fn lend_op(&mut self, op: Op) -> Action<'_, S> {
        match op {
            Op::Accept => Action::Accept,
            Op::MeasureBacklog => Action::MeasureBacklog,
            Op::Register(token) => Action::Register {
                token,
                sock: self.socket(token),
            },
            Op::Delivery(token) => Action::CheckDelivery {
                token,
                sock: self.socket(token),
            },
            Op::MeasureInput(token) => Action::MeasureInput {
                token,
                sock: self.socket(token),
            },
            Op::Read(token, len) => {
                let conn = self.conns.get(token).expect("read of a closed connection");
                Action::Read {
                    token,
                    sock: &conn.sock,
                    buf: &mut self.scratch[..len],
                }
            }
            Op::Write(token, source) => {
                let conn = self.conns.get(token).expect("write of a closed connection");
                let bytes = match source {
                    Source::Scratch(n) => &self.scratch[..n],
                    Source::Pending => conn.pending.as_slice(),
                };
                Action::Write {
                    token,
                    sock: &conn.sock,
                    bytes,
                }
            }
        }
    }

    // ----- internals -----

    /// The socket of a live connection; a bug if the connection is gone.
    fn socket(&self, token: Token) -> &S {
        &self
            .conns
            .get(token)
            .expect("socket of a closed connection")
            .sock
    }

    fn room(&self) -> Room {
        Room {
            cap: self.settings.max_pending,
            scratch: self.settings.scratch_len,
        }
    }

    /// The idle-clock tick of now (0 without an idle timeout).
    fn tick(&self) -> u32 {
        self.idle.map_or(0, |clock| clock.tick(self.now))
    }

    /// A new connection: admitted under the connection limit and registered next, or closed.
    fn admit(&mut self, sock: S) -> Option<Token> {
        self.timers.accept_succeeded();
        if let Some(lease) = &mut self.lease {
            if !lease.try_acquire() {
                self.counts.count(Counter::Rejected);
                self.close_socket(sock);
                return None;
            }
        }
        self.counts.count(Counter::Accepted);
        let token = self.conns.insert(Conn::new(sock, self.tick()));
        if let (Some(clock), Phase::Running) = (self.idle, self.phase) {
            if !self.timers.is_set(Timer::IdleSweep) {
                self.timers.set(Timer::IdleSweep, self.now + clock.period());
            }
        }
        self.outbox.issue(Op::Register(token));
        Some(token)
    }

    /// Closes a connection for `cause`. Unless the kernel already proved every byte written
    /// acknowledged (or nothing was written), the kernel is asked first what the peer holds.
    fn close(&mut self, token: Token, cause: Cause) {
        let Some(conn) = self.remove(token) else {
            return;
        };
        if let Some(counter) = cause.close_counter() {
            self.counts.count(counter);
        }
        if conn.delivered() {
            self.counts.add(Counter::BytesDelivered, conn.written());
            self.close_socket(conn.sock);
        } else {
            let measured = Measured {
                written: conn.written(),
                cause,
            };
            self.outbox
                .push(Request::MeasureAndClose(conn.sock, measured));
            self.counts.count(Counter::DescriptorsClosed);
        }
    }

    /// Takes a connection out of the table and counts its close.
    fn remove(&mut self, token: Token) -> Option<Conn<S>> {
        let mut conn = self.conns.remove(token)?;
        self.counts.count(Counter::Closed);
        self.counts
            .add(Counter::BytesDropped, conn.pending.discard() as u64);
        if let Some(lease) = &mut self.lease {
            lease.release();
        }
        if self.timers.clear(Timer::AcceptRetry) {
            // A descriptor is being freed: the accept that failed may succeed now.
            self.queue_listener();
        }
        Some(conn)
    }

    fn close_socket(&mut self, sock: S) {
        self.outbox.push(Request::Close(sock));
        self.counts.count(Counter::DescriptorsClosed);
    }

    /// Closes the listener (at the stop, once the queue is accepted or cannot be).
    fn close_listener(&mut self) {
        if self.listener.close() {
            self.outbox.push(Request::CloseListener);
            self.counts.count(Counter::DescriptorsClosed);
        }
    }

    fn close_all_at_deadline(&mut self) {
        self.close_listener();
        for token in self.conns.tokens() {
            let Some(conn) = self.conns.get_mut(token) else {
                continue;
            };
            if conn.has_failed() {
                // A connection that failed is closed for its error, whenever that happens.
                self.close(token, Cause::Error);
            } else if conn.owes_input() {
                // Input that arrived before the stop is read out first, so the close sends no
                // reset; it is dropped.
                conn.expire();
                self.queue_if_work(token);
            } else {
                self.close(token, Cause::Deadline);
            }
        }
    }

    /// The check timer fired: every connection still waiting for its peer's acknowledgement is
    /// asked about again, and the grace for first requests ends.
    fn recheck_delivery(&mut self) {
        for token in self.conns.tokens() {
            if self.conns.get_mut(token).is_some_and(Conn::on_check_timer) {
                self.queue_if_work(token);
            }
        }
    }

    /// Closes every connection silent for the idle timeout; schedules the next sweep.
    fn close_idle(&mut self) {
        let Some(clock) = self.idle else { return };
        for token in self.conns.tokens() {
            let silent = self
                .conns
                .get(token)
                .is_some_and(|c| clock.expired(c.last_active(), self.now));
            if silent {
                // One that failed meanwhile is closed for its error, as at the deadline.
                let failed = self.conns.get(token).is_some_and(Conn::has_failed);
                self.close(token, if failed { Cause::Error } else { Cause::Idle });
            }
        }
        match after(self.now, clock.period()).filter(|_| self.conns.len() > 0) {
            Some(next) => self.timers.set(Timer::IdleSweep, next),
            None => {
                self.timers.clear(Timer::IdleSweep);
            }
        }
    }
}

/// The counter of one kind of accept failure.
fn exhausted_counter(kind: ResourceError) -> Counter {
    match kind {
        ResourceError::ProcessDescriptors => Counter::AcceptEmfile,
        ResourceError::SystemDescriptors => Counter::AcceptEnfile,
        ResourceError::Buffers => Counter::AcceptEnobufs,
        ResourceError::Memory => Counter::AcceptEnomem,
    }
}

/// Records a connection's pending output after it grew: the high-water mark, and a backpressure
/// pause when it reached the cap (reading stops until it drains, whatever readiness says).
/// A push always adds at least one byte, so reaching the cap here is a new pause, never a repeat.
fn note_pending<S>(conn: &Conn<S>, cap: usize, counts: &mut Report) {
    let len = conn.pending.len();
    counts.add(Counter::PendingHighWater, len as u64);
    if len == cap {
        counts.count(Counter::BackpressurePauses);
    }
}
