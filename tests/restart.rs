//! An overlapping restart, in a private network namespace so the test can set the kernel's
//! `net.ipv4.tcp_migrate_req` without touching the host: a new instance shares the port
//! (`--reuse-port`), the old one holds clients queued on its listener (it is out of descriptors,
//! so it cannot accept them), then stops with no drain. With the setting off Linux resets what the old listener held; with it on the kernel
//! hands those connections to the new instance and every request is served.
//!
//! Needs root (a network namespace and a sysctl); it says so when it skips. CI runs it as root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{on_loopback, Process};
use common::serial;
use epoll_echo::Counter;
use nix::sched::{unshare, CloneFlags};

/// Clients per run: with two listeners sharing the port, the chance that none lands on the old
/// one is 2^-32.
const CLIENTS: usize = 32;

/// An old instance that cannot accept: under the lowest descriptor limit it starts with, every
/// accept fails with `EMFILE`, so the clients stay queued on its listener.
fn an_old_instance_that_cannot_accept() -> (Process, SocketAddr) {
    let args = on_loopback(&["--maxListeners", "1", "--drain-timeout", "0s"]);
    for nofile in 4..64 {
        let old = Process::spawn_with(&args, Stdio::piped(), Stdio::piped(), Some(nofile));
        if let Some((addr, _)) = old.try_listening() {
            return (old, addr);
        }
        old.exit();
    }
    panic!("the server never started under 64 descriptors");
}

/// How many of `CLIENTS` requests an old instance leaves unanswered (reset, or closed without the
/// echo) when it stops with no drain while they wait on its listener and a new instance shares
/// its port.
fn failed_requests(migrate: bool) -> usize {
    std::fs::write(
        "/proc/sys/net/ipv4/tcp_migrate_req",
        if migrate { "1" } else { "0" },
    )
    .expect("set net.ipv4.tcp_migrate_req in the namespace");
    let (old, addr) = an_old_instance_that_cannot_accept();
    let port = addr.port().to_string();
    let new_args = ["--bind", "127.0.0.1", "--port", &port, "--reuse-port"];
    let new = Process::spawn(&new_args);
    new.listening();
    let request = |i: usize| format!("request {i}\n").into_bytes();
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| {
            let mut s = common::connect(addr);
            s.write_all(&request(i)).expect("send");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("read timeout");
            s
        })
        .collect();
    let old_exit = old.terminate();
    assert_eq!(
        old_exit.report()[Counter::Accepted],
        0,
        "the old instance accepted"
    );
    let failed = clients
        .into_iter()
        .enumerate()
        .filter(|(i, s)| {
            let mut back = vec![0; request(*i).len()];
            let mut s = s;
            s.read_exact(&mut back).is_err() || back != request(*i)
        })
        .count();
    new.terminate();
    failed
}

/// Runs `f` on a thread of its own inside a new network namespace with loopback up; processes it
/// starts share the namespace. `None` when the namespace cannot be had (not root).
fn in_private_network<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).ok()?;
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .ok()?;
        assert!(up.success(), "ip link set lo up failed in the namespace");
        Some(f())
    })
    .join()
    .expect("the namespace thread")
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
