//! The orchestrator: binds every listener and builds every worker's epoll before any thread runs
//! (start-up is all-or-nothing), spawns the workers, watches them, and stops and joins them.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::config::Config;
use crate::dispatch::Settings;
use crate::error::StartError;
#[cfg(feature = "sim")]
use crate::failing::Planted;
use crate::io::Io;
use crate::report::{Counter, Report};
use crate::shutdown::{Coordinator, Join, Wake};
use crate::stats::{LiveStats, WorkerStats};
use crate::sys::{adopt_listener, bind_listener, Claim, EpollShell, Waker};
use crate::worker::Worker;

struct WorkerWaker {
    index: usize,
    waker: Arc<Waker>,
}

impl Wake for WorkerWaker {
    fn wake(&self) -> io::Result<()> {
        self.waker.wake().inspect_err(|e| {
            log::error!("cannot wake worker {}: {e}; not waiting for it", self.index);
        })
    }
}

/// A worker thread, and what it last published, for when it fails.
struct WorkerThread {
    handle: JoinHandle<Option<Report>>,
    stats: Arc<WorkerStats>,
}

/// What a failed worker leaves: the counters it last published, counted as failed.
fn failed(stats: &WorkerStats) -> Report {
    let mut report = stats.load();
    report.count(Counter::WorkersFailed);
    report
}

impl Join for WorkerThread {
    fn join(self) -> Report {
        match self.handle.join() {
            Ok(Some(report)) => report,
            _ => failed(&self.stats),
        }
    }

    fn abandon(self) -> Report {
        failed(&self.stats)
    }
}

/// A copy of each worker's listener, for [`Server::share_listeners`]. A copy is given up when its
/// worker fails and all are when the stop begins, before any worker closes its own: from then on
/// the worker's close is the socket's last (unless another instance took it over), so the kernel
/// refuses new connections rather than queueing them where no one accepts.
#[derive(Clone)]
struct Shared(Arc<Mutex<Vec<Option<OwnedFd>>>>);

impl Shared {
    fn new(listeners: &[OwnedFd]) -> io::Result<Shared> {
        let copies = listeners
            .iter()
            .map(|l| l.try_clone().map(Some))
            .collect::<io::Result<_>>()?;
        Ok(Shared(Arc::new(Mutex::new(copies))))
    }

    fn copies(&self) -> std::sync::MutexGuard<'_, Vec<Option<OwnedFd>>> {
        // A panic while holding the lock leaves the list as valid as before it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn give_up(&self, worker: usize) {
        if let Some(copy) = self.copies().get_mut(worker) {
            *copy = None;
        }
    }

    fn give_up_all(&self) {
        self.copies().clear();
    }
}

/// What one worker thread is started with, besides its shell.
struct Spawn {
    index: usize,
    settings: Settings,
    stats: Arc<WorkerStats>,
    failures: Arc<AtomicUsize>,
    shared: Shared,
}

/// Without the `sim` feature no failure can be planted: the type has no value.
#[cfg(not(feature = "sim"))]
#[derive(Clone, Copy)]
pub(crate) enum Planted {}

impl Spawn {
    /// Starts the worker on its own thread over `shell`, or over a shell that fails on purpose when
    /// a test planted a failure in this worker: the one place test machinery reaches a worker.
    fn over(
        self,
        shell: EpollShell,
        planted: Option<Planted>,
    ) -> io::Result<JoinHandle<Option<Report>>> {
        #[cfg(feature = "sim")]
        if let Some(p) = planted.filter(|p| p.worker == self.index) {
            return self.thread(crate::failing::PanicAfter::new(shell, p.after));
        }
        // Irrefutable: `Planted` has no value here.
        #[cfg(not(feature = "sim"))]
        let None = planted;
        self.thread(shell)
    }

    fn thread<I: Io + Send + 'static>(self, io: I) -> io::Result<JoinHandle<Option<Report>>>
    where
        I::Socket: Send,
    {
        let Spawn {
            index,
            settings,
            stats,
            failures,
            shared,
        } = self;
        let worker = Worker::new(io, settings, Some(stats), true);
        std::thread::Builder::new()
            .name(format!("epoll-echo-{index}"))
            .spawn(move || {
                let report = run_worker(index, worker, &failures);
                if report.is_none() {
                    // Its listener closed as it unwound; no copy may keep the socket open.
                    shared.give_up(index);
                }
                report
            })
    }
}

/// Runs one worker on its own thread; a failure (an error or a panic) is logged at once, counted
/// in `failures`, and ends the thread with no report. The worker's state unwinds with it, which
/// closes its descriptors and gives back its connection-limit slots.
fn run_worker<I: Io>(index: usize, worker: Worker<I>, failures: &AtomicUsize) -> Option<Report> {
    let why = match panic::catch_unwind(AssertUnwindSafe(|| worker.run())) {
        Ok(Ok(report)) => return Some(report),
        Ok(Err(e)) => format!("its wait for events failed: {e}"),
        Err(cause) => {
            let what = cause
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| cause.downcast_ref::<String>().cloned());
            format!("it panicked: {}", what.as_deref().unwrap_or("no message"))
        }
    };
    failures.fetch_add(1, Ordering::SeqCst);
    log::error!("worker {index} failed, {why}; its counters are those it last published");
    None
}

/// Binds one listener per worker on the same address and port. The first claims the port for this
/// server alone unless sharing is asked for; an IPv6 wildcard falls back to the IPv4 one on a host
/// without IPv6.
fn bind_all(config: &Config) -> Result<(Vec<OwnedFd>, SocketAddr), StartError> {
    let claim = if config.reuse_port {
        Claim::Share
    } else {
        Claim::First
    };
    let mut addr = config.addr;
    let backlog = config.backlog;
    let first = bind_listener(addr, claim, backlog).or_else(|e| match ipv4_fallback(addr, &e) {
        Some(v4) => {
            log::info!("no IPv6 here ({e}): listening on {v4} instead of {addr}");
            addr = v4;
            bind_listener(v4, claim, backlog)
        }
        None => Err(e),
    });
    let first = first.map_err(|source| StartError::Bind { addr, source })?;
    // Port 0 picked a port: every other listener binds that one.
    let addr = TcpListener::from(first.try_clone().map_err(StartError::Setup)?)
        .local_addr()
        .map_err(StartError::Setup)?;
    let mut listeners = vec![first];
    for _ in 1..config.workers {
        let listener = bind_listener(addr, Claim::Share, backlog);
        listeners.push(listener.map_err(|source| StartError::Bind { addr, source })?);
    }
    Ok((listeners, addr))
}

/// The IPv4 wildcard address to use instead of the IPv6 one when the host has no IPv6.
/// Takes listeners made elsewhere, one per worker; they must all listen on one address.
fn adopt_all(listeners: Vec<TcpListener>) -> Result<(Vec<OwnedFd>, SocketAddr), StartError> {
    let mut adopted = Vec::with_capacity(listeners.len());
    let mut addr = None;
    for listener in listeners {
        let here = listener.local_addr().map_err(StartError::Adopt)?;
        if addr.is_some_and(|a| a != here) {
            return Err(StartError::InvalidConfig(
                "the listeners given do not all listen on one address",
            ));
        }
        addr = Some(here);
        adopted.push(adopt_listener(OwnedFd::from(listener)).map_err(StartError::Adopt)?);
    }
    let addr = addr.ok_or(StartError::InvalidConfig("no listener given"))?;
    Ok((adopted, addr))
}

fn ipv4_fallback(addr: SocketAddr, e: &io::Error) -> Option<SocketAddr> {
    let no_ipv6 = matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    );
    let wildcard = addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    (no_ipv6 && wildcard).then(|| SocketAddr::from(([0, 0, 0, 0], addr.port())))
}

/// A running server. Dropping it stops it.
pub struct Server {
    local_addr: SocketAddr,
    workers: usize,
    stats: LiveStats,
    /// Workers that ended early.
    failures: Arc<AtomicUsize>,
    coordinator: Coordinator<WorkerWaker, WorkerThread>,
    shared: Shared,
}

impl Server {
    /// Binds every listener, then starts the workers. On error nothing is left running or open.
    pub fn start(config: Config) -> Result<Server, StartError> {
        Server::launch(config, None)
    }

    /// [`Server::start`], with a worker that fails on purpose when a test planted one.
    /// Starts one worker on each of `listeners` (made by the program, or handed over by a running
    /// instance, so that no listener closes across a restart); `config`'s address, backlog and
    /// worker count are not used. Each must be a listening TCP socket, all on one address; each is
    /// made non-blocking and given the flags accepted sockets inherit (`SO_OOBINLINE`,
    /// `TCP_NODELAY`).
    pub fn start_on(config: Config, listeners: Vec<TcpListener>) -> Result<Server, StartError> {
        let config = config.workers(listeners.len().max(1));
        let settings = config.settings()?;
        let (listeners, local_addr) = adopt_all(listeners)?;
        Server::serve(settings, listeners, local_addr, None)
    }

    pub(crate) fn launch(config: Config, planted: Option<Planted>) -> Result<Server, StartError> {
        let settings = config.settings()?;
        let (listeners, local_addr) = bind_all(&config)?;
        Server::serve(settings, listeners, local_addr, planted)
    }

    fn serve(
        settings: Settings,
        listeners: Vec<OwnedFd>,
        local_addr: SocketAddr,
        planted: Option<Planted>,
    ) -> Result<Server, StartError> {
        let count = listeners.len();
        let shared = Shared::new(&listeners).map_err(StartError::Setup)?;
        let mut shells = Vec::with_capacity(count);
        for listener in listeners {
            let waker = Arc::new(Waker::new().map_err(StartError::Setup)?);
            let shell = EpollShell::new(listener, Arc::clone(&waker)).map_err(StartError::Setup)?;
            shells.push((waker, shell));
        }
        let failures = Arc::new(AtomicUsize::new(0));
        let mut stats = Vec::with_capacity(shells.len());
        let mut workers = Vec::with_capacity(shells.len());
        for (index, (waker, shell)) in shells.into_iter().enumerate() {
            let published = Arc::new(WorkerStats::default());
            stats.push(Arc::clone(&published));
            let spawn = Spawn {
                index,
                settings: settings.clone(),
                stats: Arc::clone(&published),
                failures: Arc::clone(&failures),
                shared: shared.clone(),
            };
            match spawn.over(shell, planted) {
                Ok(handle) => workers.push((
                    WorkerWaker { index, waker },
                    WorkerThread {
                        handle,
                        stats: published,
                    },
                )),
                Err(e) => {
                    // Stop the workers already running; the rest of the shells close on drop.
                    Coordinator::new(workers).stop();
                    return Err(StartError::Spawn(e));
                }
            }
        }
        Ok(Server {
            local_addr,
            workers: count,
            stats: LiveStats::new(stats),
            failures,
            coordinator: Coordinator::new(workers),
            shared,
        })
    }

    /// The address every worker listens on (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Live counters of every worker, readable while the server runs (and after it stopped).
    pub fn live_stats(&self) -> LiveStats {
        self.stats.clone()
    }

    /// Workers that ended early (a panic or an error): each was logged when it happened. A
    /// program that serves should stop the server then (the binary does, and exits non-zero).
    pub fn failed_workers(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }

    /// Gracefully stops: every worker stops accepting, flushes within the drain deadline, closes all
    /// its descriptors and ends. Returns after every worker has joined, with their summed report.
    /// Idempotent and callable from any thread; later calls return the same report.
    /// Copies of the listening sockets (duplicated descriptors) of the workers still running, for
    /// a new instance to serve on ([`Server::start_on`]) so that no listener closes across a
    /// restart: both instances accept from the same queues until this one stops. None once the
    /// stop has begun. A copy kept and not served keeps its socket open after this server stops,
    /// queueing clients no one accepts: serve it or drop it.
    pub fn share_listeners(&self) -> io::Result<Vec<TcpListener>> {
        self.shared
            .copies()
            .iter()
            .flatten()
            .map(|l| l.try_clone().map(TcpListener::from))
            .collect()
    }

    pub fn stop(&self) -> Report {
        self.shared.give_up_all();
        self.coordinator.stop()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.give_up_all();
        self.coordinator.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo that fills the peer's window exactly leaves our FIN waiting for window while every
    /// byte is acknowledged: the stop must close on delivery, not sit out the drain deadline. The
    /// test builds that state on real sockets, reading the server's side of the connection.
    #[test]
    fn a_fin_waiting_for_a_window_the_echo_filled_exactly_does_not_hold_the_stop() {
        use crate::sys::{acked, find_connection, peer_window, unacked};
        use std::io::{Read, Write};
        use std::os::fd::{AsFd, AsRawFd};
        use std::time::{Duration, Instant};
        let config = Config::new("127.0.0.1:0".parse().expect("address"))
            .workers(1)
            .drain_timeout(Duration::from_secs(20));
        let server = Server::start(config).expect("a loopback server");
        let client = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .expect("socket");
        let rcvbuf = 4096usize;
        nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::RcvBuf, &rcvbuf)
            .expect("SO_RCVBUF");
        let SocketAddr::V4(addr) = server.local_addr() else {
            panic!("bound to 127.0.0.1");
        };
        let to = nix::sys::socket::SockaddrIn::from(addr);
        nix::sys::socket::connect(client.as_raw_fd(), &to).expect("connect");
        let mut client = std::net::TcpStream::from(client);
        let me = client.local_addr().expect("local address");
        // An echo of one byte: the connection is accepted, and the byte stays unread.
        client.write_all(b"x").expect("send");
        let wait = |what: &str, mut done: Box<dyn FnMut() -> bool + '_>| {
            let give_up = Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(Instant::now() < give_up, "{what}");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let mut sock = None;
        wait(
            "the server never accepted",
            Box::new(|| {
                sock = find_connection(me);
                sock.is_some()
            }),
        );
        let sock = sock.expect("found");
        let mut echoed = 1u64;
        wait(
            "the first echo was never acknowledged",
            Box::new(|| acked(sock.as_fd()).expect("TCP_INFO") == echoed),
        );
        // Send what the window can take; the echo fills it; again until it is shut.
        for _ in 0..1000 {
            let window = peer_window(sock.as_fd()).expect("TCP_INFO") as usize;
            if window == 0 {
                break;
            }
            client.write_all(&vec![7; window]).expect("send");
            echoed += window as u64;
            wait(
                "the echo was never acknowledged",
                Box::new(|| acked(sock.as_fd()).expect("TCP_INFO") == echoed),
            );
        }
        assert_eq!(peer_window(sock.as_fd()).expect("TCP_INFO"), 0);
        assert_eq!(unacked(sock.as_fd()).expect("SIOCOUTQ"), 0);
        drop(sock);
        let stopping = Instant::now();
        let report = server.stop();
        let took = stopping.elapsed();
        println!("a window filled exactly by {echoed} bytes: stopped in {took:?}: {report}");
        assert_eq!(report[crate::Counter::BytesDelivered], echoed, "{report}");
        assert_eq!(report[crate::Counter::DeadlineCloses], 0, "{report}");
        assert!(took < Duration::from_secs(10), "took {took:?}");
        // The peer holds every byte, then our FIN once it reads.
        let mut back = Vec::new();
        client.read_to_end(&mut back).expect("read to the end");
        assert_eq!(back.len() as u64, echoed);
    }

    #[test]
    fn a_worker_abandoned_or_lost_leaves_its_last_counts_counted_as_failed() {
        let stats = Arc::new(WorkerStats::default());
        let mut last = Report::default();
        last.count(Counter::Accepted);
        last.count(Counter::Accepted);
        stats.publish(&last);
        let want = |r: &Report| r[Counter::Accepted] == 2 && r[Counter::WorkersFailed] == 1;
        // Never woken: abandoned without a join.
        let abandoned = WorkerThread {
            handle: std::thread::spawn(|| None),
            stats: Arc::clone(&stats),
        };
        assert!(want(&abandoned.abandon()));
        // Ended with no report (it failed): joined, then counted the same way.
        let lost = WorkerThread {
            handle: std::thread::spawn(|| None),
            stats,
        };
        assert!(want(&lost.join()));
    }

    #[test]
    fn only_the_ipv6_wildcard_falls_back_and_only_without_ipv6() {
        let any6: SocketAddr = "[::]:8080".parse().expect("address");
        let no_family = io::Error::from_raw_os_error(libc::EAFNOSUPPORT);
        assert_eq!(
            ipv4_fallback(any6, &no_family),
            Some("0.0.0.0:8080".parse().expect("address"))
        );
        let no_address = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert!(ipv4_fallback(any6, &no_address).is_some());
        // A port in use is not a missing family.
        let in_use = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(ipv4_fallback(any6, &in_use), None);
        // An address the user named is never replaced.
        let loopback6: SocketAddr = "[::1]:8080".parse().expect("address");
        assert_eq!(ipv4_fallback(loopback6, &no_family), None);
    }
}
