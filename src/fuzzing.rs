//! Fuzz harness bodies, kept in the library so each target under `fuzz/` is one line and so
//! `cargo test` can replay the corpus on stable.
//!
//! [`echo_stream`] splits its input into a client byte stream and a schedule, then drives:
//! 1. the dispatch core directly, one connection, every outcome taken from the schedule (read and
//!    write sizes, would-block, `EINTR`, EOF, reset, accept failures, the stop, time passing);
//! 2. the worker loop over the simulated network ([`crate::sim`]), choices taken from the schedule.
//!
//! Either panics only when an echo rule breaks. When the schedule runs out, every choice becomes
//! the benign one, so each input ends in a run that must complete the echo.

use std::time::{Duration, Instant};

use crate::dispatch::{
    AcceptOutcome, Action, Config, Dispatcher, ReadOutcome, Readiness, ResourceError, Token,
    WriteOutcome,
};
use crate::sim::{self, ByteSource, Entropy, Scenario};

/// Longest client stream taken from one input.
const MAX_STREAM: usize = 4096;
/// Clients in the simulated run, each sending the same stream.
const MAX_SIM_CLIENTS: usize = 3;
/// Rounds of the direct driver before the core counts as stalled.
const MAX_ROUNDS: u32 = 200_000;

/// Input layout: two bytes of stream length, the stream, then the schedule.
pub fn echo_stream(data: &[u8]) {
    let mut input = ByteSource::new(data);
    let len = input.below(MAX_STREAM as u64 + 1) as usize;
    let stream = input.take(len);
    let schedule = &data[data.len().min(2 + stream.len())..];
    drive_core(stream, ByteSource::new(schedule));
    let mut e = ByteSource::new(schedule);
    let mut scenario = Scenario::generate(&mut e, Some(stream));
    scenario.clients.truncate(MAX_SIM_CLIENTS);
    sim::run(scenario, e);
}

/// The one connection's socket in the direct driver.
#[derive(Debug, PartialEq, Eq)]
struct Sock;

/// The client and its connection, as the direct driver models them.
#[derive(Default)]
struct Peer {
    in_backlog: bool,
    token: Option<Token>,
    open: bool,
    closed: bool,
    /// Bytes of the stream that reached the server's receive queue.
    arrived: usize,
    fin: bool,
    read: usize,
    read_before_stop: usize,
    written: usize,
    write_shut: bool,
    reset: bool,
    /// Excluded from the full-echo check (registration failed).
    excused: bool,
    eof_before_stop: bool,
    deadline_close: bool,
}

fn edge(pending: &mut Option<Readiness>, r: Readiness) {
    let old = pending.unwrap_or_default();
    *pending = Some(Readiness {
        readable: old.readable || r.readable,
        writable: old.writable || r.writable,
        read_closed: old.read_closed || r.read_closed,
        hangup: old.hangup || r.hangup,
        error: old.error || r.error,
    });
}

fn drive_core(stream: &[u8], mut s: ByteSource<'_>) {
    let config = Config {
        max_pending: s.pick(&[65_536, 1, 3, 64, 1000]),
        drain_timeout: Duration::from_millis(s.pick(&[5000, 0, 1, 50])),
        scratch_len: s.pick(&[65_536, 1, 7, 100]),
        reads_per_turn: s.pick(&[16, 1, 2]),
        accepts_per_turn: s.pick(&[64, 1]),
        idle_timeout: None,
    };
    let cap = config.max_pending;
    let drain = config.drain_timeout;
    let base = Instant::now();
    let mut now = base;
    let mut core = Dispatcher::<Sock>::new(config, now);
    let mut p = Peer {
        in_backlog: true,
        ..Peer::default()
    };
    let mut listener_edge = true;
    let mut listener_closes = 0;
    let mut conn_edge: Option<Readiness> = None;
    let mut stopped_at: Option<Instant> = None;
    let mut rounds = 0;
    while !core.is_finished() {
        rounds += 1;
        assert!(rounds < MAX_ROUNDS, "the core stalls: {rounds} rounds");
        let benign = s.is_empty();
        // Something happens on the network.
        let idle = conn_edge.is_none() && !listener_edge && core.poll_timeout() != Some(now);
        match s.below(8) {
            0 | 7 if p.arrived < stream.len() => {
                p.arrived += s.upto((stream.len() - p.arrived) as u64) as usize;
                edge(
                    &mut conn_edge,
                    Readiness {
                        readable: true,
                        ..Default::default()
                    },
                );
            }
            1 | 7 if p.arrived == stream.len() && !p.fin => {
                p.fin = true;
                edge(&mut conn_edge, fin_edge(p.write_shut));
            }
            2 => edge(
                &mut conn_edge,
                Readiness {
                    writable: true,
                    ..Default::default()
                },
            ),
            3 => edge(
                &mut conn_edge,
                Readiness {
                    readable: true,
                    ..Default::default()
                },
            ),
            4 if stopped_at.is_none() => stopped_at = Some(stop(&mut core, now)),
            5 => now += Duration::from_micros(s.below(300_000)),
            6 if !p.reset => {
                p.reset = true;
                edge(
                    &mut conn_edge,
                    Readiness {
                        error: true,
                        hangup: true,
                        readable: true,
                        ..Default::default()
                    },
                );
            }
            _ if benign && idle => {
                // Nothing left to choose: the client finishes, time passes, the stop comes.
                if !p.fin {
                    p.arrived = stream.len();
                    p.fin = true;
                    edge(&mut conn_edge, fin_edge(p.write_shut));
                } else if let Some(t) = core.poll_timeout() {
                    now = now.max(t);
                } else {
                    assert!(
                        stopped_at.is_none(),
                        "the core waits forever after the stop"
                    );
                    // Quiet before the stop: the client finished, so the core must have served it.
                    assert!(
                        !p.in_backlog,
                        "the core went idle with a connection in the backlog"
                    );
                    assert!(
                        !p.open,
                        "the core went idle with a finished connection still open"
                    );
                    stopped_at = Some(stop(&mut core, now));
                }
            }
            _ => {}
        }
        core.handle_time(now);
        if listener_edge {
            listener_edge = false;
            core.handle_event(
                Token::LISTENER,
                Readiness {
                    readable: true,
                    ..Default::default()
                },
            );
        }
        if let (Some(r), Some(t)) = (conn_edge.take(), p.token.filter(|_| p.open)) {
            core.handle_event(t, r);
        }
        while let Some(action) = core.poll_action() {
            let tok_ok = |t: Token, p: &Peer| {
                assert!(
                    p.open && p.token == Some(t),
                    "action on a closed or unknown connection"
                )
            };
            match action {
                Action::Accept => {
                    assert!(stopped_at.is_none(), "accept after the stop");
                    let outcome = match s.below(5) {
                        0 if p.in_backlog => {
                            p.in_backlog = false;
                            p.open = true;
                            AcceptOutcome::Accepted(Sock)
                        }
                        2 => AcceptOutcome::Interrupted,
                        3 if p.in_backlog => {
                            p.in_backlog = false;
                            AcceptOutcome::Aborted
                        }
                        4 => AcceptOutcome::Exhausted(ResourceError::ProcessDescriptors),
                        _ => {
                            // A waiting connection "arrives" after this would-block, with its edge.
                            listener_edge |= p.in_backlog;
                            AcceptOutcome::WouldBlock
                        }
                    };
                    if let Some(t) = core.handle_accept(outcome) {
                        p.token = Some(t);
                    }
                }
                Action::Register(t) => {
                    tok_ok(t, &p);
                    let ok = !s.chance(30);
                    p.excused |= !ok;
                    if ok {
                        let r = Readiness {
                            readable: p.arrived > 0 || p.fin || p.reset,
                            writable: true,
                            read_closed: p.fin || p.reset,
                            hangup: p.reset,
                            error: p.reset,
                        };
                        edge(&mut conn_edge, r);
                    }
                    core.handle_register(t, ok);
                }
                Action::Read { token, len } => {
                    tok_ok(token, &p);
                    let avail = p.arrived - p.read;
                    let outcome = if s.chance(100) {
                        ReadOutcome::Interrupted
                    } else if p.reset {
                        ReadOutcome::Failed
                    } else if avail == 0 {
                        if p.fin {
                            p.eof_before_stop |= stopped_at.is_none();
                            ReadOutcome::Eof
                        } else {
                            ReadOutcome::WouldBlock
                        }
                    } else {
                        let mut k = len.min(avail);
                        if !p.fin && s.chance(200) {
                            // Short with more queued: the rest "arrives" after, with its edge.
                            k = s.upto(k as u64) as usize;
                            edge(
                                &mut conn_edge,
                                Readiness {
                                    readable: true,
                                    ..Default::default()
                                },
                            );
                        }
                        let (_, buf) = core.read_target(token);
                        buf[..k].copy_from_slice(&stream[p.read..p.read + k]);
                        p.read += k;
                        if stopped_at.is_none() {
                            p.read_before_stop += k;
                        }
                        ReadOutcome::Data(k)
                    };
                    core.handle_read(token, outcome);
                }
                Action::Write(token) => {
                    tok_ok(token, &p);
                    assert!(!p.write_shut, "write after shutdown_write");
                    let (_, bytes) = core.write_target(token);
                    let offered = bytes.len();
                    assert!(offered > 0, "empty write");
                    let outcome = match s.below(6) {
                        _ if p.reset => WriteOutcome::Failed,
                        1 => WriteOutcome::Interrupted,
                        2 => {
                            edge(
                                &mut conn_edge,
                                Readiness {
                                    writable: true,
                                    ..Default::default()
                                },
                            );
                            WriteOutcome::WouldBlock
                        }
                        3 => {
                            let k = s.upto(offered as u64) as usize;
                            if k < offered {
                                edge(
                                    &mut conn_edge,
                                    Readiness {
                                        writable: true,
                                        ..Default::default()
                                    },
                                );
                            }
                            WriteOutcome::Wrote(k)
                        }
                        _ => WriteOutcome::Wrote(offered),
                    };
                    if let WriteOutcome::Wrote(k) = outcome {
                        assert_eq!(
                            Some(&bytes[..k]),
                            stream.get(p.written..p.written + k),
                            "echo at offset {} is not the input there",
                            p.written
                        );
                        p.written += k;
                    }
                    core.handle_write(token, outcome);
                }
                Action::ShutdownWrite(t) => {
                    tok_ok(t, &p);
                    p.write_shut = true;
                    if p.fin {
                        edge(&mut conn_edge, fin_edge(true));
                    }
                }
                Action::Close(Sock) => {
                    assert!(p.open, "close of a closed connection");
                    p.open = false;
                    p.closed = true;
                    p.deadline_close = stopped_at.is_some_and(|t| now >= t + drain);
                    let unread = p.arrived > p.read;
                    assert!(
                        !unread || p.reset || p.excused || p.deadline_close,
                        "closed with unread input: the client gets RST"
                    );
                }
                Action::CloseListener => listener_closes += 1,
            }
            assert!(core.pending_bytes() <= cap, "pending output over the cap");
        }
    }
    assert_eq!(
        listener_closes, 1,
        "listener closed {listener_closes} times"
    );
    assert!(!p.open, "connection left open");
    let r = core.report();
    assert!(r.balances(), "report does not balance: {r}");
    assert_eq!(r.bytes_written, p.written as u64, "bytes_written: {r}");
    assert_eq!(r.bytes_read, p.read_before_stop as u64, "bytes_read: {r}");
    if p.closed && !p.reset && !p.excused && !p.deadline_close {
        assert_eq!(p.written, p.read_before_stop, "read bytes not echoed: {r}");
        if p.eof_before_stop {
            assert_eq!(
                p.written,
                stream.len(),
                "finished stream not fully echoed: {r}"
            );
        }
    }
}

fn fin_edge(write_shut: bool) -> Readiness {
    Readiness {
        readable: true,
        read_closed: true,
        hangup: write_shut,
        writable: write_shut,
        error: false,
    }
}

fn stop(core: &mut Dispatcher<Sock>, now: Instant) -> Instant {
    core.handle_stop();
    now
}
