//! The binary under a service manager: readiness and stopping notifications through
//! `NOTIFY_SOCKET`, with a unix datagram socket standing in for the manager.

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::process::{on_loopback, parse_listening, Process};
use common::{connect, echoes, IO_TIMEOUT};
use nix::sys::signal::Signal;

/// The next notification, as its `KEY=VALUE` lines.
fn next_notification(socket: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {IO_TIMEOUT:?}: {e}"));
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn readiness_and_stopping_reach_the_service_manager() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&path).expect("bind the stand-in manager's socket");
    manager
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("a read timeout");
    let socket = path.to_str().expect("a UTF-8 path");
    let args = on_loopback(&["--maxListeners", "2"]);
    let server = Process::spawn_env(&args, &[("NOTIFY_SOCKET", socket)]);

    let ready = next_notification(&manager);
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means serving: the status names the address, and it echoes at once.
    let status = ready
        .iter()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS line: {ready:?}"));
    let (addr, workers): (SocketAddr, usize) = parse_listening(status);
    assert_eq!(workers, 2, "{status}");
    assert!(
        echoes(&mut connect(addr), b"ready"),
        "not serving at READY=1"
    );
    assert_eq!(server.listening(), (addr, 2), "stdout and STATUS disagree");

    server.signal(Signal::SIGTERM);
    let stopping = next_notification(&manager);
    assert!(stopping.iter().any(|l| l == "STOPPING=1"), "{stopping:?}");
    server.exit().assert_clean();
    // Nothing else was sent: one READY, one STOPPING.
    manager
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a read timeout");
    let mut buf = [0u8; 64];
    assert!(
        manager.recv(&mut buf).is_err(),
        "an unexpected notification"
    );
}

#[test]
fn a_manager_that_cannot_be_reached_costs_a_warning_not_the_service() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("nobody-listens.sock");
    let socket = missing.to_str().expect("a UTF-8 path");
    let mut server = Process::spawn_env(&on_loopback(&[]), &[("NOTIFY_SOCKET", socket)]);
    let (addr, _) = server.listening();
    server.stderr_line_with("cannot notify the service manager");
    assert!(echoes(&mut connect(addr), b"still serving"));
    server.terminate().assert_clean();
}
