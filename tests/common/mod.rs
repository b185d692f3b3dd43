//! Helpers shared by the integration tests: a library server on a free loopback port, the binary
//! as a child process ([`process`]), clients whose every read and write has a timeout ([`client`]),
//! the one lock for tests that must run alone, and snapshots of this process's descriptors and
//! threads. Every wait is bounded, so a broken server fails a test instead of hanging it.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod client;
pub mod process;

pub use client::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use epoll_echo::{Config, Report, Server};

/// Longest a test waits for any single read, write or join. Generous: the machine is shared and
/// noisy; a healthy server answers in milliseconds, a hung one never does.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a test waits for a condition on a server under load (see [`eventually`]).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The lock of the tests that must run alone in their binary: they count this process's
/// descriptors, or share the machine's ports, descriptors and two cores with heavy load.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next test still needs it.
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A config for `127.0.0.1:0` with `workers` workers and otherwise the defaults.
pub fn config(workers: usize) -> Config {
    Config::new(SocketAddr::from(([127, 0, 0, 1], 0))).workers(workers)
}

pub fn start(config: Config) -> Server {
    Server::start(config).expect("server starts on a free loopback port")
}

/// Stops a library server, failing the test if the stop hangs or its report does not balance.
pub fn stop(server: Server) -> Report {
    let report = within("Server::stop", move || server.stop());
    assert!(report.balances(), "the report does not balance: {report}");
    report
}

/// Runs `f` on its own thread and returns its result, failing the test if it takes longer than
/// [`IO_TIMEOUT`] (a hung stop or join must fail, not hang the suite).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(f());
    });
    match result.recv_timeout(IO_TIMEOUT) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish in {IO_TIMEOUT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Polls `probe` until it returns true, for at most [`PATIENCE`]; false if it never did.
pub fn eventually(mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    probe()
}

/// This process's open descriptors and what each refers to.
pub fn open_fds() -> BTreeMap<u32, PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            // The descriptor read_dir itself holds is gone by the time we read its link.
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, target))
        })
        .collect()
}

/// Number of threads in this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("list /proc/self/task")
        .count()
}

/// Listening TCP sockets on `port` in the whole network namespace (IPv4 and IPv6 tables).
pub fn listening_sockets(port: u16) -> usize {
    const LISTEN: &str = "0A";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields
                        .get(1)
                        .and_then(|local| local.rsplit(':').next())
                        .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                    local_port == Some(port) && fields.get(3) == Some(&LISTEN)
                })
                .count()
        })
        .sum()
}

/// Runs `f` on a thread of its own inside a new network namespace with loopback up; processes it
/// starts share the namespace. `None` when the namespace cannot be had (not root).
pub fn in_private_network<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .ok()?;
        assert!(up.success(), "ip link set lo up failed in the namespace");
        Some(f())
    })
    .join()
    .expect("the namespace thread")
}

/// True when this process is root and so can make a private network namespace and set its
/// sysctls; otherwise says that the test skips and why.
pub fn root_for_a_namespace() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!(
            "skipped: needs root for a private network namespace and a sysctl (CI runs as root)"
        );
    }
    root
}
