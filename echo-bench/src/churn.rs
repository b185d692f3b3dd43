//! Connect churn: connect, echo one message, check that nothing follows it, close; one connection
//! after another until the deadline.
//!
//! Nothing may follow the echo: the client half-closes and reads until the server's close (or a
//! short wait, for a server that keeps the connection open), so appended bytes are caught. A
//! failed connect backs off, doubling up to a cap, rather than retrying at full speed.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::load::{conn_name, describe, owed, source, timed_out, Spec, CONNECT_TIMEOUT};
use crate::pattern::{Pattern, MAX_SLICE};
use crate::stats::{Meter, RunResult};
use crate::sys;

/// How long to wait for the server's close after the echo; echo servers close at once.
const AFTER_ECHO: Duration = Duration::from_millis(100);
/// The first and the longest pause after a failed connect.
const BACKOFF_FIRST: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// How one connection's life went wrong.
enum Fault {
    /// It never connected: no message was sent.
    Connect(String),
    /// The message was sent and not (wholly) echoed.
    Lost(String),
    /// The echo, or what followed it, was wrong.
    Mismatch(String),
}

pub fn run_churn(spec: &Spec, pattern: &Pattern, label: &str) -> io::Result<RunResult> {
    let mut meter = Meter::new(label, spec.server_pid, spec.intervals);
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let size = spec.size.clamp(1, MAX_SLICE);
    let mut buf = vec![0; size];
    let mut measuring = false;
    let mut backoff: Option<Duration> = None;
    let mut i = 0usize;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if !measuring && now >= measure_from {
            measuring = true;
            meter.begin(now);
        }
        meter.tick(now);
        let src = source(i, spec.sources, spec.addr);
        match churn_once(spec, pattern, i, src, &mut buf) {
            Ok(()) => {
                backoff = None;
                if measuring {
                    meter.record(now.elapsed().as_nanos() as u64);
                    meter.msgs += 1;
                    meter.bytes += size as u64;
                }
            }
            Err(Fault::Connect(why)) => {
                meter.error(|| why);
                let pause = backoff.map_or(BACKOFF_FIRST, |d| (d * 2).min(BACKOFF_MAX));
                backoff = Some(pause);
                std::thread::sleep(pause.min(end.saturating_duration_since(Instant::now())));
            }
            Err(Fault::Lost(why)) => {
                meter.lost(1);
                meter.error(|| why);
            }
            Err(Fault::Mismatch(why)) => meter.mismatch(|| why),
        }
        i += 1;
    }
    let mut res = meter.finish(Instant::now());
    res.conns = 1;
    res.depth = 1;
    res.size = size;
    Ok(res)
}

/// Connection `i`'s life. Every fault names the connection and the address.
fn churn_once(
    spec: &Spec,
    pattern: &Pattern,
    i: usize,
    src: Option<IpAddr>,
    buf: &mut [u8],
) -> Result<(), Fault> {
    let mut stream =
        sys::connect(spec.addr, src, CONNECT_TIMEOUT).map_err(|e| Fault::Connect(e.to_string()))?;
    let base = Pattern::base(i);
    let size = buf.len();
    let lost = |stream: &TcpStream, got: usize, why: String| {
        let name = conn_name(i, stream, spec.addr);
        Fault::Lost(format!("{name}: {why}; {}", owed((size - got) as u64, 1)))
    };
    let setup = |s: &TcpStream| {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(spec.timeout))?;
        s.set_write_timeout(Some(spec.timeout))
    };
    if let Err(e) = setup(&stream) {
        return Err(lost(&stream, 0, format!("set-up: {e}")));
    }
    if let Err(e) = stream.write_all(pattern.slice(base, size)) {
        return Err(lost(
            &stream,
            0,
            format!("write: {}", describe(&e, spec.timeout)),
        ));
    }
    if let Err((got, why)) = read_echo(&mut stream, buf, spec.timeout) {
        return Err(lost(&stream, got, why));
    }
    let wrong = |stream: &TcpStream, why: String| {
        Fault::Mismatch(format!("{}: {why}", conn_name(i, stream, spec.addr)))
    };
    if let Some(k) = pattern.first_mismatch(base, buf) {
        return Err(wrong(&stream, format!("echoed a wrong byte at offset {k}")));
    }
    match bytes_after_echo(&mut stream, buf) {
        Some(n) => Err(wrong(
            &stream,
            format!("sent {n} bytes after the echo of {size}, from offset {size}"),
        )),
        None => Ok(()),
    }
}

/// Reads the whole echo into `buf`; on failure, how many bytes came and why the rest did not.
fn read_echo(
    stream: &mut TcpStream,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<(), (usize, String)> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Err((got, "closed by the server".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err((got, timed_out(timeout)))
            }
            Err(e) => return Err((got, format!("read: {e}"))),
        }
    }
    Ok(())
}

/// Half-closes, then waits briefly for the server's close: an echo server then closes, and any
/// byte before its close follows the echo. Returns how many such bytes came, if any.
fn bytes_after_echo(stream: &mut TcpStream, buf: &mut [u8]) -> Option<usize> {
    let after = stream
        .shutdown(Shutdown::Write)
        .and_then(|()| stream.set_read_timeout(Some(AFTER_ECHO)));
    if after.is_err() {
        return None;
    }
    loop {
        match stream.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Still open after the wait, or reset: nothing followed the echo.
            Err(_) => return None,
        }
    }
}
