//! The server binary as a child process: start it (optionally under a lowered descriptor limit),
//! read its counters, descriptors, memory and CPU time from /proc, signal it, and collect its report.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long any single wait for the server may take before the test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Parsed `key=value` counters of a report or stats line.
pub type Counters = HashMap<String, u64>;

pub struct ServerProc {
    child: Child,
    pub addr: SocketAddr,
    stderr: Receiver<String>,
    /// Every stderr line seen so far.
    pub log: Vec<String>,
}

impl ServerProc {
    /// Starts the binary on 127.0.0.1 with `args`; `nofile` lowers its descriptor limit.
    pub fn start(args: &[&str], nofile: Option<u64>) -> ServerProc {
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
        cmd.args(["--bind", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the server");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (out_tx, out_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let line: String = out_rx
            .recv_timeout(PATIENCE)
            .expect("the server prints its address");
        let addr = line
            .strip_prefix("epoll-echo: listening on ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        ServerProc {
            child,
            addr,
            stderr: err_rx,
            log: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal the server");
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

    /// Asks for the live counters with SIGUSR1 and returns the total line, parsed.
    pub fn stats(&mut self) -> Counters {
        self.signal(Signal::SIGUSR1);
        let line = self.next_line_with("epoll-echo: stats total ");
        parse_counters(&line)
    }

    /// Waits for a stderr line containing `needle` and returns it.
    fn next_line_with(&mut self, needle: &str) -> String {
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

    /// Sends SIGTERM and waits for the exit and the final report.
    pub fn terminate(mut self) -> Exit {
        let start = Instant::now();
        self.signal(Signal::SIGTERM);
        let status = wait_with_timeout(&mut self.child, PATIENCE);
        let took = start.elapsed();
        let line = self.next_line_with("epoll-echo: stopped: ");
        Exit {
            status,
            took,
            report: parse_counters(&line),
            log: std::mem::take(&mut self.log),
        }
    }
}

/// How the server ended.
pub struct Exit {
    pub status: ExitStatus,
    /// From SIGTERM to exit.
    pub took: Duration,
    /// The `stopped:` report.
    pub report: Counters,
    /// Every stderr line.
    pub log: Vec<String>,
}

impl Exit {
    /// Asserts a clean exit whose report accounts for every byte read.
    pub fn assert_clean(&self) {
        assert!(
            self.status.success(),
            "exit {:?}; log: {:?}",
            self.status,
            self.log
        );
        let r = &self.report;
        assert_eq!(
            r["bytes_read"],
            r["bytes_written"] + r["bytes_dropped"],
            "the report does not balance: {r:?}"
        );
        assert_eq!(r["accepted"], r["closed"], "connections left open: {r:?}");
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // Only when a test failed half-way: do not leave the server running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the server") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn parse_counters(line: &str) -> Counters {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
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

/// Polls `probe` until it returns true, for at most [`PATIENCE`]; false if it never did.
pub fn eventually(mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    probe()
}
