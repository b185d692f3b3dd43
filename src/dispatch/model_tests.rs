//! Model-based property tests of the dispatch core.
//!
//! A small simulated kernel (listener backlog, per-connection receive queue and send window, an
//! epoll ready list with edge-triggered semantics) and a reference model of each connection (bytes
//! sent, read for echo, written back, discarded, dropped) are stepped side by side with the
//! [`Dispatcher`], through arbitrary interleavings of client behaviour, readiness edges, injected
//! I/O outcomes (partial and would-block writes, `EINTR`, resets, `EMFILE`, `ECONNABORTED`), a stop at
//! any point and time passing the drain deadline. The run loop is the one in `worker.rs`.
//!
//! After the generated steps the run settles without faults and without new readable edges (only
//! edges the kernel really raises: registration and writable-after-full), then clients finish, then
//! the worker stops. Each property is its own test; a failing case is saved under the crate's
//! `proptest-regressions/`. `PROPTEST_CASES` sets the number of cases (default 64).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use super::*;

/// Clients per case; more adds little but time.
const MAX_CLIENTS: usize = 6;
/// Actions in one round before the round counts as a livelock.
const MAX_ACTIONS_PER_ROUND: usize = 10_000;
/// Rounds a settle phase may take before it counts as a livelock.
const MAX_SETTLE_ROUNDS: usize = 2_000;

/// One step of the environment.
#[derive(Clone, Debug)]
enum Op {
    /// A client connects: it joins the backlog and the listener gets an edge.
    Connect,
    /// A listener edge without a new connection.
    ListenerEdge,
    /// Client `c` sends `n` bytes: readable edge.
    Send(u8, u8),
    /// Client `c` shuts its write side: `EPOLLIN | EPOLLRDHUP`.
    Finish(u8),
    /// Client `c` reads everything echoed so far: writable edge if the server found the window full.
    Drain(u8),
    /// Edges without a change of state.
    ReadableEdge(u8),
    WritableEdge(u8),
    /// Client `c` vanishes (both directions gone): `EPOLLHUP`; reads reach EOF, writes fail.
    Hangup(u8),
    /// Client `c` resets: `EPOLLERR`; reads and writes fail.
    ErrorEdge(u8),
    /// An event carrying client `c`'s token after its connection was closed.
    StaleEdge(u8),
    /// The wake-up for shutdown.
    Stop,
    /// Time passes (milliseconds).
    Advance(u8),
    /// The worker runs one round; the seed chooses injected I/O outcomes.
    Turn(u64),
}

#[derive(Clone, Debug)]
struct Case {
    max_pending: usize,
    scratch_len: usize,
    reads_per_turn: u32,
    accepts_per_turn: u32,
    drain_ms: u64,
    /// Kernel send window per connection.
    window: usize,
    /// Whether clients answer the server's FIN by finishing (else the deadline must end them).
    cooperate: bool,
    /// Whether clients finish before the stop in the final phase.
    finish_before_stop: bool,
    ops: Vec<Op>,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Connect),
        1 => Just(Op::ListenerEdge),
        14 => (any::<u8>(), 1..=40u8).prop_map(|(c, n)| Op::Send(c, n)),
        2 => any::<u8>().prop_map(Op::Finish),
        5 => any::<u8>().prop_map(Op::Drain),
        1 => any::<u8>().prop_map(Op::ReadableEdge),
        1 => any::<u8>().prop_map(Op::WritableEdge),
        1 => any::<u8>().prop_map(Op::Hangup),
        1 => any::<u8>().prop_map(Op::ErrorEdge),
        1 => any::<u8>().prop_map(Op::StaleEdge),
        2 => (0..=120u8).prop_map(Op::Advance),
        14 => any::<u64>().prop_map(Op::Turn),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1..=16usize, 1..=16usize, 1..=3u32, 1..=3u32),
        (0..=60u64, 1..=24usize, any::<bool>(), any::<bool>()),
        proptest::collection::vec(op(), 0..120),
        proptest::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(
            |(
                (max_pending, scratch_len, reads, accepts),
                (drain_ms, window, coop, fbs),
                mut ops,
                stop,
            )| {
                // The stop comes at a chosen step, or only in the final phase.
                if let Some(at) = stop {
                    ops.insert(at.index(ops.len() + 1), Op::Stop);
                }
                Case {
                    max_pending,
                    scratch_len,
                    reads_per_turn: reads,
                    accepts_per_turn: accepts,
                    drain_ms,
                    window,
                    cooperate: coop,
                    finish_before_stop: fbs,
                    ops,
                }
            },
        )
}

/// The properties, each checked by its own test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prop {
    Echo,
    Cap,
    ClosedOp,
    Forgotten,
    Stop,
    Balance,
}

/// The reference model of one client connection, plus its kernel state.
#[derive(Debug, Default)]
struct Client {
    /// Everything the client sent.
    sent: Vec<u8>,
    /// How much of `sent` the server has read (echoed or discarded).
    read_pos: usize,
    /// Bytes the server read for echoing.
    echo_read: usize,
    /// Bytes the server read after its FIN, to discard.
    discarded: usize,
    /// Bytes the server wrote (all of them reached `received`).
    received: Vec<u8>,
    /// Written bytes the client has not read yet (they fill the send window).
    in_flight: usize,
    /// The server found the window full: a writable edge is owed when the client reads.
    blocked: bool,
    finished: bool,
    /// `EPOLLERR`: reads and writes fail.
    reset: bool,
    /// The client is gone entirely: reads reach EOF, writes fail.
    gone: bool,
    /// Some fault makes a complete echo impossible.
    broken: bool,
    token: Option<Token>,
    accepted: bool,
    /// Never accepted: aborted in the backlog or refused after the listener closed.
    lost: bool,
    closed: bool,
    /// The close came from the drain deadline.
    deadline_closed: bool,
    /// Closed before the stop began.
    closed_before_stop: bool,
    /// The server shut its write side.
    got_fin: bool,
    /// A server read returned 0.
    saw_eof: bool,
}

impl Client {
    fn live(&self) -> bool {
        self.accepted && !self.closed
    }

    fn model_pending(&self) -> usize {
        self.echo_read - self.received.len()
    }
}

/// The byte a client sends at `offset`: depends on both, so reordering or duplication shows.
fn payload(client: usize, offset: usize) -> u8 {
    let x = (offset as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (client as u64);
    (x >> 56) as u8
}

const READABLE: Readiness = Readiness::READABLE;

struct Sim {
    d: Dispatcher<usize>,
    config: Config,
    window: usize,
    cooperate: bool,
    now: Instant,
    clients: Vec<Client>,
    backlog: VecDeque<usize>,
    listener_closed: bool,
    /// The epoll ready list: one entry per token, flags merged.
    events: Vec<(Token, Readiness)>,
    wake: bool,
    stop_at: Option<Instant>,
    rng: u64,
    faults: bool,
    violations: Vec<(Prop, String)>,
    log: VecDeque<String>,
}

impl Sim {
    fn new(case: &Case) -> Sim {
        let config = Config {
            max_pending: case.max_pending,
            drain_timeout: Duration::from_millis(case.drain_ms),
            scratch_len: case.scratch_len,
            reads_per_turn: case.reads_per_turn,
            accepts_per_turn: case.accepts_per_turn,
            idle_timeout: None,
        };
        let now = Instant::now();
        Sim {
            d: Dispatcher::new(config.clone(), now),
            config,
            window: case.window,
            cooperate: case.cooperate,
            now,
            clients: Vec::new(),
            backlog: VecDeque::new(),
            listener_closed: false,
            events: Vec::new(),
            wake: false,
            stop_at: None,
            rng: 0,
            faults: true,
            violations: Vec::new(),
            log: VecDeque::new(),
        }
    }

    fn violate(&mut self, prop: Prop, what: String) {
        let trace: Vec<_> = self.log.iter().cloned().collect();
        self.violations.push((
            prop,
            format!("{what}\nlast steps:\n  {}", trace.join("\n  ")),
        ));
    }

    fn note(&mut self, s: String) {
        if self.log.len() == 40 {
            self.log.pop_front();
        }
        self.log.push_back(s);
    }

    /// Uniform in `0..n` (n > 0), from the current round's seed.
    fn roll(&mut self, n: u64) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }

    /// True with `percent` chance while faults are injected.
    fn fault(&mut self, percent: u64) -> bool {
        self.faults && self.roll(100) < percent
    }

    fn edge(&mut self, token: Token, r: Readiness) {
        match self.events.iter_mut().find(|(t, _)| *t == token) {
            Some((_, e)) => {
                e.readable |= r.readable;
                e.writable |= r.writable;
                e.read_closed |= r.read_closed;
                e.hangup |= r.hangup;
                e.error |= r.error;
            }
            None => self.events.push((token, r)),
        }
    }

    /// An edge for a live connection (closed descriptors leave the ready list).
    fn client_edge(&mut self, c: usize, r: Readiness) {
        let cl = &self.clients[c];
        if let (true, Some(t)) = (cl.live(), cl.token) {
            self.edge(t, r);
        }
    }

    /// The `c`-th client that is still connected (in the backlog or open), if any.
    fn pick(&self, c: u8) -> Option<usize> {
        let connected: Vec<usize> = (0..self.clients.len())
            .filter(|&i| !self.clients[i].lost && !self.clients[i].closed)
            .collect();
        (!connected.is_empty()).then(|| connected[c as usize % connected.len()])
    }

    /// The `c`-th closed client, if any.
    fn pick_closed(&self, c: u8) -> Option<usize> {
        let closed: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients[i].closed)
            .collect();
        (!closed.is_empty()).then(|| closed[c as usize % closed.len()])
    }

    fn apply(&mut self, op: &Op) {
        self.note(format!("{op:?}"));
        match *op {
            Op::Connect => {
                if self.clients.len() < MAX_CLIENTS {
                    let c = self.clients.len();
                    let mut client = Client::default();
                    if self.listener_closed {
                        client.lost = true;
                    } else {
                        self.backlog.push_back(c);
                        self.edge(Token::LISTENER, READABLE);
                    }
                    self.clients.push(client);
                }
            }
            Op::ListenerEdge => self.edge(Token::LISTENER, READABLE),
            Op::Send(c, n) => {
                if let Some(c) = self.pick(c) {
                    self.send(c, n as usize);
                }
            }
            Op::Finish(c) => {
                if let Some(c) = self.pick(c) {
                    self.finish(c);
                }
            }
            Op::Drain(c) => {
                if let Some(c) = self.pick(c) {
                    self.drain(c);
                }
            }
            Op::ReadableEdge(c) => {
                if let Some(c) = self.pick(c) {
                    self.client_edge(c, READABLE);
                }
            }
            Op::WritableEdge(c) => {
                if let Some(c) = self.pick(c) {
                    let r = Readiness {
                        writable: true,
                        ..Readiness::default()
                    };
                    self.client_edge(c, r);
                }
            }
            Op::Hangup(c) => {
                if let Some(c) = self.pick(c) {
                    let cl = &mut self.clients[c];
                    if !cl.lost && !cl.closed {
                        cl.gone = true;
                        cl.finished = true;
                        cl.broken = true;
                        let r = Readiness {
                            hangup: true,
                            ..Readiness::default()
                        };
                        self.client_edge(c, r);
                    }
                }
            }
            Op::ErrorEdge(c) => {
                if let Some(c) = self.pick(c) {
                    let cl = &mut self.clients[c];
                    if !cl.lost && !cl.closed {
                        cl.reset = true;
                        cl.broken = true;
                        let r = Readiness {
                            error: true,
                            ..Readiness::default()
                        };
                        self.client_edge(c, r);
                    }
                }
            }
            Op::StaleEdge(c) => {
                if let Some(c) = self.pick_closed(c) {
                    if let (true, Some(t)) = (self.clients[c].closed, self.clients[c].token) {
                        let r = Readiness {
                            readable: true,
                            writable: true,
                            error: true,
                            ..Readiness::default()
                        };
                        self.edge(t, r);
                    }
                }
            }
            Op::Stop => self.wake = true,
            Op::Advance(ms) => self.now += Duration::from_millis(ms.into()),
            Op::Turn(seed) => {
                self.rng = seed;
                self.round();
            }
        }
    }

    fn send(&mut self, c: usize, n: usize) {
        let cl = &mut self.clients[c];
        if cl.finished || cl.lost || cl.closed || cl.reset {
            return;
        }
        let start = cl.sent.len();
        cl.sent.extend((start..start + n).map(|i| payload(c, i)));
        self.client_edge(c, READABLE);
    }

    fn finish(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        if cl.finished || cl.lost || cl.closed || cl.reset {
            return;
        }
        cl.finished = true;
        let r = Readiness {
            read_closed: true,
            ..READABLE
        };
        self.client_edge(c, r);
    }

    fn drain(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        if !cl.live() || cl.gone || cl.reset {
            return;
        }
        cl.in_flight = 0;
        if std::mem::take(&mut cl.blocked) {
            let r = Readiness {
                writable: true,
                ..Readiness::default()
            };
            self.client_edge(c, r);
        }
    }

    /// One iteration of the worker loop.
    fn round(&mut self) {
        for (t, r) in std::mem::take(&mut self.events) {
            self.d.handle_event(t, r);
        }
        self.d.handle_time(self.now);
        if std::mem::take(&mut self.wake) {
            self.d.handle_stop();
            self.stop_at.get_or_insert(self.now);
        }
        let mut n = 0;
        while let Some(action) = self.d.poll_action() {
            n += 1;
            if n > MAX_ACTIONS_PER_ROUND {
                self.violate(Prop::Forgotten, "a round never ends".into());
                return;
            }
            self.perform(action);
        }
        self.check_cap();
    }

    fn deadline(&self) -> Option<Instant> {
        self.stop_at.map(|t| t + self.config.drain_timeout)
    }

    /// The client behind a token, if the token ever named one.
    fn client_of(&self, token: Token) -> Option<usize> {
        self.clients.iter().position(|c| c.token == Some(token))
    }

    /// Checks an operation names a live connection; reports which client.
    fn live_target(&mut self, token: Token, what: &str) -> Option<usize> {
        match self.client_of(token) {
            Some(c) if self.clients[c].live() => Some(c),
            other => {
                self.violate(
                    Prop::ClosedOp,
                    format!("{what} for {token:?} (client {other:?}) which is not open"),
                );
                None
            }
        }
    }

    fn perform(&mut self, action: Action<usize>) {
        self.note(format!("  -> {action:?}"));
        match action {
            Action::CloseListener => {
                if self.listener_closed {
                    self.violate(Prop::ClosedOp, "listener closed twice".into());
                }
                self.listener_closed = true;
                for c in std::mem::take(&mut self.backlog) {
                    self.clients[c].lost = true;
                }
            }
            Action::Accept => self.accept(),
            Action::Register(token) => {
                let ok = !self.fault(3);
                if let Some(c) = self.live_target(token, "register") {
                    if ok {
                        // Registering reports the current state once, like EPOLL_CTL_ADD.
                        let cl = &self.clients[c];
                        let r = Readiness {
                            readable: cl.read_pos < cl.sent.len() || cl.finished,
                            writable: true,
                            read_closed: cl.finished,
                            hangup: cl.gone,
                            error: cl.reset,
                        };
                        self.edge(token, r);
                    } else {
                        self.clients[c].broken = true;
                    }
                }
                self.d.handle_register(token, ok);
            }
            Action::Read { token, len } => {
                let outcome = self.read(token, len);
                self.note(format!("     {outcome:?}"));
                self.d.handle_read(token, outcome);
            }
            Action::Write(token) => {
                let outcome = self.write(token);
                self.note(format!("     {outcome:?}"));
                self.d.handle_write(token, outcome);
            }
            Action::ShutdownWrite(token) => {
                if let Some(c) = self.live_target(token, "shutdown") {
                    if self.stop_at.is_none() {
                        self.violate(Prop::Stop, format!("client {c} shut before stop"));
                    }
                    self.clients[c].got_fin = true;
                }
            }
            Action::Close(c) => {
                let cl = &self.clients[c];
                if !cl.live() {
                    self.violate(Prop::ClosedOp, format!("client {c} closed while not open"));
                }
                let deadline_closed = self.deadline().is_some_and(|d| self.now >= d);
                let before_stop = self.stop_at.is_none();
                let cl = &mut self.clients[c];
                cl.closed = true;
                cl.deadline_closed = deadline_closed;
                cl.closed_before_stop = before_stop;
                if let Some(t) = cl.token {
                    self.events.retain(|(e, _)| *e != t);
                }
            }
        }
    }

    fn accept(&mut self) {
        if self.stop_at.is_some() {
            self.violate(Prop::Stop, "accept after stop".into());
        }
        if self.listener_closed {
            self.violate(Prop::ClosedOp, "accept on the closed listener".into());
        }
        let outcome = if self.fault(5) {
            AcceptOutcome::Interrupted
        } else if self.backlog.is_empty() {
            if self.fault(5) {
                AcceptOutcome::Exhausted(ResourceError::SystemDescriptors)
            } else {
                AcceptOutcome::WouldBlock
            }
        } else if self.fault(10) {
            AcceptOutcome::Exhausted(ResourceError::ProcessDescriptors)
        } else if self.fault(8) {
            let c = self.backlog.pop_front().expect("backlog not empty");
            self.clients[c].lost = true;
            AcceptOutcome::Aborted
        } else {
            let c = self.backlog.pop_front().expect("backlog not empty");
            AcceptOutcome::Accepted(c)
        };
        self.note(format!("     {outcome:?}"));
        let accepted = match outcome {
            AcceptOutcome::Accepted(c) => Some(c),
            _ => None,
        };
        let token = self.d.handle_accept(outcome);
        match (accepted, token) {
            (Some(c), Some(t)) => {
                self.clients[c].accepted = true;
                self.clients[c].token = Some(t);
            }
            (None, None) => {}
            other => panic!("accept outcome and token disagree: {other:?}"),
        }
    }

    fn read(&mut self, token: Token, len: usize) -> ReadOutcome {
        let Some(c) = self.live_target(token, "read") else {
            return ReadOutcome::Failed;
        };
        assert!(len > 0, "a read of 0 bytes");
        if self.stop_at.is_some() && !self.clients[c].got_fin {
            self.violate(Prop::Stop, format!("client {c} read after stop before FIN"));
        }
        if self.clients[c].reset {
            return ReadOutcome::Failed;
        }
        if self.fault(5) {
            return ReadOutcome::Interrupted;
        }
        if self.fault(1) {
            self.clients[c].reset = true;
            self.clients[c].broken = true;
            return ReadOutcome::Failed;
        }
        let cl = &mut self.clients[c];
        let avail = cl.sent.len() - cl.read_pos;
        if avail == 0 {
            if cl.finished {
                cl.saw_eof = true;
                return ReadOutcome::Eof;
            }
            return ReadOutcome::WouldBlock;
        }
        // The kernel hands over everything queued, up to the buffer.
        let n = avail.min(len);
        let data = cl.sent[cl.read_pos..cl.read_pos + n].to_vec();
        cl.read_pos += n;
        if cl.got_fin {
            cl.discarded += n;
        } else {
            cl.echo_read += n;
        }
        let (_, buf) = self.d.read_target(token);
        assert_eq!(buf.len(), len, "read buffer length");
        buf[..n].copy_from_slice(&data);
        ReadOutcome::Data(n)
    }

    fn write(&mut self, token: Token) -> WriteOutcome {
        let Some(c) = self.live_target(token, "write") else {
            return WriteOutcome::Failed;
        };
        let bytes = self.d.write_target(token).1.to_vec();
        if bytes.is_empty() {
            self.violate(Prop::Echo, format!("empty write to client {c}"));
        }
        if self.clients[c].got_fin {
            self.violate(Prop::Echo, format!("write to client {c} after FIN"));
        }
        if self.clients[c].reset || self.clients[c].gone {
            return WriteOutcome::Failed;
        }
        if self.fault(5) {
            return WriteOutcome::Interrupted;
        }
        if self.fault(1) {
            self.clients[c].reset = true;
            self.clients[c].broken = true;
            return WriteOutcome::Failed;
        }
        let cl = &self.clients[c];
        let room = if cl.blocked {
            0
        } else {
            self.window - cl.in_flight
        };
        let mut k = bytes.len().min(room);
        if k > 0 && self.fault(20) {
            k = self.roll(k as u64) as usize;
        }
        let cl = &mut self.clients[c];
        if k < bytes.len() {
            // A short write: the kernel owes an edge when the window opens.
            cl.blocked = true;
        }
        cl.received.extend_from_slice(&bytes[..k]);
        cl.in_flight += k;
        let prefix = cl.received.len() <= cl.sent.len() && cl.sent.starts_with(&cl.received);
        if !prefix {
            self.violate(
                Prop::Echo,
                format!("client {c} received bytes that are not a prefix of what it sent"),
            );
        }
        if k == 0 {
            WriteOutcome::WouldBlock
        } else {
            WriteOutcome::Wrote(k)
        }
    }

    fn check_cap(&mut self) {
        let cap = self.config.max_pending;
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            // A failed connection drops its remainder at once; its model count is moot.
            if cl.live() && !cl.reset && cl.model_pending() > cap {
                self.violate(
                    Prop::Cap,
                    format!("client {c} has {} bytes pending", cl.model_pending()),
                );
            }
        }
        if self.d.report().max_pending > cap as u64 {
            self.violate(Prop::Cap, "report shows pending over the cap".into());
        }
        if self.d.pending_bytes() > cap * self.d.active_connections() {
            self.violate(Prop::Cap, "pending bytes over connections x cap".into());
        }
    }

    /// Runs rounds without faults until nothing is left to do, letting time run up to `until`.
    /// Clients read everything echoed; cooperating clients answer the server's FIN with theirs.
    fn settle(&mut self, until: Option<Instant>) {
        self.faults = false;
        for _ in 0..MAX_SETTLE_ROUNDS {
            if self.d.is_finished() {
                return;
            }
            for c in 0..self.clients.len() {
                self.drain(c);
                if self.cooperate && self.clients[c].got_fin {
                    self.finish(c);
                }
            }
            if self.events.is_empty() && !self.wake {
                match self.d.poll_timeout() {
                    Some(t) if t <= self.now => {}
                    Some(t) if until.is_none_or(|u| t <= u) => self.now = t,
                    _ => return,
                }
            }
            self.note("settle round".into());
            self.round();
        }
        self.violate(Prop::Forgotten, "the worker never settles".into());
    }

    /// Nothing known to be waiting is left waiting after a settle.
    fn check_nothing_forgotten(&mut self) {
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if !cl.live() {
                continue;
            }
            if cl.read_pos < cl.sent.len() {
                let left = cl.sent.len() - cl.read_pos;
                self.violate(
                    Prop::Forgotten,
                    format!("client {c}: {left} bytes never read"),
                );
            } else if cl.model_pending() > 0 {
                self.violate(Prop::Forgotten, format!("client {c}: echo never flushed"));
            } else if cl.saw_eof {
                self.violate(Prop::Forgotten, format!("client {c}: EOF but not closed"));
            }
        }
        if !self.listener_closed && !self.backlog.is_empty() {
            self.violate(Prop::Forgotten, "connections left in the backlog".into());
        }
    }

    fn check_echo_complete(&mut self) {
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if !cl.closed || !cl.saw_eof || cl.broken || cl.deadline_closed {
                continue;
            }
            // Drained: everything read for echoing came back, and all input was read for echoing
            // unless the stop came first.
            let echoed_all_read = cl.received.len() == cl.echo_read;
            let read_all = cl.echo_read == cl.sent.len() || !cl.closed_before_stop;
            if !echoed_all_read || !read_all {
                let (s, r, e) = (cl.sent.len(), cl.received.len(), cl.echo_read);
                self.violate(
                    Prop::Echo,
                    format!("client {c}: sent {s}, read {e}, echoed {r} after a clean close"),
                );
            }
        }
    }

    fn check_all_closed(&mut self) {
        if !self.d.is_finished() {
            self.violate(Prop::Stop, "worker not finished after the deadline".into());
        }
        if !self.listener_closed {
            self.violate(Prop::Stop, "listener still open".into());
        }
        for c in 0..self.clients.len() {
            if self.clients[c].live() {
                self.violate(Prop::Stop, format!("client {c} still open after stop"));
            }
        }
    }

    fn check_report(&mut self) {
        let r = self.d.report();
        let sum = |f: fn(&Client) -> usize| self.clients.iter().map(f).sum::<usize>() as u64;
        let read = sum(|c| c.echo_read);
        let written = sum(|c| c.received.len());
        let discarded = sum(|c| c.discarded);
        let accepted = sum(|c| usize::from(c.accepted));
        let closed = sum(|c| usize::from(c.closed));
        let mut wrong = Vec::new();
        if !r.balances() {
            wrong.push("read != written + dropped".to_string());
        }
        for (name, got, want) in [
            ("bytes_read", r.bytes_read, read),
            ("bytes_written", r.bytes_written, written),
            ("bytes_dropped", r.bytes_dropped, read.wrapping_sub(written)),
            ("bytes_discarded", r.bytes_discarded, discarded),
            ("accepted", r.accepted, accepted),
            ("closed", r.closed, closed),
        ] {
            if got != want {
                wrong.push(format!("{name}: report {got}, model {want}"));
            }
        }
        if !wrong.is_empty() {
            self.violate(Prop::Balance, format!("{wrong:?} in {r}"));
        }
    }
}

/// Runs a case through the generated steps and the final phases; returns every violation seen.
fn run(case: &Case) -> Vec<(Prop, String)> {
    let mut sim = Sim::new(case);
    for op in &case.ops {
        sim.apply(op);
    }
    // Phase 1: settle without new input or readable edges, short of the drain deadline.
    let before_deadline = sim.deadline().map(|d| d - Duration::from_nanos(1));
    sim.settle(before_deadline);
    sim.check_nothing_forgotten();
    // Phase 2: clients finish and everything drains.
    if case.finish_before_stop && sim.stop_at.is_none() {
        for c in 0..sim.clients.len() {
            sim.finish(c);
        }
        sim.settle(None);
        sim.check_nothing_forgotten();
    }
    // Phase 3: stop, settle, then let the drain deadline pass.
    sim.wake = sim.stop_at.is_none();
    sim.round();
    let before_deadline = sim.deadline().map(|d| d - Duration::from_nanos(1));
    sim.settle(before_deadline);
    if let Some(d) = sim.deadline() {
        sim.now = sim.now.max(d);
    }
    sim.settle(None);
    sim.check_echo_complete();
    sim.check_all_closed();
    sim.check_report();
    sim.violations
}

fn check(case: &Case, prop: Prop) -> Result<(), TestCaseError> {
    let violations = run(case);
    if let Some((_, what)) = violations.iter().find(|(p, _)| *p == prop) {
        return Err(TestCaseError::fail(what.clone()));
    }
    Ok(())
}

/// `PROPTEST_CASES` when set (CI uses 1000), else a count that keeps `cargo test` quick.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    /// Echoed output is always a prefix of the input, and equals it once the peer has finished and
    /// the connection has drained (input read after a stop is discarded, never echoed).
    #[test]
    fn echo_is_a_prefix_of_input_and_complete_after_drain(case in case()) {
        check(&case, Prop::Echo)?;
    }

    /// Pending output of a connection never exceeds the cap.
    #[test]
    fn pending_output_never_exceeds_the_cap(case in case()) {
        check(&case, Prop::Cap)?;
    }

    /// No operation is issued for a closed connection (or the closed listener), and nothing is
    /// closed twice.
    #[test]
    fn no_operation_on_a_closed_connection(case in case()) {
        check(&case, Prop::ClosedOp)?;
    }

    /// A connection known to have unread data (after a backpressure pause or the read budget), and
    /// a backlog after an accept back-off, are served again without a new edge.
    #[test]
    fn nothing_waiting_is_forgotten(case in case()) {
        check(&case, Prop::Forgotten)?;
    }

    /// After stop no accept is issued, input is not echoed, and every connection ends closed.
    #[test]
    fn stop_accepts_nothing_and_closes_everything(case in case()) {
        check(&case, Prop::Stop)?;
    }

    /// The report balances (`bytes_read == bytes_written + bytes_dropped`) and agrees with the model.
    #[test]
    fn report_balances_and_matches_the_model(case in case()) {
        check(&case, Prop::Balance)?;
    }
}
