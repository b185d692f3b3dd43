//! Helpers shared by the integration tests: a server on a free loopback port, clients whose every
//! read and write has a timeout (so a broken server fails a test instead of hanging it), descriptor
//! and thread snapshots of this process, and reproducible random payloads.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use epoll_echo::{Config, Server};

/// Longest a test waits for any single read, write or join. Generous: the machine is shared and
/// noisy; a healthy server answers in milliseconds, a hung one never does.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A config for `127.0.0.1:0` with `workers` workers and otherwise the defaults.
pub fn config(workers: usize) -> Config {
    Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers,
        ..Config::default()
    }
}

pub fn start(config: Config) -> Server {
    Server::start(config).expect("server starts on a free loopback port")
}

/// A connected client with [`IO_TIMEOUT`] on every read and write.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the server");
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("set write timeout");
    stream
}

/// Reads exactly `len` bytes in reads of random sizes (at most `max_read`).
pub fn read_exact_chunked(
    stream: &mut TcpStream,
    len: usize,
    rng: &mut Rng,
    max_read: usize,
) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0; max_read];
    while got.len() < len {
        let want = rng.below(max_read).max(1).min(len - got.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => panic!("EOF after {} of {len} echoed bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read failed after {} of {len} echoed bytes: {e}", got.len()),
        }
    }
    got
}

/// Writes `data` in writes of random sizes (at most `max_write`).
pub fn write_chunked(stream: &mut TcpStream, data: &[u8], rng: &mut Rng, max_write: usize) {
    let mut at = 0;
    while at < data.len() {
        let end = (at + rng.below(max_write).max(1)).min(data.len());
        stream
            .write_all(&data[at..end])
            .expect("write to the server");
        at = end;
    }
}

/// Reads until EOF; panics on a timeout or an error (a reset is not a clean EOF).
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("read until the server's EOF");
    rest
}

/// Sends `data`, half-closes, and returns everything read back until EOF. A writer thread sends
/// while this thread reads, so no payload size can fill both directions and deadlock the client.
pub fn echo_half_close(stream: &mut TcpStream, data: Vec<u8>, seed: u64) -> Vec<u8> {
    let mut writer = stream.try_clone().expect("clone the client socket");
    let sender = thread::spawn(move || {
        let mut rng = Rng::new(seed);
        write_chunked(&mut writer, &data, &mut rng, 16 * 1024);
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let back = read_to_eof(stream);
    sender.join().expect("writer thread");
    back
}

/// Writes `data` until it is all sent or no byte was taken for `stall` (the whole path to the
/// server and back is full because the server stopped reading). Returns the bytes sent. The stall
/// only decides when a test starts reading; no verdict depends on it.
pub fn write_until_stalled(stream: &mut TcpStream, data: &[u8], stall: Duration) -> usize {
    stream
        .set_write_timeout(Some(stall))
        .expect("set stall timeout");
    let mut at = 0;
    while at < data.len() {
        let end = (at + 64 * 1024).min(data.len());
        match stream.write(&data[at..end]) {
            Ok(n) => at += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("write failed after {at} bytes: {e}"),
        }
    }
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("restore write timeout");
    at
}

/// Runs `f` on its own thread and returns its result, failing the test if it takes longer than
/// [`IO_TIMEOUT`] (a hung stop or join must fail, not hang the suite).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(f());
    });
    match result.recv_timeout(IO_TIMEOUT) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish in {IO_TIMEOUT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// This process's open descriptors and what each refers to.
pub fn open_fds() -> BTreeMap<u32, PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            // The descriptor read_dir itself holds is gone by the time we read its link.
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, target))
        })
        .collect()
}

/// Number of threads in this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("list /proc/self/task")
        .count()
}

/// Listening TCP sockets on `port` in the whole network namespace (IPv4 and IPv6 tables).
pub fn listening_sockets(port: u16) -> usize {
    const LISTEN: &str = "0A";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields
                        .get(1)
                        .and_then(|local| local.rsplit(':').next())
                        .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                    local_port == Some(port) && fields.get(3) == Some(&LISTEN)
                })
                .count()
        })
        .sum()
}

/// A small xorshift64* generator: reproducible payloads from a seed, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Zero is the one state xorshift never leaves.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` for test sizes (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A random binary payload of `len` bytes, the same for the same seed.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}
