//! The model of Linux under every simulated layer: a virtual clock, a listener with a bounded
//! backlog, one [`Link`] per connection, an epoll ready list ([`epoll`]), the waker and a
//! descriptor limit, and what each system call of the worker does to them.
//!
//! The model says what Linux would answer and nothing more: it never judges the caller. Each
//! call draws its faults from the [`Faults`] rates; injected faults that Linux could not produce
//! alone (a short read with more queued, a would-block with room) are paired with the edge that
//! would follow. The clients' side ([`clients`]) is driven by whichever layer runs the model
//! (scheduled clients, model steps, fuzz input, a replay of real sockets).
//!
//! Files:
//! - this one: the state, the clock, and the worker's system calls;
//! - [`epoll`]: the ready list, edges merged per token, and a wait's delivery with its faults;
//! - [`clients`]: the clients' ends: connect, send, FIN, read, reset, vanish;
//! - [`link`]: one connection's two ends: queues, windows, FINs, resets, the urgent mark.

mod clients;
mod epoll;
pub mod link;

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use super::entropy::Entropy;
use super::faults::{Fault, Faults};
use super::readiness::{READABLE, WRITABLE};
use super::scenario::MILLI;
use super::trace::{logged, Ev, Nanos, Trace};
use crate::dispatch::{Readiness, Token};
use epoll::Epoll;
use link::{Break, Link, Stage};

pub use clients::Refused;

/// A connection socket as the worker holds it: the index of its link. Not `Clone`, so the worker
/// cannot duplicate it; one left unclosed at the end is a leak.
#[derive(Debug, PartialEq, Eq)]
pub struct SimSocket(usize);

impl SimSocket {
    /// The link this socket is the server's end of.
    pub fn link(&self) -> usize {
        self.0
    }
}

/// Trace lines kept for a failure report.
const TRACE_LEN: usize = 400;
/// Linux's shortest retransmission timeout (`TCP_RTO_MIN`): the longest a drawn late
/// acknowledgement may hold bytes back.
pub const LATEST_ACK: Nanos = 200 * MILLI;

/// The fixed facts of one simulated kernel.
#[derive(Clone, Debug)]
pub struct Setup {
    pub faults: Faults,
    /// Connections the listener's backlog holds.
    pub backlog_cap: usize,
    /// Descriptors the worker may hold before `accept` fails with `EMFILE`.
    pub fd_limit: usize,
}

impl Setup {
    /// A kernel with these fault rates and no backlog or descriptor limit.
    pub fn new(faults: Faults) -> Setup {
        Setup {
            faults,
            backlog_cap: usize::MAX,
            fd_limit: usize::MAX,
        }
    }
}

/// What the kernel did, for the audit and for the tests' coverage checks.
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
}

/// What moved lately, for the layers that schedule clients and watch for progress.
#[derive(Debug, Default)]
struct Activity {
    /// Bumped by every operation that changes what a client or the worker sees.
    progress: u64,
    /// Links the worker touched since the last look, whose clients may want to act.
    touched: Vec<usize>,
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
    activity: Activity,
    /// The latest operations, for a failure report.
    trace: Trace,
    pub counts: Counts,
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

fn errno<T>(code: i32) -> io::Result<T> {
    Err(io::Error::from_raw_os_error(code))
}

impl<E> Kernel<E> {
    pub fn now(&self) -> Nanos {
        self.clock.1
    }

    pub fn listener_open(&self) -> bool {
        self.listener.open
    }

    pub fn listener_closes(&self) -> u32 {
        self.listener.closes
    }

    /// The links waiting in the listener's backlog, oldest first.
    pub fn backlog(&self) -> impl Iterator<Item = usize> + '_ {
        self.listener.backlog.iter().copied()
    }

    pub fn backlog_len(&self) -> usize {
        self.listener.backlog.len()
    }

    pub fn open_fds(&self) -> usize {
        self.open_fds
    }

    pub fn trace(&self) -> String {
        self.trace.render()
    }

    pub fn note(&mut self, ev: Ev) {
        self.trace.push(ev);
    }

    /// A one-paragraph picture of every link, for a failure report.
    pub fn state_dump(&self) -> String {
        let mut out = format!(
            "now={}us listener_open={} backlog={:?} open_fds={}\n",
            self.now() / 1_000,
            self.listener.open,
            self.listener.backlog,
            self.open_fds
        );
        for (i, l) in self.links.iter().enumerate() {
            out.push_str(&format!(
                "  link {i}: {:?} {:?} sent={} fin={} unread={} | queued_out={} out_fin={} \
                 landed={} acked={} fin_acked={} received={} eof_seen={} | shut={} \
                 want_write={} rst={} fin_destroyed={}\n",
                l.stage,
                l.broken,
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
                l.write_shut,
                l.down.want_write,
                l.reset_by_server,
                l.fin_destroyed,
            ));
        }
        out
    }
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
            },
            setup,
            links: Vec::new(),
            epoll: Epoll::default(),
            open_fds: 0,
            activity: Activity::default(),
            trace: Trace::new(TRACE_LEN),
            counts: Counts::default(),
        }
    }

    // ----- time and activity -----

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

    /// When the worker last called `accept`.
    pub fn last_accept(&self) -> Option<Nanos> {
        self.listener.last_accept
    }

    pub fn fd_limit(&self) -> usize {
        self.setup.fd_limit
    }

    pub fn progress(&self) -> u64 {
        self.activity.progress
    }

    /// The links touched by the worker since the last call.
    pub fn take_touched(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.activity.touched)
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

    /// What the server's kernel sent lands at the client's, unless some of it (or its
    /// acknowledgement) is still on the way: then only part lands now, the rest at a later chance
    /// (another write, a question, a read). A drawn delay never outlasts [`LATEST_ACK`]: by then
    /// Linux has sent the bytes again, so the next chance lands them.
    fn maybe_land(&mut self, link: usize) {
        let now = self.now();
        let overdue = self.choices.steer.is_none()
            && self.links[link]
                .down
                .held_since
                .is_some_and(|t| now - t >= LATEST_ACK);
        let units = if !overdue && self.fault(Fault::AckLate) {
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
        let d = &mut self.links[link].down;
        let left = !d.queue.is_empty() || (d.fin && !d.fin_acked);
        d.held_since = if units < usize::MAX && left {
            d.held_since.or(Some(now))
        } else {
            None
        };
        self.edge(link, r);
    }

    /// A reset that a read or write runs into (injected).
    fn reset_by_network(&mut self, link: usize) {
        let r = self.links[link].reset();
        self.edge(link, r);
        self.bump();
    }

    // ----- the worker's system calls -----

    /// The link of `sock` while the worker holds it open; `EBADF` otherwise.
    fn open_link(&self, sock: &SimSocket) -> io::Result<usize> {
        match self.links.get(sock.0) {
            Some(l) if l.is_open() => Ok(sock.0),
            _ => errno(libc::EBADF),
        }
    }

    pub fn accept(&mut self) -> io::Result<SimSocket> {
        self.listener.last_accept = Some(self.now());
        let r = self.accept_next();
        let got = logged(&r, |s| s.0);
        self.note(Ev::Accept(got));
        r
    }

    fn accept_next(&mut self) -> io::Result<SimSocket> {
        if !self.listener.open {
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
            self.links[link].stage = Stage::Lost;
            self.counts.aborted += 1;
            self.bump();
            return errno(libc::ECONNABORTED);
        }
        self.links[link].stage = Stage::Open;
        self.open_fds += 1;
        self.counts.accepted += 1;
        self.touch(link);
        Ok(SimSocket(link))
    }

    pub fn register(&mut self, sock: &SimSocket, token: Token) -> io::Result<()> {
        let link = self.open_link(sock)?;
        let ok = !self.fault(Fault::RegisterFail);
        self.note(Ev::Register(link, token, ok));
        if !ok {
            return errno(libc::ENOMEM);
        }
        self.links[link].token = Some(token);
        // EPOLL_CTL_ADD reports what is already true.
        let now = self.links[link].current_readiness();
        self.edge(link, now);
        Ok(())
    }

    pub fn read(&mut self, sock: &SimSocket, buf: &mut [u8]) -> io::Result<usize> {
        let link = self.open_link(sock)?;
        let r = self.read_from(link, buf);
        let (asked, got) = (buf.len(), logged(&r, |n| *n));
        self.note(Ev::Read { link, asked, got });
        r
    }

    fn read_from(&mut self, link: usize, buf: &mut [u8]) -> io::Result<usize> {
        if self.fault(Fault::ReadEintr) {
            return errno(libc::EINTR);
        }
        // After a reset what was queued can still be read (Linux keeps it), then the error.
        let reset = self.links[link].broken == Break::Reset;
        if reset && self.links[link].up.queued() == 0 {
            return errno(libc::ECONNRESET);
        }
        if !reset && self.fault(Fault::ReadReset) {
            self.reset_by_network(link);
            return errno(libc::ECONNRESET);
        }
        let l = &self.links[link];
        let avail = l.up.queued();
        if avail == 0 {
            return if l.up.fin { Ok(0) } else { errno(libc::EAGAIN) };
        }
        // After the FIN or a reset nothing more can arrive, so the kernel's answer is exact.
        let more_may_come = !l.up.fin && !reset;
        if more_may_come && self.fault(Fault::ReadEagain) {
            self.edge(link, READABLE);
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
                self.edge(link, READABLE);
            }
        }
        buf[..k].copy_from_slice(self.links[link].up.take(k));
        self.touch(link);
        Ok(k)
    }

    pub fn write(&mut self, sock: &SimSocket, buf: &[u8]) -> io::Result<usize> {
        let link = self.open_link(sock)?;
        let r = self.write_to(link, buf);
        let (offered, took) = (buf.len(), logged(&r, |n| *n));
        self.note(Ev::Write {
            link,
            offered,
            took,
        });
        r
    }

    fn write_to(&mut self, link: usize, buf: &[u8]) -> io::Result<usize> {
        if self.links[link].write_shut {
            return errno(libc::EPIPE);
        }
        if self.fault(Fault::WriteEintr) {
            return errno(libc::EINTR);
        }
        if self.links[link].broken != Break::Intact {
            return errno(libc::EPIPE);
        }
        if self.fault(Fault::WriteReset) {
            self.reset_by_network(link);
            return errno(libc::EPIPE);
        }
        let room = self.links[link].down.room();
        if room == 0 {
            self.links[link].down.want_write = true;
            return errno(libc::EAGAIN);
        }
        if self.fault(Fault::WriteEagain) {
            self.links[link].down.want_write = true;
            self.edge(link, WRITABLE);
            return errno(libc::EAGAIN);
        }
        let mut k = buf.len().min(room);
        if self.fault(Fault::WriteShort) {
            k = self.size(k);
            if k < room {
                self.edge(link, WRITABLE);
            }
        }
        if k < buf.len() {
            self.counts.short_writes += 1;
            self.links[link].down.want_write = true;
        }
        self.links[link].down.queue.extend(&buf[..k]);
        self.maybe_land(link);
        self.touch(link);
        Ok(k)
    }

    pub fn shutdown_write(&mut self, sock: &SimSocket) {
        let Ok(link) = self.open_link(sock) else {
            return;
        };
        self.note(Ev::ShutdownWrite(link));
        let l = &mut self.links[link];
        l.write_shut = true;
        l.down.fin = true;
        self.maybe_land(link);
        if self.links[link].up.fin {
            // Both directions shut: HUP.
            let r = Readiness {
                writable: true,
                read_closed: true,
                hangup: true,
                ..READABLE
            };
            self.edge(link, r);
        }
        self.touch(link);
    }

    pub fn close(&mut self, sock: SimSocket) {
        let Ok(link) = self.open_link(&sock) else {
            return;
        };
        let unread = self.links[link].up.queued();
        self.note(Ev::Close { link, unread });
        self.open_fds -= 1;
        self.counts.closes += 1;
        let l = &mut self.links[link];
        l.stage = Stage::Closed;
        if let Some(token) = l.token {
            self.epoll.forget(token);
        }
        let l = &mut self.links[link];
        if unread > 0 && l.broken != Break::Reset {
            // Closing with unread input sends RST, which destroys what the client's kernel has
            // not acknowledged; what it acknowledged stays readable there.
            l.reset_by_server = true;
            l.down.queue.clear();
        } else {
            l.down.fin = true;
        }
        self.touch(link);
    }

    pub fn close_listener(&mut self) {
        self.note(Ev::CloseListener);
        self.listener.closes += 1;
        if !self.listener.open {
            return;
        }
        self.listener.open = false;
        self.counts.closes += 1;
        self.epoll.drop_events_of(Token::LISTENER);
        // Connections still in the backlog are reset by the kernel.
        while let Some(link) = self.listener.backlog.pop_front() {
            self.links[link].stage = Stage::Lost;
        }
        self.bump();
    }

    /// `FIONREAD`: bytes queued on the socket, past any urgent mark.
    pub fn queued_input(&mut self, sock: &SimSocket) -> io::Result<usize> {
        let link = self.open_link(sock)?;
        let queued = self.links[link].up.queued();
        self.note(Ev::QueuedInput(link, queued));
        Ok(queued)
    }

    /// The listener's accept queue: connections waiting in the backlog.
    pub fn queued_connections(&mut self) -> io::Result<usize> {
        if !self.listener.open {
            return errno(libc::EBADF);
        }
        let queued = self.listener.backlog.len();
        self.note(Ev::QueuedConnections(queued));
        Ok(queued)
    }

    /// `tcpi_bytes_acked`: what the client's kernel acknowledged of the output, our FIN counted
    /// as one more once acknowledged. Asking gives a delayed acknowledgement a chance to arrive.
    pub fn acked(&mut self, sock: &SimSocket) -> io::Result<u64> {
        let link = self.open_link(sock)?;
        self.maybe_land(link);
        let d = &self.links[link].down;
        let acked = d.acked + u64::from(d.fin_acked);
        self.note(Ev::Acked(link, acked));
        Ok(acked)
    }

    /// The worker closes its epoll instance and wake-up channel.
    pub fn close_shell(&mut self) {
        self.note(Ev::CloseShell);
        self.epoll.shut = true;
        self.counts.closes += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::entropy::ByteSource;

    /// A drawn late acknowledgement holds bytes back for at most [`LATEST_ACK`]: then the
    /// client's next read lands them, as Linux's retransmission would, whatever the draws say.
    /// (Unbounded, a run whose draws kept landing nothing left an echo waiting forever.)
    #[test]
    fn a_late_acknowledgement_holds_bytes_back_no_longer_than_the_retransmission_timeout() {
        // Every landing is late, and zero entropy lands nothing of it.
        let faults = Faults::none().with(Fault::AckLate, 1000);
        let mut k = Kernel::new(ByteSource::new(&[]), Setup::new(faults));
        let link = k.connect(100, 100, 1, 100).expect("connect");
        let sock = k.accept().expect("accept");
        assert_eq!(k.write(&sock, b"echo").expect("write"), 4);
        assert!(k.client_recv(link, 100).is_empty(), "nothing landed yet");
        k.advance(Duration::from_nanos(LATEST_ACK - 1));
        assert!(k.client_recv(link, 100).is_empty(), "still late");
        k.advance(Duration::from_nanos(1));
        assert_eq!(k.client_recv(link, 100), b"echo");
        assert_eq!(k.links[link].down.held_since, None);
        k.close(sock);
    }
}
