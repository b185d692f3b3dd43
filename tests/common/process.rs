//! The server binary as a child process: started with any flags (optionally under a lowered
//! descriptor limit, or with stdout or stderr redirected), its start-up line, live counters,
//! descriptors, memory and CPU time, signals, and how it ended. Dropping a running one kills and
//! reaps it, so a failing test leaves no server behind.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use epoll_echo::Report;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::PATIENCE;

/// A running `epoll-echo`.
pub struct Process {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stderr line read so far.
    log: Vec<String>,
}

/// How the process ended.
pub struct Exit {
    pub status: ExitStatus,
    /// From the last signal sent to the exit.
    pub took: Duration,
    pub stdout: Vec<String>,
    /// Every stderr line.
    pub stderr: Vec<String>,
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

impl Process {
    /// Runs the binary with `args`, stdout and stderr piped.
    pub fn spawn(args: &[&str]) -> Process {
        Process::spawn_with(args, Stdio::piped(), Stdio::piped(), None)
    }

    /// Runs the binary with `args` and these environment variables, stdout and stderr piped.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Process {
        Process::run(args, env, Stdio::piped(), Stdio::piped(), None)
    }

    /// Runs the binary with `args` and the given stdout and stderr (a stream not piped here gives
    /// no lines); `nofile` lowers its descriptor limit.
    pub fn spawn_with(args: &[&str], stdout: Stdio, stderr: Stdio, nofile: Option<u64>) -> Process {
        Process::run(args, &[], stdout, stderr, nofile)
    }

    fn run(
        args: &[&str],
        env: &[(&str, &str)],
        stdout: Stdio,
        stderr: Stdio,
        nofile: Option<u64>,
    ) -> Process {
        let bin = env!("CARGO_BIN_EXE_epoll-echo");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
            // A panic would print a backtrace; the tests check that none does.
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("run the epoll-echo binary");
        let no_lines = || mpsc::channel().1;
        let stdout = child.stdout.take().map_or_else(no_lines, lines);
        let stderr = child.stderr.take().map_or_else(no_lines, lines);
        Process {
            child,
            stdout,
            stderr,
            log: Vec::new(),
        }
    }

    /// Starts a server on a free loopback port with `args`; returns it with the address it printed.
    pub fn start(args: &[&str]) -> (Process, SocketAddr) {
        Process::start_with(args, None)
    }

    /// [`Process::start`] under a descriptor limit.
    pub fn start_with(args: &[&str], nofile: Option<u64>) -> (Process, SocketAddr) {
        let server =
            Process::spawn_with(&on_loopback(args), Stdio::piped(), Stdio::piped(), nofile);
        let (addr, _) = server.listening();
        (server, addr)
    }

    /// The address and worker count from the start-up line, or `None` when the server exits
    /// without one (a start-up error).
    pub fn try_listening(&self) -> Option<(SocketAddr, usize)> {
        let line = self.stdout.recv_timeout(PATIENCE).ok()?;
        Some(parse_listening(&line))
    }

    /// The address and worker count from the start-up line on stdout.
    pub fn listening(&self) -> (SocketAddr, usize) {
        let line = self
            .stdout
            .recv_timeout(PATIENCE)
            .expect("the server prints its address on start");
        parse_listening(&line)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process blocks `signal` (from its `SigBlk` mask in /proc).
    pub fn wait_until_blocked(&self, signal: Signal) {
        let bit = 1u64 << (signal as u32 - 1);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
            let blocked = status.ok().and_then(|text| {
                let mask = text.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
                u64::from_str_radix(mask.trim(), 16).ok()
            });
            if blocked.is_some_and(|mask| mask & bit != 0) {
                return;
            }
            assert!(Instant::now() < deadline, "{signal} was never blocked");
            thread::yield_now();
        }
    }

    /// Stops the process (`SIGSTOP`) and waits until every one of its threads is stopped, so
    /// nothing it does can race what the test does next.
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
        let deadline = Instant::now() + PATIENCE;
        let task_dir = format!("/proc/{}/task", self.pid());
        loop {
            let states: Vec<String> = std::fs::read_dir(&task_dir)
                .map(|dir| {
                    dir.flatten()
                        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
                        .collect()
                })
                .unwrap_or_default();
            // The state is the field after the command name, which ends with the last ')'.
            let stopped = |stat: &String| {
                stat.rfind(')')
                    .and_then(|at| stat[at + 1..].split_whitespace().next())
                    .is_some_and(|state| state == "T" || state == "t")
            };
            if !states.is_empty() && states.iter().all(stopped) {
                return;
            }
            assert!(Instant::now() < deadline, "the process never stopped");
            thread::yield_now();
        }
    }

    /// The loopback address of the port the process listens on, found through /proc (for a
    /// process whose stdout cannot be read).
    pub fn listening_port_via_proc(&self) -> SocketAddr {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(port) = listening_ports(self.pid()).into_iter().next() {
                return SocketAddr::from(([127, 0, 0, 1], port));
            }
            assert!(Instant::now() < deadline, "the server never listened");
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal the server");
    }

    /// Waits for the next stderr line containing `needle` and returns it.
    pub fn stderr_line_with(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stderr
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no line with {needle:?} ({e}); log: {:?}", self.log));
            self.log.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Asks for the live counters with SIGUSR1 and returns the total.
    pub fn stats(&mut self) -> Report {
        self.signal(Signal::SIGUSR1);
        let line = self.stderr_line_with("stats total ");
        Report::parse(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Open descriptors of the server process.
    pub fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read the server's fd directory")
            .count()
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.pid()).expect("read the server's VmRSS")
    }

    /// User plus system CPU time of the server process (all threads).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read the server's stat");
        // Fields after the command name (which may contain spaces) start at field 3 (state).
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(self) -> Exit {
        self.signal(Signal::SIGTERM);
        self.exit()
    }

    /// Waits for the process to exit and for its output pipes to close.
    pub fn exit(mut self) -> Exit {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                break status;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "epoll-echo did not exit within {PATIENCE:?}; log: {:?}",
                self.log
            );
            thread::sleep(Duration::from_millis(5));
        };
        let took = start.elapsed();
        let drain = |lines: &Receiver<String>, all: &mut Vec<String>| loop {
            match lines.recv_timeout(PATIENCE) {
                Ok(line) => all.push(line),
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => panic!("output pipe still open after exit"),
            }
        };
        let mut stdout = Vec::new();
        drain(&self.stdout, &mut stdout);
        let mut stderr = std::mem::take(&mut self.log);
        drain(&self.stderr, &mut stderr);
        Exit {
            status,
            took,
            stdout,
            stderr,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Only when a test failed half-way: do not leave the server running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Exit {
    /// The summary printed at exit.
    pub fn report(&self) -> Report {
        let line = self
            .stderr
            .iter()
            .find(|l| l.contains("stopped: "))
            .unwrap_or_else(|| panic!("no summary line: {:?}", self.stderr));
        Report::parse(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Asserts no panic or backtrace reached stderr.
    pub fn assert_no_panic(&self) {
        for line in &self.stderr {
            let lower = line.to_lowercase();
            assert!(
                !lower.contains("panicked") && !lower.contains("backtrace"),
                "panic output on stderr: {:?}",
                self.stderr
            );
        }
    }

    /// Asserts a clean exit whose report accounts for every byte read and every connection.
    pub fn assert_clean(&self) -> Report {
        assert!(
            self.status.success(),
            "exit {:?}; log: {:?}",
            self.status,
            self.stderr
        );
        self.assert_no_panic();
        let r = self.report();
        assert!(r.balances(), "the report does not balance: {r}");
        assert_eq!(r.active(), 0, "connections left open: {r}");
        r
    }
}

/// The arguments for a server on a free loopback port, followed by `args`.
pub fn on_loopback<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--bind", "127.0.0.1", "--port", "0"];
    all.extend_from_slice(args);
    all
}

/// The lowest descriptor limit under which the server starts with `args`: at it, the server has
/// no descriptor to spare once running, so every accept fails with `EMFILE`.
pub fn lowest_descriptor_limit(args: &[&str]) -> u64 {
    for nofile in 4..64 {
        let server = Process::spawn_with(args, Stdio::piped(), Stdio::piped(), Some(nofile));
        let started = server.try_listening().is_some();
        drop(server);
        if started {
            return nofile;
        }
    }
    panic!("the server never started under 64 descriptors");
}

/// The address and worker count from a start-up line.
pub fn parse_listening(line: &str) -> (SocketAddr, usize) {
    let unexpected = || -> ! { panic!("unexpected start-up line: {line}") };
    let rest = line
        .split_once("listening on ")
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

/// Resident memory of process `pid`, in bytes; `None` once it is gone.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib * 1024)
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("run getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK is a number")
}

/// The ports the sockets of process `pid` listen on.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|target| {
                    let name = target.to_str()?.to_string();
                    Some(
                        name.strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(3) == Some(&"0A");
            let ours = fields
                .get(9)
                .is_some_and(|inode| inodes.iter().any(|i| i == inode));
            let port = fields
                .get(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if let (true, true, Some(port)) = (listening, ours, port) {
                ports.push(port);
            }
        }
    }
    ports
}
