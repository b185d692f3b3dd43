//! An overlapping restart, in a private network namespace so the test can set the kernel's
//! `net.ipv4.tcp_migrate_req` without touching the host. The old instance holds clients queued
//! on its listener (it is out of descriptors, so it cannot accept them), then stops.
//!
//! - A new instance shares the port (`--reuse-port`) and the old one stops with no drain: with
//!   the setting off Linux resets what the old listener held; with it on the kernel hands those
//!   connections to the new instance and every request is served.
//! - With the setting off, a new instance that took the listeners over (`--handover`) serves
//!   every request even while it is frozen as the old one stops, where one that only shares the
//!   port loses those queued on the old listener: no listener closes.
//!
//! Needs root (a network namespace and a sysctl); it says so when it skips. CI runs it as root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use common::process::{lowest_descriptor_limit, on_loopback, Process};
use common::{in_private_network, serial};
use epoll_echo::Counter;

/// Clients per run: with two listeners sharing the port, the chance that none lands on the old
/// one is 2^-32.
const CLIENTS: usize = 32;

/// An old instance that cannot accept: under the lowest descriptor limit it starts with, every
/// accept fails with `EMFILE`, so the clients stay queued on its listener.
fn an_old_instance_that_cannot_accept() -> (Process, SocketAddr) {
    let args = on_loopback(&["--maxListeners", "1", "--drain-timeout", "0s"]);
    let nofile = lowest_descriptor_limit(&args);
    let old = Process::spawn_with(&args, Stdio::piped(), Stdio::piped(), Some(nofile));
    let (addr, _) = old.listening();
    (old, addr)
}

fn set_migration(on: bool) {
    std::fs::write(
        "/proc/sys/net/ipv4/tcp_migrate_req",
        if on { "1" } else { "0" },
    )
    .expect("set net.ipv4.tcp_migrate_req in the namespace");
}

fn request(i: usize) -> Vec<u8> {
    format!("request {i}\n").into_bytes()
}

/// `n` connections to `addr`, each with its request sent.
fn send_requests(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = common::connect(addr);
            s.write_all(&request(i)).expect("send");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("read timeout");
            s
        })
        .collect()
}

/// How many of the clients never got their request back (reset, or closed without the echo).
fn unanswered(clients: Vec<TcpStream>) -> usize {
    clients
        .into_iter()
        .enumerate()
        .filter(|(i, s)| {
            let mut back = vec![0; request(*i).len()];
            let mut s = s;
            s.read_exact(&mut back).is_err() || back != request(*i)
        })
        .count()
}

/// How many of `CLIENTS` requests an old instance leaves unanswered (reset, or closed without the
/// echo) when it stops with no drain while they wait on its listener and a new instance shares
/// its port.
fn failed_requests(migrate: bool) -> usize {
    set_migration(migrate);
    let (old, addr) = an_old_instance_that_cannot_accept();
    let port = addr.port().to_string();
    let new_args = ["--bind", "127.0.0.1", "--port", &port, "--reuse-port"];
    let new = Process::spawn(&new_args);
    new.listening();
    let clients = send_requests(addr, CLIENTS);
    let old_exit = old.terminate();
    assert_eq!(
        old_exit.report()[Counter::Accepted],
        0,
        "the old instance accepted"
    );
    let failed = unanswered(clients);
    // The instance that shares the port names the setting exactly when it is off.
    let new_exit = new.terminate();
    let warned = new_exit
        .stderr
        .iter()
        .any(|l| l.contains("tcp_migrate_req is 0"));
    assert_eq!(warned, !migrate, "{:?}", new_exit.stderr);
    failed
}

/// How the new instance of a restart comes onto the port.
#[derive(Clone, Copy, Debug)]
enum Onto {
    /// Its own listener, sharing the port (`--reuse-port`).
    SharedPort,
    /// The old instance's listeners, handed over (`--handover`).
    HandedOver,
}

/// Clients per restart of [`failed_requests_onto`]: the old instance accepts a few (as many as it
/// has descriptors spare, which start-up leaves to chance) and serves them; the rest wait.
const WAITING: usize = 64;

/// With `tcp_migrate_req` off: how many of `WAITING` requests fail when a new instance comes onto
/// the port as `onto` says, is frozen, and the old one (soon out of descriptors, so most clients
/// wait on the listeners) stops with a drain; the new one then thaws.
fn failed_requests_onto(onto: Onto) -> usize {
    set_migration(false);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("handover");
    let path = path.to_str().expect("a UTF-8 path");
    let how: &[&str] = match onto {
        Onto::SharedPort => &["--reuse-port"],
        Onto::HandedOver => &["--handover", path],
    };
    let mut args = vec!["--maxListeners", "1", "--drain-timeout", "5s"];
    args.extend_from_slice(how);
    let args = on_loopback(&args);
    // Room to hand over (the new instance's connection, a copy of the listener); free again
    // once done, so the old one accepts a few clients.
    let nofile = lowest_descriptor_limit(&args) + 4;
    let old = Process::spawn_with(&args, Stdio::piped(), Stdio::piped(), Some(nofile));
    let (addr, _) = old.listening();
    let port = addr.port().to_string();
    let mut new_args = vec![
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--maxListeners",
        "2",
    ];
    new_args.extend_from_slice(how);
    let new = Process::spawn(&new_args);
    let (_, workers) = new.listening();
    if let Onto::HandedOver = onto {
        assert_eq!(workers, 1, "one worker per listener taken over");
    }
    new.freeze();
    let clients = send_requests(addr, WAITING);
    let old_exit = old.terminate();
    // What the old one could accept (a descriptor or two spare) it served in its drain.
    let accepted = old_exit.report()[Counter::Accepted];
    println!("{onto:?}: the old instance accepted {accepted} of {WAITING}");
    if let Onto::HandedOver = onto {
        assert!(
            old_exit
                .stderr
                .iter()
                .any(|l| l.contains("handed 1 listeners over")),
            "no handover: {:?}",
            old_exit.stderr
        );
    }
    new.signal(nix::sys::signal::Signal::SIGCONT);
    let failed = unanswered(clients);
    new.terminate();
    failed
}

#[test]
fn an_overlapping_restart_fails_no_request_once_the_kernel_migrates_the_queue() {
    let _serial = serial();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "skipped: needs root for a private network namespace and a sysctl (CI runs as root)"
        );
        return;
    }
    let Some((off, on)) = in_private_network(|| (failed_requests(false), failed_requests(true)))
    else {
        panic!("root, yet no private network namespace: unshare(CLONE_NEWNET) or `ip` failed");
    };
    println!("{CLIENTS} requests: {off} failed with tcp_migrate_req=0, {on} with 1");
    assert!(
        off > 0,
        "nothing reached the old listener, so nothing was tested"
    );
    assert_eq!(on, 0, "the kernel migrated the queue, yet requests failed");
}

#[test]
fn a_restart_that_hands_the_listeners_over_fails_no_request_without_the_kernels_migration() {
    let _serial = serial();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "skipped: needs root for a private network namespace and a sysctl (CI runs as root)"
        );
        return;
    }
    let Some((shared, handed)) = in_private_network(|| {
        (
            failed_requests_onto(Onto::SharedPort),
            failed_requests_onto(Onto::HandedOver),
        )
    }) else {
        panic!("root, yet no private network namespace: unshare(CLONE_NEWNET) or `ip` failed");
    };
    println!(
        "tcp_migrate_req=0, {WAITING} requests: {shared} failed sharing the port, {handed} \
         handing the listeners over"
    );
    assert!(
        shared > 0,
        "nothing waited on the old listener as it closed, so nothing was tested"
    );
    assert_eq!(
        handed, 0,
        "the listeners were handed over, yet requests failed"
    );
}

/// A listener outside the namespace cannot be reached from inside it: the helper's own check.
#[test]
fn the_namespace_helper_isolates_loopback() {
    let _serial = serial();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root for a private network namespace (CI runs as root)");
        return;
    }
    let outside = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = outside.local_addr().expect("address");
    let reached = in_private_network(move || TcpStream::connect(addr).is_ok());
    assert_eq!(
        reached,
        Some(false),
        "the namespace shares the host's loopback"
    );
}
