//! The listening socket as the core sees it: whether a connection may wait in its accept queue, and
//! at the stop how much of that queue is still to be accepted before it closes.

/// The listener's state; every change is a method below.
#[derive(Debug, PartialEq, Eq)]
pub enum Listener {
    /// Accepting. `backlog`: a connection may be waiting (an edge came and no accept found the
    /// queue empty since); `queued`: the listener is in the ready queue.
    Open {
        backlog: bool,
        queued: bool,
    },
    /// The stop came: accepting what the kernel had queued when the worker took it (`left`, once
    /// the kernel said; until the queue reads empty if it could not), so no handshake-completed
    /// client is reset, then closing. Connections queued later are left to the kernel.
    Draining {
        queued: bool,
        left: Option<usize>,
    },
    Closed,
}

impl Listener {
    pub fn new() -> Self {
        Listener::Open {
            backlog: false,
            queued: false,
        }
    }

    pub fn is_draining(&self) -> bool {
        matches!(self, Listener::Draining { .. })
    }

    /// A readable edge: a connection may wait. True when that gives the listener work (it is
    /// open; a draining one already knows what it must accept).
    pub fn on_readable(&mut self) -> bool {
        match self {
            Listener::Open { backlog, .. } => {
                *backlog = true;
                true
            }
            Listener::Draining { .. } | Listener::Closed => false,
        }
    }

    /// An accept found the queue empty: wait for a new edge.
    pub fn on_empty(&mut self) {
        if let Listener::Open { backlog, .. } = self {
            *backlog = false;
        }
    }

    /// The stop: from now on only the queue the kernel holds is accepted. True when the listener
    /// was open, so the queue is to be measured.
    pub fn start_draining(&mut self) -> bool {
        if !matches!(self, Listener::Open { .. }) {
            return false;
        }
        *self = Listener::Draining {
            queued: false,
            left: None,
        };
        true
    }

    /// The kernel said how many connections the queue held at the stop. True when none: the
    /// listener closes at once.
    pub fn on_backlog(&mut self, queued: Option<usize>) -> bool {
        let Listener::Draining { left, .. } = self else {
            return false;
        };
        *left = queued;
        queued == Some(0)
    }

    /// Counts an accept against the queue the stop found (`took_one`: it took a connection off
    /// the queue). True when nothing of that queue is left: the listener closes.
    pub fn count_accept(&mut self, took_one: bool) -> bool {
        let Listener::Draining { left: Some(n), .. } = self else {
            return false;
        };
        if took_one {
            *n = n.saturating_sub(1);
        }
        *n == 0
    }

    /// It has a connection to accept: an open one when an edge came and accepting is not backing
    /// off; a draining one until the queue the stop found is accepted.
    pub fn can_accept(&self, backing_off: bool) -> bool {
        match *self {
            Listener::Open { backlog, .. } => backlog && !backing_off,
            Listener::Draining { left, .. } => left != Some(0),
            Listener::Closed => false,
        }
    }

    /// Marks it queued; true when it was not yet (so the caller queues it once).
    pub fn enqueue(&mut self) -> bool {
        match self.queued_flag() {
            Some(queued) if !*queued => {
                *queued = true;
                true
            }
            _ => false,
        }
    }

    /// Its turn ended: it stays queued exactly when it can accept `again`.
    pub fn requeue(&mut self, again: bool) {
        if let Some(queued) = self.queued_flag() {
            *queued = again;
        }
    }

    /// Closes it; true when it was not closed yet (so the close is asked of the shell once).
    pub fn close(&mut self) -> bool {
        if *self == Listener::Closed {
            return false;
        }
        *self = Listener::Closed;
        true
    }

    pub fn is_closed(&self) -> bool {
        *self == Listener::Closed
    }

    /// The flag that says the listener is in the ready queue, while it can be.
    fn queued_flag(&mut self) -> Option<&mut bool> {
        match self {
            Listener::Open { queued, .. } | Listener::Draining { queued, .. } => Some(queued),
            Listener::Closed => None,
        }
    }
}
