//! `--handover` at start-up: take the running instance's listeners, if they listen where asked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::Path;

use epoll_echo::handover;

/// The listeners the instance at `path` hands over (none when nothing serves there or it is
/// stopping: the caller binds anew), or the one line saying why they cannot be served.
pub fn take(path: &Path, asked: SocketAddr) -> Result<Vec<TcpListener>, String> {
    let shown = path.display();
    let listeners = handover::take(path)
        .map_err(|e| format!("cannot take the listeners over from {shown}: {e}"))?;
    let Some(first) = listeners.first() else {
        if path.exists() {
            log::info!("no running instance handed listeners over at {shown}: binding anew");
        }
        return Ok(listeners);
    };
    let at = first
        .local_addr()
        .map_err(|e| format!("the listeners handed over at {shown} have no address: {e}"))?;
    if !serves(at, asked) {
        return Err(format!(
            "the instance at {shown} listens on {at}, not on {asked}: stop it first, or give \
             another --handover path"
        ));
    }
    log::info!(
        "took {} listeners on {at} over from the instance at {shown}",
        listeners.len()
    );
    Ok(listeners)
}

/// A listener on `at` serves what was asked for: the same port (any, for port 0) and address,
/// an IPv4 wildcard standing for an IPv6 one (the fallback on a host without IPv6).
fn serves(at: SocketAddr, asked: SocketAddr) -> bool {
    let port = asked.port() == 0 || asked.port() == at.port();
    let ip = asked.ip() == at.ip()
        || (asked.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            && at.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    port && ip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_serve_the_address_asked_for_and_only_it() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("address");
        assert!(serves(addr("127.0.0.1:8080"), addr("127.0.0.1:8080")));
        assert!(serves(addr("127.0.0.1:41000"), addr("127.0.0.1:0")));
        assert!(serves(addr("0.0.0.0:8080"), addr("[::]:8080")));
        assert!(serves(addr("[::]:8080"), addr("[::]:8080")));
        assert!(!serves(addr("127.0.0.1:8081"), addr("127.0.0.1:8080")));
        assert!(!serves(addr("127.0.0.1:8080"), addr("[::]:8080")));
        assert!(!serves(addr("[::]:8080"), addr("0.0.0.0:8080")));
    }

    #[test]
    fn nothing_to_take_where_no_instance_serves() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("handover");
        let asked = "127.0.0.1:0".parse().expect("address");
        assert!(take(&path, asked).expect("no instance").is_empty());
        // A stale path: its instance is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(take(&path, asked).expect("a stale path").is_empty());
    }
}
