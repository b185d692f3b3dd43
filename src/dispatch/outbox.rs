//! The in-flight bookkeeping: what the core asked of the shell, in order, and the one operation
//! whose outcome it awaits, so each outcome is checked against what was asked.

use std::collections::VecDeque;

use super::{Cause, Token};

/// An operation whose outcome the core waits for, named by token: the socket and bytes are lent
/// when it is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Accept,
    Register(Token),
    Read(Token, usize),
    Write(Token, Source),
    /// Ask whether the peer holds every byte.
    Delivery(Token),
    /// Ask how much input arrived before the stop.
    MeasureInput(Token),
    /// Ask how many connections the accept queue held at the stop.
    MeasureBacklog,
}

/// What a write sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The first `n` bytes of the scratch buffer, just read.
    Scratch(usize),
    /// The connection's pending output.
    Pending,
}

/// A close that asks the kernel first: what the peer did not acknowledge of the `written` bytes
/// is counted by `cause`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    pub written: u64,
    pub cause: Cause,
}

/// What the core asks of the shell, as queued: a socket that leaves the core goes with it, a
/// connection's socket is lent when it is issued.
#[derive(Debug)]
pub enum Request<S> {
    Op(Op),
    ShutdownWrite(Token),
    Close(S),
    MeasureAndClose(S, Measured),
    CloseListener,
    CloseShell,
}

/// The outcome the core waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaited {
    Op(Op),
    Close(Measured),
}

/// What the core asks of the shell, in the order it asks.
#[derive(Debug)]
pub struct Outbox<S> {
    /// Requests that carry a socket or need no outcome (closes, shutdowns) and the stop's
    /// questions, served first.
    queue: VecDeque<Request<S>>,
    /// The operation to issue next, before the turn continues (a write after a read, a retry).
    next: Option<Op>,
    /// The operation issued and not yet reported.
    in_flight: Option<Awaited>,
}

impl<S> Default for Outbox<S> {
    fn default() -> Self {
        Outbox {
            queue: VecDeque::new(),
            next: None,
            in_flight: None,
        }
    }
}

impl<S> Outbox<S> {
    /// Queues a request behind those already queued.
    pub fn push(&mut self, request: Request<S>) {
        self.queue.push_back(request);
    }

    /// The operation to issue next, before the turn continues.
    pub fn issue(&mut self, op: Op) {
        self.next = Some(op);
    }

    /// The next queued request, then the operation to issue next; marks its outcome awaited.
    pub fn pop(&mut self) -> Option<Request<S>> {
        let request = match self.queue.pop_front() {
            Some(request) => request,
            None => Request::Op(self.next.take()?),
        };
        self.in_flight = match request {
            Request::Op(op) => Some(Awaited::Op(op)),
            Request::MeasureAndClose(_, measured) => Some(Awaited::Close(measured)),
            Request::ShutdownWrite(_)
            | Request::Close(_)
            | Request::CloseListener
            | Request::CloseShell => None,
        };
        Some(request)
    }

    /// True while queued requests wait for the shell.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// True while an outcome is awaited.
    pub fn awaits(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The outcome of `expected` came; a bug in the shell if another operation was issued.
    pub fn finish(&mut self, expected: Op) {
        assert_eq!(
            self.in_flight.take(),
            Some(Awaited::Op(expected)),
            "outcome for an operation not issued"
        );
    }

    /// The outcome of a measured close came: what was written and why it closed.
    pub fn finish_measured(&mut self) -> Measured {
        match self.in_flight.take() {
            Some(Awaited::Close(measured)) => measured,
            other => panic!("a close outcome while awaiting {other:?}"),
        }
    }

    /// The length of the read issued for `token`; a bug in the shell if none was.
    pub fn read_in_flight(&self, token: Token) -> usize {
        match self.in_flight {
            Some(Awaited::Op(Op::Read(t, len))) if t == token => len,
            other => panic!("a read of {token:?} while awaiting {other:?}"),
        }
    }

    /// What the write issued for `token` sends; a bug in the shell if none was.
    pub fn write_in_flight(&self, token: Token) -> Source {
        match self.in_flight {
            Some(Awaited::Op(Op::Write(t, source))) if t == token => source,
            other => panic!("a write to {token:?} while awaiting {other:?}"),
        }
    }

    /// The read or write in flight was reported (checked by the `*_in_flight` call before).
    pub fn finish_io(&mut self) {
        self.in_flight = None;
    }
}
