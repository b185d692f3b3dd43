//! Resilience on real sockets against the server binary run as a child process: descriptor
//! exhaustion, descriptor leaks under churn and resets, memory under a slow reader, idle timeout,
//! connection limit, and 10,000 concurrent connections. The stop while streaming and the drain
//! deadline are in `stop.rs`.
//!
//! The tests run one at a time (they share the machine's ports, descriptors and two cores), and no
//! verdict depends on timing: waits are bounded only to turn a hang into a failure, and the CPU bound
//! is a generous fraction of the wall time.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::process::{rss_of, Process};
use common::{connect, echoes, eventually, read_verified, serial, Pattern, CHUNK, PATIENCE};
use epoll_echo::{Counter, Derived};
use nix::sys::socket::{setsockopt, sockopt};

/// True when the server closed the connection (EOF or reset) instead of answering.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let _ = s.write_all(b"?");
    let mut byte = [0; 1];
    match s.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn at_the_descriptor_limit_the_server_idles_keeps_serving_and_recovers() {
    let _serial = serial();
    let started = Instant::now();
    // 32 descriptors: the standard three, epoll, waker and listener leave 26 for connections.
    let (mut server, addr) = Process::start_with(&["--maxListeners", "1"], Some(32));
    let mut early: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
    for s in &mut early {
        assert!(echoes(s, b"before the flood"));
    }
    // More clients than descriptors: the surplus waits in the backlog.
    let flood: Vec<TcpStream> = (0..60).map(|_| connect(addr)).collect();
    assert!(
        eventually(|| server.stats()[Counter::AcceptEmfile] > 0),
        "the server never ran out of descriptors"
    );

    let cpu_before = server.cpu_time();
    let wall_before = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let cpu = server.cpu_time() - cpu_before;
    let wall = wall_before.elapsed();
    println!("cpu at the descriptor limit: {cpu:?} over {wall:?}");
    assert!(
        cpu.as_secs_f64() < 0.3 * wall.as_secs_f64(),
        "the server spins at the descriptor limit: {cpu:?} of CPU in {wall:?}"
    );

    for s in &mut early {
        assert!(
            echoes(s, b"at the limit"),
            "an established connection stopped echoing"
        );
    }
    drop(flood);
    drop(early);
    // Descriptors free up as the server sees the closes; a newcomer is then served.
    assert!(
        eventually(|| echoes(&mut connect(addr), b"after")),
        "no recovery after the clients left"
    );

    let exit = server.terminate();
    let report = exit.assert_clean();
    assert!(report[Counter::AcceptEmfile] > 0);
    assert_eq!(
        report.derived(Derived::AcceptExhausted),
        report[Counter::AcceptEmfile]
    );
    let accept_logs = exit
        .stderr
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        (1..=seconds + 1).contains(&accept_logs),
        "{accept_logs} accept-failure lines in {seconds} s: not rate-limited"
    );
}

#[test]
fn churn_and_resets_leave_no_descriptor_behind() {
    let _serial = serial();
    let (server, addr) = Process::start(&["--maxListeners", "2"]);
    let baseline = server.descriptors();
    for i in 0..5000u32 {
        let mut s = connect(addr);
        assert!(echoes(&mut s, &i.to_le_bytes()), "cycle {i} did not echo");
    }
    for i in 0..200u32 {
        let mut s = connect(addr);
        assert!(echoes(&mut s, &i.to_le_bytes()), "reset {i} did not echo");
        // Linger 0: the close sends RST instead of FIN.
        let abort = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        setsockopt(&s, sockopt::Linger, &abort).expect("SO_LINGER");
    }
    let mut now = 0;
    let settled = eventually(|| {
        now = server.descriptors();
        now == baseline
    });
    println!("server descriptors: {baseline} idle, {now} after 5000 cycles and 200 resets");
    assert!(settled, "descriptors {now} never returned to {baseline}");

    let exit = server.terminate();
    let report = exit.assert_clean();
    assert_eq!(report[Counter::Accepted], 5200);
}

#[test]
fn a_peer_that_does_not_read_costs_at_most_the_cap_and_loses_nothing() {
    const TOTAL: u64 = 256 << 20;
    const CAP: u64 = 64 * 1024;
    /// Allocator and bookkeeping noise allowed on top of the cap.
    const MARGIN: u64 = 2 << 20;
    let _serial = serial();
    let (mut server, addr) = Process::start(&["--maxListeners", "1", "--max-pending", "65536"]);
    // Warm the worker's scratch buffer so the baseline includes it.
    let mut warm = connect(addr);
    for _ in 0..4 {
        assert!(echoes(&mut warm, &[0x5a; 60_000]));
    }
    drop(warm);
    let baseline = server.rss();

    let stream = connect(addr);
    stream
        .set_write_timeout(Some(PATIENCE))
        .expect("write timeout");
    let mut writer_side = stream.try_clone().expect("clone");
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = Arc::clone(&written);
        thread::spawn(move || {
            let pattern = Pattern::new(1);
            let mut off = 0;
            while off < TOTAL {
                let n = CHUNK.min((TOTAL - off) as usize);
                match writer_side.write(pattern.at(off, n)) {
                    Ok(k) => off += k as u64,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("write failed after {off} bytes: {e}"),
                }
                written.store(off, Relaxed);
            }
        })
    };
    // The writer fills the socket buffers and blocks: progress stops for a while.
    let mut last = u64::MAX;
    let mut still = 0;
    assert!(
        eventually(|| {
            let now = written.load(Relaxed);
            still = if now == last { still + 1 } else { 0 };
            last = now;
            still >= 10
        }),
        "the writer never blocked"
    );
    let stalled = server.rss();
    assert!(
        eventually(|| server.stats()[Counter::BackpressurePauses] >= 1),
        "the server never paused"
    );
    let growth = stalled.saturating_sub(baseline);
    println!(
        "slow reader: {} bytes written unread, server RSS {baseline} -> {stalled} (+{growth})",
        written.load(Relaxed)
    );
    assert!(
        growth <= CAP + MARGIN,
        "RSS grew by {growth} bytes for one stalled connection"
    );

    // Now read: every byte arrives, in order; RSS stays bounded while it streams.
    let pid = server.pid();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Relaxed) {
                peak = peak.max(rss_of(pid).unwrap_or(0));
                thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let mut reader = stream;
    let (got, _) = read_verified(&mut reader, &Pattern::new(1), TOTAL);
    done.store(true, Relaxed);
    writer.join().expect("writer");
    let peak = sampler.join().expect("sampler");
    assert_eq!(got, TOTAL, "bytes lost");
    println!(
        "slow reader: peak RSS while streaming {peak} (+{})",
        peak.saturating_sub(baseline)
    );
    assert!(peak.saturating_sub(baseline) <= CAP + MARGIN);
    reader.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = [0; 1];
    assert_eq!(reader.read(&mut rest).expect("EOF after half-close"), 0);

    let exit = server.terminate();
    let report = exit.assert_clean();
    assert_eq!(report[Counter::BytesRead], TOTAL + 240_000);
    assert_eq!(report[Counter::BytesDropped], 0);
}

#[test]
fn silent_connections_are_closed_after_the_idle_timeout() {
    let _serial = serial();
    let (server, addr) = Process::start(&["--maxListeners", "1", "--idle-timeout", "300ms"]);
    let mut s = connect(addr);
    assert!(echoes(&mut s, b"hello"));
    let mut byte = [0; 1];
    let r = s.read(&mut byte);
    assert!(
        matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "expected the server to close the idle connection, got {r:?}"
    );
    let exit = server.terminate();
    let report = exit.assert_clean();
    assert_eq!(report[Counter::IdleCloses], 1);
}

#[test]
fn at_max_conns_new_connections_are_closed_and_counted_until_one_leaves() {
    let _serial = serial();
    let (mut server, addr) = Process::start(&["--maxListeners", "2", "--max-conns", "3"]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    for s in &mut held {
        assert!(echoes(s, b"inside the limit"));
    }
    let mut extra = connect(addr);
    assert!(
        closed_by_server(&mut extra),
        "a fourth connection was served"
    );
    for s in &mut held {
        assert!(echoes(s, b"still served"));
    }
    // Counters are published once per worker turn: they may lag the socket by one turn.
    let mut stats = server.stats();
    assert!(
        eventually(|| {
            stats = server.stats();
            stats[Counter::Rejected] >= 1
        }),
        "no rejection counted: {stats:?}"
    );
    assert_eq!(stats.active(), 3);

    drop(held.pop());
    assert!(
        eventually(|| echoes(&mut connect(addr), b"a slot is free")),
        "no connection admitted after one left"
    );
    drop(held);
    let exit = server.terminate();
    let report = exit.assert_clean();
    assert!(report[Counter::Rejected] >= 1);
}

#[test]
fn ten_thousand_concurrent_connections_all_echo_in_little_memory() {
    const CONNS: usize = 10_000;
    let _serial = serial();
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= 10_500,
        "this test needs 10,500 descriptors, the limit is {hard}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the soft limit");

    let (mut server, addr) = Process::start_with(&["--maxListeners", "2"], Some(12_000));
    // Warm both workers' scratch buffers so the baseline holds them.
    let mut warm: Vec<TcpStream> = (0..16).map(|_| connect(addr)).collect();
    for s in &mut warm {
        assert!(echoes(s, &[1; 60_000]));
    }
    drop(warm);
    assert!(eventually(|| server.stats().active() == 0));
    let baseline = server.rss();

    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| connect(addr)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(&(i as u32).to_le_bytes()).expect("write");
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let mut back = [0; 4];
        s.read_exact(&mut back).expect("echo");
        assert_eq!(
            back,
            (i as u32).to_le_bytes(),
            "connection {i} echoed wrong bytes"
        );
    }
    assert!(eventually(|| server.stats().active() == CONNS as u64));
    let rss = server.rss();
    let per_conn = rss.saturating_sub(baseline) / CONNS as u64;
    println!("{CONNS} idle connections: server RSS {baseline} -> {rss}, {per_conn} bytes each");
    assert!(
        per_conn < 1024,
        "{per_conn} bytes of RSS per idle connection"
    );

    drop(conns);
    let exit = server.terminate();
    let report = exit.assert_clean();
    assert_eq!(report[Counter::Accepted], CONNS as u64 + 16);
}
