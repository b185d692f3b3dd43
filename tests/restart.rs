//! An overlapping restart, in a private network namespace so the test can set the kernel's
//! `net.ipv4.tcp_migrate_req` without touching the host: a new instance shares the port
//! (`--reuse-port`), the old one is frozen with clients queued on its listener, then stopped with
//! no drain. With the setting off Linux resets what the old listener held; with it on the kernel
//! hands those connections to the new instance and every request is served.
//!
//! Needs root (a network namespace and a sysctl); it says so when it skips. CI runs it as root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::process::Process;
use common::serial;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;

/// Clients per run: with two listeners sharing the port, the chance that none lands on the old
/// one is 2^-32.
const CLIENTS: usize = 32;

/// How many of `CLIENTS` requests an old instance, frozen with them queued and then stopped with no
/// drain while a new instance shares its port, leaves unanswered (reset or closed unechoed).
fn failed_requests(migrate: bool) -> usize {
    std::fs::write(
        "/proc/sys/net/ipv4/tcp_migrate_req",
        if migrate { "1" } else { "0" },
    )
    .expect("set net.ipv4.tcp_migrate_req in the namespace");
    let (old, addr) = Process::start(&["--maxListeners", "1", "--drain-timeout", "0s"]);
    let port = addr.port().to_string();
    let new_args = ["--bind", "127.0.0.1", "--port", &port, "--reuse-port"];
    let new = Process::spawn(&new_args);
    new.listening();
    old.signal(Signal::SIGSTOP);
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
    old.signal(Signal::SIGTERM);
    old.signal(Signal::SIGCONT);
    old.exit();
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
