//! The oracle: the rules that judge the worker, checked at each system call it makes against the
//! oracle's own record of every connection.
//!
//! The oracle never changes the model; it reads it. The simulated shell ([`crate::sim::shell`])
//! shows it each call before the model answers (what the worker asked for, on what) and after
//! (what the model answered), and each wait's batch. From those it keeps, per connection, what
//! the worker read for echo, wrote, discarded and was told (an error, what was acknowledged), the
//! stop's cut and how each close came about; a broken rule panics at once (strict) or is recorded.
//!
//! At the end of a run [`audit`] holds the worker's report against that record.

mod audit;

use std::io;
use std::time::Duration;

use super::model::link::{Break, Stage};
use super::model::{Kernel, SimSocket};
use super::trace::Nanos;
use crate::dispatch::{Readiness, Settings, Token, MAX_DELIVERY_CHECK};

/// Operations in one round before the worker counts as looping forever.
const MAX_OPS_PER_WAIT: usize = 20_000;

/// A rule of the worker's contract, broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A byte written is not the next byte its client sent; a write after the FIN or of nothing;
    /// a close that resets a client with echo in flight.
    Echo,
    /// Bytes read and not yet written exceed the pending-output cap.
    Cap,
    /// A close for silence of a connection that was not silent for the idle timeout, or with
    /// none configured.
    Idle,
    /// An operation on a closed or never-accepted socket, or the closed listener.
    ClosedOp,
    /// An accept after the stop beyond the connections queued when it came; a FIN before it; an
    /// echo read past the stop's cut (but for a first request); a close during the stop, before
    /// the deadline and without an error, of a connection whose peer had not acknowledged every
    /// byte.
    Stop,
}

/// One broken rule and what broke it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub rule: Rule,
    pub what: String,
}

/// The worker's settings the rules hold it to.
#[derive(Clone, Debug)]
pub struct Terms {
    /// The worker's pending-output cap.
    pub max_pending: usize,
    /// The worker's drain timeout: closes after the deadline may reset clients.
    pub drain: Duration,
    /// The worker's idle timeout: a connection silent this long may be closed before the stop.
    pub idle: Option<Duration>,
    /// Panic at the first broken rule (else record it and go on).
    pub strict: bool,
}

impl Terms {
    /// The terms of a worker with `settings`, strict.
    pub fn of(settings: &Settings) -> Terms {
        Terms {
            max_pending: settings.max_pending,
            drain: settings.drain_timeout,
            idle: settings.idle_timeout,
            strict: true,
        }
    }
}

/// What the oracle knows of one connection: what the worker did with its bytes and what it was
/// told.
#[derive(Clone, Debug)]
pub struct Record {
    /// Bytes read before the server shut its write side: to be echoed.
    pub echo_read: u64,
    /// Bytes read after the server shut its write side: discarded.
    pub discarded: u64,
    /// Bytes of echo written.
    pub written: u64,
    /// A read returned EOF.
    pub eof_read: bool,
    /// A read returned EOF before the stop.
    pub eof_before_stop: bool,
    /// The server closed it before the stop.
    pub closed_before_stop: bool,
    /// The server closed it at or after the drain deadline.
    pub deadline_close: bool,
    /// The server closed it for silence (before the stop, without an error or its peer's EOF).
    pub idle_close: bool,
    /// The worker was told of an error on this socket: an error event or a failed read or write.
    pub error_told: bool,
    /// What the client's kernel had acknowledged when the server closed the socket.
    pub acked_at_close: Option<u64>,
    /// When the kernel last told the worker that not every byte written was acknowledged.
    pub told_unacked_at: Nanos,
    /// The stop's cut: how much the client had sent when the worker took the stop (or, queued in
    /// the backlog then, when it was accepted). All of it is owed an echo before the deadline.
    pub cut: Option<u64>,
    /// When the worker last read or wrote a byte on it (or accepted it).
    pub last_io: Nanos,
    /// Why the end-of-run echo checks do not apply, if the worker's side made them moot.
    excluded: Option<&'static str>,
}

impl Record {
    /// A connection the worker has not touched.
    const NEW: Record = Record {
        echo_read: 0,
        discarded: 0,
        written: 0,
        eof_read: false,
        eof_before_stop: false,
        closed_before_stop: false,
        deadline_close: false,
        idle_close: false,
        error_told: false,
        acked_at_close: None,
        told_unacked_at: 0,
        cut: None,
        last_io: 0,
        excluded: None,
    };
}

/// When the worker took the stop.
#[derive(Clone, Copy, Debug)]
struct StopTaken {
    at: Nanos,
    /// Links that existed then: any later one connected after the stop.
    links: usize,
}

/// The rules, and the record they are checked against.
pub struct Oracle {
    terms: Terms,
    records: Vec<Record>,
    stop: Option<StopTaken>,
    ops_since_wait: usize,
    /// When the worker's previous wait returned, and its latest.
    waits: (Option<Nanos>, Option<Nanos>),
    /// The last accept failed for lack of descriptors: the backlog cannot be drained.
    exhausted: bool,
    violations: Vec<Violation>,
    /// Violations recorded and not yet shown in the trace.
    unreported: usize,
}

impl Oracle {
    pub fn new(terms: Terms) -> Oracle {
        Oracle {
            terms,
            records: Vec::new(),
            stop: None,
            ops_since_wait: 0,
            waits: (None, None),
            exhausted: false,
            violations: Vec::new(),
            unreported: 0,
        }
    }

    /// What the oracle knows of `link`.
    pub fn record(&self, link: usize) -> &Record {
        self.records.get(link).unwrap_or(&Record::NEW)
    }

    fn rec(&mut self, link: usize) -> &mut Record {
        if link >= self.records.len() {
            self.records.resize(link + 1, Record::NEW);
        }
        &mut self.records[link]
    }

    /// Why the end-of-run echo checks do not apply to `link`, if they do not: the worker could
    /// not register it or closed it unregistered or racing input, or the client or the network
    /// broke it.
    pub fn excluded<E>(&self, k: &Kernel<E>, link: usize) -> Option<&'static str> {
        self.record(link).excluded.or(match k.links[link].broken {
            Break::Intact => None,
            Break::Reset => Some("reset"),
            Break::Gone => Some("vanished"),
        })
    }

    /// When the worker learnt of the stop (the wake-up was delivered).
    pub fn stop_at(&self) -> Option<Nanos> {
        self.stop.map(|s| s.at)
    }

    /// The drain deadline has passed.
    pub fn past_deadline(&self, now: Nanos) -> bool {
        let drain = self.terms.drain.as_nanos().min(u128::from(u64::MAX)) as Nanos;
        self.stop_at()
            .is_some_and(|t| now >= t.saturating_add(drain))
    }

    /// The client of `link` connected after the worker took the stop: the kernel may refuse it.
    fn after_stop(&self, link: usize) -> bool {
        self.stop.is_some_and(|s| link >= s.links)
    }

    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Violations recorded since the last call, for the trace.
    pub fn take_unreported(&mut self) -> &[Violation] {
        let from = self.unreported;
        self.unreported = self.violations.len();
        &self.violations[from..]
    }

    /// The model's picture of every link with the oracle's record beside it, for a failure report.
    pub fn state_dump<E>(&self, k: &Kernel<E>) -> String {
        let mut out = format!("stop_at={:?}\n{}", self.stop_at(), k.state_dump());
        for link in 0..k.links.len() {
            let excluded = self.excluded(k, link);
            let record = self.record(link);
            out.push_str(&format!(
                "  record {link}: excluded={excluded:?} {record:?}\n"
            ));
        }
        out
    }

    fn violate<E>(&mut self, k: &Kernel<E>, rule: Rule, what: String) {
        if self.terms.strict {
            panic!("{rule:?} rule broken: {what}\n{}", self.state_dump(k));
        }
        self.violations.push(Violation { rule, what });
    }

    // ----- waits -----

    /// The worker waits: a round of operations ended.
    pub fn waited<E>(&mut self, k: &Kernel<E>) {
        self.ops_since_wait = 0;
        self.waits = (self.waits.1, Some(k.now()));
    }

    /// A wait reported `batch`. Returns true when it carried the stop to the worker.
    pub fn told_events<E>(&mut self, k: &Kernel<E>, batch: &[(Token, Readiness)]) -> bool {
        let woken = batch.iter().any(|(t, _)| *t == Token::WAKER);
        let takes_stop = woken && self.stop.is_none();
        if takes_stop {
            self.stop = Some(StopTaken {
                at: k.now(),
                links: k.links.len(),
            });
            // The cut: what arrived on each open socket is owed an echo; connections queued
            // now are owed what they sent by their accept.
            for (link, l) in k.links.iter().enumerate().filter(|(_, l)| l.is_open()) {
                self.rec(link).cut = Some(l.up.sent.len() as u64);
            }
        }
        for (token, _) in batch.iter().filter(|(_, r)| r.error) {
            let open = k
                .links
                .iter()
                .position(|l| l.token == Some(*token) && l.is_open());
            if let Some(link) = open {
                self.rec(link).error_told = true;
            }
        }
        takes_stop
    }

    // ----- before each call -----

    /// Counts an operation; a round that never ends is a bug in the loop, reported at once.
    fn op<E>(&mut self, k: &Kernel<E>) {
        self.ops_since_wait += 1;
        assert!(
            self.ops_since_wait <= MAX_OPS_PER_WAIT,
            "the worker performed {MAX_OPS_PER_WAIT} operations without waiting: a round never ends\n{}",
            self.state_dump(k)
        );
    }

    /// An operation on `sock`, which the worker must hold open; returns its link if it does.
    pub fn on_socket<E>(&mut self, k: &Kernel<E>, sock: &SimSocket, what: &str) -> Option<usize> {
        self.op(k);
        let link = sock.link();
        let stage = k.links.get(link).map(|l| l.stage);
        if stage == Some(Stage::Open) {
            return Some(link);
        }
        self.violate(
            k,
            Rule::ClosedOp,
            format!("{what} on socket {link} which is {stage:?}"),
        );
        None
    }

    /// An operation on the listener, which must be open.
    pub fn on_listener<E>(&mut self, k: &Kernel<E>, what: &str) {
        self.op(k);
        if !k.listener_open() {
            self.violate(k, Rule::ClosedOp, format!("{what} on the closed listener"));
        }
    }

    pub fn register<E>(&mut self, k: &Kernel<E>, link: usize, token: Token) {
        if !token.is_conn() || k.links[link].token.is_some() {
            self.violate(
                k,
                Rule::ClosedOp,
                format!("socket {link} registered again or with a reserved token {token:?}"),
            );
        }
    }

    pub fn write<E>(&mut self, k: &Kernel<E>, link: usize, buf: &[u8]) {
        if k.links[link].write_shut {
            self.violate(
                k,
                Rule::Echo,
                format!("write on socket {link} after its FIN"),
            );
        } else if buf.is_empty() {
            self.violate(k, Rule::Echo, format!("empty write on socket {link}"));
        }
    }

    pub fn shutdown_write<E>(&mut self, k: &Kernel<E>, link: usize) {
        if self.stop.is_none() {
            self.violate(k, Rule::Stop, format!("socket {link} shut before the stop"));
        }
    }

    /// The worker closes `link`: judged on the state just before the close.
    pub fn close<E>(&mut self, k: &Kernel<E>, link: usize) {
        let now = k.now();
        let deadline = self.past_deadline(now);
        let stopped = self.stop.is_some();
        if deadline {
            self.check_not_held_for_nothing(k, link);
        }
        let l = &k.links[link];
        let unread = l.up.queued();
        let r = self.record(link);
        // Before the stop, a served connection closes in order only after its peer's EOF with all
        // of it echoed; any other close without an error is one for silence.
        let orderly = r.eof_read && r.written == r.echo_read;
        let idle_close = !stopped && !r.error_told && !orderly && l.token.is_some();
        if idle_close {
            self.check_silent_for_the_timeout(k, link);
        }
        let r = self.record(link);
        let (acked, written) = (l.down.acked, r.written);
        if stopped && !deadline && !r.error_told && acked < written {
            let what = format!(
                "socket {link} closed during the stop with {} of {written} bytes unacknowledged",
                written - acked
            );
            self.violate(k, Rule::Stop, what);
        }
        if l.token.is_none() && self.excluded(k, link).is_none() {
            // Closed before it was registered: the connection limit turned it away.
            self.rec(link).excluded = Some("closed before registration");
        }
        // Input whose edge the worker has not been given yet arrived after its last look: every
        // close races such a late arrival, and the race is the peer's to lose.
        let raced = l.token.is_some_and(|t| k.readable_pending(t));
        if raced && unread > 0 && self.excluded(k, link).is_none() && !deadline {
            self.rec(link).excluded = Some("input arrived just before the close");
        }
        // A cut (the deadline, the idle timeout) may reset: its unacknowledged bytes are counted.
        let excused = deadline || idle_close || self.excluded(k, link).is_some();
        let r = self.rec(link);
        r.deadline_close = deadline;
        r.idle_close = idle_close;
        r.acked_at_close = Some(acked);
        r.closed_before_stop = !stopped;
        // Closing with unread input sends RST, which destroys echo the client has not got.
        if unread > 0 && l.broken != Break::Reset && !excused {
            self.violate(
                k,
                Rule::Echo,
                format!("socket {link} closed with {unread} unread bytes: the client gets RST"),
            );
        }
    }

    pub fn close_listener<E>(&mut self, k: &Kernel<E>) {
        self.op(k);
        if !k.listener_open() {
            self.violate(k, Rule::ClosedOp, "listener closed twice".into());
            return;
        }
        let waiting = k.backlog().filter(|&l| !self.after_stop(l)).count();
        let excused = self.exhausted || self.past_deadline(k.now()) || self.terms.drain.is_zero();
        if waiting > 0 && !excused {
            self.violate(
                k,
                Rule::Stop,
                format!("the listener closed with {waiting} connection(s) queued: they are reset"),
            );
        }
    }

    pub fn clear_wake<E>(&mut self, k: &Kernel<E>) {
        assert!(k.waker_pending(), "clear_wake without a wake-up");
    }

    /// The worker closes its epoll instance and wake-up channel: its last operation.
    pub fn close_shell<E>(&mut self, k: &Kernel<E>) {
        self.op(k);
        let open = k.links.iter().filter(|l| l.is_open()).count();
        if k.shell_closed() || k.listener_open() || open > 0 {
            let what = format!(
                "the shell closed again or before everything else (listener open: {}, {open} sockets open)",
                k.listener_open()
            );
            self.violate(k, Rule::ClosedOp, what);
        }
    }

    // ----- after each call: what the worker was told -----

    pub fn told_accept<E>(&mut self, k: &Kernel<E>, r: &io::Result<SimSocket>) {
        let code = r.as_ref().err().and_then(io::Error::raw_os_error);
        self.exhausted = matches!(code, Some(libc::EMFILE | libc::ENFILE));
        let Ok(sock) = r else { return };
        let link = sock.link();
        let stopped = self.stop.is_some();
        let sent = k.links[link].up.sent.len() as u64;
        let r = self.rec(link);
        r.last_io = k.now();
        if stopped {
            r.cut = Some(sent);
        }
    }

    pub fn told_register(&mut self, link: usize, r: &io::Result<()>) {
        if r.is_err() {
            self.rec(link).excluded = Some("register failed");
        }
    }

    pub fn told_read<E>(&mut self, k: &Kernel<E>, link: usize, r: &io::Result<usize>) {
        let n = match r {
            Err(e) => {
                if e.raw_os_error() == Some(libc::ECONNRESET) {
                    self.rec(link).error_told = true;
                }
                return;
            }
            Ok(0) => {
                let stopped = self.stop.is_some();
                let r = self.rec(link);
                r.eof_read = true;
                r.eof_before_stop |= !stopped;
                return;
            }
            Ok(n) => *n,
        };
        let cap = self.terms.max_pending as u64;
        let expired = self.past_deadline(k.now());
        let l = &k.links[link];
        let r = self.record(link);
        // A client that had sent nothing at the cut may have its first request echoed: it
        // connected just before the stop and its bytes race the cut.
        let first_request = r.cut == Some(0) && r.echo_read == 0;
        let past_cut = (r.cut).filter(|&cut| l.up.read as u64 > cut && !first_request);
        if let (Some(cut), false, false) = (past_cut, l.write_shut, expired) {
            let what = format!("socket {link} read for echo past the stop's cut at byte {cut}");
            self.violate(k, Rule::Stop, what);
        }
        let write_shut = l.write_shut;
        let r = self.rec(link);
        r.last_io = k.now();
        if write_shut {
            r.discarded += n as u64;
            return;
        }
        r.echo_read += n as u64;
        let held = r.echo_read - r.written;
        // Past the deadline what is read is dropped, not held.
        if held > cap && !expired {
            self.violate(
                k,
                Rule::Cap,
                format!("socket {link}: {held} bytes read and not written, over the cap {cap}"),
            );
        }
    }

    pub fn told_write<E>(&mut self, k: &Kernel<E>, link: usize, buf: &[u8], r: &io::Result<usize>) {
        let l = &k.links[link];
        let n = match r {
            Err(e) => {
                // A write after the FIN fails for the worker's own doing, not the peer's.
                if e.raw_os_error() == Some(libc::EPIPE) && !l.write_shut {
                    self.rec(link).error_told = true;
                }
                return;
            }
            Ok(n) => *n,
        };
        let at = self.record(link).written as usize;
        if l.up.sent.get(at..at + n) != Some(&buf[..n]) {
            let what = format!(
                "socket {link}: wrote {n} bytes at echo offset {at} that are not the client's bytes there"
            );
            self.violate(k, Rule::Echo, what);
        }
        let r = self.rec(link);
        r.last_io = k.now();
        r.written += n as u64;
    }

    /// The worker asked what was acknowledged, and was told.
    pub fn told_acked<E>(&mut self, k: &Kernel<E>, link: usize) {
        if k.links[link].down.acked < self.record(link).written {
            self.rec(link).told_unacked_at = k.now();
        }
    }

    // ----- the rules of a close -----

    /// A close for silence needs an idle timeout and a connection that moved no byte for it (less
    /// one sweep period: the sweep ticks at an eighth of the timeout).
    fn check_silent_for_the_timeout<E>(&mut self, k: &Kernel<E>, link: usize) {
        let silent = k.now() - self.record(link).last_io;
        let what = match self.terms.idle {
            None => format!("socket {link} closed before the stop without an error or its EOF"),
            Some(idle) => {
                let least = idle.as_nanos() as Nanos - idle.as_nanos() as Nanos / 8;
                if silent >= least {
                    return;
                }
                format!(
                    "socket {link} closed for silence after {}us without a byte, under the {idle:?} timeout",
                    silent / 1_000
                )
            }
        };
        self.violate(k, Rule::Idle, what);
    }

    /// A connection closed at the drain deadline must not be one whose peer had held every byte for
    /// a while: the stop waits for delivery, not for the peer to close.
    fn check_not_held_for_nothing<E>(&mut self, k: &Kernel<E>, link: usize) {
        let l = &k.links[link];
        let held_all = l.write_shut
            && l.broken == Break::Intact
            && l.down.queue.is_empty()
            && l.up.queued() == 0;
        // The worker must have woken at least once, a grace period after the peer held it all
        // and the kernel last said otherwise, and still not closed it (a model test may let
        // virtual time jump with no turn between).
        let grace = 2 * MAX_DELIVERY_CHECK.as_nanos() as Nanos;
        let since = l.last_active.max(self.record(link).told_unacked_at);
        let woke_after_grace = self.waits.0.is_some_and(|w| w >= since + grace);
        let quiet = k.now() - since;
        if held_all && woke_after_grace {
            self.violate(
                k,
                Rule::Stop,
                format!(
                    "socket {link} closed at the drain deadline though its peer had held every byte for {}us",
                    quiet / 1_000
                ),
            );
        }
    }
}
