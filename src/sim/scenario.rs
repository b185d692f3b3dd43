//! What one simulated network run is made of: the worker's settings, the kernel's fault rates,
//! when the stop comes, and each client's behaviour. Drawn once from an [`Entropy`] before the run.

use std::sync::Arc;
use std::time::Duration;

use super::entropy::{Entropy, SeedRng};
use super::faults::Faults;
use super::trace::Nanos;
use crate::dispatch::{ConnLimit, Settings};

pub const MICRO: Nanos = 1_000;
pub const MILLI: Nanos = 1_000_000;

/// How a client ends its side of the conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// `shutdown(SHUT_WR)` after the payload, read to EOF, close.
    HalfClose,
    /// Close once the whole payload came back.
    CloseAfterEcho,
    /// Keep the connection open until the server's FIN (at stop), then close.
    KeepOpen,
    /// Read the server's FIN and keep the connection open anyway (connection pools, health
    /// checks): the stop must close it once it holds every byte, not wait for the deadline.
    Linger,
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
    /// The client's receive buffer: how much echo its kernel acknowledges before the client reads.
    pub window: usize,
    pub send_chunk: usize,
    pub recv_chunk: usize,
    /// Longest time between two client actions.
    pub think: Nanos,
    /// Longest reading pause.
    pub pause: Nanos,
    /// How often a send ends with an urgent byte (`MSG_OOB`), per mille.
    pub urgent: u32,
}

/// Everything a run needs besides the live choices made while it runs.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub settings: Settings,
    pub backlog_cap: usize,
    /// Descriptors the worker may hold before `accept` fails with `EMFILE`.
    pub fd_limit: usize,
    pub faults: Faults,
    /// After each read, a client stops reading for a while (per mille).
    pub client_pause: u32,
    /// When the stop comes; `None`: when the network has gone quiet.
    pub stop_at: Option<Nanos>,
    pub clients: Vec<ClientSpec>,
}

impl Scenario {
    /// Draws a scenario. `payload`, when given, is every client's payload (the fuzzer's stream).
    pub fn generate(e: &mut impl Entropy, payload: Option<&[u8]>) -> Scenario {
        let settings = Settings {
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
            // Now and then an idle timeout, short enough to cut clients that pause or think.
            idle_timeout: e
                .chance(200)
                .then(|| Duration::from_nanos(e.pick(&[5 * MILLI, 50 * MILLI, 300 * MILLI]))),
            // Now and then a connection limit, whose rejected clients are closed at once.
            limit: e
                .chance(100)
                .then(|| Arc::new(ConnLimit::new(e.range(1, 4) as usize))),
        };
        let faults = Faults::draw(e);
        let client_pause = e.pick(&[0, 20, 100, 300]);
        let clients = e.range(1, 12) as usize;
        let scenario_stop = if e.chance(500) {
            Some(e.below(30 * MILLI))
        } else {
            None
        };
        Scenario {
            settings,
            backlog_cap: e.range(1, 8) as usize,
            fd_limit: if e.chance(200) {
                e.range(1, 3) as usize
            } else {
                usize::MAX
            },
            faults,
            client_pause,
            stop_at: scenario_stop,
            clients: (0..clients).map(|_| client(e, payload)).collect(),
        }
    }
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
            SeedRng::new(e.below(u64::MAX)).bytes(len as usize)
        }
    };
    let finish = match e.below(20) {
        0..=7 => Finish::HalfClose,
        8..=12 => Finish::CloseAfterEcho,
        13..=14 => Finish::KeepOpen,
        15..=16 => Finish::Linger,
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
        urgent: e.pick(&[0, 0, 50, 300]),
        window: buf(e),
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
