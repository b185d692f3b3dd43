//! Hands a running server's listening sockets to the instance that replaces it, over a Unix socket,
//! so that a restart never closes a listener: Linux resets what a closing listener still holds
//! (connections queued on it, handshakes under way) unless `net.ipv4.tcp_migrate_req` is on, and
//! even then a connection can meet the listener as it closes. nginx, HAProxy and Envoy hand their
//! listeners over for the same reason.
//!
//! The sequence: the running instance [`Offer`]s its listeners at a path; the new one calls
//! [`take`] on that path and starts on what it got ([`Server::start_on`]); both accept from the
//! same queues until the old one stops, whose close then leaves the sockets open in the new one.
//! The new one offers in turn, replacing the path. The path's mode is 0600: only its owner (and
//! root) may take the listeners.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::sys::{recv_fds, send_fds, Waker};
use crate::Server;

/// How long a taker waits for the running instance's answer, and the offer for the taker to
/// accept it: a frozen peer fails the handover instead of hanging it.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The listeners the instance serving at `path` hands over; none when nothing serves there (no
/// such path, or a stale one) or the instance is already stopping.
pub fn take(path: &Path) -> io::Result<Vec<TcpListener>> {
    let stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(ANSWER_WITHIN))?;
    let fds = recv_fds(stream.as_fd()).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {ANSWER_WITHIN:?}"),
        ),
        _ => e,
    })?;
    Ok(fds.into_iter().map(TcpListener::from).collect())
}

/// The pause after a failed accept of a taker.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A server's listeners on offer at a path, served by a thread of its own until the offer is
/// dropped: once the drop returns, no instance can take the listeners from this one. Drop it before
/// [`Server::stop`] (which gives up the listeners anyway), and the path is removed if still ours.
pub struct Offer {
    path: PathBuf,
    /// The path's inode as we bound it: at the stop the path is removed only if still ours, not
    /// once a successor has put its own offer there.
    inode: u64,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Offer {
    /// Offers `server`'s listeners at `path`, replacing whatever is there at once (a stale path, or
    /// the offer of the instance this one replaces).
    pub fn start(path: &Path, server: Arc<Server>) -> io::Result<Offer> {
        let mut staging = path.as_os_str().to_owned();
        staging.push(format!(".{}", std::process::id()));
        let staging = PathBuf::from(staging);
        let _ = std::fs::remove_file(&staging);
        let listener = UnixListener::bind(&staging)?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staging, path)?;
        let inode = std::fs::metadata(path)?.ino();
        let waker = Arc::new(Waker::new()?);
        let woken = Arc::clone(&waker);
        let thread = std::thread::Builder::new()
            .name("epoll-echo-offer".into())
            .spawn(move || serve(&listener, &server, &woken))?;
        Ok(Offer {
            path: path.to_owned(),
            inode,
            waker,
            thread: Some(thread),
        })
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if self.waker.wake().is_ok() {
            let _ = thread.join();
        }
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Answers each taker with the listeners until woken.
fn serve(listener: &UnixListener, server: &Server, waker: &Waker) {
    // Said once per run of failures, not once per retry.
    let mut failing = false;
    loop {
        match waker.wait_with(listener.as_fd()) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::error!("the listeners' offer failed ({e}); no instance can take them over");
                return;
            }
        }
        let taker = match listener.accept() {
            Ok((taker, _)) => taker,
            Err(e) => {
                // Out of descriptors, most likely: the taker gets no answer and says so; a pause
                // keeps this thread from spinning on a listener that stays readable.
                if !std::mem::replace(&mut failing, true) {
                    log::warn!("cannot answer a new instance asking for the listeners: {e}");
                }
                std::thread::sleep(ACCEPT_RETRY);
                continue;
            }
        };
        failing = false;
        match hand_over(&taker, server) {
            Ok(0) => log::info!("a new instance asked for the listeners while stopping"),
            Ok(n) => log::info!("handed {n} listeners over to a new instance"),
            Err(e) => log::warn!("handing the listeners over failed: {e}"),
        }
    }
}

fn hand_over(taker: &UnixStream, server: &Server) -> io::Result<usize> {
    taker.set_write_timeout(Some(ANSWER_WITHIN))?;
    // None when stopping: the taker gets nothing and binds anew.
    let listeners = server.share_listeners()?;
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
    send_fds(taker.as_fd(), &fds)?;
    Ok(fds.len())
}
