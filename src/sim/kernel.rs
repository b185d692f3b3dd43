//! The one simulated kernel under every test layer: a virtual clock, a listener with a bounded
//! backlog, one [`Link`] per connection, an epoll ready list, the waker and a descriptor limit.
//!
//! The server's side is the system calls the worker makes through [`Io`] (via [`Sim`]); each draws
//! its faults from the [`Faults`] rates and checks the rules a worker must keep, recording or
//! panicking on a break. The other side is the clients', driven by whichever layer runs the kernel
//! (scheduled clients, model steps, fuzz input) through `connect`, `client_send` and the like.
//!
//! Readiness is edge-triggered the way Linux reports it (see [`Link`]); injected faults that Linux
//! could not produce alone (a short read with more queued, a would-block with room) are paired with
//! the edge that would follow. Edges for one token merge into one ready-list entry, as epoll does.
//!
//! The kernel is also the oracle of delivery: it keeps its own record of what each client's kernel
//! acknowledged (landed in its receive buffer, read or not), of what a connection error destroyed
//! and of a FIN that waits for window, and at each close it takes the cause from what the worker
//! was told (an error), the clock (the drain deadline) and the stop. The audit holds the report's
//! delivered, in-flight, unacknowledged and lost bytes against that record.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use super::entropy::Entropy;
use super::faults::{Fault, Faults};
use super::link::{Break, Link, Stage};
use super::trace::{logged, Ev, Nanos, Trace};
use super::Readiness;
use crate::dispatch::{Settings, Token, MAX_DELIVERY_CHECK};
use crate::io::Io;
use crate::report::{Counter, Report};

/// A connection socket as the worker holds it: the index of its link. Not `Clone`, so the worker
/// cannot duplicate it; one left unclosed at the end is a leak.
#[derive(Debug, PartialEq, Eq)]
pub struct SimSocket(usize);

/// Operations in one round before the worker counts as looping forever.
const MAX_OPS_PER_WAIT: usize = 20_000;
/// Trace lines kept for a failure report.
const TRACE_LEN: usize = 400;

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
    /// echo read past the stop's cut (but for a first request); a close during the stop, before the deadline and without an
    /// error, of a connection whose peer had not acknowledged every byte.
    Stop,
}

/// One broken rule and what broke it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub rule: Rule,
    pub what: String,
}

/// The fixed facts of one simulated kernel.
#[derive(Clone, Debug)]
pub struct Setup {
    pub faults: Faults,
    /// Connections the listener's backlog holds.
    pub backlog_cap: usize,
    /// Descriptors the worker may hold before `accept` fails with `EMFILE`.
    pub fd_limit: usize,
    /// The worker's pending-output cap, which the rules check.
    pub max_pending: usize,
    /// The worker's drain timeout: closes after the deadline may reset clients.
    pub drain: Duration,
    /// The worker's idle timeout: a connection silent this long may be closed before the stop.
    pub idle: Option<Duration>,
    /// Panic at the first broken rule (else record it and go on).
    pub strict: bool,
}

impl Setup {
    /// A kernel for a worker with `settings`: no backlog or descriptor limit, strict rules.
    pub fn for_worker(settings: &Settings, faults: Faults) -> Setup {
        Setup {
            faults,
            backlog_cap: usize::MAX,
            fd_limit: usize::MAX,
            max_pending: settings.max_pending,
            drain: settings.drain_timeout,
            idle: settings.idle_timeout,
            strict: true,
        }
    }
}

/// What the kernel saw, for the audit and for the tests' coverage checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub waits: u64,
    /// Connections `accept` returned.
    pub accepted: u64,
    pub emfile: u64,
    pub enfile: u64,
    pub aborted: u64,
    /// Descriptors the worker closed (connections and the listener).
    pub closes: u64,
    pub short_reads: u64,
    pub short_writes: u64,
    /// Reads that stopped at an urgent mark with more queued.
    pub urgent_stops: u64,
}

#[derive(Debug)]
struct Listener {
    open: bool,
    closes: u32,
    backlog: VecDeque<usize>,
    cap: usize,
    /// When the worker last called `accept`.
    last_accept: Option<Nanos>,
    /// The last accept failed for lack of descriptors: the backlog cannot be drained.
    exhausted: bool,
}

/// What the worker did lately, for liveness checks.
#[derive(Debug, Default)]
struct Activity {
    /// When the worker's previous wait returned, and its latest.
    waits: (Option<Nanos>, Option<Nanos>),
    /// Bumped by every operation that changes what a client or the worker sees.
    progress: u64,
    ops_since_wait: usize,
    /// Links the worker touched since the last wait, whose clients may want to act.
    touched: Vec<usize>,
}

/// The epoll instance: its ready list and the waker's pending wake-up.
#[derive(Debug, Default)]
struct Epoll {
    /// Merged pending edges, in the order they were first raised.
    ready: Vec<(Token, Readiness)>,
    waker: bool,
    /// Tokens of closed connections, for stale events.
    closed: Vec<Token>,
    /// The worker closed its epoll instance and wake-up channel.
    shut: bool,
}

/// The simulated kernel of one worker. `E` chooses every fault and, for the layer driving the
/// clients, their behaviour.
pub struct Kernel<E> {
    pub rng: E,
    pub choices: Choices,
    /// Virtual time zero, and the time now.
    clock: (Instant, Nanos),
    setup: Setup,
    listener: Listener,
    pub links: Vec<Link>,
    epoll: Epoll,
    open_fds: usize,
    /// When the worker learnt of the stop (the wake-up was delivered).
    stop_at: Option<Nanos>,
    activity: Activity,
    /// Broken rules (when not strict) and the trace of the latest operations.
    findings: (Vec<Violation>, Trace),
    pub counts: Counts,
}

impl<E: Entropy> Kernel<E> {
    pub fn new(rng: E, setup: Setup) -> Self {
        Kernel {
            rng,
            choices: Choices {
                faults: setup.faults.clone(),
                steer: None,
            },
            clock: (Instant::now(), 0),
            listener: Listener {
                open: true,
                closes: 0,
                backlog: VecDeque::new(),
                cap: setup.backlog_cap.max(1),
                last_accept: None,
                exhausted: false,
            },
            setup,
            links: Vec::new(),
            epoll: Epoll::default(),
            open_fds: 0,
            stop_at: None,
            activity: Activity::default(),
            findings: (Vec::new(), Trace::new(TRACE_LEN)),
            counts: Counts::default(),
        }
    }

    // ----- time, state and reports -----

    pub fn now(&self) -> Nanos {
        self.clock.1
    }

    pub fn advance_to(&mut self, t: Nanos) {
        self.clock.1 = self.clock.1.max(t);
    }

    pub fn advance(&mut self, by: Duration) {
        self.clock.1 += by.as_nanos() as Nanos;
    }

    pub fn instant(&self) -> Instant {
        self.clock.0 + Duration::from_nanos(self.clock.1)
    }

    /// The virtual time of an instant the worker gave.
    pub fn virtual_of(&self, t: Instant) -> Nanos {
        t.saturating_duration_since(self.clock.0)
            .as_nanos()
            .min(u128::from(u64::MAX)) as Nanos
    }

    /// When the worker learnt of the stop.
    pub fn stop_at(&self) -> Option<Nanos> {
        self.stop_at
    }

    /// The drain deadline has passed.
    pub fn past_deadline(&self) -> bool {
        let drain = self.setup.drain.as_nanos().min(u128::from(u64::MAX)) as Nanos;
        self.stop_at
            .is_some_and(|t| self.now() >= t.saturating_add(drain))
    }

    pub fn listener_open(&self) -> bool {
        self.listener.open
    }

    pub fn listener_closes(&self) -> u32 {
        self.listener.closes
    }

    pub fn backlog_len(&self) -> usize {
        self.listener.backlog.len()
    }

    /// When the worker last called `accept`.
    pub fn last_accept(&self) -> Option<Nanos> {
        self.listener.last_accept
    }

    pub fn open_fds(&self) -> usize {
        self.open_fds
    }

    pub fn fd_limit(&self) -> usize {
        self.setup.fd_limit
    }

    /// An edge or the wake-up is waiting to be delivered.
    pub fn has_ready(&self) -> bool {
        !self.epoll.ready.is_empty() || self.epoll.waker
    }

    pub fn progress(&self) -> u64 {
        self.activity.progress
    }

    /// The links touched by the worker since the last call.
    pub fn take_touched(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.activity.touched)
    }

    pub fn violations(&self) -> &[Violation] {
        &self.findings.0
    }

    pub fn trace(&self) -> String {
        self.findings.1.render()
    }

    pub fn note(&mut self, ev: Ev) {
        self.findings.1.push(ev);
    }

    /// A one-paragraph picture of every link, for a failure report.
    pub fn state_dump(&self) -> String {
        let mut out = format!(
            "now={}us stop_at={:?} listener_open={} backlog={:?} open_fds={}\n",
            self.now() / 1_000,
            self.stop_at,
            self.listener.open,
            self.listener.backlog,
            self.open_fds
        );
        for (i, l) in self.links.iter().enumerate() {
            out.push_str(&format!(
                "  link {i}: {:?} {:?} excluded={:?} sent={} fin={} unread={} | queued_out={} \
                 out_fin={} landed={} acked={} fin_acked={} received={} eof_seen={} | {:?} \
                 shut={} want_write={}\n",
                l.stage,
                l.broken,
                l.excluded,
                l.up.sent.len(),
                l.up.fin,
                l.up.queued(),
                l.down.queue.len(),
                l.down.fin,
                l.down.inbox.len(),
                l.down.acked,
                l.down.fin_acked,
                l.down.received,
                l.down.saw_eof,
                l.audit,
                l.write_shut,
                l.down.want_write,
            ));
        }
        out
    }

    fn violate(&mut self, rule: Rule, what: String) {
        if self.setup.strict {
            panic!("{rule:?} rule broken: {what}\n{}", self.state_dump());
        }
        self.note(Ev::Note(format!("VIOLATION {rule:?}: {what}")));
        self.findings.0.push(Violation { rule, what });
    }

    /// Whether `fault` strikes this operation.
    fn fault(&mut self, fault: Fault) -> bool {
        match &self.choices.steer {
            Some(steer) => steer.faults.contains(&fault),
            None => self.rng.chance(self.choices.faults.rate(fault)),
        }
    }

    /// A size in `1..=max` for a short read or write, or a partial acknowledgement.
    fn size(&mut self, max: usize) -> usize {
        match self.choices.steer.as_ref().and_then(|s| s.size) {
            Some(n) => n.clamp(1, max.max(1)),
            None => self.rng.upto(max as u64) as usize,
        }
    }

    fn bump(&mut self) {
        self.activity.progress += 1;
    }

    fn touch(&mut self, link: usize) {
        self.activity.touched.push(link);
        self.links[link].last_active = self.now();
        self.bump();
    }

    // ----- edges -----

    /// Raises an edge on a link's socket if the worker registered it and has not closed it.
    /// The event carries the socket's standing conditions too (urgent data, the peer's FIN, a
    /// reset), as epoll reports the whole current mask with each edge.
    fn edge(&mut self, link: usize, r: Readiness) {
        if r == Readiness::NONE {
            return;
        }
        let l = &self.links[link];
        if let Some(token) = l.token.filter(|_| l.is_open()) {
            let standing = l.standing();
            self.raise(token, r.or(standing));
        }
    }

    /// Merges an edge into the ready list: one entry per token, flags or-ed, as epoll does.
    fn raise(&mut self, token: Token, r: Readiness) {
        match self.epoll.ready.iter_mut().find(|(t, _)| *t == token) {
            Some((_, old)) => *old = old.or(r),
            None => self.epoll.ready.push((token, r)),
        }
    }

    /// An edge without a change of state (epoll allows them; they must be harmless).
    pub fn inject_edge(&mut self, link: usize, r: Readiness) {
        self.note(Ev::Edge(link, r));
        self.edge(link, r);
    }

    /// An event for a closed connection's token.
    pub fn inject_stale(&mut self, token: Token, r: Readiness) {
        self.raise(token, r);
    }

    /// Takes the pending event of `token` out of the ready list, as one `epoll_wait` reporting it.
    pub fn take_event(&mut self, token: Token) -> Option<Readiness> {
        let at = self.epoll.ready.iter().position(|(t, _)| *t == token)?;
        Some(self.epoll.ready.remove(at).1)
    }

    /// A listener edge.
    pub fn listener_edge(&mut self) {
        if self.listener.open {
            self.raise(Token::LISTENER, Readiness::READABLE);
        }
    }

    /// The wake-up for shutdown: pending until the worker consumes it.
    pub fn request_stop(&mut self) {
        self.epoll.waker = true;
    }

    /// Delivers the ready list (`epoll_wait`), with its faults: an interrupted wait, a batch cut
    /// short, a spurious edge, a stale event.
    pub fn deliver(&mut self, deadline: Option<Nanos>, mut on_event: impl FnMut(Token, Readiness)) {
        self.counts.waits += 1;
        self.activity.ops_since_wait = 0;
        self.activity.waits = (self.activity.waits.1, Some(self.now()));
        if self.fault(Fault::WaitEintr) {
            self.note(Ev::WaitEintr);
            return;
        }
        if !self.links.is_empty() && self.fault(Fault::SpuriousEdge) {
            let link = self.rng.below(self.links.len() as u64) as usize;
            let r = if self.rng.chance(500) {
                Readiness::READABLE
            } else {
                Readiness::WRITABLE
            };
            self.edge(link, r);
        }
        let mut batch = std::mem::take(&mut self.epoll.ready);
        if batch.len() > 1 && self.fault(Fault::ShortBatch) {
            let keep = self.rng.upto(batch.len() as u64 - 1) as usize;
            self.epoll.ready = batch.split_off(keep);
        }
        if !self.epoll.closed.is_empty() && self.fault(Fault::StaleEvent) {
            let pick = self.rng.below(self.epoll.closed.len() as u64) as usize;
            let stale = self.epoll.closed[pick];
            batch.push((stale, Readiness::READABLE.or(Readiness::WRITABLE)));
        }
        if self.epoll.waker {
            batch.push((Token::WAKER, Readiness::READABLE));
            if self.stop_at.is_none() {
                self.stop_at = Some(self.now());
                self.note(Ev::Stop { at: self.now() });
                // The cut: what arrived on each open socket is owed an echo; connections queued
                // now are owed what they sent by their accept.
                for l in self.links.iter_mut().filter(|l| l.is_open()) {
                    l.audit.cut = Some(l.up.sent.len() as u64);
                }
            }
        }
        self.note(Ev::Wait {
            at: self.now(),
            deadline,
            events: batch.len(),
        });
        for (token, r) in &batch {
            if r.error {
                self.told_error(*token);
            }
        }
        for (token, r) in batch {
            on_event(token, r);
        }
    }

    /// The worker learns of an error on the open socket registered as `token`.
    fn told_error(&mut self, token: Token) {
        if let Some(l) = self
            .links
            .iter_mut()
            .find(|l| l.token == Some(token) && l.is_open())
        {
            l.audit.error_told = true;
        }
    }

    /// What the server's kernel sent lands at the client's, unless some of it (or its
    /// acknowledgement) is still on the way: then only part lands now, the rest at a later chance
    /// (another write, a question, a read).
    fn maybe_land(&mut self, link: usize) {
        let units = if self.fault(Fault::AckLate) {
            match &mut self.choices.steer {
                Some(steer) => steer.land.take().unwrap_or(0),
                None => {
                    let d = &self.links[link].down;
                    let queued = d.queue.len() + usize::from(d.fin && !d.fin_acked);
                    self.rng.below(queued as u64 + 1) as usize
                }
            }
        } else {
            usize::MAX
        };
        let r = self.links[link].land(units);
        self.edge(link, r);
    }

    // ----- the worker's system calls -----

    /// Counts an operation; a round that never ends is a bug in the loop, reported at once.
    fn op(&mut self) {
        self.activity.ops_since_wait += 1;
        assert!(
            self.activity.ops_since_wait <= MAX_OPS_PER_WAIT,
            "the worker performed {MAX_OPS_PER_WAIT} operations without waiting: a round never ends\n{}",
            self.state_dump()
        );
    }

    /// Checks that `sock` is a socket the worker holds open; returns its link.
    fn live(&mut self, sock: &SimSocket, what: &str) -> Option<usize> {
        let stage = self.links.get(sock.0).map(|l| l.stage);
        if stage == Some(Stage::Open) {
            return Some(sock.0);
        }
        self.violate(
            Rule::ClosedOp,
            format!("{what} on socket {} which is {stage:?}", sock.0),
        );
        None
    }

    pub fn accept(&mut self) -> io::Result<SimSocket> {
        self.op();
        self.listener.last_accept = Some(self.now());
        let r = self.accept_inner();
        let code = r.as_ref().err().and_then(io::Error::raw_os_error);
        self.listener.exhausted = matches!(code, Some(libc::EMFILE | libc::ENFILE));
        let got = logged(&r, |s| s.0);
        self.note(Ev::Accept(got));
        r
    }

    fn accept_inner(&mut self) -> io::Result<SimSocket> {
        if !self.listener.open {
            self.violate(Rule::ClosedOp, "accept on the closed listener".into());
            return errno(libc::EBADF);
        }
        if self.fault(Fault::AcceptEintr) {
            return errno(libc::EINTR);
        }
        if self.open_fds >= self.setup.fd_limit || self.fault(Fault::AcceptEmfile) {
            self.counts.emfile += 1;
            return errno(libc::EMFILE);
        }
        if self.fault(Fault::AcceptEnfile) {
            self.counts.enfile += 1;
            return errno(libc::ENFILE);
        }
        let Some(link) = self.listener.backlog.pop_front() else {
            return errno(libc::EAGAIN);
        };
        if self.fault(Fault::AcceptAborted) {
            let l = &mut self.links[link];
            l.stage = Stage::Lost;
            l.excluded = Some("aborted in the backlog");
            self.counts.aborted += 1;
            self.bump();
            return errno(libc::ECONNABORTED);
        }
        self.links[link].stage = Stage::Open;
        self.links[link].audit.last_io = self.now();
        if self.stop_at.is_some() {
            let l = &mut self.links[link];
            l.audit.cut = Some(l.up.sent.len() as u64);
        }
        self.open_fds += 1;
        self.counts.accepted += 1;
        self.touch(link);
        Ok(SimSocket(link))
    }

    pub fn register(&mut self, sock: &SimSocket, token: Token) -> io::Result<()> {
        self.op();
        let Some(link) = self.live(sock, "register") else {
            return errno(libc::EBADF);
        };
        if !token.is_conn() || self.links[link].token.is_some() {
            self.violate(
                Rule::ClosedOp,
                format!("socket {link} registered again or with a reserved token {token:?}"),
            );
        }
        let ok = !self.fault(Fault::RegisterFail);
        self.note(Ev::Register(link, token, ok));
        if !ok {
            self.links[link].excluded = Some("register failed");
            return errno(libc::ENOMEM);
        }
        self.links[link].token = Some(token);
        // EPOLL_CTL_ADD reports what is already true.
        let now = self.links[link].current_readiness();
        self.edge(link, now);
        Ok(())
    }

    pub fn read(&mut self, sock: &SimSocket, buf: &mut [u8]) -> io::Result<usize> {
        let asked = buf.len();
        self.transfer(sock, "read", |k, link| {
            let r = k.read_inner(link, buf);
            let got = logged(&r, |n| *n);
            (r, Ev::Read { link, asked, got })
        })
    }

    /// A read or write on a socket the worker must hold open, traced.
    fn transfer(
        &mut self,
        sock: &SimSocket,
        what: &str,
        call: impl FnOnce(&mut Self, usize) -> (io::Result<usize>, Ev),
    ) -> io::Result<usize> {
        self.op();
        let Some(link) = self.live(sock, what) else {
            return errno(libc::EBADF);
        };
        let (r, ev) = call(self, link);
        self.note(ev);
        r
    }

    fn read_inner(&mut self, link: usize, buf: &mut [u8]) -> io::Result<usize> {
        if self.fault(Fault::ReadEintr) {
            return errno(libc::EINTR);
        }
        // After a reset what was queued can still be read (Linux keeps it), then the error.
        let reset = self.links[link].broken == Break::Reset;
        if reset && self.links[link].up.queued() == 0 {
            self.links[link].audit.error_told = true;
            return errno(libc::ECONNRESET);
        }
        if !reset && self.fault(Fault::ReadReset) {
            self.reset_by_network(link);
            self.links[link].audit.error_told = true;
            return errno(libc::ECONNRESET);
        }
        let stopped = self.stop_at.is_some();
        let l = &mut self.links[link];
        let avail = l.up.queued();
        if avail == 0 {
            if !l.up.fin {
                return errno(libc::EAGAIN);
            }
            l.audit.eof_read = true;
            l.audit.eof_before_stop |= !stopped;
            return Ok(0);
        }
        // After the FIN or a reset nothing more can arrive, so the kernel's answer is exact.
        let more_may_come = !l.up.fin && !reset;
        if more_may_come && self.fault(Fault::ReadEagain) {
            self.edge(link, Readiness::READABLE);
            return errno(libc::EAGAIN);
        }
        // A read stops at an urgent mark with more queued, and no edge follows.
        let mut k = self.links[link].up.readable(buf.len());
        if k < buf.len().min(avail) {
            self.counts.urgent_stops += 1;
        }
        if more_may_come && self.fault(Fault::ReadShort) {
            k = self.size(k);
            if k < buf.len() {
                self.counts.short_reads += 1;
                self.edge(link, Readiness::READABLE);
            }
        }
        let cap = self.setup.max_pending as u64;
        let expired = self.past_deadline();
        let l = &mut self.links[link];
        // A client that had sent nothing at the cut may have its first request echoed: it
        // connected just before the stop and its bytes race the cut.
        let first_request = l.audit.cut == Some(0) && l.audit.echo_read == 0;
        let past_cut = (l.audit.cut).filter(|&cut| (l.up.read + k) as u64 > cut && !first_request);
        if let (Some(cut), false, false) = (past_cut, l.write_shut, expired) {
            let what = format!("socket {link} read for echo past the stop's cut at byte {cut}");
            self.violate(Rule::Stop, what);
        }
        let now = self.now();
        let l = &mut self.links[link];
        l.audit.last_io = now;
        buf[..k].copy_from_slice(l.up.take(k));
        if l.write_shut {
            l.audit.discarded += k as u64;
        } else {
            l.audit.echo_read += k as u64;
            let held = l.audit.echo_read - l.audit.written;
            // Past the deadline what is read is dropped, not held.
            if held > cap && !expired {
                self.violate(
                    Rule::Cap,
                    format!("socket {link}: {held} bytes read and not written, over the cap {cap}"),
                );
            }
        }
        self.touch(link);
        Ok(k)
    }

    pub fn write(&mut self, sock: &SimSocket, buf: &[u8]) -> io::Result<usize> {
        let offered = buf.len();
        self.transfer(sock, "write", |k, link| {
            let r = k.write_inner(link, buf);
            let took = logged(&r, |n| *n);
            (
                r,
                Ev::Write {
                    link,
                    offered,
                    took,
                },
            )
        })
    }

    fn write_inner(&mut self, link: usize, buf: &[u8]) -> io::Result<usize> {
        if self.links[link].write_shut {
            self.violate(Rule::Echo, format!("write on socket {link} after its FIN"));
            return errno(libc::EPIPE);
        }
        if buf.is_empty() {
            self.violate(Rule::Echo, format!("empty write on socket {link}"));
        }
        if self.fault(Fault::WriteEintr) {
            return errno(libc::EINTR);
        }
        if self.links[link].broken != Break::Intact {
            self.links[link].audit.error_told = true;
            return errno(libc::EPIPE);
        }
        if self.fault(Fault::WriteReset) {
            self.reset_by_network(link);
            self.links[link].audit.error_told = true;
            return errno(libc::EPIPE);
        }
        let room = self.links[link].down.room();
        if room == 0 {
            self.links[link].down.want_write = true;
            return errno(libc::EAGAIN);
        }
        if self.fault(Fault::WriteEagain) {
            self.links[link].down.want_write = true;
            self.edge(link, Readiness::WRITABLE);
            return errno(libc::EAGAIN);
        }
        let mut k = buf.len().min(room);
        if self.fault(Fault::WriteShort) {
            k = self.size(k);
            if k < room {
                self.edge(link, Readiness::WRITABLE);
            }
        }
        if k < buf.len() {
            self.counts.short_writes += 1;
            self.links[link].down.want_write = true;
        }
        let l = &mut self.links[link];
        let at = l.audit.written as usize;
        if l.up.sent.get(at..at + k) != Some(&buf[..k]) {
            let what =
                format!("socket {link}: wrote {k} bytes at echo offset {at} that are not the client's bytes there");
            self.violate(Rule::Echo, what);
        }
        let now = self.now();
        let l = &mut self.links[link];
        l.audit.last_io = now;
        l.down.queue.extend(&buf[..k]);
        l.audit.written += k as u64;
        self.maybe_land(link);
        self.touch(link);
        Ok(k)
    }

    pub fn shutdown_write(&mut self, sock: &SimSocket) {
        self.op();
        let Some(link) = self.live(sock, "shutdown_write") else {
            return;
        };
        self.note(Ev::ShutdownWrite(link));
        if self.stop_at.is_none() {
            self.violate(Rule::Stop, format!("socket {link} shut before the stop"));
        }
        let l = &mut self.links[link];
        l.write_shut = true;
        l.down.fin = true;
        self.maybe_land(link);
        let l = &self.links[link];
        if l.up.fin {
            // Both directions shut: HUP.
            let r = Readiness {
                writable: true,
                read_closed: true,
                hangup: true,
                ..Readiness::READABLE
            };
            self.edge(link, r);
        }
        self.touch(link);
    }

    pub fn close(&mut self, sock: SimSocket) {
        self.op();
        let Some(link) = self.live(&sock, "close") else {
            return;
        };
        let deadline = self.past_deadline();
        let stopped = self.stop_at.is_some();
        let unread = self.links[link].up.queued();
        self.note(Ev::Close {
            link,
            unread,
            deadline,
        });
        if deadline {
            self.check_not_held_for_nothing(link);
        }
        let l = &self.links[link];
        // Before the stop, a served connection closes in order only after its peer's EOF with all
        // of it echoed; any other close without an error is one for silence.
        let orderly = l.audit.eof_read && l.audit.written == l.audit.echo_read;
        let idle_close = !stopped && !l.audit.error_told && !orderly && l.token.is_some();
        if idle_close {
            self.check_silent_for_the_timeout(link);
        }
        let l = &self.links[link];
        let (acked, written) = (l.down.acked, l.audit.written);
        if stopped && !deadline && !l.audit.error_told && acked < written {
            let what = format!(
                "socket {link} closed during the stop with {} of {written} bytes unacknowledged",
                written - acked
            );
            self.violate(Rule::Stop, what);
        }
        let l = &mut self.links[link];
        l.stage = Stage::Closed;
        l.audit.deadline_close = deadline;
        l.audit.idle_close = idle_close;
        l.audit.acked_at_close = Some(acked);
        l.audit.closed_before_stop = !stopped;
        if l.token.is_none() && l.excluded.is_none() {
            // Closed before it was registered: the connection limit turned it away.
            l.excluded = Some("closed before registration");
        }
        // Input whose edge the worker has not been given yet arrived after its last look: every
        // close races such a late arrival, and the race is the peer's to lose.
        let raced = l.token.is_some_and(|t| {
            self.epoll
                .ready
                .iter()
                .any(|(rt, r)| *rt == t && r.readable)
        });
        if raced && unread > 0 && l.excluded.is_none() && !deadline {
            l.excluded = Some("input arrived just before the close");
        }
        // A cut (the deadline, the idle timeout) may reset: its unacknowledged bytes are counted.
        let excused = deadline || idle_close || l.excluded.is_some();
        self.open_fds -= 1;
        self.counts.closes += 1;
        if let Some(token) = l.token {
            self.epoll.closed.push(token);
            self.epoll.ready.retain(|(t, _)| *t != token);
        }
        let l = &mut self.links[link];
        if unread > 0 && l.broken != Break::Reset {
            // Closing with unread input sends RST, which destroys what the client's kernel has
            // not acknowledged; what it acknowledged stays readable there.
            l.audit.reset_by_server = true;
            l.down.queue.clear();
            if !excused {
                self.violate(
                    Rule::Echo,
                    format!("socket {link} closed with {unread} unread bytes: the client gets RST"),
                );
            }
        } else {
            l.down.fin = true;
        }
        self.touch(link);
    }

    pub fn close_listener(&mut self) {
        self.op();
        self.note(Ev::CloseListener);
        self.listener.closes += 1;
        if !self.listener.open {
            self.violate(Rule::ClosedOp, "listener closed twice".into());
            return;
        }
        self.listener.open = false;
        self.counts.closes += 1;
        self.epoll.ready.retain(|(t, _)| *t != Token::LISTENER);
        let links = &self.links;
        let waiting = (self.listener.backlog.iter())
            .filter(|&&l| !links[l].audit.after_stop)
            .count();
        let excused = self.listener.exhausted || self.past_deadline() || self.setup.drain.is_zero();
        if waiting > 0 && !excused {
            self.violate(
                Rule::Stop,
                format!("the listener closed with {waiting} connection(s) queued: they are reset"),
            );
        }
        // Connections still in the backlog are reset by the kernel.
        while let Some(link) = self.listener.backlog.pop_front() {
            let l = &mut self.links[link];
            l.stage = Stage::Lost;
            l.excluded = Some("in the backlog at the stop");
        }
        self.bump();
    }

    pub fn clear_wake(&mut self) {
        assert!(self.epoll.waker, "clear_wake without a wake-up");
        self.epoll.waker = false;
    }

    /// `FIONREAD`: bytes queued on the socket, past any urgent mark.
    pub fn queued_input(&mut self, sock: &SimSocket) -> io::Result<usize> {
        self.op();
        let Some(link) = self.live(sock, "queued_input") else {
            return errno(libc::EBADF);
        };
        let queued = self.links[link].up.queued();
        self.note(Ev::QueuedInput(link, queued));
        Ok(queued)
    }

    /// The listener's accept queue: connections waiting in the backlog.
    pub fn queued_connections(&mut self) -> io::Result<usize> {
        self.op();
        if !self.listener.open {
            self.violate(
                Rule::ClosedOp,
                "queued_connections on the closed listener".into(),
            );
            return errno(libc::EBADF);
        }
        let queued = self.listener.backlog.len();
        self.note(Ev::QueuedConnections(queued));
        Ok(queued)
    }

    /// `tcpi_bytes_acked`: what the client's kernel acknowledged of the output, our FIN counted
    /// as one more once acknowledged. Asking gives a delayed acknowledgement a chance to arrive.
    pub fn acked(&mut self, sock: &SimSocket) -> io::Result<u64> {
        self.op();
        let Some(link) = self.live(sock, "acked") else {
            return errno(libc::EBADF);
        };
        self.maybe_land(link);
        let now = self.now();
        let l = &mut self.links[link];
        let acked = l.down.acked + u64::from(l.down.fin_acked);
        if l.down.acked < l.audit.written {
            l.audit.told_unacked_at = now;
        }
        self.note(Ev::Acked(link, acked));
        Ok(acked)
    }

    /// The worker closes its epoll instance and wake-up channel: its last operation.
    pub fn close_shell(&mut self) {
        self.op();
        self.note(Ev::CloseShell);
        let open = self.links.iter().filter(|l| l.is_open()).count();
        if self.epoll.shut || self.listener.open || open > 0 {
            let what = format!(
                "the shell closed again or before everything else (listener open: {}, {open} sockets open)",
                self.listener.open
            );
            self.violate(Rule::ClosedOp, what);
        }
        self.epoll.shut = true;
        self.counts.closes += 2;
    }

    /// A close for silence needs an idle timeout and a connection that moved no byte for it (less
    /// one sweep period: the sweep ticks at an eighth of the timeout).
    fn check_silent_for_the_timeout(&mut self, link: usize) {
        let silent = self.now() - self.links[link].audit.last_io;
        let what = match self.setup.idle {
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
        self.violate(Rule::Idle, what);
    }

    /// A connection closed at the drain deadline must not be one whose peer had held every byte for
    /// a while: the stop waits for delivery, not for the peer to close.
    fn check_not_held_for_nothing(&mut self, link: usize) {
        let l = &self.links[link];
        let held_all = l.write_shut
            && l.broken == Break::Intact
            && l.down.queue.is_empty()
            && l.up.queued() == 0;
        // The worker must have woken at least once, a grace period after the peer held it all
        // and the kernel last said otherwise, and still not closed it (a model test may let
        // virtual time jump with no turn between).
        let grace = 2 * MAX_DELIVERY_CHECK.as_nanos() as Nanos;
        let since = l.last_active.max(l.audit.told_unacked_at);
        let woke_after_grace = self.activity.waits.0.is_some_and(|w| w >= since + grace);
        let quiet = self.now() - since;
        if held_all && woke_after_grace {
            self.violate(
                Rule::Stop,
                format!(
                    "socket {link} closed at the drain deadline though its peer had held every byte for {}us",
                    quiet / 1_000
                ),
            );
        }
    }

    /// A reset that a read or write runs into (injected).
    fn reset_by_network(&mut self, link: usize) {
        self.links[link].excluded = Some("reset by the network");
        let r = self.links[link].reset();
        self.edge(link, r);
        self.bump();
    }

    // ----- the clients' side -----

    /// A client connects: it joins the backlog (the listener gets an edge). `Err` when the
    /// listener is closed (refused) or the backlog is full (the SYN is dropped).
    /// `rcv_cap` and `snd_cap` are the server's buffers, `window` the client's receive buffer.
    pub fn connect(
        &mut self,
        rcv_cap: usize,
        snd_cap: usize,
        write_space: usize,
        window: usize,
    ) -> Result<usize, Refused> {
        if !self.listener.open {
            return Err(Refused::Closed);
        }
        if self.listener.backlog.len() >= self.listener.cap {
            return Err(Refused::Full);
        }
        let link = self.links.len();
        let mut new = Link::new(rcv_cap, snd_cap, write_space, window);
        new.audit.after_stop = self.stop_at.is_some();
        self.links.push(new);
        self.listener.backlog.push_back(link);
        self.raise(Token::LISTENER, Readiness::READABLE);
        self.note(Ev::Connect(link));
        self.bump();
        Ok(link)
    }

    /// The client sends `bytes` (within its send room). Data for a socket the server closed is
    /// answered with RST.
    pub fn client_send(&mut self, link: usize, bytes: &[u8]) {
        if !self.reset_if_closed(link) {
            self.client_act(link, Ev::ClientSend(link, bytes.len()), |l| l.send(bytes));
        }
    }

    /// The client sends `bytes` with `MSG_OOB`: the last byte is urgent.
    pub fn client_send_urgent(&mut self, link: usize, bytes: &[u8]) {
        if !self.reset_if_closed(link) {
            let ev = Ev::ClientUrgent(link, bytes.len());
            self.client_act(link, ev, |l| l.send_urgent(bytes));
        }
    }

    /// Data for a socket the server closed is answered with RST, which throws away what the
    /// server's kernel had not yet had acknowledged (our FIN too, if it had not landed); what
    /// landed stays readable at the client. Echo it destroys is a violation unless the drain
    /// deadline excuses it; after a close on delivery it destroys nothing.
    fn reset_if_closed(&mut self, link: usize) -> bool {
        if self.links[link].stage != Stage::Closed {
            return false;
        }
        if self.fault(Fault::RstSpares) {
            // What was in flight had reached the client, its acknowledgement still on the way.
            let r = self.links[link].land(usize::MAX);
            self.edge(link, r);
        }
        let l = &mut self.links[link];
        l.rst_to_client = true;
        let lost = l.down.queue.len();
        if lost > 0 {
            l.down.queue.clear();
            l.audit.reset_by_server = true;
        }
        if l.down.fin && !l.down.fin_acked {
            // Our FIN had not landed (a full window): the client reads all the echo, then the
            // reset instead of the end of the stream. No echo is lost.
            l.down.fin = false;
            l.audit.fin_destroyed = true;
        }
        self.note(Ev::ResetByServer(link, lost));
        true
    }

    pub fn client_fin(&mut self, link: usize) {
        self.client_act(link, Ev::ClientFin(link), Link::fin);
    }

    /// The client reads up to `max` bytes of echo: what landed, and what lands as it reads.
    pub fn client_recv(&mut self, link: usize, max: usize) -> Vec<u8> {
        self.maybe_land(link);
        let bytes = self.links[link].recv(max);
        if !bytes.is_empty() {
            self.note(Ev::ClientRecv(link, bytes.len()));
            self.links[link].last_active = self.now();
            self.bump();
        }
        // The window opened: more may land.
        self.maybe_land(link);
        bytes
    }

    /// The client reads the server's FIN, if everything before it was read.
    pub fn client_eof(&mut self, link: usize) -> bool {
        self.maybe_land(link);
        let eof = self.links[link].read_eof();
        if eof {
            self.note(Ev::ClientEof(link));
            self.bump();
        }
        eof
    }

    pub fn client_reset(&mut self, link: usize) {
        self.client_act(link, Ev::ClientReset(link), Link::reset);
    }

    pub fn client_vanish(&mut self, link: usize) {
        self.client_act(link, Ev::ClientVanish(link), Link::vanish);
    }

    /// A client acts on its end of `link`; the server's socket gets the edge the act raises.
    fn client_act(&mut self, link: usize, ev: Ev, act: impl FnOnce(&mut Link) -> Readiness) {
        let r = act(&mut self.links[link]);
        self.links[link].last_active = self.now();
        self.note(ev);
        self.edge(link, r);
        self.bump();
    }

    // ----- the audit -----

    /// Compares the worker's report with what the kernel saw; returns each disagreement. Meant for
    /// the end of a run, once every connection is closed. The bytes delivered and the cause of
    /// each close come from the kernel's own record, not from what it told the worker.
    pub fn audit(&self, report: &Report) -> Vec<String> {
        let sum = |f: &dyn Fn(&Link) -> u64| self.links.iter().map(f).sum::<u64>();
        let closed = sum(&|l| u64::from(l.stage == Stage::Closed));
        let served = |l: &Link| l.stage == Stage::Closed && l.token.is_some();
        let cause = |l: &Link| -> Option<Counter> {
            let counter = if l.audit.error_told {
                Counter::ErrorCloses
            } else if l.audit.deadline_close {
                Counter::DeadlineCloses
            } else if l.audit.idle_close {
                Counter::IdleCloses
            } else {
                Counter::Closed
            };
            served(l).then_some(counter)
        };
        let delivered = |l: &Link| {
            let acked = l.audit.acked_at_close.unwrap_or(0);
            acked.min(l.audit.written)
        };
        // Bytes written and not acknowledged at the close, counted where its cause says.
        let unacked_by = |l: &Link, counter: Counter| {
            let kind = match cause(l) {
                Some(Counter::ErrorCloses) => Counter::BytesLostToErrors,
                Some(Counter::DeadlineCloses | Counter::IdleCloses) => Counter::BytesUnacked,
                // Before the stop; during it the rule above allows nothing unacknowledged.
                _ => Counter::BytesInFlight,
            };
            if kind == counter {
                l.audit.written - delivered(l)
            } else {
                0
            }
        };
        let expected = [
            (
                Counter::Accepted,
                report[Counter::Accepted] + report[Counter::Rejected],
                self.counts.accepted,
            ),
            (
                Counter::Closed,
                report[Counter::Closed] + report[Counter::Rejected],
                closed,
            ),
            (
                Counter::BytesRead,
                report[Counter::BytesRead],
                sum(&|l| l.audit.echo_read),
            ),
            (
                Counter::BytesWritten,
                report[Counter::BytesWritten],
                sum(&|l| l.audit.written),
            ),
            (
                Counter::BytesDelivered,
                report[Counter::BytesDelivered],
                sum(&delivered),
            ),
            (
                Counter::BytesInFlight,
                report[Counter::BytesInFlight],
                sum(&|l| unacked_by(l, Counter::BytesInFlight)),
            ),
            (
                Counter::BytesUnacked,
                report[Counter::BytesUnacked],
                sum(&|l| unacked_by(l, Counter::BytesUnacked)),
            ),
            (
                Counter::BytesLostToErrors,
                report[Counter::BytesLostToErrors],
                sum(&|l| unacked_by(l, Counter::BytesLostToErrors)),
            ),
            (
                Counter::BytesDropped,
                report[Counter::BytesDropped],
                sum(&|l| l.audit.echo_read - l.audit.written),
            ),
            (
                Counter::BytesDiscarded,
                report[Counter::BytesDiscarded],
                sum(&|l| l.audit.discarded),
            ),
            (
                Counter::ErrorCloses,
                report[Counter::ErrorCloses],
                sum(&|l| u64::from(cause(l) == Some(Counter::ErrorCloses))),
            ),
            (
                Counter::DeadlineCloses,
                report[Counter::DeadlineCloses],
                sum(&|l| u64::from(cause(l) == Some(Counter::DeadlineCloses))),
            ),
            (
                Counter::IdleCloses,
                report[Counter::IdleCloses],
                sum(&|l| u64::from(cause(l) == Some(Counter::IdleCloses))),
            ),
            (
                Counter::DescriptorsClosed,
                report[Counter::DescriptorsClosed],
                self.counts.closes,
            ),
            (
                Counter::AcceptEmfile,
                report[Counter::AcceptEmfile],
                self.counts.emfile,
            ),
            (
                Counter::AcceptEnfile,
                report[Counter::AcceptEnfile],
                self.counts.enfile,
            ),
        ];
        let mut wrong: Vec<String> = expected
            .iter()
            .filter(|(_, got, want)| got != want)
            .map(|(c, got, want)| format!("{}: report {got}, kernel {want}", c.name()))
            .collect();
        if !report.balances() {
            wrong.push(format!("the report does not balance: {report}"));
        }
        let cap = self.setup.max_pending as u64;
        if report[Counter::PendingHighWater] > cap {
            wrong.push(format!(
                "pending output reached {} over the cap {cap}",
                report[Counter::PendingHighWater]
            ));
        }
        wrong
    }
}

/// How the kernel chooses its answers: the fault rates, or, for a test that replays outcomes seen
/// on real sockets, a steer that says which faults strike and which size a short one takes.
#[derive(Clone, Debug, Default)]
pub struct Choices {
    pub faults: Faults,
    pub steer: Option<Steer>,
}

/// Forced answers: these faults strike (all others do not), with this size when one asks for it,
/// and, at the next late acknowledgement, this many units landing (none at the others).
#[derive(Clone, Debug, Default)]
pub struct Steer {
    pub faults: Vec<Fault>,
    pub size: Option<usize>,
    pub land: Option<usize>,
}

/// Why a connection attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The listener is closed.
    Closed,
    /// The backlog is full: the SYN is dropped, the client may retry.
    Full,
}

fn errno<T>(code: i32) -> io::Result<T> {
    Err(io::Error::from_raw_os_error(code))
}

/// What happens in the world while the worker waits: clients act, time passes, the stop comes.
pub trait World<E> {
    /// Called at the start of every wait, before the ready list is delivered, with the deadline
    /// the worker asked for (virtual time).
    fn before_wait(&mut self, kernel: &mut Kernel<E>, deadline: Option<Nanos>);
}

/// A world where nothing happens by itself: the test acts on the kernel between turns.
pub struct Steps;

impl<E> World<E> for Steps {
    fn before_wait(&mut self, _: &mut Kernel<E>, _: Option<Nanos>) {}
}

/// The simulated kernel and the world around it, as the worker's [`Io`].
pub struct Sim<E, W> {
    pub kernel: Kernel<E>,
    pub world: W,
}

impl<E: Entropy, W: World<E>> Io for Sim<E, W> {
    type Socket = SimSocket;

    fn now(&self) -> Instant {
        self.kernel.instant()
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        on_event: impl FnMut(Token, Readiness),
    ) -> io::Result<()> {
        let deadline = deadline.map(|d| self.kernel.virtual_of(d));
        self.world.before_wait(&mut self.kernel, deadline);
        self.kernel.deliver(deadline, on_event);
        Ok(())
    }

    fn accept(&mut self) -> io::Result<SimSocket> {
        self.kernel.accept()
    }

    fn register(&mut self, sock: &SimSocket, token: Token) -> io::Result<()> {
        self.kernel.register(sock, token)
    }

    fn read(&mut self, sock: &SimSocket, buf: &mut [u8]) -> io::Result<usize> {
        self.kernel.read(sock, buf)
    }

    fn write(&mut self, sock: &SimSocket, buf: &[u8]) -> io::Result<usize> {
        self.kernel.write(sock, buf)
    }

    fn shutdown_write(&mut self, sock: &SimSocket) {
        self.kernel.shutdown_write(sock);
    }

    fn close(&mut self, sock: SimSocket) {
        self.kernel.close(sock);
    }

    fn close_listener(&mut self) {
        self.kernel.close_listener();
    }

    fn acked(&mut self, sock: &SimSocket) -> io::Result<u64> {
        self.kernel.acked(sock)
    }

    fn queued_input(&mut self, sock: &SimSocket) -> io::Result<usize> {
        self.kernel.queued_input(sock)
    }

    fn queued_connections(&mut self) -> io::Result<usize> {
        self.kernel.queued_connections()
    }

    fn close_shell(&mut self) {
        self.kernel.close_shell();
    }

    fn clear_wake(&mut self) {
        self.kernel.clear_wake();
    }
}
