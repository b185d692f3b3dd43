//! The `epoll-echo` binary as a user runs it: help and version, one clear line and a non-zero exit
//! for each bad flag or a port in use, the bound address on start, and a graceful exit 0 on
//! SIGTERM or SIGINT (at once on a second signal).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use common::process::{on_loopback, parse_listening, Process};
use common::{connect, echoes, write_until_stalled};
use epoll_echo::Counter;
use nix::sys::signal::Signal;

/// A device on which every write fails (`ENOSPC`).
fn dev_full() -> Stdio {
    Stdio::from(
        File::options()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full"),
    )
}

/// Starts a server on a free loopback port with `extra` flags.
fn start(extra: &[&str]) -> (Process, SocketAddr, usize) {
    let server = Process::spawn(&on_loopback(extra));
    let (addr, workers) = server.listening();
    (server, addr, workers)
}

#[test]
fn help_and_version_exit_zero() {
    let exit = Process::spawn(&["--help"]).exit();
    assert_eq!(exit.status.code(), Some(0), "{:?}", exit.stderr);
    let help = exit.stdout.join("\n");
    for flag in [
        "--port",
        "--maxListeners",
        "--max-listeners",
        "--bind",
        "--max-pending",
        "--drain-timeout",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }

    let exit = Process::spawn(&["--version"]).exit();
    assert_eq!(exit.status.code(), Some(0), "{:?}", exit.stderr);
    assert_eq!(
        exit.stdout,
        [format!("epoll-echo {}", env!("CARGO_PKG_VERSION"))]
    );
}

#[test]
fn each_bad_flag_gets_one_line_and_exit_2() {
    let cases: &[&[&str]] = &[
        &["--port", "70000"],
        &["--port", "-1"],
        &["--port", "0", "--maxListeners", "0"],
        &["--port", "0", "--max-listeners", "0"],
        &["--port", "0", "--maxListeners", "many"],
        &["--port", "0", "--frobnicate"],
        &["--port", "0", "extra-argument"],
        &["--port", "0", "--bind", "nonsense"],
        &["--port", "0", "--drain-timeout", "xyz"],
        &["--port", "0", "--drain-timeout", "-5s"],
        &["--port", "0", "--max-pending", "0"],
        &["--port", "0", "--bind", "224.0.0.1"],
        &["--port", "0", "--bind", "255.255.255.255"],
        &["--port", "0", "--bind", "fe80::1%no-such-if0"],
        &["--port", "0", "--metrics-addr", "[ff02::1]:0"],
        &["--port", "0", "--idle-timeout", "1e-10"],
        &["--port"],
    ];
    for args in cases {
        let exit = Process::spawn(args).exit();
        let (stdout, stderr) = (&exit.stdout, &exit.stderr);
        assert_eq!(exit.status.code(), Some(2), "{args:?}: {stderr:?}");
        assert_eq!(stderr.len(), 1, "{args:?}: want one line, got {stderr:?}");
        assert!(
            stderr[0].starts_with("epoll-echo: "),
            "{args:?}: {stderr:?}"
        );
        exit.assert_no_panic();
        assert!(stdout.is_empty(), "{args:?}: printed {stdout:?}");
    }
}

#[test]
fn a_port_in_use_gets_one_line_and_exit_1() {
    // A listener without SO_REUSEPORT cannot share its port.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a plain listener");
    let port = taken.local_addr().expect("its address").port().to_string();
    let args = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--maxListeners",
        "2",
    ];
    let exit = Process::spawn(&args).exit();
    let (stdout, stderr) = (&exit.stdout, &exit.stderr);
    assert_eq!(exit.status.code(), Some(1), "{stderr:?}");
    assert_eq!(stderr.len(), 1, "want one line, got {stderr:?}");
    assert!(stderr[0].contains(&port), "{stderr:?}");
    exit.assert_no_panic();
    assert!(stdout.is_empty(), "a server half started: {stdout:?}");
}

#[test]
fn port_zero_prints_the_real_port_and_sigterm_stops_with_exit_0() {
    let (server, addr, _) = start(&["--maxListeners", "2"]);
    assert_ne!(addr.port(), 0, "{addr}");

    echo_once(addr);
    let report = server.terminate().assert_clean();
    assert_eq!(report[Counter::Accepted], 1, "{report}");
    assert_eq!(report[Counter::BytesWritten], 4, "{report}");
}

#[test]
fn sigint_stops_with_exit_0() {
    let (server, _, _) = start(&[]);
    server.signal(Signal::SIGINT);
    server.exit().assert_clean();
}

#[test]
fn a_second_signal_exits_at_once() {
    let (mut server, addr, _) = start(&["--maxListeners", "1", "--drain-timeout", "600s"]);
    // This client never reads, so the graceful stop would wait for the whole drain timeout. The
    // echo proves it was accepted (a connection still in the backlog would just be refused).
    let mut client = connect(addr);
    assert!(echoes(&mut client, b"x"));
    write_until_stalled(
        &mut client,
        &[7; 16 << 20],
        std::time::Duration::from_secs(1),
    );
    server.signal(Signal::SIGTERM);
    server.stderr_line_with("stopping gracefully");
    // Within the repeat window the same signal is the same request (see the next test).
    thread::sleep(Duration::from_millis(700));
    server.signal(Signal::SIGTERM);
    let exit = server.exit();
    assert_eq!(
        exit.status.code(),
        Some(128 + libc::SIGTERM),
        "{:?}",
        exit.stderr
    );
    exit.assert_no_panic();
    drop(client);
}

#[test]
fn both_spellings_of_max_listeners_set_the_worker_count() {
    for flag in ["--maxListeners", "--max-listeners"] {
        let (server, _, workers) = start(&[flag, "3"]);
        assert_eq!(workers, 3, "{flag} 3");
        server.terminate().assert_clean();
    }
}

#[test]
fn the_default_worker_count_is_the_cpu_count() {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let (server, _, workers) = start(&[]);
    assert_eq!(workers, cpus);
    server.terminate().assert_clean();
}

/// One echo round trip on a fresh connection.
fn echo_once(addr: SocketAddr) {
    let mut client = connect(addr);
    client.write_all(b"ping").expect("send");
    client.shutdown(Shutdown::Write).expect("half-close");
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed).expect("read the echo");
    assert_eq!(echoed, b"ping");
}

#[test]
fn an_unwritable_stdout_does_not_stop_the_server() {
    // The start-up line cannot be printed, so it goes to the log instead; serving goes on.
    let mut server = Process::spawn_with(
        &on_loopback(&["--maxListeners", "1"]),
        dev_full(),
        Stdio::piped(),
        None,
    );
    let (addr, _) = parse_listening(&server.stderr_line_with("listening on"));
    echo_once(addr);
    server.terminate().assert_clean();
}

#[test]
fn an_unwritable_stderr_does_not_stop_the_server() {
    let server = Process::spawn_with(
        &on_loopback(&["--maxListeners", "1"]),
        Stdio::piped(),
        dev_full(),
        None,
    );
    let (addr, _) = server.listening();
    echo_once(addr);
    // A panic while logging would end the process with 101 instead.
    let exit = server.terminate();
    assert_eq!(exit.status.code(), Some(0));
}

#[test]
fn generated_files_to_an_unwritable_stdout_fail_with_one_line_and_exit_1() {
    for args in [&["--completions", "bash"][..], &["--man"]] {
        let exit = Process::spawn_with(args, dev_full(), Stdio::piped(), None).exit();
        assert_eq!(exit.status.code(), Some(1), "{args:?}: {:?}", exit.stderr);
        assert_eq!(exit.stderr.len(), 1, "{args:?}: {:?}", exit.stderr);
        assert!(
            exit.stderr[0].starts_with("epoll-echo: cannot write the ")
                && exit.stderr[0].contains("No space left on device"),
            "{args:?}: {:?}",
            exit.stderr
        );
        exit.assert_no_panic();
    }
}

#[test]
fn a_scoped_link_local_bind_reaches_the_kernel_in_both_flags() {
    // fe80::1 is not an address of lo, so the kernel refuses it: the point is that the flag's
    // syntax was taken, for --bind as for --metrics-addr.
    for args in [
        &["--port", "0", "--bind", "fe80::1%lo"][..],
        &[
            "--port",
            "0",
            "--bind",
            "::1",
            "--metrics-addr",
            "[fe80::1%lo]:0",
        ],
    ] {
        let exit = Process::spawn(args).exit();
        assert_eq!(exit.status.code(), Some(1), "{args:?}: {:?}", exit.stderr);
        assert_eq!(exit.stderr.len(), 1, "{args:?}: {:?}", exit.stderr);
        assert!(
            exit.stderr[0].contains("fe80::1%"),
            "{args:?}: {:?}",
            exit.stderr
        );
        exit.assert_no_panic();
    }
}
