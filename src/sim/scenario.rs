//! What one simulated run is made of: the worker's settings, the fault rates, when the stop comes,
//! and each client's behaviour. Drawn once from an [`Entropy`] before the run starts.

use std::time::Duration;

use super::entropy::{Entropy, SeedRng};
use crate::dispatch;

/// Nanoseconds of virtual time.
pub type Nanos = u64;

pub const MICRO: Nanos = 1_000;
pub const MILLI: Nanos = 1_000_000;

/// Rates of injected faults, each in per mille of the operations it applies to.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub wait_eintr: u32,
    /// A wait reports only part of the ready list (the rest stays for the next wait).
    pub short_batch: u32,
    /// An edge with no new state behind it (allowed by epoll, must be harmless).
    pub spurious_edge: u32,
    /// An event carrying the token of a connection closed earlier.
    pub stale_event: u32,
    pub accept_eintr: u32,
    pub accept_emfile: u32,
    pub accept_aborted: u32,
    pub register_fail: u32,
    pub read_eintr: u32,
    /// A read returns less than is queued; the rest "arrives" just after and raises an edge.
    pub read_short: u32,
    pub read_eagain: u32,
    pub write_eintr: u32,
    /// A write takes less than there is room for; room "frees" just after and raises an edge.
    pub write_short: u32,
    pub write_eagain: u32,
    /// After each read, a client stops reading for a while.
    pub client_pause: u32,
}

/// How a client ends its side of the conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// `shutdown(SHUT_WR)` after the payload, read to EOF, close.
    HalfClose,
    /// Close once the whole payload came back.
    CloseAfterEcho,
    /// Keep the connection open until the server's FIN (at stop), then close.
    KeepOpen,
    /// Abort with RST once this many bytes were sent.
    Reset { after: usize },
}

/// One simulated client.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    pub arrival: Nanos,
    pub payload: Vec<u8>,
    pub finish: Finish,
    /// Server receive buffer (client-to-server bytes in flight), at least 1.
    pub rcv_cap: usize,
    /// Server send buffer (server-to-client bytes in flight), at least 1.
    pub snd_cap: usize,
    /// Free send-buffer space that raises the writable edge after a full or partial write.
    pub write_space: usize,
    pub send_chunk: usize,
    pub recv_chunk: usize,
    /// Longest time between two client actions.
    pub think: Nanos,
    /// Longest reading pause.
    pub pause: Nanos,
}

/// Everything a run needs besides the live choices made while it runs.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub config: dispatch::Config,
    pub backlog_cap: usize,
    /// Descriptors the worker may hold before `accept` fails with `EMFILE`.
    pub fd_limit: usize,
    pub faults: Faults,
    /// When the stop comes; `None`: when the network has gone quiet.
    pub stop_at: Option<Nanos>,
    pub clients: Vec<ClientSpec>,
}

impl Scenario {
    /// Draws a scenario. `payload`, when given, is every client's payload (the fuzzer's stream).
    pub fn generate(e: &mut impl Entropy, payload: Option<&[u8]>) -> Scenario {
        let config = dispatch::Config {
            max_pending: e.pick(&[65_536, 1, 7, 64, 512, 4096]),
            drain_timeout: Duration::from_nanos(e.pick(&[
                5_000 * MILLI,
                0,
                MILLI,
                20 * MILLI,
                200 * MILLI,
            ])),
            scratch_len: e.pick(&[65_536, 1, 5, 64, 1024]),
            reads_per_turn: e.pick(&[16, 1, 2, 3]),
            accepts_per_turn: e.pick(&[64, 1, 2]),
            // Idle closes would look like lost echo to the clients; the core tests cover them.
            idle_timeout: None,
        };
        let rate = |e: &mut _| pick_rate(e);
        let faults = Faults {
            wait_eintr: rate(e),
            short_batch: rate(e),
            spurious_edge: rate(e),
            stale_event: rate(e),
            accept_eintr: rate(e),
            accept_emfile: rate(e),
            accept_aborted: rate(e),
            register_fail: rate(e) / 4,
            read_eintr: rate(e),
            read_short: rate(e),
            read_eagain: rate(e),
            write_eintr: rate(e),
            write_short: rate(e),
            write_eagain: rate(e),
            client_pause: rate(e),
        };
        let clients = e.range(1, 12) as usize;
        let scenario_stop = if e.chance(500) {
            Some(e.below(30 * MILLI))
        } else {
            None
        };
        Scenario {
            config,
            backlog_cap: e.range(1, 8) as usize,
            fd_limit: if e.chance(200) {
                e.range(1, 3) as usize
            } else {
                usize::MAX
            },
            faults,
            stop_at: scenario_stop,
            clients: (0..clients).map(|_| client(e, payload)).collect(),
        }
    }
}

fn pick_rate(e: &mut impl Entropy) -> u32 {
    e.pick(&[0, 20, 100, 300])
}

fn client(e: &mut impl Entropy, payload: Option<&[u8]>) -> ClientSpec {
    let payload = match payload {
        Some(p) => p.to_vec(),
        None => {
            let len = match e.below(10) {
                0 => 0,
                1..=4 => e.range(1, 100),
                5..=8 => e.range(100, 3000),
                _ => e.range(3000, 20_000),
            };
            random_bytes(e.below(u64::MAX), len as usize)
        }
    };
    let finish = match e.below(20) {
        0..=7 => Finish::HalfClose,
        8..=12 => Finish::CloseAfterEcho,
        13..=16 => Finish::KeepOpen,
        _ => Finish::Reset {
            after: e.below(payload.len() as u64 + 1) as usize,
        },
    };
    let buf = |e: &mut _| pick_buf(e);
    let snd_cap = buf(e);
    ClientSpec {
        arrival: e.below(10 * MILLI),
        payload,
        finish,
        rcv_cap: buf(e),
        snd_cap,
        write_space: if e.chance(500) {
            (snd_cap / 3).max(1)
        } else {
            1
        },
        send_chunk: buf(e),
        recv_chunk: buf(e),
        think: e.pick(&[200 * MICRO, MICRO, 20 * MICRO, 2 * MILLI]),
        pause: e.pick(&[MILLI, 50 * MILLI, 400 * MILLI]),
    }
}

fn pick_buf(e: &mut impl Entropy) -> usize {
    match e.below(4) {
        0 => 65_536,
        1 => e.range(1, 16) as usize,
        2 => e.range(17, 512) as usize,
        _ => e.range(513, 8192) as usize,
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SeedRng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}
