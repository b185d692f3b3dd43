//! The closed-loop (ping-pong with a pipeline depth) and open-loop (streaming at a target rate)
//! scenarios, and what every scenario shares: the run's [`Spec`], connecting, and how a failure
//! names its connection. A run is one thread over one epoll instance; it checks every echoed byte
//! and stops by itself at its deadline.
//!
//! Every message sent is either echoed and checked, or counted as lost: a message not echoed
//! within `Spec::timeout` fails its connection (a stall is an error, not a slow figure), and at
//! the end nothing new is sent while the echoes in flight get until their own deadline.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::report::fmt_count;

use crate::pattern::{Pattern, MAX_SLICE};
use crate::stats::{Meter, RunResult};
use crate::sys::{self, Epoll, CONN_EVENTS};

/// How long connecting one socket may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest time to connect every socket of a run.
pub const SETUP_LIMIT: Duration = Duration::from_secs(30);
/// An open-loop connection with this many messages outstanding gets no more until some return.
pub const OPEN_LOOP_MAX_OUTSTANDING: usize = 4096;
/// The default of `Spec::timeout`: far above any echo a working server gives on one host, short
/// enough that a stall ends the run soon.
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the oldest message of each connection is checked against its deadline (a scan of
/// the connections, so not on every turn).
const DEADLINE_CHECK: Duration = Duration::from_millis(50);

/// What to run and against whom.
#[derive(Clone, Debug)]
pub struct Spec {
    pub addr: SocketAddr,
    pub conns: usize,
    /// Messages in flight per connection (closed loop).
    pub depth: usize,
    pub size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Open loop: total messages per second across all connections.
    pub rate: Option<f64>,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N, for an IPv4 loopback target.
    pub sources: u8,
    pub server_pid: Option<u32>,
    /// Keep one-second interval histograms (for an HDR log).
    pub intervals: bool,
    /// Longest wait for a message's echo, from when it was sent (or, open loop, due).
    pub timeout: Duration,
}

/// A connection as failures name it: its number in the run and both ends, so it can be found
/// in a capture.
pub fn conn_name(i: usize, stream: &TcpStream, addr: SocketAddr) -> String {
    match stream.local_addr() {
        Ok(local) => format!("connection {i} ({local} -> {addr})"),
        Err(_) => format!("connection {i} (to {addr})"),
    }
}

/// `64 bytes of 1 message`: what a connection still owed when it failed.
pub fn owed(bytes: u64, msgs: u64) -> String {
    let plural =
        |n: u64, one: &str| format!("{} {one}{}", fmt_count(n), if n == 1 { "" } else { "s" });
    format!(
        "{} of {} never echoed",
        plural(bytes, "byte"),
        plural(msgs, "message")
    )
}

/// An I/O error in words; a socket timeout is named as one rather than as `EAGAIN`.
pub fn describe(e: &io::Error, limit: Duration) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("timed out after {}", humantime::format_duration(limit))
        }
        _ => e.to_string(),
    }
}

pub fn timed_out(limit: Duration) -> String {
    format!(
        "timed out: no echo within {}",
        humantime::format_duration(limit)
    )
}

/// The source address of connection `i`: spread over 127.0.0.1 ..= 127.0.0.N when the target is
/// IPv4 loopback (each source has its own ephemeral port range); the system's choice otherwise,
/// since no other destination is reachable from those addresses.
pub fn source(i: usize, sources: u8, dst: SocketAddr) -> Option<IpAddr> {
    let n = sources.max(1) as usize;
    let loopback_v4 = matches!(dst, SocketAddr::V4(a) if a.ip().is_loopback());
    (n > 1 && loopback_v4).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % n) as u8)))
}

pub fn connect_all(spec: &Spec, deadline: Instant) -> io::Result<Vec<TcpStream>> {
    let mut out = Vec::with_capacity(spec.conns);
    for i in 0..spec.conns {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connected only {i} of {} to {} in {SETUP_LIMIT:?}",
                    spec.conns, spec.addr
                ),
            ));
        }
        out.push(sys::connect(
            spec.addr,
            source(i, spec.sources, spec.addr),
            CONNECT_TIMEOUT,
        )?);
    }
    Ok(out)
}

struct Conn {
    stream: TcpStream,
    base: u64,
    /// Stream bytes written, read back, and meant to be written so far.
    tx: u64,
    rx: u64,
    target: u64,
    /// Issue time (ns since the run began) of each message not yet fully echoed, oldest first.
    issued: VecDeque<u64>,
    alive: bool,
    /// Already in the list of connections with bytes to write.
    dirty: bool,
}

impl Conn {
    fn owed(&self) -> String {
        owed(self.target - self.rx, self.issued.len() as u64)
    }
}

/// Why echoed bytes `got`, read at `conn.rx`, are wrong: the exact offset of the first wrong
/// byte, or the bytes beyond what was sent.
fn mismatch(pattern: &Pattern, conn: &Conn, got: &[u8]) -> String {
    let sent = (conn.tx - conn.rx).min(got.len() as u64) as usize;
    match pattern.first_mismatch(conn.base + conn.rx, &got[..sent]) {
        Some(k) => format!("echoed a wrong byte at offset {}", conn.rx + k as u64),
        None => format!(
            "echoed {} bytes more than were sent, from offset {}",
            got.len() - sent,
            conn.tx
        ),
    }
}

struct Engine<'a> {
    pattern: &'a Pattern,
    addr: SocketAddr,
    conns: Vec<Conn>,
    size: u64,
    buf: Vec<u8>,
    start: Instant,
    measuring: bool,
}

impl Engine<'_> {
    fn ns(&self, t: Instant) -> u64 {
        t.duration_since(self.start).as_nanos() as u64
    }

    fn kill(conn: &mut Conn, meter: &mut Meter, why: impl FnOnce() -> String) {
        if conn.alive {
            conn.alive = false;
            meter.error(why);
        }
    }

    fn issue(conn: &mut Conn, at_ns: u64, count: usize, size: u64) {
        for _ in 0..count {
            conn.issued.push_back(at_ns);
        }
        conn.target += count as u64 * size;
    }

    /// Reads everything available, checks it, records latencies; returns messages completed.
    fn read(&mut self, i: usize, meter: &mut Meter) -> usize {
        let mut done = 0;
        loop {
            let conn = &mut self.conns[i];
            if !conn.alive {
                return done;
            }
            match conn.stream.read(&mut self.buf) {
                Ok(0) => {
                    let (name, owed) = (conn_name(i, &conn.stream, self.addr), conn.owed());
                    Self::kill(conn, meter, || {
                        format!("{name}: closed by the server, {owed}")
                    });
                    return done;
                }
                Ok(n) => {
                    if conn.rx + n as u64 > conn.tx
                        || !self.pattern.matches(conn.base + conn.rx, &self.buf[..n])
                    {
                        let why = mismatch(self.pattern, conn, &self.buf[..n]);
                        let name = conn_name(i, &conn.stream, self.addr);
                        meter.mismatch(|| format!("{name}: {why}"));
                        conn.alive = false;
                        return done;
                    }
                    let before = conn.rx / self.size;
                    conn.rx += n as u64;
                    let completed = (conn.rx / self.size - before) as usize;
                    if completed > 0 {
                        let now = self.start.elapsed().as_nanos() as u64;
                        for _ in 0..completed {
                            let sent = conn.issued.pop_front().unwrap_or(now);
                            if self.measuring {
                                meter.record(now.saturating_sub(sent));
                            }
                        }
                        done += completed;
                    }
                    if self.measuring {
                        meter.msgs += completed as u64;
                        meter.bytes += n as u64;
                    }
                    if n < self.buf.len() {
                        // Short read: the socket is empty, and a new edge comes with new data.
                        return done;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return done,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let name = conn_name(i, &conn.stream, self.addr);
                    Self::kill(conn, meter, || format!("{name}: read: {e}"));
                    return done;
                }
            }
        }
    }

    /// Fails every connection whose oldest message has waited longer than `limit` for its echo.
    fn expire(&mut self, now: Instant, limit: Duration, meter: &mut Meter) {
        let (now_ns, limit_ns) = (self.ns(now), limit.as_nanos() as u64);
        for (i, conn) in self.conns.iter_mut().enumerate() {
            let late = conn
                .issued
                .front()
                .is_some_and(|&t| now_ns.saturating_sub(t) > limit_ns);
            if conn.alive && late {
                let name = conn_name(i, &conn.stream, self.addr);
                let owed = conn.owed();
                Self::kill(conn, meter, || {
                    format!("{name}: {}; {owed}", timed_out(limit))
                });
            }
        }
    }

    /// At the end: every message not echoed is lost, and a connection still waiting (none should
    /// be, after `expire`) fails.
    fn account_lost(&mut self, meter: &mut Meter) {
        for (i, conn) in self.conns.iter_mut().enumerate() {
            if conn.issued.is_empty() {
                continue;
            }
            meter.lost(conn.issued.len() as u64);
            let name = conn_name(i, &conn.stream, self.addr);
            let owed = conn.owed();
            Self::kill(conn, meter, || format!("{name}: {owed} when the run ended"));
        }
    }

    /// Writes what is due or the socket is full (its writable edge resumes it).
    fn flush(&mut self, i: usize, meter: &mut Meter) {
        let conn = &mut self.conns[i];
        while conn.alive && conn.tx < conn.target {
            let len = ((conn.target - conn.tx) as usize).min(MAX_SLICE);
            match conn
                .stream
                .write(self.pattern.slice(conn.base + conn.tx, len))
            {
                Ok(n) => conn.tx += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let name = conn_name(i, &conn.stream, self.addr);
                    Self::kill(conn, meter, || format!("{name}: write: {e}"));
                }
            }
        }
    }
}

/// Closed-loop ping-pong (`rate` unset) or open-loop streaming (`rate` set).
impl<'a> Engine<'a> {
    /// Connects every socket of the run and registers it with `epoll`, its index as its token.
    fn connect(spec: &Spec, pattern: &'a Pattern, epoll: &Epoll) -> io::Result<Self> {
        let streams = connect_all(spec, Instant::now() + SETUP_LIMIT)?;
        let cap = if spec.rate.is_some() {
            OPEN_LOOP_MAX_OUTSTANDING
        } else {
            spec.depth
        };
        let mut conns = Vec::with_capacity(streams.len());
        for (i, stream) in streams.into_iter().enumerate() {
            epoll.add(stream.as_fd(), i as u64, CONN_EVENTS)?;
            conns.push(Conn {
                stream,
                base: Pattern::base(i),
                tx: 0,
                rx: 0,
                target: 0,
                issued: VecDeque::with_capacity(cap),
                alive: true,
                dirty: false,
            });
        }
        Ok(Engine {
            pattern,
            addr: spec.addr,
            conns,
            size: spec.size.max(1) as u64,
            buf: vec![0; MAX_SLICE],
            start: Instant::now(),
            measuring: false,
        })
    }

    /// Closed loop: puts `depth` messages in flight on every connection.
    fn fill_pipelines(&mut self, depth: usize, meter: &mut Meter) {
        for i in 0..self.conns.len() {
            Engine::issue(&mut self.conns[i], 0, depth, self.size);
            self.flush(i, meter);
        }
    }

    /// The run's result: the last deadlines checked, what never came back counted as lost.
    fn finish(mut self, spec: &Spec, mut meter: Meter) -> RunResult {
        self.expire(Instant::now(), spec.timeout, &mut meter);
        self.account_lost(&mut meter);
        let mut res = meter.finish(Instant::now());
        (res.conns, res.depth, res.size) = (spec.conns, spec.depth, spec.size);
        res
    }

    /// Serves the connections `events` name: reads and checks their echoes, in closed loop
    /// (`reissue`) sends one message for each one completed, and writes what is owed.
    fn handle(&mut self, events: &[libc::epoll_event], reissue: bool, meter: &mut Meter) {
        for ev in events {
            let i = ev.u64 as usize;
            let completed = self.read(i, meter);
            if reissue && completed > 0 {
                let at = self.ns(Instant::now());
                Engine::issue(&mut self.conns[i], at, completed, self.size);
            }
            self.flush(i, meter);
        }
    }
}

/// The open loop's schedule: message `k` is due `k / rate` seconds after the start, on connection
/// `k mod conns`, whatever the server does.
struct Pacer {
    rate: f64,
    /// Messages due so far, sent or counted as not sent.
    sent: u64,
    /// Connections given a message this turn, to write once each.
    dirty: Vec<usize>,
}

impl Pacer {
    fn next_due(&self, start: Instant) -> Instant {
        start + Duration::from_secs_f64(self.sent as f64 / self.rate)
    }

    /// Issues every message due by now. Latency counts from the scheduled time, so a slow server
    /// cannot hide its queueing delay. A message that finds its connection full (or failed) is
    /// counted as not sent rather than skipped in silence.
    fn send_due(&mut self, eng: &mut Engine, meter: &mut Meter) {
        let elapsed = eng.start.elapsed().as_secs_f64();
        let due = (elapsed * self.rate) as u64;
        let nconns = eng.conns.len() as u64;
        while self.sent < due && nconns > 0 {
            let i = (self.sent % nconns) as usize;
            let at = (self.sent as f64 / self.rate * 1e9) as u64;
            let conn = &mut eng.conns[i];
            if conn.alive && conn.issued.len() < OPEN_LOOP_MAX_OUTSTANDING {
                Engine::issue(conn, at, 1, eng.size);
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(i);
                }
            } else {
                meter.not_sent();
            }
            self.sent += 1;
        }
        for i in self.dirty.drain(..) {
            eng.conns[i].dirty = false;
            eng.flush(i, meter);
        }
    }
}

pub fn run_load(spec: &Spec, pattern: &Pattern, label: &str) -> io::Result<RunResult> {
    let mut meter = Meter::new(label, spec.server_pid, spec.intervals);
    let epoll = Epoll::new()?;
    let mut eng = Engine::connect(spec, pattern, &epoll)?;
    let mut pacer = spec.rate.map(|rate| Pacer {
        rate,
        sent: 0,
        dirty: Vec::with_capacity(eng.conns.len()),
    });
    if pacer.is_none() {
        eng.fill_pipelines(spec.depth.max(1), &mut meter);
    }
    let measure_from = eng.start + spec.warmup;
    let end = measure_from + spec.duration;
    // Past the end nothing new is sent; every echo still in flight is due by then.
    let grace_end = end + spec.timeout;
    let mut next_check = eng.start + DEADLINE_CHECK;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        let now = Instant::now();
        let draining = now >= end;
        if draining {
            meter.stop(now);
            eng.measuring = false;
            let waiting = eng.conns.iter().any(|c| c.alive && !c.issued.is_empty());
            if !waiting || now >= grace_end {
                break;
            }
        }
        if eng.conns.iter().all(|c| !c.alive) {
            break;
        }
        if !eng.measuring && !draining && now >= measure_from {
            eng.measuring = true;
            meter.begin(now);
        }
        meter.tick(now);
        if now >= next_check {
            eng.expire(now, spec.timeout, &mut meter);
            next_check = now + DEADLINE_CHECK;
        }
        let until = if draining { grace_end } else { end };
        let mut timeout = (until - now)
            .min(next_check.saturating_duration_since(now))
            .min(Duration::from_millis(50));
        let pacing = pacer.as_mut().filter(|_| !draining);
        if let Some(p) = &pacing {
            // Wake when the next message is due.
            timeout = timeout.min(p.next_due(eng.start).saturating_duration_since(now));
        }
        let n = epoll.wait(&mut events, timeout)?;
        eng.handle(&events[..n], spec.rate.is_none() && !draining, &mut meter);
        if let Some(p) = pacing {
            p.send_due(&mut eng, &mut meter);
        }
    }
    Ok(eng.finish(spec, meter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::churn::run_churn;
    use crate::idle::run_idle;
    use std::net::TcpListener;

    /// A blocking echo server for `conns` connections; with `corrupt`, it flips the first byte.
    fn server(conns: usize, corrupt: bool) -> SocketAddr {
        flipping(conns, corrupt.then_some(0))
    }

    /// A blocking echo server for `conns` connections that flips the byte at stream offset
    /// `flip` of each, if given.
    fn flipping(conns: usize, flip: Option<u64>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test listener");
        let addr = listener.local_addr().expect("local address");
        std::thread::spawn(move || {
            for _ in 0..conns {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut at = 0u64;
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        if let Some(k) = flip.and_then(|f| f.checked_sub(at)) {
                            if let Some(b) = buf[..n].get_mut(k as usize) {
                                *b ^= 0x55;
                            }
                        }
                        at += n as u64;
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn spec(addr: SocketAddr, conns: usize, duration: Duration) -> Spec {
        Spec {
            addr,
            conns,
            depth: 4,
            size: 100,
            duration,
            warmup: Duration::ZERO,
            rate: None,
            sources: 1,
            server_pid: None,
            intervals: false,
            timeout: ECHO_TIMEOUT,
        }
    }

    #[test]
    fn a_faithful_echo_is_clean() {
        let p = Pattern::new(1);
        let r = run_load(
            &spec(server(2, false), 2, Duration::from_millis(300)),
            &p,
            "t",
        )
        .expect("load run");
        assert_eq!((r.errors, r.mismatches), (0, 0));
    }

    #[test]
    fn a_corrupted_echo_is_caught_by_ping() {
        let p = Pattern::new(1);
        // Every connection dies at its first (corrupted) reply, which ends the run early.
        let r = run_load(&spec(server(3, true), 3, Duration::from_secs(20)), &p, "t")
            .expect("load run");
        assert_eq!(r.mismatches, 3);
        let why = r.first_error.expect("the first mismatch is described");
        assert!(
            why.contains("127.0.0.1:") && why.contains("wrong byte at offset 0"),
            "{why}"
        );
    }

    #[test]
    fn a_mismatch_names_the_offset_of_the_wrong_byte() {
        let p = Pattern::new(1);
        let mut sp = spec(flipping(1, Some(100_000)), 1, Duration::from_secs(20));
        sp.size = 32 * 1024;
        let r = run_load(&sp, &p, "t").expect("load run");
        assert_eq!(r.mismatches, 1);
        let why = r.first_error.expect("the mismatch is described");
        assert!(why.contains("wrong byte at offset 100000"), "{why}");
    }

    #[test]
    fn churn_backs_off_from_a_refused_port() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        // Without a pause, loopback refuses thousands of connects in this time; the back-off
        // (1 ms doubling to 100 ms) allows about ten, and a slower machine only fewer.
        let r = run_churn(
            &spec(addr, 1, Duration::from_millis(400)),
            &Pattern::new(1),
            "t",
        )
        .expect("churn");
        assert!(r.errors > 0 && r.errors < 50, "{} connects", r.errors);
    }

    #[test]
    fn a_refused_connection_names_the_address() {
        // Bind then drop: nothing listens on that port any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let p = Pattern::new(1);
        let err = run_load(&spec(addr, 1, Duration::from_millis(100)), &p, "t")
            .expect_err("nothing listens");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        let churn = run_churn(&spec(addr, 1, Duration::from_millis(50)), &p, "t").expect("churn");
        assert!(churn.errors > 0);
        let why = churn.first_error.expect("the failure is described");
        assert!(why.contains(&format!("connect to {addr}")), "{why}");
    }

    #[test]
    fn sources_spread_only_over_ipv4_loopback() {
        let v4: SocketAddr = "127.0.0.1:9".parse().expect("literal");
        let v6: SocketAddr = "[::1]:9".parse().expect("literal");
        let remote: SocketAddr = "192.0.2.1:9".parse().expect("literal");
        assert_eq!(
            source(5, 4, v4),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(source(5, 1, v4), None);
        assert_eq!(source(5, 4, v6), None);
        assert_eq!(source(5, 4, remote), None);
    }

    #[test]
    fn idle_counts_every_echo_and_every_corruption() {
        let p = Pattern::new(1);
        let good = run_idle(&spec(server(5, false), 5, Duration::ZERO), &p, "t").expect("idle run");
        assert_eq!((good.msgs, good.errors, good.mismatches), (5, 0, 0));
        let bad = run_idle(&spec(server(5, true), 5, Duration::ZERO), &p, "t").expect("idle run");
        assert_eq!(bad.mismatches, 5);
    }
}
