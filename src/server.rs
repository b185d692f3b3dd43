//! The orchestrator: binds every listener and builds every worker's epoll before any thread runs
//! (start-up is all-or-nothing), spawns the workers, and stops and joins them.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dispatch::{ConnLimit, Settings};
use crate::report::Report;
use crate::shutdown::{Coordinator, Join, Wake};
use crate::stats::{LiveStats, WorkerStats};
use crate::sys::{bind_listener, EpollShell, Waker};
use crate::worker::Worker;

/// How to run the server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the same for every worker).
    pub addr: SocketAddr,
    /// Worker threads, each with its own listener and epoll (at least 1).
    pub workers: usize,
    /// Cap on one connection's pending output, in bytes (at least 1).
    pub max_pending: usize,
    /// How long a graceful stop may spend flushing.
    pub drain_timeout: Duration,
    /// Most connections open at once, over all workers; at the limit a new connection is accepted
    /// and closed at once and counted as rejected (`None`: no limit).
    pub max_conns: Option<usize>,
    /// Close connections with no traffic in either direction for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        let core = Settings::default();
        Config {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_pending: core.max_pending,
            drain_timeout: core.drain_timeout,
            max_conns: None,
            idle_timeout: core.idle_timeout,
        }
    }
}

impl Config {
    /// Checks every setting and turns them into the core's settings: the one place a `Config` is
    /// validated.
    fn settings(&self) -> Result<Settings, StartError> {
        if self.workers == 0 {
            return Err(StartError::InvalidConfig("at least one worker is needed"));
        }
        if self.max_pending == 0 {
            return Err(StartError::InvalidConfig(
                "max pending bytes must be at least 1",
            ));
        }
        if self.max_conns == Some(0) {
            return Err(StartError::InvalidConfig(
                "max connections must be at least 1",
            ));
        }
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return Err(StartError::InvalidConfig(
                "an idle timeout must be non-zero",
            ));
        }
        Ok(Settings {
            max_pending: self.max_pending,
            drain_timeout: self.drain_timeout,
            idle_timeout: self.idle_timeout,
            limit: self.max_conns.map(|n| Arc::new(ConnLimit::new(n))),
            ..Settings::default()
        })
    }
}

/// Why the server did not start. Nothing is left running or open when `start` returns one.
#[derive(Debug)]
pub enum StartError {
    /// A setting is out of range.
    InvalidConfig(&'static str),
    /// The listening address could not be bound (in use, not local, not permitted).
    Bind { addr: SocketAddr, source: io::Error },
    /// Creating a worker's epoll instance or waker failed.
    Setup(io::Error),
    /// A worker thread could not be spawned.
    Spawn(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::InvalidConfig(what) => write!(f, "invalid configuration: {what}"),
            StartError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            StartError::Setup(e) => write!(f, "cannot set up a worker: {e}"),
            StartError::Spawn(e) => write!(f, "cannot start a worker thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::InvalidConfig(_) => None,
            StartError::Bind { source, .. } => Some(source),
            StartError::Setup(e) | StartError::Spawn(e) => Some(e),
        }
    }
}

struct WorkerWaker(Arc<Waker>);

impl Wake for WorkerWaker {
    fn wake(&self) {
        if let Err(e) = self.0.wake() {
            log::error!("cannot wake a worker: {e}");
        }
    }
}

struct WorkerThread(JoinHandle<io::Result<Report>>);

impl Join for WorkerThread {
    fn join(self) -> Option<Report> {
        match self.0.join() {
            Ok(Ok(report)) => Some(report),
            Ok(Err(e)) => {
                log::error!("a worker failed: {e}");
                None
            }
            Err(_) => {
                log::error!("a worker panicked");
                None
            }
        }
    }
}

/// A running server. Dropping it stops it.
pub struct Server {
    local_addr: SocketAddr,
    workers: usize,
    stats: LiveStats,
    coordinator: Coordinator<WorkerWaker, WorkerThread>,
}

impl Server {
    /// Binds every listener, then starts the workers. On error nothing is left running or open.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let settings = config.settings()?;
        let bind = |addr| bind_listener(addr).map_err(|source| StartError::Bind { addr, source });
        let first = TcpListener::from(bind(config.addr)?);
        let local_addr = first.local_addr().map_err(StartError::Setup)?;
        let mut listeners = vec![OwnedFd::from(first)];
        for _ in 1..config.workers {
            listeners.push(bind(local_addr)?);
        }
        let mut shells = Vec::with_capacity(config.workers);
        for listener in listeners {
            let waker = Arc::new(Waker::new().map_err(StartError::Setup)?);
            let shell = EpollShell::new(listener, Arc::clone(&waker)).map_err(StartError::Setup)?;
            shells.push((waker, shell));
        }
        let mut stats = Vec::with_capacity(shells.len());
        let mut workers = Vec::with_capacity(shells.len());
        for (i, (waker, shell)) in shells.into_iter().enumerate() {
            let published = Arc::new(WorkerStats::default());
            stats.push(Arc::clone(&published));
            let worker = Worker::new(shell, settings.clone(), Some(published), true);
            let spawned = std::thread::Builder::new()
                .name(format!("epoll-echo-{i}"))
                .spawn(move || worker.run());
            match spawned {
                Ok(handle) => workers.push((WorkerWaker(waker), WorkerThread(handle))),
                Err(e) => {
                    // Stop the workers already running; the rest of the shells close on drop.
                    Coordinator::new(workers).stop();
                    return Err(StartError::Spawn(e));
                }
            }
        }
        Ok(Server {
            local_addr,
            workers: config.workers,
            stats: LiveStats::new(stats),
            coordinator: Coordinator::new(workers),
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

    /// Gracefully stops: every worker stops accepting, flushes within the drain deadline, closes all
    /// its descriptors and ends. Returns after every worker has joined, with their summed report.
    /// Idempotent and callable from any thread; later calls return the same report.
    pub fn stop(&self) -> Report {
        self.coordinator.stop()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.coordinator.stop();
    }
}
