//! The server's settings as a library user gives them, and the one place they are validated and
//! turned into the core's settings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::dispatch::{ConnLimit, Settings};
use crate::error::StartError;

/// The longest drain or idle timeout: longer is surely a typo, and every deadline the core computes
/// stays far from the end of what time can express.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How to run the server.
///
/// Built from [`Config::new`] (or [`Config::default`], which listens on `[::]:8080`) and the
/// methods named after the fields, each taking and returning the config:
///
/// ```
/// use std::time::Duration;
/// use epoll_echo::Config;
///
/// let config = Config::new("127.0.0.1:0".parse().unwrap())
///     .workers(2)
///     .drain_timeout(Duration::from_secs(5));
/// assert_eq!(config.workers, 2);
/// ```
///
/// The fields stay public to read and to assign; the struct is `#[non_exhaustive]` so that a new
/// setting is not a breaking change, which is why it cannot be written as a literal outside this
/// crate.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the same for every worker). The default,
    /// `[::]:8080`, serves IPv4 and IPv6 clients, or IPv4 alone on a host without IPv6.
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
    /// Share the port with listeners already there (another instance, for an overlapping restart)
    /// instead of refusing to start. New connections are then spread over every listener, and a
    /// listener that closes resets the connections in its own queue unless
    /// `net.ipv4.tcp_migrate_req` is 1.
    pub reuse_port: bool,
    /// Completed connections the kernel may queue per listener before it drops new handshakes
    /// (`None`: the kernel's own limit, `net.core.somaxconn`).
    pub backlog: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        let core = Settings::default();
        Config {
            addr: SocketAddr::from(([0u16; 8], 8080)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_pending: core.max_pending,
            drain_timeout: core.drain_timeout,
            max_conns: None,
            idle_timeout: core.idle_timeout,
            reuse_port: false,
            backlog: None,
        }
    }
}

impl Config {
    /// The defaults, listening on `addr`.
    pub fn new(addr: SocketAddr) -> Config {
        Config {
            addr,
            ..Config::default()
        }
    }

    /// Sets [`Config::addr`].
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Config {
        self.addr = addr;
        self
    }

    /// Sets [`Config::workers`].
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Config {
        self.workers = workers;
        self
    }

    /// Sets [`Config::max_pending`].
    #[must_use]
    pub fn max_pending(mut self, bytes: usize) -> Config {
        self.max_pending = bytes;
        self
    }

    /// Sets [`Config::drain_timeout`].
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Config {
        self.drain_timeout = timeout;
        self
    }

    /// Sets [`Config::max_conns`].
    #[must_use]
    pub fn max_conns(mut self, limit: Option<usize>) -> Config {
        self.max_conns = limit;
        self
    }

    /// Sets [`Config::idle_timeout`].
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Config {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`Config::backlog`].
    #[must_use]
    pub fn backlog(mut self, backlog: Option<u32>) -> Config {
        self.backlog = backlog;
        self
    }

    /// Sets [`Config::reuse_port`].
    #[must_use]
    pub fn reuse_port(mut self, share: bool) -> Config {
        self.reuse_port = share;
        self
    }

    /// Checks every setting and turns them into the core's settings: the one place a `Config` is
    /// validated.
    pub(crate) fn settings(&self) -> Result<Settings, StartError> {
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
        let too_long = |t: Duration| t > MAX_TIMEOUT;
        if too_long(self.drain_timeout) || self.idle_timeout.is_some_and(too_long) {
            return Err(StartError::InvalidConfig(
                "a drain or idle timeout must be at most 7 days",
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
