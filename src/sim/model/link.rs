//! One simulated TCP connection, both ends: what the client sent and the server has not read; what
//! the server wrote that the client's kernel has not acknowledged (the server's send queue), and
//! what it acknowledged that the client has not read (the client's receive buffer, bounded by its
//! window); the FINs and resets.
//!
//! The client's kernel acknowledges what lands in its receive buffer, whether or not the client
//! reads it: bytes land when the kernel says so ([`Link::land`]), as far as the window allows. Our
//! FIN lands after the last byte, and only into an open window. What the client's kernel
//! acknowledged ([`Downstream::acked`]) is kept apart from what the client read.
//!
//! Client-side operations return the readiness they raise on the server's socket, the way Linux
//! reports it: new input raises readable; an urgent byte (`MSG_OOB`) raises readable + PRI; a FIN
//! raises readable + RDHUP (+ HUP and writable once both directions are shut); a reset raises
//! everything; room freed after a full or partial write raises writable once at least
//! `write_space` bytes are free.
//!
//! Urgent data is inline (`SO_OOBINLINE`), and a read that has copied something stops at the
//! urgent mark, the byte before the urgent one, with more queued and no new edge: the one short
//! read that does not mean the socket is empty.

use std::collections::VecDeque;

use crate::dispatch::{Readiness, Token};
use crate::sim::readiness::{NONE, READABLE, WRITABLE};
use crate::sim::trace::Nanos;

/// Where the connection is in its life, as the server's kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// In the listener's backlog.
    Queued,
    /// Accepted: the server holds a socket for it.
    Open,
    /// The server closed its socket.
    Closed,
    /// Never accepted: aborted in the backlog, or reset when the listener closed.
    Lost,
}

/// How the client broke the connection, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Break {
    Intact,
    /// The client sent RST: reads fail with `ECONNRESET`, writes with `EPIPE`.
    Reset,
    /// The client vanished: reads reach EOF after what is queued, writes fail with `EPIPE`.
    Gone,
}

/// Client to server.
#[derive(Debug, Default)]
pub struct Upstream {
    /// Every byte the client sent, in order: the input the echo is checked against.
    pub sent: Vec<u8>,
    /// How much of `sent` the server has read (echoed or discarded); the rest is queued.
    pub read: usize,
    /// Most bytes that may wait unread (the server's receive buffer).
    pub cap: usize,
    /// The client shut its write side.
    pub fin: bool,
    /// Where in `sent` the latest urgent byte is, until a read passes it (one mark at a time:
    /// a newer urgent byte moves it).
    pub urgent_at: Option<usize>,
}

impl Upstream {
    pub fn queued(&self) -> usize {
        self.sent.len() - self.read
    }

    /// How much a read of up to `want` bytes copies: it stops before the urgent byte once it has
    /// copied something.
    pub fn readable(&self, want: usize) -> usize {
        let k = want.min(self.queued());
        match self.urgent_at {
            Some(mark) if mark > self.read && mark < self.read + k => mark - self.read,
            _ => k,
        }
    }

    /// Takes `k` bytes; a read past the urgent byte clears its mark.
    pub fn take(&mut self, k: usize) -> &[u8] {
        let from = self.read;
        self.read += k;
        if self.urgent_at.is_some_and(|mark| mark < self.read) {
            self.urgent_at = None;
        }
        &self.sent[from..from + k]
    }
}

/// Server to client.
#[derive(Debug, Default)]
pub struct Downstream {
    /// Written by the server and not yet acknowledged by the client's kernel.
    pub queue: VecDeque<u8>,
    /// Most bytes that may be in flight (the server's send buffer).
    pub cap: usize,
    /// Free room that raises the writable edge owed after a full or partial write.
    pub write_space: usize,
    /// A full or partial write happened: room must raise a writable edge.
    pub want_write: bool,
    /// The server sent FIN (shut its write side or closed), after `queue`.
    pub fin: bool,
    /// Acknowledged by the client's kernel and not yet read by the client: its receive buffer.
    pub inbox: VecDeque<u8>,
    /// The client's receive buffer: the most that may be acknowledged and unread.
    pub window: usize,
    /// Bytes the client's kernel acknowledged, in all: what was delivered.
    pub acked: u64,
    /// The client's kernel acknowledged our FIN.
    pub fin_acked: bool,
    /// Since when a late acknowledgement has held back part of `queue` (or our FIN).
    pub held_since: Option<Nanos>,
    /// Bytes of the echo the client has read.
    pub received: usize,
    /// The client read the server's FIN.
    pub saw_eof: bool,
}

impl Downstream {
    pub fn room(&self) -> usize {
        self.cap - self.queue.len()
    }

    /// Echo the client has yet to read: landed or still on its way.
    pub fn unread(&self) -> usize {
        self.inbox.len() + self.queue.len()
    }

    /// Room in the client's window.
    fn window_room(&self) -> usize {
        self.window.saturating_sub(self.inbox.len())
    }
}

/// One connection.
#[derive(Debug)]
pub struct Link {
    pub stage: Stage,
    pub token: Option<Token>,
    pub up: Upstream,
    pub down: Downstream,
    pub broken: Break,
    /// The server shut its write side.
    pub write_shut: bool,
    /// A RST from the server's kernel reached the client (it sent to a closed socket): its sends
    /// fail from then on, while it still reads what its kernel holds.
    pub rst_to_client: bool,
    /// A RST from the server destroyed echo before it landed: it closed with input unread, or the
    /// client sent to a socket closed with echo unacknowledged. The client's next call fails.
    pub reset_by_server: bool,
    /// A RST from the server took our FIN before it landed: the client reads the whole echo, then
    /// the reset.
    pub fin_destroyed: bool,
    /// When a byte last moved on it, either way, or it was opened.
    pub last_active: u64,
}

impl Link {
    pub fn new(rcv_cap: usize, snd_cap: usize, write_space: usize, window: usize) -> Link {
        Link {
            stage: Stage::Queued,
            token: None,
            up: Upstream {
                cap: rcv_cap.max(1),
                ..Upstream::default()
            },
            down: Downstream {
                cap: snd_cap.max(1),
                write_space: write_space.clamp(1, snd_cap.max(1)),
                window: window.max(1),
                ..Downstream::default()
            },
            broken: Break::Intact,
            write_shut: false,
            rst_to_client: false,
            reset_by_server: false,
            fin_destroyed: false,
            last_active: 0,
        }
    }

    /// The server holds an open socket for it.
    pub fn is_open(&self) -> bool {
        self.stage == Stage::Open
    }

    /// What the client may still send without exceeding the receive buffer.
    pub fn send_room(&self) -> usize {
        self.up.cap.saturating_sub(self.up.queued())
    }

    /// The client may still send: its own end is intact and not shut. Whether the server closed
    /// its socket the client cannot know; sending then is answered with RST.
    pub fn client_can_send(&self) -> bool {
        matches!(self.stage, Stage::Queued | Stage::Open | Stage::Closed)
            && self.broken == Break::Intact
            && !self.up.fin
            && !self.rst_to_client
    }

    /// The readiness of the server's socket right now, as `EPOLL_CTL_ADD` reports it.
    pub fn current_readiness(&self) -> Readiness {
        let reset = self.broken == Break::Reset;
        let ended = self.up.fin || self.broken != Break::Intact;
        Readiness {
            readable: self.up.queued() > 0 || ended,
            writable: true,
            read_closed: ended,
            hangup: reset || self.broken == Break::Gone,
            error: reset,
            urgent: self.up.urgent_at.is_some(),
        }
    }

    /// The conditions every event of the server's socket reports while they last.
    pub fn standing(&self) -> Readiness {
        let reset = self.broken == Break::Reset;
        let ended = self.up.fin || self.broken != Break::Intact;
        Readiness {
            read_closed: ended,
            hangup: reset || self.broken == Break::Gone || (self.up.fin && self.write_shut),
            error: reset,
            urgent: self.up.urgent_at.is_some(),
            ..NONE
        }
    }

    // ----- the client's side -----

    /// The client sends `bytes` (the caller keeps them within `send_room`).
    pub fn send(&mut self, bytes: &[u8]) -> Readiness {
        self.up.sent.extend_from_slice(bytes);
        READABLE
    }

    /// The client sends `bytes` with `MSG_OOB`: the last of them is urgent.
    pub fn send_urgent(&mut self, bytes: &[u8]) -> Readiness {
        self.up.sent.extend_from_slice(bytes);
        if !bytes.is_empty() {
            self.up.urgent_at = Some(self.up.sent.len() - 1);
        }
        Readiness {
            urgent: true,
            ..READABLE
        }
    }

    /// The client shuts its write side.
    pub fn fin(&mut self) -> Readiness {
        self.up.fin = true;
        Readiness {
            read_closed: true,
            hangup: self.write_shut,
            writable: self.write_shut,
            ..READABLE
        }
    }

    /// Up to `max` units of the send queue land in the client's receive buffer, as far as its
    /// window allows, and are acknowledged: bytes, then our FIN as one more unit if it is next
    /// and the window is open. Returns the writable edge the freed send buffer raises, if owed.
    pub fn land(&mut self, max: usize) -> Readiness {
        if self.broken != Break::Intact {
            // The client's kernel is gone or reset the connection: nothing lands any more.
            return NONE;
        }
        let d = &mut self.down;
        let k = max.min(d.queue.len()).min(d.window_room());
        let landed: Vec<u8> = d.queue.drain(..k).collect();
        d.inbox.extend(landed);
        d.acked += k as u64;
        if d.fin && d.queue.is_empty() && d.window_room() > 0 && max > k {
            d.fin_acked = true;
        }
        if d.want_write && d.room() >= d.write_space {
            d.want_write = false;
            return WRITABLE;
        }
        NONE
    }

    /// The client reads up to `max` bytes of what landed; its window opens again.
    pub fn recv(&mut self, max: usize) -> Vec<u8> {
        let k = max.min(self.down.inbox.len());
        let bytes: Vec<u8> = self.down.inbox.drain(..k).collect();
        self.down.received += k;
        bytes
    }

    /// The client reads the server's FIN, once everything before it is read.
    pub fn read_eof(&mut self) -> bool {
        let at_eof = self.down.fin_acked && self.down.inbox.is_empty();
        self.down.saw_eof |= at_eof;
        at_eof
    }

    /// The client aborts with RST: its kernel forgets what it held, ours what it sent.
    pub fn reset(&mut self) -> Readiness {
        self.broken = Break::Reset;
        self.down.queue.clear();
        self.down.inbox.clear();
        Readiness {
            readable: true,
            writable: true,
            read_closed: true,
            hangup: true,
            error: true,
            urgent: false,
        }
    }

    /// The client vanishes: nothing more comes, nothing more can be sent to it.
    pub fn vanish(&mut self) -> Readiness {
        self.broken = Break::Gone;
        self.up.fin = true;
        Readiness {
            hangup: true,
            ..NONE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fin_after_the_servers_shutdown_hangs_up_both_ways() {
        let mut l = Link::new(10, 10, 1, 10);
        assert!(!l.fin().hangup);
        let mut l = Link::new(10, 10, 1, 10);
        l.write_shut = true;
        let r = l.fin();
        assert!(r.hangup && r.writable && r.read_closed && r.readable);
    }

    #[test]
    fn freed_room_raises_writable_only_when_owed_and_large_enough() {
        let mut l = Link::new(10, 10, 4, 100);
        l.down.queue.extend([1u8; 10]);
        assert_eq!(l.land(5), NONE, "no write was refused");
        l.down.queue.extend([1u8; 5]);
        l.down.want_write = true;
        assert_eq!(l.land(3), NONE, "3 free, 4 needed");
        assert_eq!(l.land(1), WRITABLE);
        assert!(!l.down.want_write);
    }

    #[test]
    fn the_peers_kernel_acknowledges_what_lands_whether_or_not_it_is_read() {
        let mut l = Link::new(10, 100, 1, 8);
        l.down.queue.extend(0..20u8);
        l.land(usize::MAX);
        assert_eq!((l.down.acked, l.down.inbox.len()), (8, 8), "a full window");
        assert_eq!(l.down.received, 0, "nothing read");
        l.down.fin = true;
        l.land(usize::MAX);
        assert!(!l.down.fin_acked, "bytes before the FIN wait");
        l.recv(1);
        l.land(1);
        assert_eq!(l.down.acked, 9, "one unit landed: a byte");
        assert_eq!(l.recv(8), (1..9u8).collect::<Vec<_>>());
        l.land(usize::MAX);
        assert_eq!(l.down.acked, 17);
        l.recv(3);
        l.land(usize::MAX);
        assert_eq!(l.down.acked, 20, "every byte landed");
        assert_eq!(l.down.window_room(), 0, "and fills the window exactly");
        assert!(!l.down.fin_acked, "a FIN does not go into a zero window");
        assert!(!l.read_eof());
        l.recv(1);
        l.land(usize::MAX);
        assert!(l.down.fin_acked);
        assert_eq!(l.recv(20).len(), 7);
        assert!(l.read_eof());
    }

    #[test]
    fn nothing_lands_once_the_peer_is_gone() {
        let mut l = Link::new(10, 100, 1, 8);
        l.down.queue.extend([1u8; 5]);
        l.land(2);
        l.vanish();
        l.land(usize::MAX);
        assert_eq!(l.down.acked, 2);
        let mut l = Link::new(10, 100, 1, 8);
        l.down.queue.extend([1u8; 5]);
        l.land(3);
        l.reset();
        assert_eq!(
            (l.down.acked, l.down.inbox.len()),
            (3, 0),
            "acknowledged, then forgotten"
        );
    }

    #[test]
    fn a_read_stops_at_the_urgent_mark_once_it_has_copied_something() {
        let mut l = Link::new(usize::MAX, 10, 1, 10);
        l.send(&[1; 1000]);
        let r = l.send_urgent(&[2]);
        assert!(r.urgent && r.readable);
        l.send(&[3; 1000]);
        assert_eq!(l.up.readable(4096), 1000, "stops before the urgent byte");
        assert_eq!(l.up.take(1000), &[1; 1000][..]);
        // At the mark: the urgent byte comes inline with what follows.
        assert_eq!(l.up.readable(4096), 1001);
        let rest = l.up.take(1001).to_vec();
        assert_eq!((rest[0], rest[1000]), (2, 3));
        assert_eq!(l.up.urgent_at, None);
        // A read too small to reach the mark is not cut.
        l.send_urgent(&[4; 10]);
        assert_eq!(l.up.readable(5), 5);
    }

    #[test]
    fn registration_reports_what_is_already_true() {
        let mut l = Link::new(10, 10, 1, 10);
        assert_eq!(
            l.current_readiness(),
            Readiness {
                writable: true,
                ..NONE
            }
        );
        l.send(b"x");
        l.fin();
        let r = l.current_readiness();
        assert!(r.readable && r.read_closed && !r.error);
        l.reset();
        assert!(l.current_readiness().error);
    }
}
