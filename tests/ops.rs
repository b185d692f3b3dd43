//! The binary as an operator meets it: the port guard and `--reuse-port`, the dual-stack default,
//! durations with units, clap's tip on a mistyped flag, `--help`, SIGHUP, and the log's format and
//! `RUST_LOG` filter.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::OwnedFd;
use std::process::Stdio;

use common::process::{on_loopback, Exit, Process};
use common::{connect, echoes};
use epoll_echo::Counter;
use nix::sys::signal::Signal;
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrIn,
};

/// Asserts the exit of a server refused because `addr` is taken: exit 1, one line naming it.
fn assert_refused(exit: &Exit, addr: SocketAddr) {
    let (stdout, stderr) = (&exit.stdout, &exit.stderr);
    assert_eq!(exit.status.code(), Some(1), "{stderr:?}");
    assert_eq!(stderr.len(), 1, "want one line, got {stderr:?}");
    let want = format!("cannot listen on {addr}: another socket already listens there");
    assert!(stderr[0].contains(&want), "{stderr:?}");
    assert!(stdout.is_empty(), "a server half started: {stdout:?}");
    exit.assert_no_panic();
}

/// The flags for a server on `addr`.
fn on(addr: SocketAddr) -> [String; 4] {
    let ip = addr.ip().to_string();
    let port = addr.port().to_string();
    ["--bind".into(), ip, "--port".into(), port]
}

fn spawn(args: &[String]) -> Process {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::spawn(&args)
}

#[test]
fn an_address_not_on_this_machine_gets_no_advice_about_a_taken_port() {
    // Our own listener on the port: were the error taken for "in use", the line would advise
    // sharing it.
    let ours = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = ours.local_addr().expect("address").port();
    let foreign = SocketAddr::from(([192, 0, 2, 1], port));
    let exit = spawn(&on(foreign)).exit();
    assert_eq!(exit.status.code(), Some(1), "{:?}", exit.stderr);
    assert_eq!(exit.stderr.len(), 1, "want one line, got {:?}", exit.stderr);
    let line = &exit.stderr[0];
    assert!(
        line.contains(&format!("cannot listen on {foreign}: ")),
        "{line}"
    );
    assert!(
        !line.contains("reuse-port") && !line.contains("another"),
        "{line}"
    );
}

/// The kernel setting an overlapping restart depends on is named at the start and at the stop
/// when it is off or unreadable, and not at all when it is on (read here as the server reads it).
#[test]
fn sharing_the_port_warns_of_the_migration_setting_only_when_it_is_not_on() {
    let setting = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req");
    let (server, _) = Process::start(&["--maxListeners", "1", "--reuse-port"]);
    let exit = server.terminate();
    exit.assert_clean();
    let warnings: Vec<&String> = exit
        .stderr
        .iter()
        .filter(|l| l.contains(" WARN "))
        .collect();
    match setting.as_deref().map(str::trim) {
        Ok("1") => assert!(warnings.is_empty(), "{warnings:?}"),
        Ok("0") => {
            assert_eq!(warnings.len(), 2, "{:?}", exit.stderr);
            for w in warnings {
                assert!(
                    w.contains("tcp_migrate_req is 0") && w.contains("--handover"),
                    "{w}"
                );
            }
        }
        _ => {
            assert_eq!(warnings.len(), 2, "{:?}", exit.stderr);
            assert!(warnings[0].contains("cannot be read"), "{warnings:?}");
        }
    }
}

#[test]
fn a_second_server_on_the_same_port_is_refused() {
    let (first, addr) = Process::start(&["--maxListeners", "2"]);
    let mut args = on(addr).to_vec();
    args.extend(["--maxListeners".into(), "2".into()]);
    let exit = spawn(&args).exit();
    assert_refused(&exit, addr);
    // Our own listener: sharing it would work, so the line says how.
    assert!(
        exit.stderr[0].ends_with("; --reuse-port shares a port on purpose"),
        "{:?}",
        exit.stderr
    );
    // The first one never noticed.
    assert!(echoes(&mut connect(addr), b"still mine"));
    first.terminate().assert_clean();
}

/// A listener of another program on a free loopback port, bound with `SO_REUSEPORT`.
fn foreign_reuse_port_listener() -> TcpListener {
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    setsockopt(&fd, sockopt::ReusePort, &true).expect("SO_REUSEPORT");
    let any_port = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    use std::os::fd::AsRawFd;
    bind(fd.as_raw_fd(), &any_port).expect("bind");
    listen(&fd, Backlog::new(16).expect("backlog")).expect("listen");
    TcpListener::from(fd)
}

#[test]
fn a_foreign_reuse_port_listener_is_refused() {
    let foreign = foreign_reuse_port_listener();
    let addr = foreign.local_addr().expect("its address");
    assert_refused(&spawn(&on(addr)).exit(), addr);
}

#[test]
fn no_reuse_port_hint_where_it_cannot_help() {
    // --reuse-port given already: the listener there does not share.
    let plain = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = plain.local_addr().expect("its address");
    let mut args = on(addr).to_vec();
    args.push("--reuse-port".into());
    let exit = spawn(&args).exit();
    assert_refused(&exit, addr);
    assert!(
        !exit.stderr[0].contains("--reuse-port"),
        "{:?}",
        exit.stderr
    );
    drop(plain);

    // The port is the server's own metrics endpoint.
    let free = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = free.local_addr().expect("its address");
    drop(free);
    let mut args = on(addr).to_vec();
    args.extend(["--metrics-addr".into(), addr.to_string()]);
    let exit = spawn(&args).exit();
    assert_refused(&exit, addr);
    assert!(
        exit.stderr[0].ends_with("; it is this server's own --metrics-addr"),
        "{:?}",
        exit.stderr
    );
}

#[test]
fn a_mistyped_rust_log_does_not_hide_why_the_server_did_not_start() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = taken.local_addr().expect("its address");
    let args = on(addr);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for filter in ["inof", "off"] {
        let exit = Process::spawn_env(&args, &[("RUST_LOG", filter)]).exit();
        assert_refused(&exit, addr);
        assert_eq!(level_of(&exit.stderr[0]), "ERROR", "{:?}", exit.stderr);
    }
}

#[test]
fn a_burst_of_sigusr1_is_not_dropped_from_a_file() {
    // One line per worker per signal: with 16 workers, 200 signals are 3,400 lines, beyond the
    // queue's 1,024 entries unless each signal's block is one entry.
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let stderr = log.reopen().expect("the log file again");
    let args = on_loopback(&["--maxListeners", "16"]);
    let server = Process::spawn_with(&args, Stdio::piped(), Stdio::from(stderr), None);
    server.listening();
    for _ in 0..200 {
        server.signal(Signal::SIGUSR1);
    }
    let exit = server.terminate();
    assert!(exit.status.success(), "{:?}", exit.status);
    let text = std::fs::read_to_string(log.path()).expect("read the log");
    assert!(!text.contains("log lines were dropped"), "{text}");
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    let totals = count("stats total ");
    assert!(totals > 0, "{text}");
    for worker in [0, 15] {
        assert_eq!(count(&format!("stats worker={worker} ")), totals, "{text}");
    }
}

#[test]
fn reuse_port_lets_two_servers_share_the_port() {
    // The first was started as usual; the second, as in an overlapping restart, opts in.
    let (mut old, addr) = Process::start(&["--maxListeners", "1"]);
    let mut args = on(addr).to_vec();
    args.extend(["--maxListeners".into(), "1".into(), "--reuse-port".into()]);
    let mut new = spawn(&args);
    let (shared, _) = new.listening();
    assert_eq!(shared, addr);
    // The kernel spreads connections by a hash of their addresses: both get some.
    let mut served = 0;
    for _round in 0..5 {
        for i in 0..64 {
            assert!(echoes(&mut connect(addr), format!("client {i}").as_bytes()));
            served += 1;
        }
        let (a, b) = (old.stats(), new.stats());
        if a[Counter::Accepted] > 0 && b[Counter::Accepted] > 0 {
            break;
        }
    }
    let (a, b) = (
        old.terminate().assert_clean(),
        new.terminate().assert_clean(),
    );
    assert!(
        a[Counter::Accepted] > 0 && b[Counter::Accepted] > 0,
        "{a}\n{b}"
    );
    assert_eq!(a[Counter::Accepted] + b[Counter::Accepted], served);
}

#[test]
fn the_default_address_serves_ipv4_and_ipv6_clients() {
    let server = Process::spawn(&["--port", "0", "--maxListeners", "1"]);
    let (addr, _) = server.listening();
    let port = addr.port();
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert!(echoes(&mut connect(v4), b"over IPv4"), "{v4}");
    let host_has_ipv6 = TcpListener::bind("[::1]:0").is_ok();
    if host_has_ipv6 {
        assert_eq!(addr.to_string(), format!("[::]:{port}"));
        let v6: SocketAddr = format!("[::1]:{port}").parse().expect("address");
        assert!(echoes(&mut connect(v6), b"over IPv6"), "{v6}");
    } else {
        assert_eq!(addr.to_string(), format!("0.0.0.0:{port}"));
        println!("skipped the ::1 client: this host has no IPv6");
    }
    let report = server.terminate().assert_clean();
    let want = if host_has_ipv6 { 2 } else { 1 };
    assert_eq!(report[Counter::Accepted], want, "{report}");
}

#[test]
fn durations_take_units() {
    for args in [
        ["--drain-timeout", "500ms", "--idle-timeout", "1m"],
        ["--drain-timeout", "1h30m", "--idle-timeout", "1h30m"],
    ] {
        let (server, addr) = Process::start(&args);
        assert!(echoes(&mut connect(addr), b"timed"), "{args:?}");
        server.terminate().assert_clean();
    }
}

#[test]
fn a_mistyped_flag_gets_the_error_and_the_tip() {
    let exit = Process::spawn(&["--ports", "9000"]).exit();
    assert_eq!(exit.status.code(), Some(2), "{:?}", exit.stderr);
    let stderr = &exit.stderr;
    assert_eq!(stderr.len(), 2, "want the error and the tip: {stderr:?}");
    assert_eq!(stderr[0], "epoll-echo: unexpected argument '--ports' found");
    assert!(stderr[1].trim_start().starts_with("tip:"), "{stderr:?}");
    assert!(stderr[1].contains("'--port'"), "{stderr:?}");
    assert!(exit.stdout.is_empty(), "{:?}", exit.stdout);
}

#[test]
fn help_opens_with_what_it_does_and_ends_with_signals_and_exit_codes() {
    let exit = Process::spawn(&["--help"]).exit();
    assert_eq!(exit.status.code(), Some(0), "{:?}", exit.stderr);
    let help = &exit.stdout;
    assert!(
        help[0].starts_with("A Linux TCP echo server (RFC 862): every byte received"),
        "{help:?}"
    );
    let at = |needle: &str| {
        help.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {help:?}"))
    };
    let (options, signals, status) = (at("--port"), at("Signals:"), at("Exit status:"));
    assert!(options < signals && signals < status, "{help:?}");
    for signal in ["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"] {
        assert!(at(signal) > signals, "{signal}");
    }
    let last = help.iter().rev().find(|l| !l.trim().is_empty());
    assert!(
        last.is_some_and(|l| l.trim_start().starts_with("128+N")),
        "{last:?}"
    );
}

#[test]
fn sighup_stops_gracefully() {
    let (server, addr) = Process::start(&[]);
    let mut client = connect(addr);
    assert!(echoes(&mut client, b"before the hangup"));
    drop(client);
    server.signal(Signal::SIGHUP);
    let exit = server.exit();
    let report = exit.assert_clean();
    assert_eq!(report[Counter::Accepted], 1, "{report}");
    assert!(
        exit.stderr
            .iter()
            .any(|l| l.contains("SIGHUP: stopping gracefully")),
        "{:?}",
        exit.stderr
    );
}

/// Asserts `line` is `TIMESTAMP LEVEL epoll-echo: ...`; returns its level.
fn level_of(line: &str) -> &str {
    let mut words = line.split_whitespace();
    let stamp = words.next().unwrap_or_default();
    assert!(
        humantime::parse_rfc3339(stamp).is_ok(),
        "no timestamp: {line}"
    );
    let level = words.next().unwrap_or_default();
    assert!(
        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
        "no level: {line}"
    );
    assert_eq!(words.next(), Some("epoll-echo:"), "{line}");
    level
}

#[test]
fn log_lines_carry_a_timestamp_and_a_level_and_rust_log_filters_them() {
    let (server, _) = Process::start(&[]);
    let exit = server.terminate();
    exit.assert_clean();
    assert!(exit.stderr.len() >= 3, "{:?}", exit.stderr);
    for line in &exit.stderr {
        level_of(line);
    }

    // Info for another target raises the log's highest level, so our own info lines are held
    // back by the filter itself, not by that level alone.
    let filter = "warn,elsewhere=info";
    let server = Process::spawn_env(&on_loopback(&[]), &[("RUST_LOG", filter)]);
    // The start-up line still reaches stdout (this waits for it); the info lines stay out of
    // stderr, the live counters (info too) with them. SIGUSR1 comes first: a lower signal is
    // taken first when both wait.
    server.listening();
    server.signal(Signal::SIGUSR1);
    let exit = server.terminate();
    assert!(exit.status.success(), "{:?}", exit.status);
    let info: Vec<&String> = exit
        .stderr
        .iter()
        .filter(|l| !matches!(level_of(l), "ERROR" | "WARN"))
        .collect();
    assert!(
        info.is_empty(),
        "RUST_LOG={filter} let these through: {info:?}"
    );
}
