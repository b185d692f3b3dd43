//! The model's epoll instance: the ready list, where edges for one token merge into one entry as
//! epoll merges them, the waker's pending wake-up, and a wait's delivery with its faults (an
//! interrupted wait, a batch cut short, a spurious edge, a stale event).
//!
//! An edge carries the socket's standing conditions too (urgent data, the peer's FIN, a reset), as
//! epoll reports the whole current mask with each edge.

use super::{Kernel, Nanos};
use crate::dispatch::{Readiness, Token};
use crate::sim::entropy::Entropy;
use crate::sim::faults::Fault;
use crate::sim::readiness::{Union, NONE, READABLE, WRITABLE};
use crate::sim::trace::Ev;

/// The epoll instance: its ready list and the waker's pending wake-up.
#[derive(Debug, Default)]
pub(super) struct Epoll {
    /// Merged pending edges, in the order they were first raised.
    ready: Vec<(Token, Readiness)>,
    waker: bool,
    /// Tokens of closed connections, for stale events.
    closed: Vec<Token>,
    /// The worker closed its epoll instance and wake-up channel.
    pub(super) shut: bool,
}

impl Epoll {
    /// A connection's socket closed: its pending events go, its token may come back stale.
    pub(super) fn forget(&mut self, token: Token) {
        self.closed.push(token);
        self.drop_events_of(token);
    }

    pub(super) fn drop_events_of(&mut self, token: Token) {
        self.ready.retain(|(t, _)| *t != token);
    }
}

impl<E> Kernel<E> {
    /// An edge or the wake-up is waiting to be delivered.
    pub fn has_ready(&self) -> bool {
        !self.epoll.ready.is_empty() || self.epoll.waker
    }

    /// The wake-up is pending: the stop was asked for and not yet consumed.
    pub fn waker_pending(&self) -> bool {
        self.epoll.waker
    }

    /// The worker closed its epoll instance and wake-up channel.
    pub fn shell_closed(&self) -> bool {
        self.epoll.shut
    }

    /// A readable edge for `token` waits in the ready list: input the worker has not heard of.
    pub fn readable_pending(&self, token: Token) -> bool {
        (self.epoll.ready.iter()).any(|(t, r)| *t == token && r.readable)
    }

    /// Raises an edge on a link's socket if the worker registered it and has not closed it.
    pub(super) fn edge(&mut self, link: usize, r: Readiness) {
        if r == NONE {
            return;
        }
        let l = &self.links[link];
        if let Some(token) = l.token.filter(|_| l.is_open()) {
            let standing = l.standing();
            self.raise(token, r.union(standing));
        }
    }

    /// Merges an edge into the ready list: one entry per token, flags or-ed, as epoll does.
    pub(super) fn raise(&mut self, token: Token, r: Readiness) {
        match self.epoll.ready.iter_mut().find(|(t, _)| *t == token) {
            Some((_, old)) => *old = old.union(r),
            None => self.epoll.ready.push((token, r)),
        }
    }

    /// An edge without a change of state (epoll allows them; they must be harmless).
    pub fn inject_edge(&mut self, link: usize, r: Readiness) {
        self.note(Ev::Edge(link, r));
        self.edge(link, r);
    }

    /// An event for a closed connection's token.
    pub fn inject_stale(&mut self, token: Token, r: Readiness) {
        self.raise(token, r);
    }

    /// Takes the pending event of `token` out of the ready list, as one `epoll_wait` reporting it.
    pub fn take_event(&mut self, token: Token) -> Option<Readiness> {
        let at = self.epoll.ready.iter().position(|(t, _)| *t == token)?;
        Some(self.epoll.ready.remove(at).1)
    }

    /// A listener edge.
    pub fn listener_edge(&mut self) {
        if self.listener.open {
            self.raise(Token::LISTENER, READABLE);
        }
    }

    /// The wake-up for shutdown: pending until the worker consumes it.
    pub fn request_stop(&mut self) {
        self.epoll.waker = true;
    }

    /// The worker consumes the wake-up.
    pub fn clear_wake(&mut self) {
        self.epoll.waker = false;
    }
}

impl<E: Entropy> Kernel<E> {
    /// `epoll_wait`: takes the ready list, with its faults, and returns the batch it reports.
    pub fn deliver(&mut self, deadline: Option<Nanos>) -> Vec<(Token, Readiness)> {
        self.counts.waits += 1;
        if self.fault(Fault::WaitEintr) {
            self.note(Ev::WaitEintr);
            return Vec::new();
        }
        if !self.links.is_empty() && self.fault(Fault::SpuriousEdge) {
            let link = self.rng.below(self.links.len() as u64) as usize;
            let r = if self.rng.chance(500) {
                READABLE
            } else {
                WRITABLE
            };
            self.edge(link, r);
        }
        let mut batch = std::mem::take(&mut self.epoll.ready);
        if batch.len() > 1 && self.fault(Fault::ShortBatch) {
            let keep = self.rng.upto(batch.len() as u64 - 1) as usize;
            self.epoll.ready = batch.split_off(keep);
        }
        if !self.epoll.closed.is_empty() && self.fault(Fault::StaleEvent) {
            let pick = self.rng.below(self.epoll.closed.len() as u64) as usize;
            let stale = self.epoll.closed[pick];
            batch.push((stale, READABLE.union(WRITABLE)));
        }
        if self.epoll.waker {
            batch.push((Token::WAKER, READABLE));
        }
        self.note(Ev::Wait {
            at: self.now(),
            deadline,
            events: batch.len(),
        });
        batch
    }
}
