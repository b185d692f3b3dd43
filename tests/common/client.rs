//! The client side: connections with timeouts, chunked writes and reads, echo round trips,
//! reproducible payloads, and a verifiable byte stream for long transfers.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use epoll_echo::sim::{Entropy, SeedRng};

use super::IO_TIMEOUT;

/// Longest single read or write the stream helpers issue.
pub const CHUNK: usize = 64 * 1024;

/// A connected client with [`IO_TIMEOUT`] on every read and write.
pub fn connect(addr: SocketAddr) -> TcpStream {
    with_timeouts(TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the server"))
}

/// `stream` with [`IO_TIMEOUT`] on every read and write.
fn with_timeouts(stream: TcpStream) -> TcpStream {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("set write timeout");
    stream
}

/// Sends `msg` and reads back exactly as many bytes; true when they are the same.
pub fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back).is_ok() && back == msg
}

/// Sizes and payloads from a seed (the simulated kernel's generator): the same seed, the same run.
pub struct Rng(SeedRng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SeedRng::new(seed))
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        self.0.bytes(len)
    }
}

/// A random binary payload of `len` bytes, the same for the same seed.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).bytes(len)
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
        let end = (at + CHUNK).min(data.len());
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

/// The stream `byte(offset) = (offset + shift) % 251`: a period prime to every chunk size, and a
/// per-connection shift so crossed connections show. Cheap to check for gigabytes.
pub struct Pattern {
    table: Vec<u8>,
    shift: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            table: (0..251 + CHUNK).map(|i| (i % 251) as u8).collect(),
            shift: seed * 7,
        }
    }

    /// The `len <= CHUNK` bytes at stream offset `offset`.
    pub fn at(&self, offset: u64, len: usize) -> &[u8] {
        let start = ((offset + self.shift) % 251) as usize;
        &self.table[start..start + len]
    }
}

/// How a stream ended for the reader.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
}

/// Reads until EOF or error, checking each byte against `pattern`; returns bytes read and how it
/// ended. Panics on a wrong byte or a timeout.
pub fn read_verified(s: &mut TcpStream, pattern: &Pattern, limit: u64) -> (u64, End) {
    let mut buf = vec![0; CHUNK];
    let mut got = 0u64;
    while got < limit {
        let want = CHUNK.min((limit - got) as usize);
        match s.read(&mut buf[..want]) {
            Ok(0) => return (got, End::Eof),
            Ok(n) => {
                assert!(
                    buf[..n] == *pattern.at(got, n),
                    "corrupt echo at offset {got}"
                );
                got += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("read timed out after {got} bytes")
            }
            Err(_) => return (got, End::Reset),
        }
    }
    (got, End::Eof)
}

/// A client that sends the verifiable stream of its seed as fast as it can while another thread
/// reads the echo back, checking every byte, until the server's EOF; it then stops sending and keeps
/// its socket open until the result is dropped.
pub struct Streamer {
    writer: JoinHandle<TcpStream>,
    reader: JoinHandle<((u64, End), TcpStream)>,
}

impl Streamer {
    pub fn start(addr: SocketAddr, seed: u64) -> Streamer {
        let mut rx = connect(addr);
        let mut tx = rx.try_clone().expect("clone the client socket");
        let eof = Arc::new(AtomicBool::new(false));
        let stop_writing = Arc::clone(&eof);
        let writer = thread::spawn(move || {
            let pattern = Pattern::new(seed);
            let mut off = 0u64;
            while !stop_writing.load(Relaxed) {
                match tx.write(pattern.at(off, 16 * 1024)) {
                    Ok(n) => off += n as u64,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // Shut down or reset by the server: the stream is over.
                    Err(_) => break,
                }
            }
            tx
        });
        let reader = thread::spawn(move || {
            let ended = read_verified(&mut rx, &Pattern::new(seed), u64::MAX);
            eof.store(true, Relaxed);
            (ended, rx)
        });
        Streamer { writer, reader }
    }

    /// Waits for the end of the echo: bytes read back and how it ended, and the still open socket.
    pub fn finish(self) -> ((u64, End), (TcpStream, TcpStream)) {
        let (ended, rx) = self.reader.join().expect("a wrong byte in the echo");
        let tx = self.writer.join().expect("writer");
        (ended, (rx, tx))
    }
}

/// A client whose receive buffer is fixed at `rcvbuf` bytes before it connects: its window is
/// small and never autotuned, so a test knows the server's echo fills it.
pub fn small_window(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    use nix::sys::socket::{
        connect as connect_to, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
        SockaddrIn,
    };
    let SocketAddr::V4(v4) = addr else {
        panic!("the tests' servers listen on 127.0.0.1, not {addr}");
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    setsockopt(&fd, sockopt::RcvBuf, &rcvbuf).expect("SO_RCVBUF");
    connect_to(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))
        .expect("connect to the server");
    with_timeouts(TcpStream::from(fd))
}

/// Bytes the client's kernel holds unread: what it received and the client has not read.
pub fn held_unread(stream: &TcpStream) -> usize {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = vec![0; 1 << 22];
    let held = stream.peek(&mut buf).unwrap_or(0);
    stream.set_nonblocking(false).expect("blocking");
    held
}

/// What the client's kernel holds once it stops growing (no change over three looks 100 ms
/// apart). Used only to pick the moment of the next step; the tests' verdicts compare the server's
/// figures with it as a bound that holds whenever it is taken.
pub fn settled_unread(stream: &TcpStream) -> usize {
    let mut last = held_unread(stream);
    let mut same = 0;
    while same < 3 {
        thread::sleep(Duration::from_millis(100));
        let now = held_unread(stream);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Closes with `SO_LINGER` 0: the close sends RST.
pub fn reset(stream: TcpStream) {
    let abort = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &abort)
        .expect("SO_LINGER");
    drop(stream);
}
