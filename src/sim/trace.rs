//! The last operations of a simulated run, oldest first, printed when a run fails.

use std::collections::VecDeque;
use std::fmt::Write as _;

use crate::dispatch::{Readiness, Token};

/// Virtual time in nanoseconds.
pub type Nanos = u64;

/// One line of the trace. Results are the count or the errno.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug only
pub enum Ev {
    Wait {
        at: Nanos,
        deadline: Option<Nanos>,
        events: usize,
    },
    WaitEintr,
    Stop {
        at: Nanos,
    },
    Edge(usize, Readiness),
    Connect(usize),
    Accept(Result<usize, i32>),
    Register(usize, Token, bool),
    Read {
        link: usize,
        asked: usize,
        got: Result<usize, i32>,
    },
    Write {
        link: usize,
        offered: usize,
        took: Result<usize, i32>,
    },
    ShutdownWrite(usize),
    Close {
        link: usize,
        unread: usize,
    },
    CloseListener,
    /// What the client's kernel acknowledged, as the worker was told.
    Acked(usize, u64),
    /// Bytes queued on a socket, as the worker was told (the stop's cut).
    QueuedInput(usize, usize),
    /// Connections in the listener's queue, as the worker was told.
    QueuedConnections(usize),
    CloseShell,
    ClientSend(usize, usize),
    ClientUrgent(usize, usize),
    ClientFin(usize),
    ClientRecv(usize, usize),
    ClientEof(usize),
    ClientReset(usize),
    ClientVanish(usize),
    /// Data came for a closed socket: RST, and this many unread bytes of echo were lost.
    ResetByServer(usize, usize),
    ClientPause(usize, Nanos),
    Note(String),
}

/// A bounded ring of the latest events.
#[derive(Debug)]
pub struct Trace {
    events: VecDeque<Ev>,
    len: usize,
}

impl Trace {
    pub fn new(len: usize) -> Trace {
        Trace {
            events: VecDeque::with_capacity(len),
            len,
        }
    }

    pub fn push(&mut self, ev: Ev) {
        if self.events.len() == self.len {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// The events, one per line, oldest first.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for ev in &self.events {
            let _ = writeln!(out, "  {ev:?}");
        }
        out
    }
}

/// A syscall result as the trace records it: the count, or the errno (-1 when there is none).
pub fn logged<T>(r: &std::io::Result<T>, value: impl Fn(&T) -> usize) -> Result<usize, i32> {
    match r {
        Ok(v) => Ok(value(v)),
        Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
    }
}
