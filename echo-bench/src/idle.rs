//! Idle-hold: open `conns` connections, echo one message on each so the server has surely
//! accepted them, then hold them and read the server's memory per connection. A first message
//! not echoed within the run's timeout is lost and fails its connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::load::{conn_name, connect_all, owed, timed_out, Spec, SETUP_LIMIT};
use crate::pattern::{Pattern, MAX_SLICE};
use crate::stats::{Meter, RunResult};
use crate::sys::{Epoll, CONN_EVENTS};

pub fn run_idle(spec: &Spec, pattern: &Pattern, label: &str) -> io::Result<RunResult> {
    let mut meter = Meter::new(label, spec.server_pid, spec.intervals);
    let rss_before = spec.server_pid.and_then(crate::procstat::rss_bytes);
    let started = Instant::now();
    meter.begin(started);
    let size = spec.size.clamp(1, MAX_SLICE);
    let streams = connect_all(spec, started + SETUP_LIMIT)?;
    let epoll = Epoll::new()?;
    let sent_at = Instant::now();
    let deadline = sent_at + spec.timeout;
    let mut held = Held {
        got: vec![0; streams.len()],
        done: vec![false; streams.len()],
        streams,
        size,
        addr: spec.addr,
        pattern,
        sent_at,
    };
    held.send(&epoll, &mut meter)?;
    let mut buf = vec![0u8; size];
    let mut left = held.done.iter().filter(|d| !**d).count();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while left > 0 && Instant::now() < deadline {
        meter.tick(Instant::now());
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        let n = epoll.wait(&mut events, wait)?;
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            if !held.done[i] && held.read(i, &mut buf, &mut meter) {
                left -= 1;
            }
        }
    }
    held.time_out_the_rest(spec.timeout, &mut meter);
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
    drop(held);
    Ok(res)
}

/// The held connections and how far each one's single echo has come.
struct Held<'a> {
    streams: Vec<TcpStream>,
    /// Bytes of its echo each connection got back.
    got: Vec<usize>,
    /// Whether each connection is finished: fully echoed, or failed.
    done: Vec<bool>,
    size: usize,
    addr: SocketAddr,
    pattern: &'a Pattern,
    /// When the messages were sent: every latency counts from here.
    sent_at: Instant,
}

impl Held<'_> {
    fn name(&self, i: usize) -> String {
        conn_name(i, &self.streams[i], self.addr)
    }

    fn owes(&self, i: usize) -> String {
        owed((self.size - self.got[i]) as u64, 1)
    }

    /// Registers every connection and sends it its one message.
    fn send(&mut self, epoll: &Epoll, meter: &mut Meter) -> io::Result<()> {
        let size = self.size;
        for (i, s) in self.streams.iter_mut().enumerate() {
            epoll.add(s.as_fd(), i as u64, CONN_EVENTS)?;
            // A fresh socket's send buffer takes one small message whole.
            if s.write(self.pattern.slice(Pattern::base(i), size)).ok() != Some(size) {
                let name = conn_name(i, s, self.addr);
                meter.error(|| format!("{name}: write: the first message did not fit"));
                self.done[i] = true;
            }
        }
        Ok(())
    }

    /// Reads connection `i`'s echo until the socket would block, checking every byte; true once
    /// the connection is finished (echoed, or failed).
    fn read(&mut self, i: usize, buf: &mut [u8], meter: &mut Meter) -> bool {
        loop {
            let got = self.got[i];
            match (&self.streams[i]).read(&mut buf[got..]) {
                Ok(0) => {
                    meter.lost(1);
                    let why = format!("{}: closed by the server, {}", self.name(i), self.owes(i));
                    meter.error(|| why);
                    self.done[i] = true;
                }
                Ok(k) => self.check(i, &buf[got..got + k], meter),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    meter.lost(1);
                    let why = format!("{}: read: {e}; {}", self.name(i), self.owes(i));
                    meter.error(|| why);
                    self.done[i] = true;
                }
            }
            if self.done[i] {
                return true;
            }
        }
    }

    /// Checks bytes echoed on connection `i`; the whole message echoed counts it and its latency.
    fn check(&mut self, i: usize, echoed: &[u8], meter: &mut Meter) {
        let got = self.got[i];
        let off = Pattern::base(i) + got as u64;
        if let Some(bad) = self.pattern.first_mismatch(off, echoed) {
            let at = got + bad;
            let why = format!("{}: echoed a wrong byte at offset {at}", self.name(i));
            meter.mismatch(|| why);
            self.done[i] = true;
            return;
        }
        self.got[i] += echoed.len();
        if self.got[i] == self.size {
            meter.msgs += 1;
            meter.bytes += self.size as u64;
            meter.record(self.sent_at.elapsed().as_nanos() as u64);
            self.done[i] = true;
        }
    }

    /// Counts every connection whose echo did not come back in time as lost.
    fn time_out_the_rest(&self, timeout: Duration, meter: &mut Meter) {
        for i in (0..self.streams.len()).filter(|&i| !self.done[i]) {
            meter.lost(1);
            let why = format!("{}: {}; {}", self.name(i), timed_out(timeout), self.owes(i));
            meter.error(|| why);
        }
    }
}
