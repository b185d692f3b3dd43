//! Idle-hold: open `conns` connections, echo one message on each so the server has surely
//! accepted them, then hold them and read the server's memory per connection. A first message
//! not echoed within the run's timeout is lost and fails its connection.

use std::io::{self, Read, Write};
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
    let mut streams = connect_all(spec, started + SETUP_LIMIT)?;
    let epoll = Epoll::new()?;
    let sent_at = Instant::now();
    let deadline = sent_at + spec.timeout;
    let mut done = vec![false; streams.len()];
    for (i, s) in streams.iter_mut().enumerate() {
        epoll.add(s.as_fd(), i as u64, CONN_EVENTS)?;
        // A fresh socket's send buffer takes one small message whole.
        if s.write(pattern.slice(Pattern::base(i), size)).ok() != Some(size) {
            let name = conn_name(i, s, spec.addr);
            meter.error(|| format!("{name}: write: the first message did not fit"));
            done[i] = true;
        }
    }
    let mut got = vec![0usize; streams.len()];
    let mut buf = vec![0u8; size];
    let mut left = done.iter().filter(|d| !**d).count();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while left > 0 && Instant::now() < deadline {
        meter.tick(Instant::now());
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        let n = epoll.wait(&mut events, wait)?;
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            if done[i] {
                continue;
            }
            let name = || conn_name(i, &streams[i], spec.addr);
            let owes = |got: usize| owed((size - got) as u64, 1);
            loop {
                match (&streams[i]).read(&mut buf[got[i]..]) {
                    Ok(0) => {
                        meter.lost(1);
                        let why = format!("{}: closed by the server, {}", name(), owes(got[i]));
                        meter.error(|| why);
                        done[i] = true;
                    }
                    Ok(k) => {
                        let off = Pattern::base(i) + got[i] as u64;
                        if let Some(bad) = pattern.first_mismatch(off, &buf[got[i]..got[i] + k]) {
                            let at = got[i] + bad;
                            let why = format!("{}: echoed a wrong byte at offset {at}", name());
                            meter.mismatch(|| why);
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
                        meter.lost(1);
                        let why = format!("{}: read: {e}; {}", name(), owes(got[i]));
                        meter.error(|| why);
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
    for (i, s) in streams.iter().enumerate().filter(|(i, _)| !done[*i]) {
        meter.lost(1);
        let why = format!(
            "{}: {}; {}",
            conn_name(i, s, spec.addr),
            timed_out(spec.timeout),
            owed((size - got[i]) as u64, 1)
        );
        meter.error(|| why);
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
