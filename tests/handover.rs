//! Handing the listeners over: a server started on another's shared listeners serves on after the
//! first stops (no listener closes), nothing is shared once the stop began or from a failed
//! worker, and the binary's `--handover` takes, serves and gives the path on. The restart under
//! a kernel that does not migrate queued connections is in `restart.rs` (root).

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;

use common::process::{lowest_descriptor_limit, on_loopback, Process};
use common::{config, connect, echoes, eventually, start, stop};
use epoll_echo::{failing, Counter, Server, StartError};

#[test]
fn a_server_on_the_listeners_another_shares_serves_after_that_one_stops() {
    let first = start(config(2));
    let addr = first.local_addr();
    let shared = first.share_listeners().expect("copies of the listeners");
    assert_eq!(shared.len(), 2);
    let second = Server::start_on(config(1), shared).expect("starts on them");
    assert_eq!(second.workers(), 2, "one worker per listener");
    assert_eq!(second.local_addr(), addr);
    let first_report = stop(first);
    // The first one's close was not the sockets' last: they still accept, and the second serves.
    for i in 0..8 {
        assert!(echoes(&mut connect(addr), b"after the stop"), "client {i}");
    }
    let second_report = stop(second);
    assert_eq!(second_report[Counter::Accepted], 8, "{second_report}");
    assert_eq!(first_report[Counter::Accepted], 0, "{first_report}");
}

#[test]
fn nothing_is_shared_once_the_stop_began() {
    let server = start(config(1));
    let report = server.stop();
    assert!(report.balances(), "{report}");
    let shared = server.share_listeners().expect("no copy to make");
    assert!(
        shared.is_empty(),
        "a stopped server shared {}",
        shared.len()
    );
    // Its listener is closed: the port refuses.
    let refused = TcpStream::connect(server.local_addr()).map_err(|e| e.kind());
    assert_eq!(refused.err(), Some(ErrorKind::ConnectionRefused));
}

#[test]
fn a_failed_workers_listener_closes_with_it() {
    // The only worker panics once it has accepted one connection.
    let server = failing::start(config(1), 0, 1).expect("server starts");
    let addr = server.local_addr();
    let _ = echoes(&mut connect(addr), b"probe");
    assert!(eventually(|| server.failed_workers() == 1), "never failed");
    // Its copy for a handover is given up too, so nothing keeps the socket open where no one
    // accepts: the port refuses instead of queueing clients forever.
    assert!(
        eventually(|| matches!(
            TcpStream::connect(addr),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused
        )),
        "the failed worker's listener still accepts connections"
    );
    assert!(server.share_listeners().expect("copies").is_empty());
    server.stop();
}

#[test]
fn only_listening_tcp_sockets_on_one_address_are_served() {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    assert!(matches!(
        Server::start_on(config(1), vec![a, b]),
        Err(StartError::InvalidConfig(_))
    ));
    assert!(matches!(
        Server::start_on(config(1), Vec::new()),
        Err(StartError::InvalidConfig(_))
    ));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let connected = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    // A connected socket passed off as a listener.
    let fake = TcpListener::from(std::os::fd::OwnedFd::from(connected));
    assert!(matches!(
        Server::start_on(config(1), vec![fake]),
        Err(StartError::Adopt(_))
    ));
}

/// The flags of an instance that takes over on loopback port `port` from the offer at `path`.
fn successor<'a>(port: &'a str, path: &'a str) -> [&'a str; 6] {
    ["--bind", "127.0.0.1", "--port", port, "--handover", path]
}

/// The log line that says how many listeners a process took or handed over.
fn said(lines: &[String], what: &str) -> bool {
    lines.iter().any(|l| l.contains(what))
}

#[test]
fn the_binary_takes_the_listeners_over_and_offers_them_on() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("handover");
    let path_arg = path.to_str().expect("a UTF-8 path");
    let (old, addr) = Process::start(&["--maxListeners", "2", "--handover", path_arg]);
    assert!(path.exists(), "the old instance offers nothing");
    let port = addr.port().to_string();
    let new = Process::spawn(&successor(&port, path_arg));
    let (new_addr, workers) = new.listening();
    assert_eq!(
        (new_addr, workers),
        (addr, 2),
        "the new one runs on what it took"
    );
    let old = old.terminate();
    old.assert_clean();
    assert!(
        said(&old.stderr, "handed 2 listeners over"),
        "{:?}",
        old.stderr
    );
    // The old one left the path alone: it is the new one's offer now.
    assert!(
        path.exists(),
        "the old instance removed its successor's offer"
    );
    assert!(echoes(&mut connect(addr), b"served across the restart"));
    let new = new.terminate();
    let report = new.assert_clean();
    assert_eq!(report[Counter::Accepted], 1, "{report}");
    assert!(said(&new.stderr, "took 2 listeners on"), "{:?}", new.stderr);
    assert!(!path.exists(), "the last instance left its offer behind");
}

#[test]
fn the_binary_refuses_listeners_on_another_port_in_one_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("handover");
    let path_arg = path.to_str().expect("a UTF-8 path");
    let (old, addr) = Process::start(&["--maxListeners", "1", "--handover", path_arg]);
    let other = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let other_port = other.local_addr().expect("address").port().to_string();
    drop(other);
    let exit = Process::spawn(&successor(&other_port, path_arg)).exit();
    assert_eq!(exit.status.code(), Some(1), "{:?}", exit.stderr);
    assert_eq!(exit.stderr.len(), 1, "want one line: {:?}", exit.stderr);
    let want = format!("listens on {addr}, not on 127.0.0.1:{other_port}");
    assert!(exit.stderr[0].contains(&want), "{:?}", exit.stderr);
    // The old one still serves, and still offers.
    assert!(echoes(&mut connect(addr), b"still here"));
    let old = old.terminate();
    old.assert_clean();
    assert!(
        said(&old.stderr, "handed 1 listeners over"),
        "{:?}",
        old.stderr
    );
}

#[test]
fn a_stale_offer_is_replaced_and_the_server_binds_anew() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("handover");
    // What a killed instance leaves: a socket file no one listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let path_arg = path.to_str().expect("a UTF-8 path");
    let (server, addr): (Process, SocketAddr) = Process::start(&["--handover", path_arg]);
    assert!(echoes(&mut connect(addr), b"bound anew"));
    // Its own offer replaced the stale one: a successor could take over.
    let taken = epoll_echo::handover::take(&path).expect("an answer");
    assert!(!taken.is_empty(), "nothing offered at the path");
    drop(taken);
    let exit = server.terminate();
    exit.assert_clean();
}

#[test]
fn a_path_that_cannot_hold_an_offer_is_an_error_not_nothing_there() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("a file");
    std::fs::write(&file, b"").expect("write");
    // A file where a directory should be, and a path too long for a Unix socket address.
    let under_a_file = file.join("handover");
    let too_long = dir.path().join("x".repeat(200));
    for path in [under_a_file, too_long] {
        assert!(
            epoll_echo::handover::take(&path).is_err(),
            "{} taken as nothing there",
            path.display()
        );
    }
}

#[test]
fn an_offer_that_never_answers_is_a_timeout_after_five_seconds() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("handover");
    // Listening, never accepting: what a frozen instance looks like to a taker.
    let _frozen = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let asked = std::time::Instant::now();
    let e = epoll_echo::handover::take(&path).expect_err("no answer");
    println!("no answer: {e} after {:?}", asked.elapsed());
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains("no answer within 5s"), "{e}");
}

#[test]
fn an_instance_out_of_descriptors_warns_once_and_its_successor_fails_in_one_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("handover");
    let path_arg = path.to_str().expect("a UTF-8 path");
    let args = on_loopback(&["--maxListeners", "1", "--handover", path_arg]);
    let nofile = lowest_descriptor_limit(&args);
    let old = Process::spawn_with(&args, Stdio::piped(), Stdio::piped(), Some(nofile));
    let (addr, _) = old.listening();
    let port = addr.port().to_string();
    // The old one cannot accept the new one's connection (nor any client): the new one waits for an answer.
    let new = Process::spawn(&successor(&port, path_arg)).exit();
    assert_eq!(new.status.code(), Some(1), "{:?}", new.stderr);
    assert_eq!(new.stderr.len(), 1, "want one line: {:?}", new.stderr);
    assert!(
        new.stderr[0].contains("no answer within 5s"),
        "{:?}",
        new.stderr
    );
    let old = old.terminate();
    old.assert_clean();
    // Retried every 100 ms for 5 s, said once.
    let warnings = old
        .stderr
        .iter()
        .filter(|l| l.contains("cannot answer a new instance"))
        .count();
    assert_eq!(warnings, 1, "{:?}", old.stderr);
}
