//! Client side helpers: a deterministic byte stream to send and verify on the fly, and small
//! blocking echo round trips with timeouts.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Longest single read or write a helper issues.
pub const CHUNK: usize = 64 * 1024;
/// Timeout of every blocking socket call, so no test hangs.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The stream `byte(offset) = (offset + shift) % 251`: a period prime to every chunk size, and a
/// per-connection shift so crossed connections show.
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

/// A connected stream with read and write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    s
}

/// Sends `msg` and reads back exactly as many bytes; true when they are the same.
pub fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back).is_ok() && back == msg
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
