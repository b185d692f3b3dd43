//! The load scenarios: closed-loop ping-pong with a pipeline depth, open-loop streaming at a target
//! rate, connect churn, and idle-hold. Each runs on one thread over one epoll instance, checks every
//! echoed byte, and stops by itself at its deadline. Every failure it reports names the address.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::pattern::{Pattern, MAX_SLICE};
use crate::stats::{Meter, RunResult};
use crate::sys::{self, Epoll, CONN_EVENTS};

/// How long connecting one socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest time to connect every socket of a run.
const SETUP_LIMIT: Duration = Duration::from_secs(30);
/// An open-loop connection with this many messages outstanding gets no more until some return.
const OPEN_LOOP_MAX_OUTSTANDING: usize = 4096;

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
}

/// The source address of connection `i`: spread over 127.0.0.1 ..= 127.0.0.N when the target is
/// IPv4 loopback (each source has its own ephemeral port range); the system's choice otherwise,
/// since no other destination is reachable from those addresses.
fn source(i: usize, sources: u8, dst: SocketAddr) -> Option<IpAddr> {
    let n = sources.max(1) as usize;
    let loopback_v4 = matches!(dst, SocketAddr::V4(a) if a.ip().is_loopback());
    (n > 1 && loopback_v4).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % n) as u8)))
}

fn connect_all(spec: &Spec, deadline: Instant) -> io::Result<Vec<TcpStream>> {
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
                    let addr = self.addr;
                    Self::kill(conn, meter, || {
                        format!("{addr} closed a connection with echoes outstanding")
                    });
                    return done;
                }
                Ok(n) => {
                    if conn.rx + n as u64 > conn.tx
                        || !self.pattern.matches(conn.base + conn.rx, &self.buf[..n])
                    {
                        let (addr, at) = (self.addr, conn.rx);
                        meter.mismatch(|| {
                            format!("{addr} echoed wrong bytes at offset {at} of a connection")
                        });
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
                    let addr = self.addr;
                    Self::kill(conn, meter, || format!("read from {addr}: {e}"));
                    return done;
                }
            }
        }
    }

    /// Writes what is due until done or the socket is full (its writable edge resumes it).
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
                    let addr = self.addr;
                    Self::kill(conn, meter, || format!("write to {addr}: {e}"));
                }
            }
        }
    }
}

/// Closed-loop ping-pong (`rate` unset) or open-loop streaming (`rate` set).
pub fn run_load(spec: &Spec, pattern: &Pattern, label: &str) -> io::Result<RunResult> {
    let mut meter = Meter::new(label, spec.server_pid, spec.intervals);
    let streams = connect_all(spec, Instant::now() + SETUP_LIMIT)?;
    let epoll = Epoll::new()?;
    let cap = if spec.rate.is_some() {
        OPEN_LOOP_MAX_OUTSTANDING
    } else {
        spec.depth
    };
    let mut conns = Vec::with_capacity(streams.len());
    for (i, stream) in streams.into_iter().enumerate() {
        epoll.add(stream.as_raw_fd(), i as u64, CONN_EVENTS)?;
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
    let size = spec.size.max(1) as u64;
    let mut eng = Engine {
        pattern,
        addr: spec.addr,
        conns,
        size,
        buf: vec![0; MAX_SLICE],
        start: Instant::now(),
        measuring: false,
    };
    if spec.rate.is_none() {
        for i in 0..eng.conns.len() {
            Engine::issue(&mut eng.conns[i], 0, spec.depth.max(1), size);
            eng.flush(i, &mut meter);
        }
    }
    let measure_from = eng.start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut dirty: Vec<usize> = Vec::with_capacity(eng.conns.len());
    let mut sent_open = 0u64;
    loop {
        let now = Instant::now();
        if now >= end || eng.conns.iter().all(|c| !c.alive) {
            break;
        }
        if !eng.measuring && now >= measure_from {
            eng.measuring = true;
            meter.begin(now);
        }
        meter.tick(now);
        let mut timeout = (end - now).min(Duration::from_millis(50));
        if let Some(rate) = spec.rate {
            // Wake when the next message is due.
            let next = eng.start + Duration::from_secs_f64(sent_open as f64 / rate);
            timeout = timeout.min(next.saturating_duration_since(now));
        }
        let n = epoll.wait(&mut events, timeout)?;
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            let completed = eng.read(i, &mut meter);
            if spec.rate.is_none() && completed > 0 {
                let at = eng.ns(Instant::now());
                Engine::issue(&mut eng.conns[i], at, completed, size);
            }
            eng.flush(i, &mut meter);
        }
        if let Some(rate) = spec.rate {
            // Messages are due on a fixed schedule; latency counts from the scheduled time, so a
            // slow server cannot hide its queueing delay.
            let elapsed = eng.start.elapsed().as_secs_f64();
            let due = (elapsed * rate) as u64;
            let nconns = eng.conns.len() as u64;
            while sent_open < due && nconns > 0 {
                let i = (sent_open % nconns) as usize;
                let at = (sent_open as f64 / rate * 1e9) as u64;
                let conn = &mut eng.conns[i];
                if conn.alive && conn.issued.len() < OPEN_LOOP_MAX_OUTSTANDING {
                    Engine::issue(conn, at, 1, size);
                    if !conn.dirty {
                        conn.dirty = true;
                        dirty.push(i);
                    }
                }
                sent_open += 1;
            }
            for i in dirty.drain(..) {
                eng.conns[i].dirty = false;
                eng.flush(i, &mut meter);
            }
        }
    }
    let mut res = meter.finish(Instant::now());
    res.conns = spec.conns;
    res.depth = spec.depth;
    res.size = spec.size;
    Ok(res)
}

/// Connect churn: connect, echo one message, close; repeated until the deadline.
pub fn run_churn(spec: &Spec, pattern: &Pattern, label: &str) -> io::Result<RunResult> {
    let mut meter = Meter::new(label, spec.server_pid, spec.intervals);
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let size = spec.size.clamp(1, MAX_SLICE);
    let mut buf = vec![0; size];
    let mut measuring = false;
    let mut i = 0usize;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if !measuring && now >= measure_from {
            measuring = true;
            meter.begin(now);
        }
        meter.tick(now);
        let base = Pattern::base(i);
        let src = source(i, spec.sources, spec.addr);
        match churn_once(spec, pattern, base, src, &mut buf) {
            Ok(true) => {
                if measuring {
                    meter.record(now.elapsed().as_nanos() as u64);
                    meter.msgs += 1;
                    meter.bytes += size as u64;
                }
            }
            Ok(false) => meter.mismatch(|| format!("{} echoed wrong bytes", spec.addr)),
            Err(e) => meter.error(|| e.to_string()),
        }
        i += 1;
    }
    let mut res = meter.finish(Instant::now());
    res.conns = 1;
    res.depth = 1;
    res.size = size;
    Ok(res)
}

/// One connection's life; `Ok(false)` when the echo was wrong. Errors name the address.
fn churn_once(
    spec: &Spec,
    pattern: &Pattern,
    base: u64,
    src: Option<IpAddr>,
    buf: &mut [u8],
) -> io::Result<bool> {
    let mut stream = sys::connect(spec.addr, src, CONNECT_TIMEOUT)?;
    let echo = |stream: &mut TcpStream, buf: &mut [u8]| -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        stream.write_all(pattern.slice(base, buf.len()))?;
        stream.read_exact(buf)
    };
    echo(&mut stream, buf)
        .map_err(|e| io::Error::new(e.kind(), format!("echo from {}: {e}", spec.addr)))?;
    Ok(pattern.matches(base, buf))
}

/// Idle-hold: open `conns` connections, echo one message on each so the server has surely accepted
/// them, then hold them and read the server's memory per connection.
pub fn run_idle(spec: &Spec, pattern: &Pattern, label: &str) -> io::Result<RunResult> {
    let mut meter = Meter::new(label, spec.server_pid, spec.intervals);
    let rss_before = spec.server_pid.and_then(crate::procstat::rss_bytes);
    let started = Instant::now();
    meter.begin(started);
    let deadline = started + SETUP_LIMIT;
    let size = spec.size.clamp(1, MAX_SLICE);
    let mut streams = connect_all(spec, deadline)?;
    let epoll = Epoll::new()?;
    let sent_at = Instant::now();
    let mut done = vec![false; streams.len()];
    for (i, s) in streams.iter_mut().enumerate() {
        epoll.add(s.as_raw_fd(), i as u64, CONN_EVENTS)?;
        // A fresh socket's send buffer takes one small message whole.
        if s.write(pattern.slice(Pattern::base(i), size)).ok() != Some(size) {
            meter.error(|| format!("write to {}: the first message did not fit", spec.addr));
            done[i] = true;
        }
    }
    let mut got = vec![0usize; streams.len()];
    let mut buf = vec![0u8; size];
    let mut left = done.iter().filter(|d| !**d).count();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while left > 0 && Instant::now() < deadline {
        meter.tick(Instant::now());
        let n = epoll.wait(&mut events, Duration::from_millis(50))?;
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            if done[i] {
                continue;
            }
            loop {
                match streams[i].read(&mut buf[got[i]..]) {
                    Ok(0) => {
                        meter.error(|| format!("{} closed an idle connection", spec.addr));
                        done[i] = true;
                    }
                    Ok(k) => {
                        let off = Pattern::base(i) + got[i] as u64;
                        if !pattern.matches(off, &buf[got[i]..got[i] + k]) {
                            meter.mismatch(|| format!("{} echoed wrong bytes", spec.addr));
                            done[i] = true;
                        } else {
                            got[i] += k;
                            if got[i] == size {
                                meter.msgs += 1;
                                meter.bytes += size as u64;
                                meter.record(sent_at.elapsed().as_nanos() as u64);
                                done[i] = true;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        meter.error(|| format!("read from {}: {e}", spec.addr));
                        done[i] = true;
                    }
                }
                if done[i] {
                    left -= 1;
                    break;
                }
            }
        }
    }
    for _ in 0..left {
        meter.error(|| format!("{} did not echo within {SETUP_LIMIT:?}", spec.addr));
    }
    // Hold them while the server settles, then read its memory.
    std::thread::sleep(spec.duration);
    let rss_after = spec.server_pid.and_then(crate::procstat::rss_bytes);
    let mut res = meter.finish(Instant::now());
    res.conns = spec.conns;
    res.depth = 1;
    res.size = size;
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        res.rss_per_conn = Some((b as f64 - a as f64) / spec.conns.max(1) as f64);
    }
    drop(streams);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A blocking echo server for `conns` connections; with `corrupt`, it flips the first byte.
    fn server(conns: usize, corrupt: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test listener");
        let addr = listener.local_addr().expect("local address");
        std::thread::spawn(move || {
            for _ in 0..conns {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut first = corrupt;
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        if first {
                            buf[0] ^= 0x55;
                            first = false;
                        }
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
            why.contains("127.0.0.1:") && why.contains("wrong bytes"),
            "{why}"
        );
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
