//! The servers `compare` runs, and running one: the three built into this workspace (epoll-echo,
//! tokio-echo, epoll-ref), or any command given as `NAME=COMMAND`.
//!
//! A command is split into words as a shell would (quotes and backslashes) and started directly,
//! not through a shell, so the process measured for CPU and memory is the server itself. Its
//! `{port}` is replaced by a free loopback port and `{workers}` by the set-up's worker count; the
//! server is ready once 127.0.0.1:port accepts a connection. Built-ins listen on port 0 and are
//! ready when their first line names their address.

use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sys;

/// The servers of this workspace, compared by default.
pub const BUILTINS: [&str; 3] = ["epoll-echo", "tokio-echo", "epoll-ref"];

/// How long a server may take to become ready.
const START_LIMIT: Duration = Duration::from_secs(10);

/// How a server is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launch {
    /// A binary of this workspace, from the release directory.
    Builtin,
    /// Program and arguments, with `{port}` and `{workers}` still in them.
    Command(Vec<String>),
}

/// A server to compare: a name for the tables and how to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    pub launch: Launch,
}

impl ServerSpec {
    pub fn builtin(name: &str) -> ServerSpec {
        ServerSpec {
            name: name.to_string(),
            launch: Launch::Builtin,
        }
    }
}

/// Parses `--server`: a built-in's name, or `NAME=COMMAND` with a `{port}` placeholder.
pub fn parse_server(text: &str) -> Result<ServerSpec, String> {
    let Some((name, command)) = text.split_once('=') else {
        if BUILTINS.contains(&text) {
            return Ok(ServerSpec::builtin(text));
        }
        return Err(format!(
            "'{text}' is neither a built-in server ({}) nor NAME=COMMAND",
            BUILTINS.join(", ")
        ));
    };
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
    {
        return Err(format!(
            "'{name}' is not a server name: use letters, digits and - _ . +"
        ));
    }
    let words = shlex::split(command)
        .ok_or_else(|| format!("the command of {name} has an unclosed quote or a trailing \\"))?;
    if words.is_empty() {
        return Err(format!("{name} has no command"));
    }
    for word in &words {
        let mut rest = word.as_str();
        while let Some(open) = rest.find('{') {
            let Some(len) = rest[open..].find('}') else {
                break;
            };
            let placeholder = &rest[open..open + len + 1];
            if placeholder != "{port}" && placeholder != "{workers}" {
                return Err(format!(
                    "{name}: unknown placeholder {placeholder} (known: {{port}}, {{workers}})"
                ));
            }
            rest = &rest[open + len + 1..];
        }
    }
    if !words.iter().any(|w| w.contains("{port}")) {
        return Err(format!(
            "{name}: the command must take the port it listens on as {{port}}"
        ));
    }
    Ok(ServerSpec {
        name: name.to_string(),
        launch: Launch::Command(words),
    })
}

/// The command's words with the placeholders filled in.
pub fn fill(words: &[String], port: u16, workers: usize) -> Vec<String> {
    words
        .iter()
        .map(|w| {
            w.replace("{port}", &port.to_string())
                .replace("{workers}", &workers.to_string())
        })
        .collect()
}

/// A built-in's command line: port 0 on IPv4 loopback, `workers` threads.
fn builtin_command(name: &str, bin: &Path, workers: usize) -> Command {
    let mut cmd = Command::new(bin.join(name));
    let workers = workers.to_string();
    if name == "epoll-echo" {
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--maxListeners",
            &workers,
            "--drain-timeout",
            "200ms",
        ]);
    } else {
        cmd.args(["--port", "0", "--threads", &workers]);
    }
    cmd
}

/// The address in a line such as `epoll-ref: listening on 127.0.0.1:41234`.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A free port on IPv4 loopback, released for the server to take.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Reads a pipe to its end on a thread (a full pipe would stall the server), sending each line.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(pipe) = pipe {
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
    }
    rx
}

/// The last line written to a pipe, kept by a thread that reads it to its end; the receiver
/// hears when the end is reached.
fn keep_last(
    pipe: Option<impl Read + Send + 'static>,
) -> (Arc<Mutex<Option<String>>>, mpsc::Receiver<()>) {
    let last = Arc::new(Mutex::new(None));
    let (done, ended) = mpsc::channel();
    if let Some(pipe) = pipe {
        let slot = Arc::clone(&last);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut s) = slot.lock() {
                    *s = Some(line);
                }
            }
            let _ = done.send(());
        });
    }
    (last, ended)
}

/// A started server, stopped when dropped.
pub struct Running {
    child: Child,
    pub addr: SocketAddr,
    /// The last line the server wrote to stderr, for the error when it fails to start.
    last_err: Arc<Mutex<Option<String>>>,
    stderr_ended: mpsc::Receiver<()>,
}

impl Running {
    /// Starts `spec` with `workers` workers restricted to `cpus` (none: unrestricted), and waits
    /// until it is ready.
    pub fn start(
        spec: &ServerSpec,
        bin: &Path,
        workers: usize,
        cpus: &[usize],
    ) -> io::Result<Running> {
        let (mut cmd, port) = match &spec.launch {
            Launch::Builtin => (builtin_command(&spec.name, bin, workers), None),
            Launch::Command(words) => {
                let port = free_port()?;
                let words = fill(words, port, workers);
                let mut cmd = Command::new(&words[0]);
                cmd.args(&words[1..]);
                (cmd, Some(port))
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !cpus.is_empty() {
            sys::pin_command(&mut cmd, cpus.to_vec());
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {} ({program}): {e}", spec.name),
            )
        })?;
        let lines = drain(child.stdout.take());
        let (last_err, stderr_ended) = keep_last(child.stderr.take());
        let mut running = Running {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(0))),
            last_err,
            stderr_ended,
        };
        let ready = match port {
            None => running.await_address(&lines),
            Some(_) => running.await_accept(),
        };
        match ready {
            Ok(()) => Ok(running),
            Err(why) => {
                running.stop();
                Err(io::Error::other(format!("{}: {why}", spec.name)))
            }
        }
    }

    /// A built-in is ready when its first stdout line names the address it listens on.
    fn await_address(&mut self, lines: &mpsc::Receiver<String>) -> Result<(), String> {
        let Ok(line) = lines.recv_timeout(START_LIMIT) else {
            return Err(self.failure("did not report its address"));
        };
        self.addr = listening_addr(&line)
            .ok_or_else(|| format!("no address in its first line '{line}'"))?;
        Ok(())
    }

    /// A command is ready when its port accepts a connection.
    fn await_accept(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failure(&format!("exited ({status}) before accepting")));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(self.failure(&format!("accepted no connection on {}", self.addr)))
    }

    /// `what` went wrong, with the server's last stderr line if it wrote one.
    fn failure(&mut self, what: &str) -> String {
        if let Ok(Some(_)) = self.child.try_wait() {
            // Its stderr ends with it: wait for the reader to take its last words.
            let _ = self.stderr_ended.recv_timeout(Duration::from_secs(2));
        }
        let last = self.last_err.lock().ok().and_then(|s| s.clone());
        match last {
            Some(line) => format!("{what}; it said: {line}"),
            None => format!("{what} within {START_LIMIT:?}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not exited within five seconds.
    pub fn stop(&mut self) {
        let _ = sys::signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_by_name_and_commands_by_name_equals() {
        assert_eq!(
            parse_server("epoll-ref"),
            Ok(ServerSpec::builtin("epoll-ref"))
        );
        let s = parse_server("mine=./target/release/mine --port {port} --threads '{workers}'")
            .expect("a command");
        assert_eq!(s.name, "mine");
        let Launch::Command(words) = &s.launch else {
            panic!("not a command: {s:?}");
        };
        assert_eq!(
            fill(words, 4321, 2),
            ["./target/release/mine", "--port", "4321", "--threads", "2"]
        );
        // Quoting keeps an argument with spaces whole; `=` after the first belongs to the command.
        let s = parse_server(r#"q=srv --addr=127.0.0.1:{port} --motd "hello there""#)
            .expect("a quoted command");
        assert_eq!(
            s.launch,
            Launch::Command(vec![
                "srv".into(),
                "--addr=127.0.0.1:{port}".into(),
                "--motd".into(),
                "hello there".into()
            ])
        );
    }

    #[test]
    fn bad_server_specs_say_why() {
        let cases = [
            ("nginx", "neither a built-in"),
            ("=srv {port}", "not a server name"),
            ("my server=srv {port}", "not a server name"),
            ("a=", "no command"),
            ("a=srv --port 8080", "{port}"),
            ("a=srv --port {prot}", "unknown placeholder {prot}"),
            ("a=srv 'unclosed {port}", "unclosed quote"),
        ];
        for (text, why) in cases {
            let err = parse_server(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn the_address_is_read_from_the_first_line() {
        assert_eq!(
            listening_addr("epoll-echo: listening on 127.0.0.1:4000 with 2 workers"),
            Some("127.0.0.1:4000".parse().expect("literal"))
        );
        assert_eq!(
            listening_addr("epoll-ref: listening on [::1]:4000"),
            Some("[::1]:4000".parse().expect("literal"))
        );
        assert_eq!(listening_addr("starting"), None);
    }

    #[test]
    fn a_command_that_exits_at_once_is_reported_with_its_last_words() {
        let spec =
            parse_server("sh=sh -c 'echo no such flag >&2; exit 3' {port}").expect("a command");
        let err = match Running::start(&spec, Path::new("."), 1, &[]) {
            Ok(_) => panic!("sh -c exit 3 became ready"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with("sh: exited"), "{err}");
        assert!(err.contains("no such flag"), "{err}");
    }
}
