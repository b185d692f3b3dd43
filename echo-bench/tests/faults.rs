//! echo-bench against deliberately broken echo servers: one that echoes only its first
//! connection, one that stalls, one that never sends the last byte it received, one that appends
//! a byte to every echo. Each scenario must exit 1 and name the fault; none may pass lost or
//! extra bytes as a clean run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_echo-bench");

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Echoes its first connection; holds every later one open without reading it.
    FirstOnly,
    /// Accepts and never reads nor writes.
    Stall,
    /// Echoes one byte behind: the last byte received is never sent.
    DropLast,
    /// Echoes every read and then one byte more.
    Append,
}

/// A broken server on a free loopback port; its threads end with the test process.
fn serve(fault: Fault) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address").to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(stream) = conn else { continue };
            match fault {
                Fault::Stall => held.push(stream),
                Fault::FirstOnly if n > 0 => held.push(stream),
                _ => {
                    std::thread::spawn(move || echo(stream, fault));
                }
            }
        }
    });
    addr
}

fn echo(mut stream: TcpStream, fault: Fault) {
    let mut buf = [0u8; 4096];
    let mut held: Option<u8> = None;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut out = Vec::with_capacity(n + 1);
        match fault {
            Fault::DropLast => {
                out.extend(held);
                out.extend_from_slice(&buf[..n - 1]);
                held = Some(buf[n - 1]);
            }
            Fault::Append => {
                out.extend_from_slice(&buf[..n]);
                out.push(b'!');
            }
            Fault::FirstOnly | Fault::Stall => out.extend_from_slice(&buf[..n]),
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

/// Runs one scenario briefly against `addr`, with a short deadline per echo.
fn run(kind: &str, addr: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        kind,
        "--addr",
        addr,
        "--duration",
        "400ms",
        "--warmup",
        "0",
        "--timeout",
        "300ms",
    ];
    args.extend_from_slice(extra);
    Command::new(BENCH)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BENCH}: {e}"))
}

fn scenario_args(kind: &str) -> &'static [&'static str] {
    match kind {
        "ping" => &["--conns", "4"],
        "stream" => &["--conns", "4", "--rate", "2000"],
        _ => &[],
    }
}

/// Every scenario against `fault` exits 1 and its last stderr line says each of `says`
/// (alternatives within one entry are separated by `|`).
fn each_scenario_fails(fault: Fault, says: &[&str]) {
    let addr = serve(fault);
    for kind in ["ping", "stream", "churn"] {
        let out = run(kind, &addr, scenario_args(kind));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{kind} vs {fault:?}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("echo-bench: "),
            "{kind} vs {fault:?}: {err}"
        );
        for want in says {
            assert!(
                want.split('|').any(|w| last.contains(w)),
                "{kind} vs {fault:?}: no {want:?} in {last}"
            );
        }
        assert!(last.contains(&addr), "{kind} vs {fault:?}: {last}");
    }
}

#[test]
fn a_server_that_echoes_only_its_first_connection_fails_every_scenario() {
    each_scenario_fails(
        Fault::FirstOnly,
        &["timed out", "never echoed", "connection "],
    );
}

#[test]
fn a_server_that_stalls_fails_every_scenario() {
    each_scenario_fails(
        Fault::Stall,
        &["timed out", "never echoed", "connection 0 "],
    );
}

#[test]
fn a_server_that_drops_the_last_byte_fails_every_scenario() {
    each_scenario_fails(
        Fault::DropLast,
        &["timed out", "1 byte of 1 message never echoed"],
    );
}

#[test]
fn a_server_that_appends_bytes_fails_every_scenario() {
    // The server appends after each read, and a read may take several 64-byte messages at once
    // (two coalesce on a loaded machine): the first wrong byte is at a message boundary.
    let boundaries: Vec<String> = (1..=64)
        .map(|k| format!("wrong byte at offset {}", 64 * k))
        .collect();
    let wrong = format!(
        "more than were sent|after the echo of 64|{}",
        boundaries.join("|")
    );
    each_scenario_fails(Fault::Append, &["mismatches", &wrong]);
}

#[test]
fn a_stalled_stream_counts_every_message_it_could_not_send() {
    let addr = serve(Fault::Stall);
    let out = run(
        "stream",
        &addr,
        &["--conns", "1", "--rate", "20000", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARNING:") && err.contains("were not sent"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    // 400 ms at 20,000/s is 8,000 messages; at most 4,096 were outstanding when the connection
    // timed out, and every other one is counted as not sent.
    let not_sent = run["not_sent"].as_u64().expect("not_sent");
    let lost = run["lost"].as_u64().expect("lost");
    assert!(not_sent > 0 && lost > 0 && lost <= 4096, "{run}");
    assert_eq!(run["msgs"], 0, "{run}");
}
