//! Why a server did not start: the one error type of the library, shared by the validation of a
//! [`Config`](crate::Config) and the start-up in [`Server::start`](crate::Server::start).

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Why the server did not start. Nothing is left running or open when `start` returns one.
/// Non-exhaustive: a new reason is not a breaking change.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A setting is out of range.
    InvalidConfig(&'static str),
    /// The listening address could not be bound (in use, not local, not permitted).
    Bind { addr: SocketAddr, source: io::Error },
    /// Creating a worker's epoll instance or waker failed.
    Setup(io::Error),
    /// A worker thread could not be spawned.
    Spawn(io::Error),
    /// A listener given to [`Server::start_on`](crate::Server::start_on) cannot be served: not a
    /// listening TCP socket, or its settings cannot be made.
    Adopt(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::InvalidConfig(what) => write!(f, "invalid configuration: {what}"),
            StartError::Bind { addr, source } if source.kind() == io::ErrorKind::AddrInUse => {
                write!(
                    f,
                    "cannot listen on {addr}: another socket already listens there"
                )
            }
            StartError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            StartError::Setup(e) => write!(f, "cannot set up a worker: {e}"),
            StartError::Spawn(e) => write!(f, "cannot start a worker thread: {e}"),
            StartError::Adopt(e) => write!(f, "cannot serve on the listener given: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::InvalidConfig(_) => None,
            StartError::Bind { source, .. } => Some(source),
            StartError::Setup(e) | StartError::Spawn(e) | StartError::Adopt(e) => Some(e),
        }
    }
}
