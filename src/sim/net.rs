//! The simulated network behind the [`Io`] trait: a virtual clock, one listener with a bounded
//! backlog, and per connection two bounded byte queues (client-to-server, server-to-client) with
//! their FINs and RSTs. Clients act on their own schedule whenever the worker waits.
//!
//! Readiness is edge-triggered the way Linux reports it: new input raises a readable edge; after a
//! would-block or partial write, room freed by the client raises a writable edge; a FIN raises
//! readable + RDHUP (+ HUP once both directions are shut); an RST raises error + HUP; registering
//! reports the state at that moment. Injected faults that Linux could not produce alone (a short
//! read with more queued, a would-block with room) are paired with the edge that would follow.
//!
//! Every rule the worker must keep is checked where it could be broken, with a panic that names it.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use super::entropy::Entropy;
use super::scenario::{ClientSpec, Faults, Finish, Nanos, Scenario, MICRO, MILLI};
use crate::dispatch::{Readiness, Report, Token, MAX_ACCEPT_BACKOFF};
use crate::io::Io;

/// A simulated connection socket: the index of its client. Not `Clone`, so the worker cannot
/// duplicate it; one left unclosed at the end is a leak.
#[derive(Debug, PartialEq, Eq)]
pub struct SimSocket(usize);

/// Waits without progress before the run is declared stuck.
const MAX_IDLE_WAITS: u64 = 100_000;
/// Waits in one run, however busy.
const MAX_WAITS: u64 = 2_000_000;
/// Virtual time without progress after which the network counts as quiet (any legitimate timer,
/// back-off or client pause is far shorter).
const QUIET_AFTER: Nanos = 2_000 * MILLI;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    NotArrived,
    Connected,
    Done,
}

/// One client and the server side of its connection.
#[derive(Debug)]
struct Peer {
    spec: ClientSpec,
    stage: Stage,
    /// Why the echo checks do not apply to this client, if they do not.
    excluded: Option<&'static str>,
    sent: usize,
    sent_fin: bool,
    received: usize,
    saw_eof: bool,
    client_closed: bool,
    /// The server reset this client.
    was_reset: bool,
    pause_until: Nanos,
    next: Option<Nanos>,

    accepted: bool,
    server_open: bool,
    token: Option<Token>,
    c2s: VecDeque<u8>,
    c2s_fin: bool,
    s2c: VecDeque<u8>,
    /// The server sent FIN (after `s2c`).
    s2c_fin: bool,
    write_shut: bool,
    /// A full or partial write happened: room must raise a writable edge.
    want_write: bool,
    client_rst: bool,
    read_echo: u64,
    read_discard: u64,
    written: u64,
    eof_before_stop: bool,
    deadline_close: bool,
}

impl Peer {
    fn new(spec: ClientSpec) -> Peer {
        Peer {
            spec,
            stage: Stage::NotArrived,
            excluded: None,
            sent: 0,
            sent_fin: false,
            received: 0,
            saw_eof: false,
            client_closed: false,
            was_reset: false,
            pause_until: 0,
            next: None,
            accepted: false,
            server_open: false,
            token: None,
            c2s: VecDeque::new(),
            c2s_fin: false,
            s2c: VecDeque::new(),
            s2c_fin: false,
            write_shut: false,
            want_write: false,
            client_rst: false,
            read_echo: 0,
            read_discard: 0,
            written: 0,
            eof_before_stop: false,
            deadline_close: false,
        }
    }

    /// The client is waiting for nothing more from the server (echo complete, EOF seen when due).
    fn satisfied(&self) -> bool {
        self.c2s.is_empty()
            && !self.c2s_fin
            && self.s2c.is_empty()
            && self.written == self.read_echo
            && self.read_echo == self.sent as u64
    }
}

/// One line of the trace printed when a run fails.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug only
enum Ev {
    Wait {
        at: Nanos,
        deadline: Option<Nanos>,
        events: usize,
    },
    WaitEintr,
    Stop {
        at: Nanos,
    },
    Arrive(usize),
    Accept(Result<usize, i32>),
    Register(usize, Token, bool),
    Read {
        c: usize,
        asked: usize,
        got: Result<usize, i32>,
    },
    Write {
        c: usize,
        offered: usize,
        took: Result<usize, i32>,
    },
    ShutdownWrite(usize),
    Close {
        c: usize,
        unread: usize,
        deadline: bool,
    },
    CloseListener,
    ClientSend(usize, usize),
    ClientFin(usize),
    ClientRecv(usize, usize),
    ClientEof(usize),
    ClientReset(usize),
    ClientPause(usize, Nanos),
}

const TRACE_LEN: usize = 400;

/// Counters over one run, for the test's summary and its coverage checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub waits: u64,
    pub clients: u64,
    pub full_echoes: u64,
    pub deadline_closes: u64,
    pub client_resets: u64,
    pub short_writes: u64,
    pub short_reads: u64,
    pub emfile: u64,
    pub aborted: u64,
    pub stop_with_traffic: u64,
    pub backpressure_pauses: u64,
    pub bytes_echoed: u64,
}

/// The simulated network of one worker.
pub struct SimNet<E: Entropy> {
    e: E,
    faults: Faults,
    max_pending: usize,
    drain: Nanos,
    base: Instant,
    now: Nanos,
    peers: Vec<Peer>,
    backlog: VecDeque<usize>,
    backlog_cap: usize,
    listener_open: bool,
    listener_closes: u32,
    fd_limit: usize,
    open_fds: usize,
    /// Coalesced pending edges, in the order they were raised.
    ready: Vec<(Token, Readiness)>,
    listener_ready: bool,
    waker_pending: bool,
    stop_at: Option<Nanos>,
    stopped_at: Option<Nanos>,
    closed_tokens: Vec<Token>,
    /// When the worker last called `accept`.
    last_accept: Option<Nanos>,
    idle_waits: u64,
    last_progress: Nanos,
    trace: VecDeque<Ev>,
    stats: Stats,
}

fn or(a: Readiness, b: Readiness) -> Readiness {
    Readiness {
        readable: a.readable || b.readable,
        writable: a.writable || b.writable,
        read_closed: a.read_closed || b.read_closed,
        hangup: a.hangup || b.hangup,
        error: a.error || b.error,
    }
}

fn errno<T>(code: i32) -> io::Result<T> {
    Err(io::Error::from_raw_os_error(code))
}

impl<E: Entropy> SimNet<E> {
    pub fn new(scenario: Scenario, entropy: E) -> Self {
        let drain = scenario.config.drain_timeout.as_nanos() as Nanos;
        let mut peers: Vec<Peer> = scenario.clients.into_iter().map(Peer::new).collect();
        for p in &mut peers {
            p.next = Some(p.spec.arrival);
        }
        SimNet {
            e: entropy,
            faults: scenario.faults,
            max_pending: scenario.config.max_pending,
            drain,
            base: Instant::now(),
            now: 0,
            stats: Stats {
                clients: peers.len() as u64,
                ..Stats::default()
            },
            peers,
            backlog: VecDeque::new(),
            backlog_cap: scenario.backlog_cap,
            listener_open: true,
            listener_closes: 0,
            fd_limit: scenario.fd_limit,
            open_fds: 0,
            ready: Vec::new(),
            listener_ready: false,
            waker_pending: false,
            stop_at: scenario.stop_at,
            stopped_at: None,
            closed_tokens: Vec::new(),
            last_accept: None,
            idle_waits: 0,
            last_progress: 0,
            trace: VecDeque::with_capacity(TRACE_LEN),
        }
    }

    /// The last operations, oldest first, for a failure report.
    pub fn trace_tail(&self) -> String {
        let mut out = String::new();
        for ev in &self.trace {
            out.push_str(&format!("  {ev:?}\n"));
        }
        out
    }

    /// A one-paragraph picture of every connection, for a failure report.
    pub fn state_dump(&self) -> String {
        let mut out = format!(
            "now={}us stopped_at={:?} listener_open={} backlog={:?} open_fds={}\n",
            self.now / MICRO,
            self.stopped_at,
            self.listener_open,
            self.backlog,
            self.open_fds
        );
        for (i, p) in self.peers.iter().enumerate() {
            out.push_str(&format!(
                "  client {i}: {:?} {:?} excl={:?} len={} sent={} fin={} recv={} eof={} reset={} | \
                 server open={} c2s={} c2s_fin={} s2c={} s2c_fin={} read={} written={} discard={} \
                 want_write={} next={:?}\n",
                p.stage,
                p.spec.finish,
                p.excluded,
                p.spec.payload.len(),
                p.sent,
                p.sent_fin,
                p.received,
                p.saw_eof,
                p.was_reset,
                p.server_open,
                p.c2s.len(),
                p.c2s_fin,
                p.s2c.len(),
                p.s2c_fin,
                p.read_echo,
                p.written,
                p.read_discard,
                p.want_write,
                p.next
            ));
        }
        out
    }

    fn log(&mut self, ev: Ev) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace.push_back(ev);
    }

    fn progress(&mut self) {
        self.idle_waits = 0;
        self.last_progress = self.now;
    }

    fn stopped(&self) -> bool {
        self.stopped_at.is_some()
    }

    fn past_deadline(&self) -> bool {
        self.stopped_at.is_some_and(|t| self.now >= t + self.drain)
    }

    /// Raises an edge on a connection the worker registered and has not closed.
    fn edge(&mut self, c: usize, r: Readiness) {
        let p = &self.peers[c];
        let Some(token) = p.token.filter(|_| p.server_open) else {
            return;
        };
        match self.ready.iter_mut().find(|(t, _)| *t == token) {
            Some((_, old)) => *old = or(*old, r),
            None => self.ready.push((token, r)),
        }
    }

    /// The events a FIN from the client raises.
    fn fin_edge(&self, c: usize) -> Readiness {
        let both = self.peers[c].write_shut;
        Readiness {
            readable: true,
            read_closed: true,
            hangup: both,
            writable: both,
            error: false,
        }
    }

    fn wake_client(&mut self, c: usize) {
        let delay = self.e.range(1, 50 * MICRO);
        let p = &mut self.peers[c];
        if p.stage == Stage::Connected && p.next.is_none_or(|t| t > self.now + delay) {
            p.next = Some(self.now + delay);
        }
    }

    fn live(&self, s: &SimSocket, op: &str) -> usize {
        let p = &self.peers[s.0];
        assert!(p.accepted, "{op} on socket {} that was never accepted", s.0);
        assert!(p.server_open, "{op} on closed socket {}", s.0);
        s.0
    }

    // ----- clients -----

    fn next_client_time(&self) -> Option<Nanos> {
        self.peers.iter().filter_map(|p| p.next).min()
    }

    /// Lets every client whose time has come act, in time order.
    fn run_clients(&mut self) {
        loop {
            let due = self
                .peers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.next.filter(|&t| t <= self.now).map(|t| (t, i)))
                .min();
            let Some((_, c)) = due else { return };
            self.peers[c].next = None;
            self.client_act(c);
        }
    }

    fn client_act(&mut self, c: usize) {
        match self.peers[c].stage {
            Stage::Done => return,
            Stage::NotArrived => {
                if !self.listener_open {
                    self.peers[c].stage = Stage::Done;
                    self.peers[c].excluded = Some("refused: listener closed");
                    return;
                }
                if self.backlog.len() >= self.backlog_cap {
                    // A full backlog drops the SYN; the client retries later.
                    let retry = self.e.range(50 * MILLI, 300 * MILLI);
                    self.peers[c].next = Some(self.now + retry);
                    return;
                }
                self.peers[c].stage = Stage::Connected;
                self.backlog.push_back(c);
                self.listener_ready = true;
                self.log(Ev::Arrive(c));
                self.progress();
            }
            Stage::Connected => self.client_io(c),
        }
        self.schedule_client(c);
    }

    fn client_io(&mut self, c: usize) {
        let now = self.now;
        if let Finish::Reset { after } = self.peers[c].spec.finish {
            if self.peers[c].sent >= after {
                self.client_reset(c);
                return;
            }
        }
        // Send.
        let p = &self.peers[c];
        let left = p.spec.payload.len() - p.sent;
        let room = p.spec.rcv_cap - p.c2s.len();
        if !p.sent_fin && !p.saw_eof && left > 0 && room > 0 {
            if p.accepted && !p.server_open {
                // Data to a closed socket: the kernel answers with RST.
                self.server_reset_client(c);
                return;
            }
            let max = left.min(room).min(p.spec.send_chunk) as u64;
            let k = self.e.upto(max) as usize;
            let p = &mut self.peers[c];
            let from = p.sent;
            p.c2s.extend(&p.spec.payload[from..from + k]);
            p.sent += k;
            self.log(Ev::ClientSend(c, k));
            self.edge(c, Readiness::READABLE);
            self.progress();
        }
        let p = &self.peers[c];
        let all_sent = p.sent == p.spec.payload.len();
        let finish = p.spec.finish;
        if all_sent && finish == Finish::HalfClose && !p.sent_fin {
            self.client_fin(c);
        }
        // Receive.
        let p = &self.peers[c];
        if p.pause_until <= now {
            if !p.s2c.is_empty() {
                let max = p.s2c.len().min(p.spec.recv_chunk) as u64;
                let k = self.e.upto(max) as usize;
                let p = &mut self.peers[c];
                let at = p.received;
                for (n, b) in p.s2c.drain(..k).enumerate() {
                    assert_eq!(
                        Some(&b),
                        p.spec.payload.get(at + n),
                        "client {c} received a byte at offset {} that it never sent there",
                        at + n
                    );
                }
                p.received += k;
                self.log(Ev::ClientRecv(c, k));
                self.progress();
                let p = &self.peers[c];
                if p.want_write && p.spec.snd_cap - p.s2c.len() >= p.spec.write_space {
                    self.peers[c].want_write = false;
                    self.edge(c, Readiness::WRITABLE);
                }
                if self.e.chance(self.faults.client_pause) {
                    let len = self.e.upto(self.peers[c].spec.pause);
                    self.peers[c].pause_until = now + len;
                    self.log(Ev::ClientPause(c, len));
                }
            } else if p.s2c_fin && !p.saw_eof {
                self.peers[c].saw_eof = true;
                self.log(Ev::ClientEof(c));
                self.client_close(c);
                return;
            }
        }
        let p = &self.peers[c];
        if finish == Finish::CloseAfterEcho && all_sent && p.received == p.spec.payload.len() {
            self.client_close(c);
        }
    }

    fn client_fin(&mut self, c: usize) {
        let p = &mut self.peers[c];
        p.sent_fin = true;
        p.c2s_fin = true;
        self.log(Ev::ClientFin(c));
        let r = self.fin_edge(c);
        self.edge(c, r);
        self.progress();
    }

    /// A full close with nothing left unread: FIN if not sent yet, and the client is done.
    fn client_close(&mut self, c: usize) {
        if !self.peers[c].sent_fin {
            self.client_fin(c);
        }
        let p = &mut self.peers[c];
        p.client_closed = true;
        p.stage = Stage::Done;
        p.next = None;
    }

    fn client_reset(&mut self, c: usize) {
        let p = &mut self.peers[c];
        p.client_rst = true;
        p.excluded = Some("reset itself");
        p.c2s.clear();
        p.s2c.clear();
        p.stage = Stage::Done;
        p.next = None;
        self.stats.client_resets += 1;
        self.log(Ev::ClientReset(c));
        self.edge(
            c,
            Readiness {
                readable: true,
                writable: true,
                read_closed: true,
                hangup: true,
                error: true,
            },
        );
        self.progress();
    }

    fn server_reset_client(&mut self, c: usize) {
        let p = &mut self.peers[c];
        p.was_reset = true;
        p.s2c.clear();
        p.stage = Stage::Done;
        p.next = None;
    }

    fn schedule_client(&mut self, c: usize) {
        let now = self.now;
        let p = &self.peers[c];
        if p.stage != Stage::Connected || p.next.is_some() {
            return;
        }
        let len = p.spec.payload.len();
        let paused = p.pause_until > now;
        let can_send = !p.sent_fin && !p.saw_eof && p.sent < len && p.c2s.len() < p.spec.rcv_cap;
        let can_recv = !paused && (!p.s2c.is_empty() || (p.s2c_fin && !p.saw_eof));
        let reset_due = matches!(p.spec.finish, Finish::Reset { after } if p.sent >= after);
        let fin_due = p.spec.finish == Finish::HalfClose && p.sent == len && !p.sent_fin;
        let think = p.spec.think;
        let pause_until = p.pause_until;
        self.peers[c].next = if can_send || can_recv || reset_due || fin_due {
            Some(now + self.e.upto(think))
        } else if paused {
            Some(pause_until)
        } else {
            None
        };
    }

    // ----- liveness -----

    /// The network went quiet before the stop: nothing may be left waiting on the worker.
    fn check_quiet(&self, timers_only: bool) {
        // Accepts that keep failing (descriptors full, or injected EMFILE) may leave the backlog
        // waiting, as long as the worker retries at least every back-off period.
        let retrying = self.open_fds >= self.fd_limit
            || self.last_accept.is_some_and(|t| {
                self.now - t <= MAX_ACCEPT_BACKOFF.as_nanos() as Nanos + 50 * MILLI
            });
        assert!(
            self.backlog.is_empty() || (timers_only && retrying),
            "the worker went idle with {} connection(s) waiting in the backlog and free descriptors\n{}",
            self.backlog.len(),
            self.state_dump()
        );
        for (i, p) in self.peers.iter().enumerate() {
            if p.server_open && !p.client_rst && !p.satisfied() {
                panic!(
                    "the worker went idle while client {i} still waits on it\n{}",
                    self.state_dump()
                );
            }
        }
    }

    fn begin_stop(&mut self) {
        if self.stop_at.is_none_or(|t| t > self.now) {
            self.stop_at = Some(self.now);
        }
    }

    // ----- end of run -----

    /// After the worker returned: let clients finish, then check every rule that concerns the whole
    /// run. Returns the run's counters.
    pub fn finish(&mut self, report: Report) -> Stats {
        assert_eq!(
            self.listener_closes, 1,
            "listener closed {} times",
            self.listener_closes
        );
        for (i, p) in self.peers.iter().enumerate() {
            assert!(!p.server_open, "socket {i} left open when the worker ended");
        }
        assert_eq!(self.open_fds, 0);
        let mut rounds = 0u64;
        while let Some(t) = self.next_client_time() {
            self.now = self.now.max(t);
            self.run_clients();
            rounds += 1;
            assert!(
                rounds < MAX_WAITS,
                "clients never finished\n{}",
                self.state_dump()
            );
        }
        let (mut accepted, mut deadline, mut read, mut discard, mut written, mut dropped) =
            (0, 0, 0, 0, 0, 0);
        for (i, p) in self.peers.iter().enumerate() {
            if !p.accepted {
                continue;
            }
            accepted += 1;
            deadline += u64::from(p.deadline_close);
            read += p.read_echo;
            discard += p.read_discard;
            written += p.written;
            dropped += p.read_echo - p.written;
            if p.excluded.is_some() {
                continue;
            }
            let why = |what: &str| format!("client {i}: {what}\n{}", self.state_dump());
            if p.deadline_close {
                assert!(
                    p.received as u64 <= p.written,
                    "{}",
                    why("got more than written")
                );
                continue;
            }
            assert!(!p.was_reset, "{}", why("was reset by the server"));
            assert_eq!(
                p.written,
                p.read_echo,
                "{}",
                why("echo lost bytes the server read")
            );
            assert_eq!(
                p.received as u64,
                p.written,
                "{}",
                why("did not get what was written")
            );
            if p.spec.finish != Finish::CloseAfterEcho {
                assert!(p.saw_eof, "{}", why("never saw the server's FIN"));
            }
            if p.eof_before_stop {
                assert_eq!(
                    p.received,
                    p.spec.payload.len(),
                    "{}",
                    why("finished but short")
                );
                self.stats.full_echoes += 1;
            }
        }
        self.stats.deadline_closes = deadline;
        self.stats.bytes_echoed = written;
        self.stats.backpressure_pauses = report.backpressure_pauses;
        let expect = |what: &str, got: u64, want: u64| {
            assert_eq!(
                got, want,
                "report {what} = {got}, the network saw {want}: {report}"
            );
        };
        expect("accepted", report.accepted, accepted);
        expect("closed", report.closed, accepted);
        expect("bytes_read", report.bytes_read, read);
        expect("bytes_discarded", report.bytes_discarded, discard);
        expect("bytes_written", report.bytes_written, written);
        expect("bytes_dropped", report.bytes_dropped, dropped);
        expect("deadline_closes", report.deadline_closes, deadline);
        expect(
            "descriptors_closed",
            report.descriptors_closed,
            accepted + 1,
        );
        assert!(report.balances(), "report does not balance: {report}");
        assert!(
            report.max_pending <= self.max_pending as u64,
            "pending {} over the cap {}",
            report.max_pending,
            self.max_pending
        );
        self.stats
    }

    fn virtual_of(&self, t: Instant) -> Nanos {
        t.saturating_duration_since(self.base).as_nanos() as Nanos
    }
}

impl<E: Entropy> Io for SimNet<E> {
    type Socket = SimSocket;

    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        mut on_event: impl FnMut(Token, Readiness),
    ) -> io::Result<()> {
        self.stats.waits += 1;
        self.idle_waits += 1;
        assert!(
            self.stats.waits < MAX_WAITS && self.idle_waits < MAX_IDLE_WAITS,
            "the worker loops without progress ({} waits, {} since progress)\n{}",
            self.stats.waits,
            self.idle_waits,
            self.state_dump()
        );
        if let Some(t) = self.stopped_at {
            assert!(
                self.now < t + self.drain + QUIET_AFTER,
                "the worker did not finish after its drain deadline\n{}",
                self.state_dump()
            );
        }
        if self.e.chance(self.faults.wait_eintr) {
            self.log(Ev::WaitEintr);
            return Ok(());
        }
        let deadline = deadline.map(|d| self.virtual_of(d));
        // Time the worker spent since its last wait.
        self.now += self.e.below(20 * MICRO);
        self.run_clients();
        if self.e.chance(self.faults.spurious_edge) {
            let c = self.e.below(self.peers.len() as u64) as usize;
            let r = if self.e.chance(500) {
                Readiness::READABLE
            } else {
                Readiness::WRITABLE
            };
            self.edge(c, r);
        }
        let stop_due = |s: &Self| !s.stopped() && s.stop_at.is_some_and(|t| t <= s.now);
        if self.ready.is_empty() && !self.listener_ready && !stop_due(self) {
            // Sleep until the next thing happens: a client acts, the worker's timer, the stop.
            let stop = self.stop_at.filter(|_| !self.stopped());
            let wake = [deadline, self.next_client_time(), stop]
                .into_iter()
                .flatten()
                .min();
            match wake {
                None => {
                    assert!(
                        !self.stopped(),
                        "the worker blocks forever after the stop\n{}",
                        self.state_dump()
                    );
                    self.check_quiet(false);
                    self.begin_stop();
                }
                Some(t) => {
                    self.now = self.now.max(t);
                    self.run_clients();
                }
            }
            if !self.stopped() && self.now - self.last_progress >= QUIET_AFTER {
                self.check_quiet(true);
                self.begin_stop();
            }
        }
        let mut batch = std::mem::take(&mut self.ready);
        if batch.len() > 1 && self.e.chance(self.faults.short_batch) {
            let keep = self.e.upto(batch.len() as u64 - 1) as usize;
            self.ready = batch.split_off(keep);
        }
        if self.listener_ready && self.listener_open {
            batch.push((Token::LISTENER, Readiness::READABLE));
        }
        self.listener_ready = false;
        if !self.closed_tokens.is_empty() && self.e.chance(self.faults.stale_event) {
            let t = self.closed_tokens[self.e.below(self.closed_tokens.len() as u64) as usize];
            batch.push((t, or(Readiness::READABLE, Readiness::WRITABLE)));
        }
        if stop_due(self) {
            self.stopped_at = Some(self.now);
            self.waker_pending = true;
            self.log(Ev::Stop { at: self.now });
            if self.peers.iter().any(|p| p.server_open && !p.satisfied()) {
                self.stats.stop_with_traffic += 1;
            }
        }
        if self.waker_pending {
            batch.push((Token::WAKER, Readiness::READABLE));
        }
        self.log(Ev::Wait {
            at: self.now,
            deadline,
            events: batch.len(),
        });
        for (token, r) in batch {
            on_event(token, r);
        }
        Ok(())
    }

    fn accept(&mut self) -> io::Result<SimSocket> {
        assert!(self.listener_open, "accept on the closed listener");
        self.last_accept = Some(self.now);
        let r = self.accept_inner();
        let logged = match &r {
            Ok(s) => Ok(s.0),
            Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
        };
        self.log(Ev::Accept(logged));
        r
    }

    fn register(&mut self, sock: &SimSocket, token: Token) -> io::Result<()> {
        let c = self.live(sock, "register");
        assert!(
            token.is_conn(),
            "registered with a reserved token {token:?}"
        );
        assert!(self.peers[c].token.is_none(), "socket {c} registered twice");
        if self.e.chance(self.faults.register_fail) {
            self.peers[c].excluded = Some("register failed");
            self.log(Ev::Register(c, token, false));
            return errno(libc::ENOMEM);
        }
        self.peers[c].token = Some(token);
        self.log(Ev::Register(c, token, true));
        let p = &self.peers[c];
        // epoll_ctl(ADD) reports what is already true.
        let now = Readiness {
            readable: !p.c2s.is_empty() || p.c2s_fin || p.client_rst,
            writable: true,
            read_closed: p.c2s_fin || p.client_rst,
            hangup: p.client_rst,
            error: p.client_rst,
        };
        self.edge(c, now);
        Ok(())
    }

    fn read(&mut self, sock: &SimSocket, buf: &mut [u8]) -> io::Result<usize> {
        let c = self.live(sock, "read");
        let asked = buf.len();
        let r = self.read_inner(c, buf);
        let got = as_logged(&r);
        self.log(Ev::Read { c, asked, got });
        r
    }

    fn write(&mut self, sock: &SimSocket, buf: &[u8]) -> io::Result<usize> {
        let c = self.live(sock, "write");
        let offered = buf.len();
        let r = self.write_inner(c, buf);
        let took = as_logged(&r);
        self.log(Ev::Write { c, offered, took });
        r
    }

    fn shutdown_write(&mut self, sock: &SimSocket) {
        let c = self.live(sock, "shutdown_write");
        self.log(Ev::ShutdownWrite(c));
        let p = &mut self.peers[c];
        p.write_shut = true;
        p.s2c_fin = true;
        if p.c2s_fin {
            // Both directions shut: HUP once the client acknowledges the FIN.
            self.edge(
                c,
                Readiness {
                    readable: true,
                    writable: true,
                    read_closed: true,
                    hangup: true,
                    error: false,
                },
            );
        }
        self.wake_client(c);
        self.progress();
    }

    fn close(&mut self, sock: SimSocket) {
        let c = self.live(&sock, "close");
        let deadline = self.past_deadline();
        let unread = self.peers[c].c2s.len();
        self.log(Ev::Close {
            c,
            unread,
            deadline,
        });
        let p = &mut self.peers[c];
        p.server_open = false;
        p.deadline_close = deadline;
        self.open_fds -= 1;
        if let Some(t) = p.token {
            self.closed_tokens.push(t);
            self.ready.retain(|(rt, _)| *rt != t);
        }
        let p = &self.peers[c];
        if unread > 0 && !p.client_rst {
            // Closing with unread input sends RST, which may destroy echoed bytes in flight.
            assert!(
                deadline || p.excluded.is_some(),
                "socket {c} closed with {unread} unread bytes: the client gets RST\n{}",
                self.state_dump()
            );
            self.server_reset_client(c);
        } else {
            self.peers[c].s2c_fin = true;
            self.wake_client(c);
        }
        self.progress();
    }

    fn close_listener(&mut self) {
        self.listener_closes += 1;
        assert!(self.listener_open, "listener closed twice");
        self.log(Ev::CloseListener);
        self.listener_open = false;
        self.listener_ready = false;
        // Connections still in the backlog are reset by the kernel.
        while let Some(c) = self.backlog.pop_front() {
            let p = &mut self.peers[c];
            p.excluded = Some("in the backlog at stop");
            p.stage = Stage::Done;
            p.next = None;
        }
    }

    fn clear_wake(&mut self) {
        assert!(self.waker_pending, "clear_wake without a wake-up");
        self.waker_pending = false;
    }
}

impl<E: Entropy> SimNet<E> {
    fn accept_inner(&mut self) -> io::Result<SimSocket> {
        if self.e.chance(self.faults.accept_eintr) {
            return errno(libc::EINTR);
        }
        if self.open_fds >= self.fd_limit || self.e.chance(self.faults.accept_emfile) {
            self.stats.emfile += 1;
            return errno(libc::EMFILE);
        }
        let Some(c) = self.backlog.pop_front() else {
            return errno(libc::EAGAIN);
        };
        if self.e.chance(self.faults.accept_aborted) {
            let p = &mut self.peers[c];
            p.excluded = Some("aborted in the backlog");
            p.stage = Stage::Done;
            p.next = None;
            self.stats.aborted += 1;
            return errno(libc::ECONNABORTED);
        }
        let p = &mut self.peers[c];
        p.accepted = true;
        p.server_open = true;
        self.open_fds += 1;
        self.progress();
        Ok(SimSocket(c))
    }

    fn read_inner(&mut self, c: usize, buf: &mut [u8]) -> io::Result<usize> {
        if self.e.chance(self.faults.read_eintr) {
            return errno(libc::EINTR);
        }
        let p = &self.peers[c];
        if p.client_rst {
            return errno(libc::ECONNRESET);
        }
        let avail = p.c2s.len();
        if avail == 0 {
            return if p.c2s_fin {
                if !self.stopped() {
                    self.peers[c].eof_before_stop = true;
                }
                Ok(0)
            } else {
                errno(libc::EAGAIN)
            };
        }
        // After the FIN nothing more can arrive, so the kernel's answer is exact.
        let more_may_come = !p.c2s_fin;
        if more_may_come && self.e.chance(self.faults.read_eagain) {
            self.edge(c, Readiness::READABLE);
            return errno(libc::EAGAIN);
        }
        let mut k = buf.len().min(avail);
        if more_may_come && self.e.chance(self.faults.read_short) {
            k = self.e.upto(k as u64) as usize;
            if k < buf.len() {
                self.stats.short_reads += 1;
                self.edge(c, Readiness::READABLE);
            }
        }
        let stopped = self.stopped();
        let cap = self.max_pending as u64;
        let p = &mut self.peers[c];
        for (dst, src) in buf.iter_mut().zip(p.c2s.drain(..k)) {
            *dst = src;
        }
        if stopped {
            p.read_discard += k as u64;
        } else {
            p.read_echo += k as u64;
            assert!(
                p.read_echo - p.written <= cap,
                "socket {c}: {} bytes read and not written, over the cap {cap}",
                p.read_echo - p.written
            );
        }
        self.wake_client(c);
        self.progress();
        Ok(k)
    }

    fn write_inner(&mut self, c: usize, buf: &[u8]) -> io::Result<usize> {
        let p = &self.peers[c];
        assert!(!p.write_shut, "write on socket {c} after shutdown_write");
        assert!(!buf.is_empty(), "empty write on socket {c}");
        if self.e.chance(self.faults.write_eintr) {
            return errno(libc::EINTR);
        }
        if p.client_rst {
            return errno(libc::EPIPE);
        }
        let room = p.spec.snd_cap - p.s2c.len();
        if room == 0 {
            self.peers[c].want_write = true;
            return errno(libc::EAGAIN);
        }
        if self.e.chance(self.faults.write_eagain) {
            self.peers[c].want_write = true;
            self.edge(c, Readiness::WRITABLE);
            return errno(libc::EAGAIN);
        }
        let mut k = buf.len().min(room);
        if self.e.chance(self.faults.write_short) {
            k = self.e.upto(k as u64) as usize;
            if k < room {
                self.edge(c, Readiness::WRITABLE);
            }
        }
        if k < buf.len() {
            self.stats.short_writes += 1;
            self.peers[c].want_write = true;
        }
        let p = &mut self.peers[c];
        let at = p.written as usize;
        let expected = p.spec.payload.get(at..at + k);
        assert_eq!(
            Some(&buf[..k]),
            expected,
            "socket {c}: wrote {k} bytes at echo offset {at} that are not the client's bytes there"
        );
        p.s2c.extend(&buf[..k]);
        p.written += k as u64;
        self.wake_client(c);
        self.progress();
        Ok(k)
    }
}

/// A syscall result as the trace records it: the count, or the errno (-1 when there is none).
fn as_logged(r: &io::Result<usize>) -> Result<usize, i32> {
    match r {
        Ok(n) => Ok(*n),
        Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
    }
}
