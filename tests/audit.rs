//! The shutdown audit against the binary, with the peers' own kernels as witnesses: a client that
//! never reads holds what its kernel received, so the server's `bytes_delivered` (what the peers'
//! kernels acknowledged) can never exceed it. One test per close path the audit once got wrong: a
//! reset before and during the stop, a half-closed peer that never reads (outside and during the
//! stop), an echo that fills the peer's window, and a stop signal after a worker failure.
//!
//! Waits are bounded only where the bound is the behaviour (a stop that must not sit out the drain
//! deadline), with generous margins; the measured figures are printed.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::process::{on_loopback, Process};
use common::{
    connect, echoes, eventually, payload, reset, serial, settled_unread, small_window,
    write_until_stalled,
};
use epoll_echo::Counter;
use nix::sys::signal::Signal;

/// The client's receive buffer: small, so the echo fills its window at once.
const WINDOW: usize = 4096;
/// What a half-closed client sends and never reads back.
const HALF_CLOSED: usize = 2 * WINDOW;

/// Sends `len` bytes without reading, until the whole path stalls; returns the bytes sent.
fn send_without_reading(c: &mut TcpStream, len: usize) -> usize {
    write_until_stalled(c, &payload(7, len), Duration::from_millis(300))
}

/// Waits until the server's listener is closed: the worker took the stop.
fn wait_for_the_stop(addr: SocketAddr) {
    let refused = eventually(
        || matches!(TcpStream::connect(addr), Err(e) if e.kind() == ErrorKind::ConnectionRefused),
    );
    assert!(refused, "the listener never closed after the signal");
}

#[test]
fn a_peer_that_resets_with_echo_unread_is_counted_as_lost_not_delivered() {
    let _serial = serial();
    let (mut server, addr) = Process::start(&["--maxListeners", "1"]);
    let mut c = small_window(addr, WINDOW);
    let sent = send_without_reading(&mut c, 1 << 20);
    let held = settled_unread(&c);
    reset(c);
    assert!(eventually(|| server.stats()[Counter::ErrorCloses] == 1));
    let r = server.terminate().assert_clean();
    println!("reset before the stop: sent {sent}, the peer held {held}: {r}");
    assert_eq!(r[Counter::ErrorCloses], 1, "{r}");
    assert!(
        r[Counter::BytesDelivered] <= held as u64,
        "held {held}: {r}"
    );
    assert!(r[Counter::BytesLostToErrors] > 0, "{r}");
    assert_eq!(
        r[Counter::BytesDelivered] + r[Counter::BytesLostToErrors],
        r[Counter::BytesWritten],
        "{r}"
    );
}

#[test]
fn a_peer_that_resets_during_the_stop_ends_it_and_is_counted_as_lost() {
    let _serial = serial();
    let (server, addr) = Process::start(&["--maxListeners", "1", "--drain-timeout", "20s"]);
    let mut c = small_window(addr, WINDOW);
    send_without_reading(&mut c, 1 << 20);
    let held = settled_unread(&c);
    server.signal(Signal::SIGTERM);
    wait_for_the_stop(addr);
    let reset_at = Instant::now();
    reset(c);
    let exit = server.exit();
    let took = reset_at.elapsed();
    let r = exit.assert_clean();
    println!("reset during the stop: exit {took:?} after the reset; the peer held {held}: {r}");
    assert_eq!(
        (r[Counter::ErrorCloses], r[Counter::DeadlineCloses]),
        (1, 0),
        "{r}"
    );
    assert!(
        r[Counter::BytesDelivered] <= held as u64,
        "held {held}: {r}"
    );
    assert!(r[Counter::BytesLostToErrors] > 0, "{r}");
    // The reset ends the connection's drain: the stop does not sit out its 20 s deadline.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_half_closed_peer_that_never_reads_is_counted_in_flight_outside_a_stop() {
    let _serial = serial();
    let (mut server, addr) = Process::start(&["--maxListeners", "1"]);
    let mut c = small_window(addr, WINDOW);
    // Twice the window: the server's default send buffer takes the rest, so it can flush and
    // close whatever the host's buffer tuning, with part of the echo unacknowledged.
    c.write_all(&payload(3, HALF_CLOSED)).expect("send");
    c.shutdown(Shutdown::Write).expect("half-close");
    // Everything read is written back, then the server closes: what the peer's kernel did not
    // acknowledge is still on its way.
    assert!(eventually(|| server.stats()[Counter::Closed] == 1));
    let held = settled_unread(&c);
    let r = server.terminate().assert_clean();
    println!("half-closed, outside a stop: the peer held {held}: {r}");
    assert_eq!(r[Counter::BytesWritten], HALF_CLOSED as u64, "{r}");
    assert!(
        r[Counter::BytesDelivered] <= held as u64,
        "held {held}: {r}"
    );
    assert!(r[Counter::BytesInFlight] > 0, "{r}");
    assert_eq!(r[Counter::BytesUnacked], 0, "not cut by the server: {r}");
}

#[test]
fn a_half_closed_peer_that_never_reads_is_held_to_the_deadline_and_counted() {
    let _serial = serial();
    let (server, addr) = Process::start(&["--maxListeners", "1", "--drain-timeout", "1s"]);
    let mut c = small_window(addr, WINDOW);
    c.write_all(&payload(3, HALF_CLOSED)).expect("send");
    let held = settled_unread(&c);
    server.signal(Signal::SIGTERM);
    wait_for_the_stop(addr);
    // The peer finishes only now, during the stop: its EOF must not close it before delivery.
    c.shutdown(Shutdown::Write).expect("half-close");
    let r = server.exit().assert_clean();
    println!("half-closed during the stop: the peer held {held}: {r}");
    assert_eq!(r[Counter::DeadlineCloses], 1, "{r}");
    assert!(
        r[Counter::BytesDelivered] <= held as u64,
        "held {held}: {r}"
    );
    assert!(r[Counter::BytesUnacked] > 0, "{r}");
}

/// Brings the echo to rest in the client's kernel with its window as full as the client can make
/// it from outside: the echo overflows the window, then the client reads exactly what is stuck in
/// the server's kernel, which lands in the room it made. Whether the window is then shut to the
/// byte depends on how the kernel rounds it; `src/server.rs` builds the exact case from the
/// server's side of the connection. Returns what the client's kernel holds.
fn fill_the_window_exactly(c: &mut TcpStream, sent: usize) -> usize {
    let mut read = 0;
    let mut buf = vec![0; sent];
    for _ in 0..100 {
        let held = settled_unread(c);
        let stuck = sent - read - held;
        if stuck == 0 {
            return held;
        }
        c.read_exact(&mut buf[..stuck.min(held)]).expect("read");
        read += stuck.min(held);
    }
    panic!("the echo never came to rest in the client's kernel");
}

#[test]
fn an_echo_that_fills_the_peers_window_does_not_hold_the_stop() {
    let _serial = serial();
    let (server, addr) = Process::start(&["--maxListeners", "1", "--drain-timeout", "20s"]);
    let mut c = small_window(addr, WINDOW);
    let sent = 6 * WINDOW;
    c.write_all(&payload(5, sent)).expect("send");
    let held = fill_the_window_exactly(&mut c, sent);
    let signalled = Instant::now();
    let exit = server.terminate();
    let took = signalled.elapsed();
    let r = exit.assert_clean();
    println!("a window filled exactly ({held} bytes held): exit after {took:?}: {r}");
    // Every byte is acknowledged; only our FIN waits for the window. That is delivered.
    assert_eq!(r[Counter::BytesDelivered], sent as u64, "{r}");
    assert_eq!(r[Counter::DeadlineCloses], 0, "{r}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// Places a client that never reads on worker 1, then makes worker 0 fail: the stop that follows
/// must drain worker 1 to its deadline. `None` when worker 0 failed first (the attempt is lost).
fn a_failure_with_a_drain_ahead() -> Option<(Process, TcpStream)> {
    let args = on_loopback(&["--maxListeners", "2", "--drain-timeout", "3s"]);
    let mut server = Process::spawn_env(&args, &[("EPOLL_ECHO_FAIL_WORKER", "0:1")]);
    let (addr, _) = server.listening();
    // Worker 0 fails at its first accept: a connection that echoes is on worker 1.
    let mut staller = connect(addr);
    if !echoes(&mut staller, b"on worker 1?") {
        let _ = server.exit();
        return None;
    }
    send_without_reading(&mut staller, 1 << 22);
    // Worker 0's first connection trips the planted failure.
    for _ in 0..64 {
        let mut probe = connect(addr);
        if !echoes(&mut probe, b"on worker 0?") {
            server.stderr_line_with("worker 0 failed");
            // The failure begins the stop before any signal does.
            server.stderr_line_with("stopping the other workers after a failure");
            return Some((server, staller));
        }
    }
    panic!("64 connections and none reached worker 0");
}

#[test]
fn a_stop_signal_after_a_worker_failure_is_the_first_request() {
    let _serial = serial();
    let (server, _staller) = (0..30)
        .find_map(|_| a_failure_with_a_drain_ahead())
        .expect("worker 1 never got the first connection in 30 attempts");
    // The failure began the stop; this is the operator's first signal, not a second one.
    server.signal(Signal::SIGTERM);
    let exit = server.exit();
    println!(
        "SIGTERM after a failure: exit {:?} after {:?}",
        exit.status, exit.took
    );
    assert_eq!(exit.status.code(), Some(3), "{:?}", exit.stderr);
    let said = |what: &str| exit.stderr.iter().any(|l| l.contains(what));
    assert!(
        said("already stopping after a worker failure"),
        "{:?}",
        exit.stderr
    );
    assert!(!said("exiting at once"), "{:?}", exit.stderr);
    let r = exit.report();
    assert_eq!(r[Counter::WorkersFailed], 1, "{r}");
    assert_eq!(r[Counter::DeadlineCloses], 1, "the drain went on: {r}");
    assert!(
        said("balance holds") || said("balance open"),
        "{:?}",
        exit.stderr
    );
}
