//! The `epoll-echo` binary as a user runs it: help and version, one clear line and a non-zero exit
//! for each bad flag or a port in use, the bound address on start, and a graceful exit 0 on
//! SIGTERM or SIGINT (at once on a second signal).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Longest the tests wait for the binary to print or exit; it normally takes milliseconds.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A running `epoll-echo`; dropping it kills and reaps the process, so a failing test leaves no
/// server behind.
struct Running {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

/// Forwards each line of `pipe` to a channel, which disconnects when the process closes it.
fn lines(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// A device on which every write fails (`ENOSPC`).
fn dev_full() -> Stdio {
    Stdio::from(
        File::options()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full"),
    )
}

/// A channel that is already disconnected.
fn no_lines() -> Receiver<String> {
    mpsc::channel().1
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        Running::spawn_with(args, Stdio::piped(), Stdio::piped())
    }

    /// Like `spawn`, with the given stdout and stderr; a channel of a stream not piped here simply
    /// stays empty.
    fn spawn_with(args: &[&str], stdout: Stdio, stderr: Stdio) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_epoll-echo"))
            .args(args)
            // A panic would print a backtrace; the tests check that none does.
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("run the epoll-echo binary");
        let stdout = child.stdout.take().map_or_else(no_lines, lines);
        let stderr = child.stderr.take().map_or_else(no_lines, lines);
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// The address and worker count from the start-up line.
    fn listening(&self) -> (SocketAddr, usize) {
        let line = self
            .stdout
            .recv_timeout(TIMEOUT)
            .expect("the server prints its address on start");
        parse_listening(&line)
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the server");
    }

    /// Waits for the next stderr line containing `text`.
    fn stderr_line_with(&self, text: &str) -> String {
        let give_up = Instant::now() + TIMEOUT;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with {text:?}: {e}"),
            }
        }
    }

    /// Waits for the process to exit; returns its status, stdout and stderr lines.
    fn exit(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        let give_up = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                break status;
            }
            assert!(Instant::now() < give_up, "epoll-echo did not exit");
            thread::sleep(Duration::from_millis(10));
        };
        let drain = |lines: &Receiver<String>| {
            let mut all = Vec::new();
            loop {
                match lines.recv_timeout(TIMEOUT) {
                    Ok(line) => all.push(line),
                    Err(RecvTimeoutError::Disconnected) => return all,
                    Err(RecvTimeoutError::Timeout) => panic!("output pipe still open after exit"),
                }
            }
        };
        let stdout = drain(&self.stdout);
        let stderr = drain(&self.stderr);
        (status, stdout, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address and worker count from a start-up line.
fn parse_listening(line: &str) -> (SocketAddr, usize) {
    let unexpected = || -> ! { panic!("unexpected start-up line: {line}") };
    let rest = line
        .split_once("epoll-echo: listening on ")
        .map_or_else(|| unexpected(), |(_, rest)| rest);
    let (addr, workers) = rest.split_once(" with ").unwrap_or_else(|| unexpected());
    let addr = addr.parse().unwrap_or_else(|_| unexpected());
    let workers = workers
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| unexpected());
    (addr, workers)
}

fn assert_no_panic(stderr: &[String]) {
    for line in stderr {
        let lower = line.to_lowercase();
        assert!(
            !lower.contains("panicked") && !lower.contains("backtrace"),
            "panic output on stderr: {stderr:?}"
        );
    }
}

/// Starts a server on a free loopback port with `extra` flags.
fn start(extra: &[&str]) -> (Running, SocketAddr, usize) {
    let mut args = vec!["--bind", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(extra);
    let server = Running::spawn(&args);
    let (addr, workers) = server.listening();
    (server, addr, workers)
}

#[test]
fn help_and_version_exit_zero() {
    let (status, stdout, stderr) = Running::spawn(&["--help"]).exit();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    let help = stdout.join("\n");
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

    let (status, stdout, stderr) = Running::spawn(&["--version"]).exit();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    assert_eq!(
        stdout,
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
        &["--port"],
    ];
    for args in cases {
        let (status, stdout, stderr) = Running::spawn(args).exit();
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr:?}");
        assert_eq!(stderr.len(), 1, "{args:?}: want one line, got {stderr:?}");
        assert!(
            stderr[0].starts_with("epoll-echo: "),
            "{args:?}: {stderr:?}"
        );
        assert_no_panic(&stderr);
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
    let (status, stdout, stderr) = Running::spawn(&args).exit();
    assert_eq!(status.code(), Some(1), "{stderr:?}");
    assert_eq!(stderr.len(), 1, "want one line, got {stderr:?}");
    assert!(stderr[0].contains(&port), "{stderr:?}");
    assert_no_panic(&stderr);
    assert!(stdout.is_empty(), "a server half started: {stdout:?}");
}

#[test]
fn port_zero_prints_the_real_port_and_sigterm_stops_with_exit_0() {
    let (server, addr, _) = start(&["--maxListeners", "2"]);
    assert_ne!(addr.port(), 0, "{addr}");

    let mut client = TcpStream::connect(addr).expect("connect to the printed address");
    client
        .set_read_timeout(Some(TIMEOUT))
        .expect("set read timeout");
    client.write_all(b"hello\n").expect("send");
    client.shutdown(Shutdown::Write).expect("half-close");
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed).expect("read the echo");
    assert_eq!(echoed, b"hello\n");
    drop(client);

    server.signal(Signal::SIGTERM);
    let (status, _, stderr) = server.exit();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    assert_no_panic(&stderr);
    let summary = stderr
        .iter()
        .find(|line| line.starts_with("epoll-echo: stopped: "))
        .unwrap_or_else(|| panic!("no summary line: {stderr:?}"));
    assert!(
        summary.contains("accepted=1 ") && summary.contains("bytes_written=6 "),
        "{summary}"
    );
}

#[test]
fn sigint_stops_with_exit_0() {
    let (server, _, _) = start(&[]);
    server.signal(Signal::SIGINT);
    let (status, _, stderr) = server.exit();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    assert_no_panic(&stderr);
}

#[test]
fn a_second_signal_exits_at_once() {
    let (server, addr, _) = start(&["--maxListeners", "1", "--drain-timeout", "600s"]);
    // This client never closes, so the graceful stop would wait for the whole drain timeout. The
    // echo proves it was accepted (a connection still in the backlog would just be refused).
    let mut client = TcpStream::connect(addr).expect("connect");
    client
        .set_read_timeout(Some(TIMEOUT))
        .expect("set read timeout");
    client.write_all(b"x").expect("send");
    let mut echoed = [0; 1];
    client.read_exact(&mut echoed).expect("read the echo");
    server.signal(Signal::SIGTERM);
    server.stderr_line_with("stopping gracefully");
    server.signal(Signal::SIGTERM);
    let (status, _, stderr) = server.exit();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr:?}");
    assert_no_panic(&stderr);
    drop(client);
}

#[test]
fn both_spellings_of_max_listeners_set_the_worker_count() {
    for flag in ["--maxListeners", "--max-listeners"] {
        let (server, _, workers) = start(&[flag, "3"]);
        assert_eq!(workers, 3, "{flag} 3");
        server.signal(Signal::SIGTERM);
        let (status, _, stderr) = server.exit();
        assert_eq!(status.code(), Some(0), "{stderr:?}");
    }
}

#[test]
fn the_default_worker_count_is_the_cpu_count() {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let (server, _, workers) = start(&[]);
    assert_eq!(workers, cpus);
    server.signal(Signal::SIGTERM);
    let (status, _, stderr) = server.exit();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
}

/// One echo round trip on a fresh connection.
fn echo_once(addr: SocketAddr) {
    let mut client = TcpStream::connect(addr).expect("connect");
    client
        .set_read_timeout(Some(TIMEOUT))
        .expect("set read timeout");
    client.write_all(b"ping").expect("send");
    client.shutdown(Shutdown::Write).expect("half-close");
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed).expect("read the echo");
    assert_eq!(echoed, b"ping");
}

#[test]
fn an_unwritable_stdout_does_not_stop_the_server() {
    // The start-up line cannot be printed, so it goes to the log instead; serving goes on.
    let server = Running::spawn_with(
        &["--bind", "127.0.0.1", "--port", "0", "--maxListeners", "1"],
        dev_full(),
        Stdio::piped(),
    );
    let (addr, _) = parse_listening(&server.stderr_line_with("listening on"));
    echo_once(addr);
    server.signal(Signal::SIGTERM);
    let (status, _, stderr) = server.exit();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    assert_no_panic(&stderr);
}

#[test]
fn an_unwritable_stderr_does_not_stop_the_server() {
    let server = Running::spawn_with(
        &["--bind", "127.0.0.1", "--port", "0", "--maxListeners", "1"],
        Stdio::piped(),
        dev_full(),
    );
    let (addr, _) = server.listening();
    echo_once(addr);
    server.signal(Signal::SIGTERM);
    // A panic while logging would end the process with 101 instead.
    let (status, _, _) = server.exit();
    assert_eq!(status.code(), Some(0));
}
