//! The stop as an auditor checks it, against the binary: it ends as soon as peers hold every byte,
//! it counts in delivered bytes, it never hangs on a full stdout or stderr, a failed worker is
//! loud and complete, the accept queue is served, and signals are safe from the first instant.
//!
//! Waits are bounded only where the bound is the behaviour (a stop that must not sit out the drain
//! deadline), with generous margins; the measured figures are printed.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::process::{on_loopback, Process};
use common::{connect, echoes, eventually, serial, End, Streamer};
use epoll_echo::Counter;
use nix::sys::signal::Signal;

/// A client that echoes once and then keeps its socket open, as pools and health checks do.
fn lingering(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    assert!(echoes(&mut s, b"hello"));
    s
}

/// Reads until the server's EOF; true for a clean EOF, false for a reset.
fn ends_cleanly(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).is_ok()
}

#[test]
fn an_idle_client_that_never_closes_does_not_hold_the_stop() {
    let _serial = serial();
    let (server, addr) = Process::start(&["--maxListeners", "1"]);
    let mut client = lingering(addr);
    let exit = server.terminate();
    let report = exit.assert_clean();
    println!("one idle client: exit after {:?}", exit.took);
    assert_eq!(report[Counter::DeadlineCloses], 0, "{report}");
    // The default drain deadline is 5 s; the stop takes milliseconds.
    assert!(
        exit.took < Duration::from_millis(300),
        "took {:?}",
        exit.took
    );
    assert!(ends_cleanly(&mut client), "the client was reset");
}

#[test]
fn five_thousand_idle_clients_that_never_close_stop_within_a_second() {
    const CLIENTS: usize = 5_000;
    let _serial = serial();
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the soft limit");
    let (mut server, addr) = Process::start_with(&["--maxListeners", "2"], Some(12_000));
    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| lingering(addr)).collect();
    assert!(eventually(|| server.stats().active() == CLIENTS as u64));
    let exit = server.terminate();
    let report = exit.assert_clean();
    println!("{CLIENTS} idle clients: exit after {:?}", exit.took);
    assert_eq!(report[Counter::DeadlineCloses], 0, "{report}");
    assert!(exit.took < Duration::from_secs(1), "took {:?}", exit.took);
    drop(clients);
}

#[test]
fn streams_that_stop_at_eof_without_closing_end_the_stop_within_a_second() {
    stop_while_streaming(Linger::KeepOpen);
}

#[test]
fn sigterm_while_streaming_exits_cleanly_and_accounts_for_every_byte() {
    stop_while_streaming(Linger::CloseAtEof);
}

/// What a streaming client does with its socket once the echo has ended.
#[derive(Clone, Copy, Debug)]
enum Linger {
    /// Keeps it open: the server must not wait for it to close.
    KeepOpen,
    /// Closes it at once, with the bytes the server never read still queued.
    CloseAtEof,
}

/// Sixteen clients stream as fast as they can; SIGTERM; every client reads back exactly what the
/// server read of it, ending in a clean EOF, all of it delivered, well before the drain deadline.
fn stop_while_streaming(linger: Linger) {
    const STREAMS: u64 = 16;
    let _serial = serial();
    let (mut server, addr) = Process::start(&["--maxListeners", "2", "--drain-timeout", "10s"]);
    let streams: Vec<Streamer> = (0..STREAMS).map(|i| Streamer::start(addr, i)).collect();
    assert!(
        eventually(|| server.stats()[Counter::BytesWritten] >= STREAMS << 20),
        "the streams never got going"
    );
    let exit = server.terminate();
    let mut ends = Vec::new();
    let mut open = Vec::new();
    for stream in streams {
        let (ended, sockets) = stream.finish();
        ends.push(ended);
        match linger {
            Linger::KeepOpen => open.push(sockets),
            Linger::CloseAtEof => drop(sockets),
        }
    }
    let report = exit.assert_clean();
    let received: u64 = ends.iter().map(|(n, _)| n).sum();
    println!(
        "{STREAMS} streams ({linger:?}): exit after {:?}; received {received}; {report}",
        exit.took
    );
    assert!(
        ends.iter().all(|(_, end)| *end == End::Eof),
        "a client was reset"
    );
    assert_eq!(report[Counter::DeadlineCloses], 0, "{report}");
    // Every client got back exactly what the server read of it (a prefix of what it sent, and
    // the sums agree), all of it delivered.
    assert_eq!(received, report[Counter::BytesRead], "{report}");
    assert_eq!(received, report[Counter::BytesDelivered], "{report}");
    assert_eq!(
        report[Counter::BytesUnacked]
            + report[Counter::BytesDropped]
            + report[Counter::BytesInFlight]
            + report[Counter::BytesLostToErrors],
        0,
        "{report}"
    );
    assert!(exit.took < Duration::from_secs(1), "took {:?}", exit.took);
}

#[test]
fn a_client_that_never_reads_is_closed_at_the_deadline_with_its_bytes_counted() {
    let _serial = serial();
    let (mut server, addr) = Process::start(&["--maxListeners", "1", "--drain-timeout", "1s"]);
    let mut s = connect(addr);
    s.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![0x33; 64 * 1024];
    let mut sent = 0u64;
    // Not reading while writing: the server's echo fills both directions.
    assert!(
        eventually(|| {
            while let Ok(n) = s.write(&chunk) {
                sent += n as u64;
            }
            server.stats()[Counter::BackpressurePauses] >= 1
        }),
        "the server never hit the pending cap"
    );
    // The worker must not spin while it waits for acknowledgements that never come.
    let cpu_before = server.cpu_time();
    // Taken before the signal, so the time to the exit can only be overstated: a lower bound
    // that holds however long the sleep below overshoots on a loaded machine.
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    let waited = Duration::from_millis(600);
    thread::sleep(waited);
    let cpu = server.cpu_time() - cpu_before;
    println!("stalled peer: {cpu:?} of CPU over {waited:?} of the drain");
    assert!(
        cpu < waited / 10,
        "the worker spins while it waits: {cpu:?} in {waited:?}"
    );
    let exit = server.exit();
    let closed_after = signalled.elapsed();
    let r = exit.assert_clean();
    println!("stalled peer: closed {closed_after:?} after the signal: {r}");
    assert_eq!(r[Counter::DeadlineCloses], 1);
    // The kernel held our echo unacknowledged at the close: counted, and the balance is exact.
    assert!(r[Counter::BytesUnacked] > 0, "{r}");
    assert!(r[Counter::BytesDropped] > 0, "{r}");
    // Dropped is what the worker still held (at most the 64 KiB cap) and what had arrived before
    // the stop and was read out at the deadline: never more than was sent and not echoed.
    assert!(r[Counter::BytesDropped] >= 1, "{r}");
    assert!(
        r[Counter::BytesDropped] <= sent - r[Counter::BytesWritten],
        "{sent} sent: {r}"
    );
    assert_eq!(
        r[Counter::BytesRead],
        r[Counter::BytesDelivered] + r[Counter::BytesUnacked] + r[Counter::BytesDropped]
    );
    // The deadline is a lower bound: nothing closed the stalled peer sooner.
    assert!(
        closed_after >= Duration::from_secs(1),
        "closed {closed_after:?} after the signal, before its deadline"
    );
    // What the peer's kernel acknowledged it can still read, and no more than was written.
    s.set_nonblocking(false).expect("blocking");
    let mut got = 0u64;
    let mut buf = vec![0; 64 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    println!("stalled peer: sent {sent}, read back {got} after the close");
    assert!(got <= r[Counter::BytesWritten], "{got} read back, {r}");
    // The peer's kernel is the witness: what it acknowledged it still holds.
    assert!(r[Counter::BytesDelivered] <= got, "{got} read back, {r}");
}

#[test]
fn a_worker_that_fails_is_reported_at_once_and_the_rest_stop_gracefully() {
    let _serial = serial();
    let args = on_loopback(&["--maxListeners", "1", "--max-conns", "4"]);
    let mut server = Process::spawn_env(&args, &[("EPOLL_ECHO_FAIL_WORKER", "0:2")]);
    // The failing worker's connection-limit slots come back: its process would refuse nothing
    // more, but a second server is not needed to see it; the library test does.
    let (addr, _) = server.listening();
    let mut first = connect(addr);
    assert!(echoes(&mut first, b"counted"));
    // The second accept trips the planted failure.
    let _second = connect(addr);
    let line = server.stderr_line_with("worker 0 failed");
    println!("{line}");
    let exit = server.exit();
    assert_eq!(exit.status.code(), Some(3), "{:?}", exit.stderr);
    let r = exit.report();
    assert_eq!(r[Counter::WorkersFailed], 1, "{r}");
    assert!(
        r[Counter::Accepted] >= 1,
        "the failed worker's counts were lost: {r}"
    );
    assert!(
        r[Counter::BytesRead] >= 7,
        "the failed worker's counts were lost: {r}"
    );
}

#[test]
fn a_worker_that_fails_during_the_stop_still_exits_three() {
    let _serial = serial();
    let args = on_loopback(&["--maxListeners", "1", "--drain-timeout", "10s"]);
    let server = Process::spawn_env(&args, &[("EPOLL_ECHO_FAIL_WORKER", "0:2")]);
    let (addr, _) = server.listening();
    let mut first = connect(addr);
    assert!(echoes(&mut first, b"counted"));
    // A client queued while the server is frozen: the stop's cut accepts it, the second accept,
    // which trips the planted failure after the stop began.
    server.freeze();
    let mut second = connect(addr);
    second.write_all(b"queued").expect("send");
    server.signal(Signal::SIGTERM);
    server.signal(Signal::SIGCONT);
    let exit = server.exit();
    assert_eq!(exit.status.code(), Some(3), "{:?}", exit.stderr);
    let r = exit.report();
    assert_eq!(r[Counter::WorkersFailed], 1, "{r}");
    assert!(
        exit.stderr.iter().any(|l| l.contains("balance open: ")),
        "{:?}",
        exit.stderr
    );
}

#[test]
fn full_stdout_and_stderr_pipes_never_hold_the_stop() {
    let _serial = serial();
    // Pipes whose reader never reads: the kernel buffer fills and every further write would block.
    let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
    let (err_r, err_w) = nix::unistd::pipe().expect("pipe");
    fill(&out_w);
    fill(&err_w);
    let server = Process::spawn_with(
        &on_loopback(&["--maxListeners", "1", "--drain-timeout", "1s"]),
        Stdio::from(out_w),
        Stdio::from(err_w),
        None,
    );
    // The address cannot be read from a full stdout: find the listener through /proc.
    let addr = server.listening_port_via_proc();
    let mut client = connect(addr);
    for i in 0..100u32 {
        assert!(
            echoes(&mut client, &i.to_le_bytes()),
            "echo {i} while the output is full"
        );
    }
    for _ in 0..10 {
        server.signal(Signal::SIGUSR1);
    }
    let exit = server.terminate();
    println!(
        "full stdout and stderr: exit {:?} after {:?}",
        exit.status, exit.took
    );
    assert_eq!(exit.status.code(), Some(0));
    // Within the drain deadline (1 s), with a generous margin for a loaded machine.
    assert!(exit.took < Duration::from_secs(3), "took {:?}", exit.took);
    drop((out_r, err_r));
}

#[test]
fn at_the_descriptor_limit_with_a_full_stderr_established_connections_keep_echoing() {
    let _serial = serial();
    let (err_r, err_w) = nix::unistd::pipe().expect("pipe");
    fill(&err_w);
    let server = Process::spawn_with(
        &on_loopback(&["--maxListeners", "1"]),
        Stdio::piped(),
        Stdio::from(err_w),
        Some(32),
    );
    let (addr, _) = server.listening();
    let mut early: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
    for s in &mut early {
        assert!(echoes(s, b"before the flood"));
    }
    // More clients than descriptors: accept fails with EMFILE and the worker wants to warn.
    let _flood: Vec<TcpStream> = (0..60).map(|_| connect(addr)).collect();
    for round in 0..20u32 {
        for s in &mut early {
            assert!(echoes(s, &round.to_le_bytes()), "no echo in round {round}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let exit = server.terminate();
    assert_eq!(exit.status.code(), Some(0));
    drop(err_r);
}

/// Writes into a pipe until it is full.
fn fill(pipe: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let mut f = File::from(pipe.try_clone().expect("dup"));
    let fd = f.as_raw_fd();
    let set = |flags| fcntl(fd, FcntlArg::F_SETFL(flags)).expect("fcntl");
    set(OFlag::O_NONBLOCK);
    let block = [b'x'; 4096];
    while f.write(&block).is_ok() {}
    // The server gets the pipe as it would from a shell: blocking.
    set(OFlag::empty());
}

#[test]
fn clients_queued_while_the_server_is_stopped_are_served_not_reset() {
    const CLIENTS: usize = 300;
    let _serial = serial();
    let (server, addr) = Process::start(&["--maxListeners", "1"]);
    server.freeze();
    // The kernel completes their handshakes and queues their requests; the frozen server accepts
    // and reads nothing.
    let request = |i: usize| format!("request {i}\n").into_bytes();
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| {
            let mut s = connect(addr);
            s.write_all(&request(i)).expect("send");
            s
        })
        .collect();
    server.signal(Signal::SIGTERM);
    server.signal(Signal::SIGCONT);
    // Everything arrived before the stop: every request is echoed, then the end of the stream.
    for (i, mut s) in clients.into_iter().enumerate() {
        let mut back = Vec::new();
        s.read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("client {i} was reset: {e}"));
        assert_eq!(back, request(i), "client {i}");
    }
    let report = server.exit().assert_clean();
    let requests: u64 = (0..CLIENTS).map(|i| request(i).len() as u64).sum();
    assert_eq!(report[Counter::Accepted], CLIENTS as u64, "{report}");
    assert_eq!(
        (report[Counter::BytesRead], report[Counter::BytesDelivered]),
        (requests, requests),
        "{report}"
    );
    assert_eq!(report[Counter::BytesDiscarded], 0, "{report}");
}

#[test]
fn signals_from_the_first_instant_the_process_can_take_them_stop_gracefully() {
    let _serial = serial();
    for signal in [Signal::SIGTERM, Signal::SIGUSR1, Signal::SIGHUP] {
        for _ in 0..10 {
            let server = Process::spawn(&on_loopback(&[]));
            // The earliest a process can take a signal is when it blocks it; before that the
            // kernel's default action applies to any program.
            server.wait_until_blocked(signal);
            server.signal(signal);
            if signal == Signal::SIGUSR1 {
                server.signal(Signal::SIGTERM);
            }
            let exit = server.exit();
            assert_eq!(exit.status.code(), Some(0), "{signal}: {:?}", exit.stderr);
            exit.report();
        }
    }
}

#[test]
fn two_sigterms_back_to_back_are_one_graceful_stop() {
    let _serial = serial();
    let (server, addr) = Process::start(&["--maxListeners", "1"]);
    let mut client = lingering(addr);
    server.signal(Signal::SIGTERM);
    server.signal(Signal::SIGTERM);
    let report = server.exit().assert_clean();
    assert_eq!(report[Counter::Accepted], 1, "{report}");
    assert!(ends_cleanly(&mut client));
}

#[test]
fn input_queued_behind_a_connection_paused_at_the_cap_is_all_echoed_at_the_stop() {
    let _serial = serial();
    let (mut server, addr) = Process::start(&["--maxListeners", "1", "--drain-timeout", "20s"]);
    let mut s = connect(addr);
    // Not reading: the echo fills both directions, the server pauses at its cap, and the rest of
    // what was sent waits in the server's receive queue.
    let data = common::payload(11, 16 << 20);
    let sent = common::write_until_stalled(&mut s, &data, Duration::from_millis(300));
    let before = server.stats();
    assert!(before[Counter::BackpressurePauses] >= 1, "{before}");
    server.signal(Signal::SIGTERM);
    // Everything that had arrived is echoed, then the end of the stream.
    let back = common::read_to_eof(&mut s);
    let report = server.exit().assert_clean();
    println!(
        "paused at the stop: sent {sent}, read before the stop {}, echoed {}: {report}",
        before[Counter::BytesRead],
        back.len()
    );
    assert_eq!(
        back,
        data[..back.len()],
        "the echo is a prefix of the input"
    );
    assert_eq!(back.len() as u64, report[Counter::BytesRead], "{report}");
    assert!(
        report[Counter::BytesRead] > before[Counter::BytesRead],
        "what waited in the kernel at the stop was not echoed: {report}"
    );
    assert_eq!(report[Counter::DeadlineCloses], 0, "{report}");
}
