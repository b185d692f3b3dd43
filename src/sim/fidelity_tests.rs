//! Fidelity of the model of Linux, checked against the real kernel: scripted peers run against
//! real loopback sockets through the real shell, every outcome the shell sees is recorded, and the
//! same script is replayed on the model alone (no oracle), which must be able to produce each
//! outcome.
//! The simulation has to be a superset of what Linux does; a mismatch here is how the next
//! assumption like "a short read means an empty socket" shows up.
//!
//! The replay steers the kernel: for each recorded outcome it says which of its faults strike
//! (and the size of a short read or write), then checks the kernel answers exactly that. Outcomes
//! are compared by kind (bytes counted, would-block, end of stream, error), events by their flags.
//!
//! The real side must not depend on the host. The sizes that decide when Linux refuses a write
//! and when it raises the writable edge again are fixed: the client's receive buffer and the
//! server's send buffer are set (which also turns their autotuning off), so neither the TCP
//! metrics the host cached for 127.0.0.1 (a cached `reordering` starts the send buffer at its
//! maximum) nor the receive autotuning of the moment moves them. Nothing waits for a time where
//! a condition can be waited for: a client act that must have reached the server is followed by
//! `Settle`, an event that must come by `Wait` or `Await` with a generous bound, and only `Quiet`
//! (no event expected) waits briefly, where a late event could not change the verdict.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::model::link::Break;
use super::model::{Choices, SimSocket, Steer};
use super::readiness::NONE;
use super::*;
use crate::dispatch::{Readiness, Token};
use crate::io::Io;
use crate::sys::{bind_listener, Claim, EpollShell, Waker};

/// One step of a script: the client's acts and the server's probes.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The client sends this many bytes.
    Send(usize),
    /// The client sends this many bytes with `MSG_OOB`: the last one is urgent.
    SendUrgent(usize),
    /// The client shuts its write side.
    Fin,
    /// The client closes with `SO_LINGER` 0: a reset.
    Reset,
    /// The client reads this many bytes of echo (fewer at the end of the stream or an error).
    ClientRead(usize),
    /// The client reads every byte the server wrote that it has not read yet.
    ClientReadAll,
    /// The client waits until the server's kernel has acknowledged everything it sent, FIN
    /// included: the server's socket then holds it and its edges are raised.
    Settle,
    /// The server accepts the connection and registers it.
    Accept,
    /// The server waits for an event that is expected to come (see [`EVENT_BOUND`]).
    Wait,
    /// The server waits, event after event, for one that carries any of these flags; the kernel
    /// must have raised one of them too.
    Await(Readiness),
    /// The server checks no event is pending: it waits briefly. A later event would be allowed
    /// anyway (an event that is not owed may only carry readable or writable, which any event may
    /// carry), so how long it waits does not decide the verdict.
    Quiet,
    /// The server reads with a buffer of this size until would-block, end of stream or error.
    Drain(usize),
    /// The server writes this many bytes once.
    Write(usize),
    /// The server writes 64 KiB at a time until a write would block.
    Fill,
    /// The server asks how much the client's kernel acknowledged.
    Acked,
    /// The same, once it reaches this many (a delayed acknowledgement is waited for, up to 2 s).
    AckedAtLeast(u64),
    /// The server shuts its write side.
    ShutdownWrite,
    /// The server closes its socket.
    Close,
    /// The client reads until the end of the stream, a reset, or a pause.
    ClientDrain,
}

/// What the shell saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Event(Readiness),
    NoEvent,
    Read(Outcome),
    Write(Outcome),
    /// What the client's kernel acknowledged, as `tcpi_bytes_acked` says.
    Acked(u64),
    /// What the client read, and how its reading ended.
    Client {
        got: usize,
        end: ClientEnd,
    },
}

/// How a client's reading ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientEnd {
    Eof,
    Reset,
    /// Nothing more came for a while.
    Quiet,
}

/// The kind of a read or write result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Bytes(usize),
    WouldBlock,
    End,
    Failed,
}

impl Outcome {
    fn of(r: &io::Result<usize>) -> Outcome {
        match r {
            Ok(0) => Outcome::End,
            Ok(n) => Outcome::Bytes(*n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Outcome::WouldBlock,
            Err(_) => Outcome::Failed,
        }
    }
}

const CONN: u64 = 1;

/// The client's receive buffer, asked for before it connects; Linux doubles it for overhead.
const CLIENT_RCVBUF: usize = 8 * 1024;
/// The server socket's send buffer; Linux doubles it. Both sizes are under Linux's default
/// `net.core.rmem_max`/`wmem_max` (212992), so every host grants them as asked.
const SERVER_SNDBUF: usize = 200 * 1000;
/// How long an event, an acknowledgement or an echo that must come may take: far longer than any
/// of them takes on a loaded loopback, so only their absence fails a test.
const EVENT_BOUND: Duration = Duration::from_secs(10);
/// How long `Quiet` waits for an event that should not come.
const QUIET: Duration = Duration::from_millis(200);

/// A loopback client with its receive buffer fixed before the handshake, so the window it
/// offers does not depend on autotuning.
fn connect_client(addr: SocketAddr) -> TcpStream {
    use nix::sys::socket::{connect, setsockopt, socket, sockopt, AddressFamily, SockFlag};
    use nix::sys::socket::{SockType, SockaddrIn};
    let SocketAddr::V4(v4) = addr else {
        panic!("a loopback IPv4 address, not {addr}")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("a socket");
    setsockopt(&fd, sockopt::RcvBuf, &CLIENT_RCVBUF).expect("SO_RCVBUF");
    connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).expect("connect");
    TcpStream::from(fd)
}

/// The real side: a listener and an epoll shell of this crate, and a client socket.
struct Real {
    shell: EpollShell,
    addr: SocketAddr,
    client: Option<TcpStream>,
    server: Option<OwnedFd>,
    /// Bytes the server wrote, and bytes of them the client read.
    written: usize,
    received: usize,
}

impl Real {
    fn new() -> Real {
        let listener = bind_listener("127.0.0.1:0".parse().expect("address"), Claim::First, None)
            .expect("a loopback listener");
        let addr = TcpListener::from(listener.try_clone().expect("dup"))
            .local_addr()
            .expect("its address");
        let waker = Arc::new(Waker::new().expect("an eventfd"));
        let shell = EpollShell::new(listener, waker).expect("an epoll instance");
        let client = connect_client(addr);
        client
            .set_read_timeout(Some(EVENT_BOUND))
            .expect("read timeout");
        Real {
            shell,
            addr,
            client: Some(client),
            server: None,
            written: 0,
            received: 0,
        }
    }

    fn client(&mut self) -> &mut TcpStream {
        self.client.as_mut().expect("the client is still there")
    }

    /// Runs one step; returns what the shell saw (nothing for the client's acts).
    fn step(&mut self, step: Step) -> Vec<Seen> {
        match step {
            Step::Send(n) => self.client().write_all(&vec![7; n]).expect("send"),
            Step::SendUrgent(n) => {
                self.client().write_all(&vec![7; n - 1]).expect("send");
                let fd = self.client().as_raw_fd();
                let flags = nix::sys::socket::MsgFlags::MSG_OOB;
                nix::sys::socket::send(fd, &[9], flags).expect("send urgent");
            }
            Step::Fin => self.client().shutdown(Shutdown::Write).expect("shutdown"),
            Step::Reset => {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let s = self.client.take().expect("the client");
                nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger)
                    .expect("SO_LINGER");
                drop(s);
            }
            Step::ClientRead(n) => {
                self.client_read(n);
            }
            Step::ClientReadAll => {
                let owed = self.written - self.received;
                let got = self.client_read(owed);
                assert_eq!(
                    got, owed,
                    "the client got only {got} of {owed} bytes written"
                );
            }
            Step::Settle => self.settle(),
            Step::Accept => {
                let sock = self.shell.accept().expect("a connection is queued");
                nix::sys::socket::setsockopt(
                    &sock,
                    nix::sys::socket::sockopt::SndBuf,
                    &SERVER_SNDBUF,
                )
                .expect("SO_SNDBUF");
                self.shell
                    .register(&sock, Token::from_epoll(CONN))
                    .expect("register");
                self.server = Some(sock);
            }
            Step::Wait => return vec![self.wait(EVENT_BOUND)],
            Step::Await(flags) => return self.wait_for(flags),
            Step::Quiet => return vec![self.wait(QUIET)],
            Step::Drain(size) => return self.drain(size),
            Step::Write(n) => {
                let sock = self.server.as_ref().expect("accepted");
                let r = self.shell.write(sock, &vec![5; n]);
                self.written += r.as_ref().map_or(0, |k| *k);
                return vec![Seen::Write(Outcome::of(&r))];
            }
            Step::Fill => return self.fill(),
            Step::Acked => return vec![self.acked(0)],
            Step::AckedAtLeast(n) => return vec![self.acked(n)],
            Step::ShutdownWrite => {
                let sock = self.server.as_ref().expect("accepted");
                self.shell.shutdown_write(sock);
            }
            Step::Close => self.server = None,
            Step::ClientDrain => return vec![self.client_drain()],
        }
        Vec::new()
    }

    /// What the client's kernel acknowledged, once it reaches `at_least` or 2 s have passed.
    fn acked(&mut self, at_least: u64) -> Seen {
        let sock = self.server.as_ref().expect("accepted");
        let give_up = Instant::now() + Duration::from_secs(2);
        loop {
            let acked = self.shell.acked(sock).expect("TCP_INFO");
            if acked >= at_least || Instant::now() > give_up {
                return Seen::Acked(acked);
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reads up to `n` bytes; stops early only at the end of the stream, an error, or after
    /// [`EVENT_BOUND`] without a byte. Returns how many it got.
    fn client_read(&mut self, n: usize) -> usize {
        let mut buf = vec![0; n];
        let mut got = 0;
        while got < n {
            match self.client().read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        self.received += got;
        got
    }

    /// Waits until the client's kernel holds nothing unacknowledged: everything it sent, FIN
    /// included, is in the server's kernel.
    fn settle(&mut self) {
        let fd = OwnedFd::from(self.client().try_clone().expect("dup"));
        let deadline = Instant::now() + EVENT_BOUND;
        while crate::sys::unacked(std::os::fd::AsFd::as_fd(&fd)).expect("SIOCOUTQ") > 0 {
            assert!(
                Instant::now() < deadline,
                "the server's kernel did not acknowledge the client's bytes"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn client_drain(&mut self) -> Seen {
        let mut buf = vec![0; 64 * 1024];
        let mut got = 0;
        loop {
            match self.client().read(&mut buf) {
                Ok(0) => {
                    return Seen::Client {
                        got,
                        end: ClientEnd::Eof,
                    }
                }
                Ok(k) => {
                    got += k;
                    self.received += k;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Seen::Client {
                        got,
                        end: ClientEnd::Quiet,
                    }
                }
                Err(_) => {
                    return Seen::Client {
                        got,
                        end: ClientEnd::Reset,
                    }
                }
            }
        }
    }

    /// Waits up to `bound` for the connection's event; the first one, if any.
    fn wait(&mut self, bound: Duration) -> Seen {
        let deadline = Instant::now() + bound;
        loop {
            let mut seen = Seen::NoEvent;
            self.shell
                .wait(Some(deadline), |token, r| {
                    if token == Token::from_epoll(CONN) {
                        seen = Seen::Event(r);
                    }
                })
                .expect("epoll_wait");
            // A wait can end early (a signal, or no event for the connection): wait on.
            if seen != Seen::NoEvent || Instant::now() >= deadline {
                return seen;
            }
        }
    }

    /// Waits for events until one carries any of `flags`, within [`EVENT_BOUND`].
    fn wait_for(&mut self, flags: Readiness) -> Vec<Seen> {
        let deadline = Instant::now() + EVENT_BOUND;
        let mut seen = Vec::new();
        loop {
            let now = Instant::now();
            let got = self.wait(deadline.saturating_duration_since(now));
            seen.push(got);
            match got {
                Seen::Event(r) if carries(r, flags) => return seen,
                Seen::NoEvent => return seen,
                _ => {}
            }
        }
    }

    fn drain(&mut self, size: usize) -> Vec<Seen> {
        let sock = self.server.as_ref().expect("accepted");
        let mut buf = vec![0; size];
        let mut seen = Vec::new();
        loop {
            let outcome = Outcome::of(&self.shell.read(sock, &mut buf));
            seen.push(Seen::Read(outcome));
            if !matches!(outcome, Outcome::Bytes(_)) || seen.len() > 1000 {
                return seen;
            }
        }
    }

    fn fill(&mut self) -> Vec<Seen> {
        let sock = self.server.as_ref().expect("accepted");
        let chunk = vec![3; 64 * 1024];
        let mut seen = Vec::new();
        loop {
            let r = self.shell.write(sock, &chunk);
            self.written += r.as_ref().map_or(0, |k| *k);
            let outcome = Outcome::of(&r);
            seen.push(Seen::Write(outcome));
            if !matches!(outcome, Outcome::Bytes(_)) || seen.len() > 10_000 {
                return seen;
            }
        }
    }
}

/// The simulated side, replaying what the real side saw.
struct Replay {
    kernel: Kernel<SeedRng>,
    link: Option<usize>,
    sock: Option<SimSocket>,
}

impl Replay {
    fn new() -> Replay {
        // The model alone, with no oracle: the replay writes bytes no client sent, and only the
        // model's answers are compared with Linux's.
        Replay {
            kernel: Kernel::new(SeedRng::new(0), Setup::new(Faults::none())),
            link: None,
            sock: None,
        }
    }

    fn link(&self) -> usize {
        self.link.expect("connected")
    }

    fn steer(&mut self, faults: Vec<Fault>, size: Option<usize>) {
        self.steer_landing(faults, size, None);
    }

    /// Steers with `land` units landing at the client's kernel when an acknowledgement is late.
    fn steer_landing(&mut self, faults: Vec<Fault>, size: Option<usize>, land: Option<usize>) {
        self.kernel.choices = Choices {
            faults: Faults::none(),
            steer: Some(Steer { faults, size, land }),
        };
    }

    /// Nothing lands at the client's kernel unless a question or a read says it did: the real
    /// kernel acknowledges in its own time.
    fn hold_landing(&mut self) {
        self.steer_landing(vec![Fault::AckLate], None, None);
    }

    /// Replays one step's client acts, and checks each server outcome the real side saw is one
    /// the kernel can produce. `Err` names the first that is not.
    fn step(&mut self, step: Step, seen: &[Seen]) -> Result<(), String> {
        match step {
            Step::Send(n) => self.kernel.client_send(self.link(), &vec![7; n]),
            Step::SendUrgent(n) => self.kernel.client_send_urgent(self.link(), &vec![7; n]),
            Step::Fin => self.kernel.client_fin(self.link()),
            Step::Reset => self.kernel.client_reset(self.link()),
            Step::ClientRead(n) => {
                // The client read `n` bytes: at least that much reached its kernel.
                let d = &self.kernel.links[self.link()].down;
                let land = n.saturating_sub(d.inbox.len()).min(d.queue.len());
                self.steer_landing(vec![Fault::AckLate], None, Some(land));
                self.kernel.client_recv(self.link(), n);
            }
            Step::ClientReadAll => {
                // Everything written reached the client, which read it all.
                self.steer(Vec::new(), None);
                self.kernel.client_recv(self.link(), usize::MAX);
            }
            // The simulated client's acts reach the server at once.
            Step::Settle => {}
            Step::Accept => {
                self.steer(Vec::new(), None);
                let sock = self.kernel.accept().map_err(|e| format!("accept: {e}"))?;
                self.kernel
                    .register(&sock, Token::from_epoll(CONN))
                    .map_err(|e| format!("register: {e}"))?;
                self.sock = Some(sock);
            }
            Step::ShutdownWrite => {
                self.hold_landing();
                let sock = self.sock.as_ref().expect("accepted");
                self.kernel.shutdown_write(sock);
            }
            Step::Close => {
                let sock = self.sock.take().expect("accepted");
                self.kernel.close(sock);
            }
            Step::ClientDrain => {
                self.steer(Vec::new(), None);
                let got = self.client_drain();
                let same = match (seen, got) {
                    // Everything to the end: the same bytes.
                    (
                        [Seen::Client {
                            end: ClientEnd::Eof,
                            ..
                        }],
                        _,
                    ) => seen == [got],
                    // Cut short: how much survives depends on buffer sizes the kernel does not
                    // model; the way it ends must agree.
                    ([Seen::Client { end, .. }], Seen::Client { end: sim_end, .. }) => {
                        *end == sim_end
                    }
                    _ => false,
                };
                if !same {
                    return Err(format!("the client saw {seen:?}, the kernel gives {got:?}"));
                }
            }
            Step::Drain(size) => {
                for s in seen {
                    self.produce(*s, size)?;
                }
            }
            Step::Write(size) => {
                for s in seen {
                    self.produce(*s, size)?;
                }
            }
            Step::Fill => {
                for s in seen {
                    self.produce(*s, 64 * 1024)?;
                }
            }
            Step::Wait | Step::Quiet | Step::Acked | Step::AckedAtLeast(_) => {
                for s in seen {
                    self.produce(*s, 0)?;
                }
            }
            Step::Await(flags) => {
                let mut owed = NONE;
                for s in seen {
                    match s {
                        Seen::Event(real) => owed = owed.union(self.event(*real)?),
                        _ => self.produce(*s, 0)?,
                    }
                }
                // The edge Linux raised must be one the kernel raised: not merely allowed.
                if let Some(Seen::Event(real)) = seen.last() {
                    if carries(*real, flags) && !carries(owed, flags) {
                        return Err(format!(
                            "Linux raised {real:?}, the kernel owed only {owed:?}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks the kernel could raise the event `real` saw; returns the edge it owed, if any.
    fn event(&mut self, real: Readiness) -> Result<Readiness, String> {
        let pending = self.kernel.take_event(Token::from_epoll(CONN));
        let link = &self.kernel.links[self.link()];
        // A spurious readable or writable edge, and the socket's standing conditions, may come
        // with any event.
        let owed = pending.unwrap_or(NONE);
        let allowed = owed.union(link.standing()).union(READABLE.union(WRITABLE));
        if real.union(allowed) == allowed {
            Ok(owed)
        } else {
            Err(format!(
                "event {real:?}, the kernel could raise only {allowed:?}"
            ))
        }
    }

    /// The client reads everything the kernel lets it: a reset if the server's RST destroyed
    /// some, else the end of the stream if it came.
    fn client_drain(&mut self) -> Seen {
        let link = self.link();
        let mut got = 0;
        loop {
            let bytes = self.kernel.client_recv(link, usize::MAX);
            if bytes.is_empty() {
                break;
            }
            got += bytes.len();
        }
        let end = if self.kernel.links[link].reset_by_server {
            ClientEnd::Reset
        } else if self.kernel.client_eof(link) {
            ClientEnd::Eof
        } else {
            ClientEnd::Quiet
        };
        Seen::Client { got, end }
    }

    /// Steers the kernel towards `seen` (a read or write of `size` bytes) and checks it gets there.
    fn produce(&mut self, seen: Seen, size: usize) -> Result<(), String> {
        let token = Token::from_epoll(CONN);
        let got = match seen {
            // No event: the kernel must not owe one either. An edge it raised to pair with a fault
            // (a short read "with the rest arriving") that Linux does not raise is exactly the
            // kind of assumption this test is for.
            Seen::NoEvent => {
                return match self.kernel.take_event(token) {
                    None => Ok(()),
                    Some(owed) => Err(format!("no event, the kernel owes {owed:?}")),
                }
            }
            Seen::Event(real) => return self.event(real).map(|_| ()),
            Seen::Read(want) => {
                let (faults, short) = self.read_plan(want, size);
                self.steer(faults, short);
                let mut buf = vec![0; size];
                let sock = self.sock.as_ref().expect("accepted");
                Seen::Read(Outcome::of(&self.kernel.read(sock, &mut buf)))
            }
            Seen::Write(want) => {
                self.size_send_buffer(want, size);
                let (mut faults, short) = self.write_plan(want, size);
                faults.push(Fault::AckLate);
                self.steer(faults, short);
                let sock = self.sock.as_ref().expect("accepted");
                Seen::Write(Outcome::of(&self.kernel.write(sock, &vec![7; size])))
            }
            Seen::Acked(want) => {
                // What landed since the last question lands now, no more: the kernel can give
                // any amount from what it already counts to all it sent, our FIN last.
                let d = &self.kernel.links[self.link()].down;
                let before = d.acked + u64::from(d.fin_acked);
                let Some(land) = want.checked_sub(before) else {
                    return Err(format!("acked {want}, the kernel already counts {before}"));
                };
                self.steer_landing(vec![Fault::AckLate], None, Some(land as usize));
                let sock = self.sock.as_ref().expect("accepted");
                let n = self.kernel.acked(sock).map_err(|e| format!("acked: {e}"))?;
                Seen::Acked(n)
            }
            Seen::Client { .. } => return Err(format!("{seen:?} is not the server's to produce")),
        };
        if got == seen {
            Ok(())
        } else {
            Err(format!(
                "the shell saw {seen:?}, the kernel can only give {got:?}"
            ))
        }
    }

    /// The faults and size that make the next read of `size` bytes give `want`, as far as the
    /// kernel allows.
    fn read_plan(&self, want: Outcome, size: usize) -> (Vec<Fault>, Option<usize>) {
        let l = &self.kernel.links[self.link()];
        let natural = l.up.readable(size);
        match want {
            Outcome::Bytes(n) if n < natural => (vec![Fault::ReadShort], Some(n)),
            Outcome::Bytes(_) | Outcome::End => (Vec::new(), None),
            Outcome::WouldBlock if l.up.queued() > 0 => (vec![Fault::ReadEagain], None),
            Outcome::WouldBlock => (Vec::new(), None),
            Outcome::Failed if l.broken == Break::Reset => (Vec::new(), None),
            Outcome::Failed => (vec![Fault::ReadReset], None),
        }
    }

    /// Gives the kernel's send buffer the room Linux's had for a write of `size` bytes that gave
    /// `want`: the size of a real send buffer depends on the host, so it is read off the real
    /// outcome. Linux refuses a write, or takes part of it, only when its buffer is full, so the
    /// kernel's buffer is then full too and the writable edge waits for the client's reads, as
    /// it does in Linux.
    fn size_send_buffer(&mut self, want: Outcome, size: usize) {
        let link = self.link();
        let down = &mut self.kernel.links[link].down;
        let queued = down.queue.len();
        match want {
            Outcome::Bytes(n) if n < size => down.cap = queued + n,
            Outcome::Bytes(n) => down.cap = down.cap.max(queued + n),
            Outcome::WouldBlock => down.cap = queued,
            Outcome::End | Outcome::Failed => {}
        }
    }

    /// The faults and size that make the next write of `size` bytes give `want`.
    fn write_plan(&self, want: Outcome, size: usize) -> (Vec<Fault>, Option<usize>) {
        let l = &self.kernel.links[self.link()];
        match want {
            Outcome::Bytes(n) if n < size => (vec![Fault::WriteShort], Some(n)),
            Outcome::Bytes(_) | Outcome::End => (Vec::new(), None),
            Outcome::WouldBlock => (vec![Fault::WriteEagain], None),
            Outcome::Failed if l.broken != Break::Intact => (Vec::new(), None),
            Outcome::Failed => (vec![Fault::WriteReset], None),
        }
    }
}

/// Runs `script` on real sockets, replays it on the kernel, and fails on the first outcome the
/// kernel cannot produce. Returns what the real side saw, for the test's own checks.
fn check(name: &str, script: &[Step]) -> Vec<(Step, Vec<Seen>)> {
    let mut real = Real::new();
    let mut sim = Replay::new();
    let link = sim
        .kernel
        .connect(usize::MAX, usize::MAX, 1, usize::MAX)
        .expect("the listener is open");
    sim.link = Some(link);
    let _ = real.addr;
    let record: Vec<(Step, Vec<Seen>)> = script.iter().map(|&s| (s, real.step(s))).collect();
    // Whether the client's reading reached the end of the stream: a RST before it spared all.
    let spared = record.iter().any(|(_, seen)| {
        matches!(
            seen.as_slice(),
            [Seen::Client {
                end: ClientEnd::Eof,
                ..
            }]
        )
    });
    for (i, (step, seen)) in record.iter().enumerate() {
        if matches!(step, Step::Send(_)) && spared {
            sim.steer(vec![Fault::RstSpares], None);
        }
        if let Err(why) = sim.step(*step, seen) {
            let so_far = &record[..i];
            panic!("{name}: at {step:?}: {why}\nthe real sequence so far: {so_far:?}");
        }
    }
    record
}

/// Whether `r` carries any of `flags`.
fn carries(r: Readiness, flags: Readiness) -> bool {
    (r.readable && flags.readable)
        || (r.writable && flags.writable)
        || (r.read_closed && flags.read_closed)
        || (r.hangup && flags.hangup)
        || (r.error && flags.error)
        || (r.urgent && flags.urgent)
}

/// Reads seen in a record, in order.
fn reads(record: &[(Step, Vec<Seen>)]) -> Vec<Outcome> {
    record
        .iter()
        .flat_map(|(_, seen)| seen.iter())
        .filter_map(|s| match s {
            Seen::Read(o) => Some(*o),
            _ => None,
        })
        .collect()
}

#[test]
fn partial_reads_and_writes_at_every_size() {
    use Step::*;
    let mut script = vec![Accept, Wait];
    let mut written = 0;
    for (i, size) in [1, 2, 3, 7, 100, 1000, 4096, 65_536, 100_000]
        .into_iter()
        .enumerate()
    {
        written += size as u64;
        script.push(Send(size));
        script.push(Wait);
        script.push(Drain([1, 7, 4096, 65_536][i % 4]));
        script.push(Write(size));
        script.push(ClientRead(size));
        script.push(AckedAtLeast(written));
    }
    check("partial sizes", &script);
}

#[test]
fn an_urgent_byte_stops_a_read_short_with_more_queued() {
    use Step::*;
    let record = check(
        "urgent",
        &[
            Accept,
            Wait,
            Send(1000),
            SendUrgent(1),
            Send(1000),
            Settle,
            Wait,
            Drain(4096),
            Quiet,
        ],
    );
    // The read that taught the lesson: a short read with more to come, no new edge between.
    let seen = reads(&record);
    assert_eq!(
        seen,
        [
            Outcome::Bytes(1000),
            Outcome::Bytes(1001),
            Outcome::WouldBlock
        ],
        "Linux no longer stops at the urgent mark? {record:?}"
    );
}

#[test]
fn half_close_reads_to_the_end() {
    use Step::*;
    let record = check(
        "half close",
        &[Accept, Send(10), Fin, Settle, Wait, Drain(4096), Quiet],
    );
    assert_eq!(reads(&record), [Outcome::Bytes(10), Outcome::End]);
}

#[test]
fn a_reset_with_and_without_unread_data() {
    use Step::*;
    let record = check(
        "reset, read before",
        &[
            Accept,
            Send(5),
            Settle,
            Wait,
            Drain(4096),
            Reset,
            Await(ERROR),
            Drain(4096),
        ],
    );
    assert_eq!(reads(&record).last(), Some(&Outcome::Failed), "{record:?}");
    let record = check(
        "reset, unread",
        &[Accept, Wait, Send(5000), Reset, Await(ERROR), Drain(4096)],
    );
    assert_eq!(reads(&record).last(), Some(&Outcome::Failed), "{record:?}");
}

/// An event carrying an error: what a reset raises.
const ERROR: Readiness = Readiness {
    error: true,
    ..NONE
};

/// A full send buffer: no writable edge while the client reads nothing, and one once it has read
/// everything. Linux raises it once the free room reaches its write-space threshold (a share of
/// what is queued), which a partial read may or may not cross: the client reads everything, so
/// the comparison does not guess where the threshold lies.
#[test]
fn a_full_window_refuses_writes_until_the_peer_reads() {
    use Step::*;
    let record = check(
        "full window",
        &[
            Accept,
            Wait,
            Fill,
            Quiet,
            Acked,
            ClientReadAll,
            Await(WRITABLE),
            Fill,
            Acked,
        ],
    );
    let refused = record
        .iter()
        .flat_map(|(_, s)| s)
        .any(|s| *s == Seen::Write(Outcome::WouldBlock));
    assert!(refused, "the window never filled: {record:?}");
    let quiet = record.iter().find(|(step, _)| matches!(step, Quiet));
    assert!(
        matches!(quiet, Some((_, seen)) if seen.as_slice() == [Seen::NoEvent]),
        "a writable edge before the client read: {record:?}"
    );
}

#[test]
fn data_that_races_the_accept() {
    use Step::*;
    let record = check("race", &[Send(100), Fin, Settle, Accept, Wait, Drain(4096)]);
    assert_eq!(reads(&record), [Outcome::Bytes(100), Outcome::End]);
}

#[test]
fn delivery_after_our_fin() {
    use Step::*;
    check(
        "delivery",
        &[
            Accept,
            Wait,
            Write(100),
            ClientRead(100),
            Acked,
            ShutdownWrite,
            ClientRead(1),
            Acked,
            Quiet,
        ],
    );
}

/// Data for a socket we closed is answered with RST. What the peer's kernel acknowledged stays
/// readable; then comes the end of the stream if our FIN was acknowledged too, else a reset.
#[test]
fn data_after_our_close_meets_a_reset_that_spares_what_was_acknowledged() {
    use Step::*;
    let delivered = check(
        "close on delivery",
        &[
            Accept,
            Wait,
            Write(1000),
            ShutdownWrite,
            Acked,
            Close,
            Send(4),
            ClientDrain,
        ],
    );
    let end = delivered.last().map(|(_, seen)| seen.as_slice());
    let whole = Seen::Client {
        got: 1000,
        end: ClientEnd::Eof,
    };
    assert_eq!(end, Some(&[whole][..]), "{delivered:?}");
    let held = check(
        "close before delivery",
        &[
            Accept,
            Wait,
            Fill,
            ShutdownWrite,
            Acked,
            Close,
            Send(4),
            ClientDrain,
        ],
    );
    let end = held.last().map(|(_, seen)| seen.as_slice());
    let cut = matches!(
        end,
        Some([Seen::Client {
            end: ClientEnd::Reset,
            ..
        }])
    );
    assert!(cut, "{held:?}");
}

/// The acknowledgement is the peer's kernel's, not its application's: what lands in the client's
/// receive buffer is acknowledged though the client never reads, in the amounts Linux reports.
#[test]
fn the_peers_kernel_acknowledges_what_it_holds_unread() {
    use Step::*;
    let record = check(
        "acknowledged unread",
        &[
            Accept,
            Wait,
            Write(1000),
            AckedAtLeast(1000),
            Write(2000),
            AckedAtLeast(3000),
        ],
    );
    let acked: Vec<u64> = acknowledgements(&record);
    assert_eq!(acked, [1000, 3000], "{record:?}");
}

/// After the peer's reset the kernel still says what it had acknowledged, and no more: the rest
/// was destroyed by the reset.
#[test]
fn a_reset_keeps_what_was_acknowledged() {
    use Step::*;
    let record = check(
        "reset after a full window",
        &[Accept, Wait, Fill, Quiet, Acked, Reset, Wait, Acked],
    );
    let acked = acknowledgements(&record);
    assert_eq!(acked.len(), 2, "{record:?}");
    assert!(acked[0] > 0, "nothing was acknowledged: {record:?}");
    assert_eq!(
        acked[0], acked[1],
        "the count changed at the reset: {record:?}"
    );
}

/// The acknowledged counts seen in a record, in order.
fn acknowledgements(record: &[(Step, Vec<Seen>)]) -> Vec<u64> {
    record
        .iter()
        .flat_map(|(_, seen)| seen.iter())
        .filter_map(|s| match s {
            Seen::Acked(n) => Some(*n),
            _ => None,
        })
        .collect()
}
