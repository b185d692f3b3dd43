//! The in-flight bookkeeping: what the core asked of the shell, in order, and the one operation
//! whose outcome it awaits, so each outcome is checked against what was asked.

use std::collections::VecDeque;

use super::{Action, Cause, Token};

/// An operation whose outcome the core waits for.
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
    /// A close that asks the kernel first: what the peer did not acknowledge of the `written`
    /// bytes is counted by `cause`.
    Measure {
        written: u64,
        cause: Cause,
    },
}

/// What a write sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The first `n` bytes of the scratch buffer, just read.
    Scratch(usize),
    /// The connection's pending output.
    Pending,
}

impl Op {
    fn action<S>(self) -> Action<S> {
        match self {
            Op::Accept => Action::Accept,
            Op::Register(token) => Action::Register(token),
            Op::Read(token, len) => Action::Read { token, len },
            Op::Write(token, _) => Action::Write(token),
            Op::Delivery(token) => Action::CheckDelivery(token),
            Op::MeasureInput(token) => Action::MeasureInput(token),
            Op::MeasureBacklog => Action::MeasureBacklog,
            Op::Measure { .. } => unreachable!("a measured close is queued with its socket"),
        }
    }
}

/// What the core asks of the shell, in the order it asks.
#[derive(Debug)]
pub struct Outbox<S> {
    /// Actions that carry a socket or need no outcome (closes, shutdowns), served first; a
    /// measured close comes with the operation whose outcome it awaits.
    actions: VecDeque<(Action<S>, Option<Op>)>,
    /// The operation to issue next, before the turn continues (a write after a read, a retry).
    next: Option<Op>,
    /// The operation issued and not yet reported.
    in_flight: Option<Op>,
}

impl<S> Default for Outbox<S> {
    fn default() -> Self {
        Outbox {
            actions: VecDeque::new(),
            next: None,
            in_flight: None,
        }
    }
}

impl<S> Outbox<S> {
    /// Queues an action that needs no outcome.
    pub fn push(&mut self, action: Action<S>) {
        self.actions.push_back((action, None));
    }

    /// Queues an operation behind the actions already queued.
    pub fn push_op(&mut self, op: Op) {
        self.actions.push_back((op.action(), Some(op)));
    }

    /// Queues a close that asks the kernel first; its outcome is awaited as `op`.
    pub fn push_measured(&mut self, sock: S, op: Op) {
        self.actions
            .push_back((Action::MeasureAndClose(sock), Some(op)));
    }

    /// The operation to issue next, before the turn continues.
    pub fn issue(&mut self, op: Op) {
        self.next = Some(op);
    }

    /// The next queued action, then the operation to issue next; marks its outcome awaited.
    pub fn pop(&mut self) -> Option<Action<S>> {
        if let Some((action, op)) = self.actions.pop_front() {
            self.in_flight = op;
            return Some(action);
        }
        let op = self.next.take()?;
        self.in_flight = Some(op);
        Some(op.action())
    }

    /// True while queued actions wait for the shell.
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// True when nothing is queued and no outcome is awaited.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.in_flight.is_none()
    }

    /// True while an outcome is awaited.
    pub fn awaits(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The outcome of `expected` came; a bug in the shell if another operation was issued.
    pub fn finish(&mut self, expected: Op) {
        assert_eq!(
            self.in_flight.take(),
            Some(expected),
            "outcome for an operation not issued"
        );
    }

    /// The outcome of a measured close came: what was written and why it closed.
    pub fn finish_measured(&mut self) -> (u64, Cause) {
        match self.in_flight.take() {
            Some(Op::Measure { written, cause }) => (written, cause),
            other => panic!("a close outcome while awaiting {other:?}"),
        }
    }

    /// The length of the read issued for `token`; a bug in the shell if none was.
    pub fn read_in_flight(&self, token: Token) -> usize {
        match self.in_flight {
            Some(Op::Read(t, len)) if t == token => len,
            other => panic!("a read of {token:?} while awaiting {other:?}"),
        }
    }

    /// What the write issued for `token` sends; a bug in the shell if none was.
    pub fn write_in_flight(&self, token: Token) -> Source {
        match self.in_flight {
            Some(Op::Write(t, source)) if t == token => source,
            other => panic!("a write to {token:?} while awaiting {other:?}"),
        }
    }

    /// The read or write in flight was reported (checked by the `*_in_flight` call before).
    pub fn finish_io(&mut self) {
        self.in_flight = None;
    }
}
