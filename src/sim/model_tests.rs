//! Model-based property tests of the worker over the simulated kernel.
//!
//! Proptest generates arbitrary interleavings of client behaviour (connect, send, finish, read the
//! echo, vanish, reset), spurious and stale edges, a stop at any point, time passing the drain
//! deadline, and worker turns whose injected outcomes (short and refused reads and writes, `EINTR`,
//! resets, `EMFILE`, `ENFILE`, `ECONNABORTED`, failed registrations, short event batches) are drawn
//! from the turn's seed. The model's links (bytes sent, delivered) and the oracle's record of each
//! connection (bytes read for echo, written back, discarded; how it closed) are the reference the
//! properties are checked against, with the rules the oracle saw broken.
//!
//! After the generated steps the run settles without faults and without new readable edges (only
//! edges the kernel really raises: registration and writable-after-full), then clients finish, then
//! the worker stops. Each property is its own test; a failing case is saved under the crate's
//! `proptest-regressions/`. `PROPTEST_CASES` sets the number of cases (default 64).

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use super::model::link::{Break, Stage};
use super::*;
use crate::dispatch::Settings;
use crate::report::Counter;

/// Clients per case; more adds little but time.
const MAX_CLIENTS: usize = 6;
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
    /// Client `c` sends `n` bytes with `MSG_OOB`, the last one urgent: readable + urgent edge, and
    /// a read that stops at its mark with more queued.
    SendUrgent(u8, u8),
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
    /// Each client's receive buffer: echo its kernel acknowledges before it reads.
    peer_window: usize,
    /// Whether clients answer the server's FIN by finishing (else the deadline must end them).
    cooperate: bool,
    /// Whether clients finish before the stop in the final phase.
    finish_before_stop: bool,
    /// Whether clients read their echo after the stop (else their windows may stay full: an echo
    /// that filled one exactly leaves our FIN waiting, delivered all the same).
    read_after_stop: bool,
    /// The idle timeout, in milliseconds, in a share of the cases.
    idle_ms: Option<u64>,
    ops: Vec<Op>,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Connect),
        1 => Just(Op::ListenerEdge),
        12 => (any::<u8>(), 1..=40u8).prop_map(|(c, n)| Op::Send(c, n)),
        2 => (any::<u8>(), 1..=40u8).prop_map(|(c, n)| Op::SendUrgent(c, n)),
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
        (
            0..=300u64,
            1..=24usize,
            any::<bool>(),
            any::<bool>(),
            1..=24usize,
        ),
        proptest::collection::vec(op(), 0..120),
        proptest::option::of(any::<prop::sample::Index>()),
        (any::<bool>(), proptest::option::weighted(0.3, 1..=200u64)),
    )
        .prop_map(
            |(
                (max_pending, scratch_len, reads, accepts),
                (drain_ms, window, coop, fbs, peer_window),
                mut ops,
                stop,
                (read_after_stop, idle_ms),
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
                    peer_window,
                    cooperate: coop,
                    finish_before_stop: fbs,
                    read_after_stop,
                    idle_ms,
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

/// The byte a client sends at `offset`: depends on both, so reordering or duplication shows.
fn payload(client: usize, offset: usize) -> u8 {
    let x = (offset as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (client as u64);
    (x >> 56) as u8
}

/// The faults of the generated turns (the settle phases run without any).
fn step_faults() -> Faults {
    Faults::all(50)
        .with(Fault::WaitEintr, 0)
        .with(Fault::ShortBatch, 100)
        .with(Fault::AcceptEmfile, 100)
        .with(Fault::ReadShort, 100)
        .with(Fault::WriteShort, 200)
        .with(Fault::ReadReset, 10)
        .with(Fault::WriteReset, 10)
}

impl From<Rule> for Prop {
    fn from(rule: Rule) -> Prop {
        match rule {
            Rule::Echo => Prop::Echo,
            Rule::Cap => Prop::Cap,
            Rule::ClosedOp => Prop::ClosedOp,
            Rule::Stop => Prop::Stop,
            // A close for silence that came too early cuts echo.
            Rule::Idle => Prop::Echo,
        }
    }
}

/// The worker over the kernel, the clients' links, and what the checks found.
struct Model {
    worker: Worker<Sim<SeedRng, Steps>>,
    cap: usize,
    drain: Duration,
    /// The kernel's send buffer per connection.
    window: usize,
    peer_window: usize,
    cooperate: bool,
    read_after_stop: bool,
    /// Each client's link; `None` when it was refused (the listener had closed).
    clients: Vec<Option<usize>>,
    violations: Vec<(Prop, String)>,
}

impl Model {
    fn new(case: &Case) -> Model {
        let settings = Settings {
            max_pending: case.max_pending,
            drain_timeout: Duration::from_millis(case.drain_ms),
            scratch_len: case.scratch_len,
            reads_per_turn: case.reads_per_turn,
            accepts_per_turn: case.accepts_per_turn,
            idle_timeout: case.idle_ms.map(Duration::from_millis),
            ..Settings::default()
        };
        let terms = Terms {
            strict: false,
            ..Terms::of(&settings)
        };
        Model {
            cap: case.max_pending,
            drain: settings.drain_timeout,
            window: case.window,
            peer_window: case.peer_window,
            worker: stepped(Setup::new(step_faults()), terms, settings),
            cooperate: case.cooperate,
            read_after_stop: case.read_after_stop,
            clients: Vec::new(),
            violations: Vec::new(),
        }
    }

    fn k(&mut self) -> &mut Kernel<SeedRng> {
        &mut self.worker.io_mut().kernel
    }

    fn kernel(&self) -> &Kernel<SeedRng> {
        &self.worker.io().kernel
    }

    fn oracle(&self) -> &Oracle {
        &self.worker.io().oracle
    }

    fn violate(&mut self, prop: Prop, what: String) {
        let trace = self.kernel().trace();
        self.violations
            .push((prop, format!("{what}\nlast steps:\n{trace}")));
    }

    /// The links of the clients still connected (in the backlog or open).
    fn connected(&self) -> Vec<usize> {
        let k = self.kernel();
        self.clients
            .iter()
            .flatten()
            .copied()
            .filter(|&l| matches!(k.links[l].stage, Stage::Queued | Stage::Open))
            .collect()
    }

    /// The `c`-th connected client's link, if any.
    fn pick(&self, c: u8) -> Option<usize> {
        let connected = self.connected();
        (!connected.is_empty()).then(|| connected[c as usize % connected.len()])
    }

    /// The `c`-th client that may still send and read: the client cannot know whether the
    /// server closed its socket.
    fn pick_sender(&self, c: u8) -> Option<usize> {
        let k = self.kernel();
        let live: Vec<usize> = self
            .clients
            .iter()
            .flatten()
            .copied()
            .filter(|&l| k.links[l].stage != Stage::Lost)
            .collect();
        (!live.is_empty()).then(|| live[c as usize % live.len()])
    }

    /// The `c`-th closed client's link, if any.
    fn pick_closed(&self, c: u8) -> Option<usize> {
        let k = self.kernel();
        let closed: Vec<usize> = (0..k.links.len())
            .filter(|&l| k.links[l].stage == Stage::Closed)
            .collect();
        (!closed.is_empty()).then(|| closed[c as usize % closed.len()])
    }

    fn apply(&mut self, op: &Op) {
        self.k().note(Ev::Note(format!("step {op:?}")));
        match *op {
            Op::Connect => {
                if self.clients.len() < MAX_CLIENTS {
                    let (window, peer_window) = (self.window, self.peer_window);
                    let link = self.k().connect(usize::MAX, window, 1, peer_window).ok();
                    self.clients.push(link);
                }
            }
            Op::ListenerEdge => self.k().listener_edge(),
            Op::Send(c, n) => {
                if let Some(l) = self.pick_sender(c) {
                    self.send(l, n as usize, false);
                }
            }
            Op::SendUrgent(c, n) => {
                if let Some(l) = self.pick_sender(c) {
                    self.send(l, n as usize, true);
                }
            }
            Op::Finish(c) => {
                if let Some(l) = self.pick(c) {
                    self.finish(l);
                }
            }
            Op::Drain(c) => {
                if let Some(l) = self.pick_sender(c) {
                    self.drain(l);
                }
            }
            Op::ReadableEdge(c) => {
                if let Some(l) = self.pick(c) {
                    self.k().inject_edge(l, READABLE);
                }
            }
            Op::WritableEdge(c) => {
                if let Some(l) = self.pick(c) {
                    self.k().inject_edge(l, WRITABLE);
                }
            }
            Op::Hangup(c) => {
                if let Some(l) = self.pick(c).filter(|&l| self.intact(l)) {
                    self.k().client_vanish(l);
                }
            }
            Op::ErrorEdge(c) => {
                if let Some(l) = self.pick(c).filter(|&l| self.intact(l)) {
                    self.k().client_reset(l);
                }
            }
            Op::StaleEdge(c) => {
                if let Some(token) = self
                    .pick_closed(c)
                    .and_then(|l| self.kernel().links[l].token)
                {
                    let r = Readiness {
                        error: true,
                        ..READABLE.union(WRITABLE)
                    };
                    self.k().inject_stale(token, r);
                }
            }
            Op::Stop => self.k().request_stop(),
            Op::Advance(ms) => self.k().advance(Duration::from_millis(ms.into())),
            Op::Turn(seed) => {
                self.k().rng = SeedRng::new(seed);
                self.turn();
            }
        }
    }

    fn intact(&self, link: usize) -> bool {
        self.kernel().links[link].broken == Break::Intact
    }

    fn send(&mut self, link: usize, n: usize, urgent: bool) {
        if !self.kernel().links[link].client_can_send() {
            return;
        }
        let start = self.kernel().links[link].up.sent.len();
        let bytes: Vec<u8> = (start..start + n).map(|i| payload(link, i)).collect();
        if urgent {
            self.k().client_send_urgent(link, &bytes);
        } else {
            self.k().client_send(link, &bytes);
        }
    }

    fn finish(&mut self, link: usize) {
        if self.kernel().links[link].client_can_send() {
            self.k().client_fin(link);
        }
    }

    /// The client reads everything echoed so far.
    fn drain(&mut self, link: usize) {
        let l = &self.kernel().links[link];
        if l.broken == Break::Intact && !l.reset_by_server {
            self.k().client_recv(link, usize::MAX);
        }
    }

    /// One turn of the worker loop, then the cap checks.
    fn turn(&mut self) {
        self.worker.turn().expect("a simulated wait cannot fail");
        self.check_cap();
    }

    fn deadline(&self) -> Option<u64> {
        let drain = self.drain.as_nanos() as u64;
        self.oracle().stop_at().map(|t| t.saturating_add(drain))
    }

    fn check_cap(&mut self) {
        if self.oracle().past_deadline(self.kernel().now()) {
            // What is read past the deadline is dropped at once, never held.
            return;
        }
        let cap = self.cap as u64;
        let oracle = self.oracle();
        let over: Vec<(usize, u64)> = self
            .kernel()
            .links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_open() && l.broken != Break::Reset)
            .map(|(i, _)| (i, oracle.record(i)))
            .map(|(i, r)| (i, r.echo_read - r.written))
            .filter(|&(_, pending)| pending > cap)
            .collect();
        for (link, pending) in over {
            self.violate(
                Prop::Cap,
                format!("link {link} has {pending} bytes pending"),
            );
        }
        let core = self.worker.core();
        if core.report()[Counter::PendingHighWater] > cap {
            self.violate(Prop::Cap, "report shows pending over the cap".into());
        }
        let core = self.worker.core();
        if core.pending_bytes() > self.cap * core.active_connections() {
            self.violate(Prop::Cap, "pending bytes over connections x cap".into());
        }
    }

    /// Runs turns without faults until nothing is left to do, letting time run up to `until`.
    /// Clients read everything echoed (after the stop only if the case says so); cooperating
    /// clients answer the server's FIN with theirs.
    fn settle(&mut self, until: Option<u64>) {
        self.k().choices.faults = Faults::none();
        for _ in 0..MAX_SETTLE_ROUNDS {
            if self.worker.core().is_finished() {
                return;
            }
            let reading = self.read_after_stop || self.oracle().stop_at().is_none();
            for link in self.clients.clone().into_iter().flatten() {
                if reading {
                    self.drain(link);
                }
                if self.cooperate && self.kernel().links[link].write_shut {
                    self.finish(link);
                }
            }
            if !self.kernel().has_ready() {
                let now = self.kernel().now();
                let timeout = self.worker.core().poll_timeout();
                match timeout.map(|t| self.kernel().virtual_of(t)) {
                    Some(t) if t <= now => {}
                    Some(t) if until.is_none_or(|u| t <= u) => self.k().advance_to(t),
                    _ => return,
                }
            }
            self.k().note(Ev::Note("settle turn".into()));
            self.turn();
        }
        self.violate(Prop::Forgotten, "the worker never settles".into());
    }

    /// Nothing known to be waiting is left waiting after a settle.
    fn check_nothing_forgotten(&mut self) {
        let mut found = Vec::new();
        let peers_read = self.read_after_stop || self.oracle().stop_at().is_none();
        for (i, l) in self.kernel().links.iter().enumerate() {
            let r = self.oracle().record(i);
            // A peer that does not read holds its connection up once the send buffer is full:
            // waiting for it is not forgetting it.
            if !l.is_open() || (!peers_read && l.down.room() == 0) {
                continue;
            }
            if l.up.queued() > 0 {
                found.push(format!("link {i}: {} bytes never read", l.up.queued()));
            } else if r.echo_read > r.written {
                found.push(format!("link {i}: echo never flushed"));
            } else if r.eof_read && r.eof_before_stop && !l.write_shut {
                // After the stop a finished peer waits for its acknowledgement like any other.
                found.push(format!("link {i}: EOF but not closed"));
            }
        }
        if self.kernel().listener_open() && self.kernel().backlog_len() > 0 {
            found.push("connections left in the backlog".into());
        }
        for what in found {
            self.violate(Prop::Forgotten, what);
        }
    }

    fn check_echo_complete(&mut self) {
        let mut found = Vec::new();
        let (k, oracle) = (self.kernel(), self.oracle());
        for (i, l) in k.links.iter().enumerate() {
            let r = oracle.record(i);
            let excluded = oracle.excluded(k, i).is_some();
            // Before the deadline no RST may destroy echo: a close comes only once the peer
            // holds every byte, whatever the peer sends after it.
            let spared = excluded || r.deadline_close || r.idle_close;
            if l.stage == Stage::Closed && l.reset_by_server && !spared {
                found.push(format!("link {i}: reset by the server before the deadline"));
            }
            let clean = l.stage == Stage::Closed
                && r.eof_read
                && !excluded
                && !r.deadline_close
                && !r.idle_close;
            if !clean {
                continue;
            }
            // Drained: everything read for echoing came back, and all input was read for echoing
            // unless the stop came first.
            let (sent, read, echoed) = (l.up.sent.len() as u64, r.echo_read, r.written);
            let read_all = read == sent || !r.closed_before_stop;
            if echoed != read || !read_all {
                found.push(format!(
                    "link {i}: sent {sent}, read {read}, echoed {echoed} after a clean close"
                ));
            }
        }
        found.extend(self.lost_before_the_cut());
        for what in found {
            self.violate(Prop::Echo, what);
        }
    }

    /// Connections closed during the stop, before the deadline and without an error, whose input
    /// that arrived before the stop was not all echoed.
    fn lost_before_the_cut(&self) -> Vec<String> {
        let (k, oracle) = (self.kernel(), self.oracle());
        (0..k.links.len())
            .filter_map(|i| {
                let r = oracle.record(i);
                let judged = k.links[i].stage == Stage::Closed
                    && !r.closed_before_stop
                    && !r.deadline_close
                    && !r.error_told
                    && oracle.excluded(k, i).is_none();
                let cut = r.cut?;
                let (read, echoed) = (r.echo_read, r.written);
                (judged && (read < cut || echoed < read)).then(|| {
                    format!("link {i}: {cut} bytes arrived before the stop, {read} read, {echoed} echoed")
                })
            })
            .collect()
    }

    fn check_all_closed(&mut self) {
        if !self.worker.core().is_finished() {
            self.violate(Prop::Stop, "worker not finished after the deadline".into());
        }
        if self.kernel().listener_open() {
            self.violate(Prop::Stop, "listener still open".into());
        }
        let open: Vec<usize> = (0..self.kernel().links.len())
            .filter(|&l| self.kernel().links[l].is_open())
            .collect();
        for link in open {
            self.violate(Prop::Stop, format!("link {link} still open after stop"));
        }
    }

    fn check_report(&mut self) {
        let report = self.worker.core().report();
        let wrong = self.oracle().audit(self.kernel(), &report);
        if !wrong.is_empty() {
            self.violate(Prop::Balance, format!("{wrong:?} in {report}"));
        }
    }

    /// Everything found: the model's own checks and the rules the oracle saw broken.
    fn into_violations(self) -> Vec<(Prop, String)> {
        let trace = self.kernel().trace();
        let mut all = self.violations;
        all.extend(self.worker.io().oracle.violations().iter().map(|v| {
            (
                Prop::from(v.rule),
                format!("{}\nlast steps:\n{trace}", v.what),
            )
        }));
        all
    }
}

/// Runs a case through the generated steps and the final phases; returns every violation seen.
fn run(case: &Case) -> Vec<(Prop, String)> {
    let mut m = Model::new(case);
    for op in &case.ops {
        m.apply(op);
    }
    // Phase 1: settle without new input or readable edges, short of the drain deadline.
    let before_deadline = m.deadline().map(|d| d.saturating_sub(1));
    m.settle(before_deadline);
    m.check_nothing_forgotten();
    // Phase 2: clients finish and everything drains.
    if case.finish_before_stop && m.oracle().stop_at().is_none() {
        for link in m.connected() {
            m.finish(link);
        }
        m.settle(None);
        m.check_nothing_forgotten();
    }
    // Phase 3: stop, settle, then let the drain deadline pass.
    if m.oracle().stop_at().is_none() {
        m.k().request_stop();
    }
    m.turn();
    let before_deadline = m.deadline().map(|d| d.saturating_sub(1));
    m.settle(before_deadline);
    if let Some(d) = m.deadline() {
        m.k().advance_to(d);
    }
    m.settle(None);
    m.check_echo_complete();
    m.check_all_closed();
    m.check_report();
    m.into_violations()
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

/// One proptest per property, each failing only on its own property.
macro_rules! properties {
    ($($(#[doc = $doc:literal])+ $name:ident => $prop:ident;)+) => {
        proptest! {
            #![proptest_config(config())]
            $(
                $(#[doc = $doc])+
                #[test]
                fn $name(case in case()) {
                    check(&case, Prop::$prop)?;
                }
            )+
        }
    };
}

properties! {
    /// Echoed output is always a prefix of the input, and equals it once the peer has finished and
    /// the connection has drained (input read after a stop is discarded, never echoed).
    echo_is_a_prefix_of_input_and_complete_after_drain => Echo;

    /// Pending output of a connection never exceeds the cap.
    pending_output_never_exceeds_the_cap => Cap;

    /// No operation is issued for a closed connection (or the closed listener), and nothing is
    /// closed twice.
    no_operation_on_a_closed_connection => ClosedOp;

    /// A connection known to have unread data (after a backpressure pause or the read budget), and
    /// a backlog after an accept back-off, are served again without a new edge.
    nothing_waiting_is_forgotten => Forgotten;

    /// After stop no accept is issued, input is not echoed, and every connection ends closed.
    stop_accepts_nothing_and_closes_everything => Stop;

    /// The report balances (`bytes_read == bytes_written + bytes_dropped`) and agrees with the
    /// oracle's record of every connection.
    report_balances_and_matches_the_model => Balance;
}
