//! One connection as the core sees it: its socket, its pending output, what the last edges and
//! outcomes said about each direction, every change of that state, and the one function that
//! decides its next step.

use super::outbuf::OutBuf;
use super::{AckOutcome, ConnError, Readiness};

/// What the core knows of a connection's receive side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Not read yet: the registration edge will say whether input waits. Only a read proves the
    /// socket empty, which the stop needs before it closes.
    Fresh,
    /// The last read found the socket empty: new input will raise a new edge.
    Drained,
    /// An edge came: input may be waiting. A short read means the socket is empty.
    Ready,
    /// Input may be waiting and a short read proves nothing, only would-block or EOF does: the
    /// peer finished (reads go on to EOF), or urgent data came (a read stops short at its mark).
    Exact,
    /// A read returned 0: the peer sent everything.
    Ended,
}

/// What the core knows of a connection's send side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The send buffer may have room.
    Open,
    /// A write was short or would block: wait for the writable edge.
    Blocked,
    /// Our FIN is sent (the stop): nothing more is written, input is only discarded, and the
    /// connection closes once the peer holds every byte.
    Shut(Delivery),
    /// An error edge or outcome: the connection is closed at its next turn, and what the peer
    /// had not acknowledged is counted as lost to the error.
    Failed(ConnError),
    /// The drain deadline passed: input that arrived before the stop is read out and dropped (so
    /// the close sends no reset), then the connection is closed.
    Expired,
}

/// After our FIN: whether the kernel is to be asked if the peer holds every byte.
///
/// The question is asked when the check timer fires, whatever the input does, so a peer that
/// keeps sending cannot put it off. After a "yes" the input is read until it reads empty before
/// the close: input that arrived since is read and discarded, so the close meets no unread input
/// and sends no RST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Waiting for the check timer.
    Pending,
    /// The check timer fired: ask.
    Due,
    /// The peer holds every byte: read what may have arrived, then close.
    Delivered,
}

/// The next thing a connection needs, in priority order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Close,
    /// Write the pending output.
    Write,
    /// Shut the write side (the stop, with nothing left to write).
    ShutdownWrite,
    /// Read up to this many bytes.
    Read(usize),
    /// Ask the kernel whether the peer acknowledged everything (the input reads empty).
    CheckDelivery,
    /// Ask the kernel how much input arrived before the stop (the stop's cut).
    MeasureInput,
}

/// How much a read may take.
#[derive(Clone, Copy, Debug)]
pub struct Room {
    /// The pending-output cap.
    pub cap: usize,
    /// The scratch buffer's length.
    pub scratch: usize,
}

/// A connection's state. Its socket and pending output are the caller's to use; every other
/// field changes only through the methods below.
#[derive(Debug)]
pub struct Conn<S> {
    pub sock: S,
    pub pending: OutBuf,
    input: Input,
    output: Output,
    /// The connection is in the ready queue (so no token is queued twice).
    queued: bool,
    /// Idle-clock tick of the last byte read or written (0 without an idle timeout).
    last_active: u32,
    /// Bytes handed to the kernel, for the delivery checks and the count at the close.
    written: u64,
    /// After the stop: input that arrived before it and is still to be echoed (`None` until the
    /// kernel said how much; a receive queue's count fits 32 bits).
    owed: Option<u32>,
    /// The peer has sent something: a byte was read.
    heard: bool,
    /// After the stop, a peer not heard from yet: its first bytes, racing the cut, are echoed if
    /// they come before the first delivery check (a client that connected just before the stop
    /// sends its request just after).
    first_request: bool,
}

impl<S> Conn<S> {
    pub fn new(sock: S, last_active: u32) -> Self {
        Conn {
            sock,
            pending: OutBuf::default(),
            input: Input::Fresh,
            output: Output::Open,
            queued: false,
            last_active,
            written: 0,
            owed: None,
            heard: false,
            first_request: false,
        }
    }

    /// Records an epoll event.
    pub fn on_readiness(&mut self, r: Readiness) {
        if self.input != Input::Ended {
            if r.read_closed || r.hangup || r.urgent {
                self.input = Input::Exact;
            } else if r.readable && matches!(self.input, Input::Fresh | Input::Drained) {
                self.input = Input::Ready;
            }
        }
        if (r.writable || r.hangup) && self.output == Output::Blocked {
            self.output = Output::Open;
        }
        if r.error {
            self.fail(ConnError::Other);
        }
    }

    /// An error: the connection is closed at its next turn. The first error is the one kept.
    pub fn fail(&mut self, why: ConnError) {
        if !matches!(self.output, Output::Failed(_)) {
            self.output = Output::Failed(why);
        }
    }

    /// Nothing written, or the kernel proved the peer holds every byte (whatever became of our
    /// FIN): a close needs no question.
    pub fn delivered(&self) -> bool {
        self.written == 0 || self.output == Output::Shut(Delivery::Delivered)
    }

    /// A read returned `n` of the `asked` bytes at idle-clock tick `tick`.
    pub fn on_data(&mut self, n: usize, asked: usize, tick: u32) {
        self.last_active = tick;
        if n < asked && self.input == Input::Ready {
            self.input = Input::Drained;
        }
        self.heard = true;
        // The first request is one read: what comes after it came after the cut.
        self.first_request = false;
        if let Some(owed) = &mut self.owed {
            *owed = owed.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }

    /// A read found the socket empty. (What the stop's cut counted stays owed: the kernel said it
    /// was there, so its edge will come.)
    pub fn on_would_block(&mut self) {
        if self.input != Input::Ended {
            self.input = Input::Drained;
        }
    }

    /// A read returned 0: the peer sent everything, and nothing more is owed.
    pub fn on_eof(&mut self) {
        self.input = Input::Ended;
        self.first_request = false;
        self.owed = self.owed.map(|_| 0);
    }

    /// The stop's cut: `n` bytes had arrived when the worker took the stop; they are echoed like
    /// bytes read before it.
    pub fn on_cut(&mut self, n: u32) {
        self.owed = Some(n);
        let silent = !self.heard && self.pending.is_empty() && self.written == 0;
        self.first_request = n == 0 && silent && self.input != Input::Ended;
        if n > 0 && self.input != Input::Ended {
            // They are there; reads go on until they are all read, whatever a short read says.
            self.input = Input::Exact;
        }
    }

    /// A write took `written` of the `offered` bytes at idle-clock tick `tick` (0 when it would
    /// block or failed). A short write waits for the writable edge.
    pub fn on_written(&mut self, written: usize, offered: usize, tick: u32) {
        self.written += written as u64;
        if written > 0 {
            self.last_active = tick;
        }
        if written < offered && self.output == Output::Open {
            self.output = Output::Blocked;
        }
    }

    /// Our FIN is asked for (the stop, with nothing left to write): nothing more is written, and
    /// the peer's acknowledgement is awaited.
    pub fn shut(&mut self) {
        self.output = Output::Shut(Delivery::Pending);
    }

    /// The kernel answered a delivery check. True when the peer does not hold every byte yet, so
    /// it is to be asked again later. Once it does, input that may have come since the last read
    /// is read before the close (what a read knows already, like a read stopped at an urgent
    /// mark, stays).
    pub fn on_delivery(&mut self, outcome: AckOutcome) -> bool {
        if !matches!(self.output, Output::Shut(_)) {
            return false;
        }
        if outcome.covers(self.written) {
            self.output = Output::Shut(Delivery::Delivered);
            if self.input == Input::Drained {
                self.input = Input::Ready;
            }
            false
        } else {
            self.output = Output::Shut(Delivery::Pending);
            true
        }
    }

    /// The delivery-check timer fired: a connection waiting for its peer's acknowledgement is to
    /// ask now, and the grace for a first request ends (no request came: our FIN). True when
    /// either gives it work.
    pub fn on_check_timer(&mut self) -> bool {
        if self.output == Output::Shut(Delivery::Pending) {
            self.output = Output::Shut(Delivery::Due);
            true
        } else if self.first_request {
            self.first_request = false;
            true
        } else {
            false
        }
    }

    /// The drain deadline passed with input owed: it is read out and dropped, then the
    /// connection closes.
    pub fn expire(&mut self) {
        self.output = Output::Expired;
    }

    /// Marks it queued when it has work and is not queued yet; true when the caller must queue it.
    pub fn enqueue(&mut self, stopping: bool, room: Room) -> bool {
        if !self.queued && self.next_step(stopping, room).is_some() {
            self.queued = true;
            return true;
        }
        false
    }

    /// Its turn ended: it stays queued exactly when it still has work; true when the caller must
    /// queue it again.
    pub fn requeue(&mut self, stopping: bool, room: Room) -> bool {
        self.queued = self.next_step(stopping, room).is_some();
        self.queued
    }

    pub fn output(&self) -> Output {
        self.output
    }

    pub fn has_failed(&self) -> bool {
        matches!(self.output, Output::Failed(_))
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn last_active(&self) -> u32 {
        self.last_active
    }

    /// Input that arrived before the stop is still to be read.
    pub fn owes_input(&self) -> bool {
        self.owed.is_some_and(|owed| owed > 0)
    }

    /// After the stop, the grace for a first request has not ended.
    pub fn awaits_first_request(&self) -> bool {
        self.first_request
    }

    /// The connection's next step, or `None` when it has nothing to do until an edge or timer.
    /// The scheduler queues a connection exactly when this is `Some`, so "has work" and "what to
    /// do" can never disagree.
    pub fn next_step(&self, stopping: bool, room: Room) -> Option<Step> {
        if matches!(self.output, Output::Failed(_)) {
            return Some(Step::Close);
        }
        if self.output == Output::Expired {
            return match self.owed {
                Some(owed) if owed > 0 => Some(Step::Read(room.scratch.min(to_len(owed)))),
                _ => Some(Step::Close),
            };
        }
        let cut_taken = matches!(self.output, Output::Shut(_)) || self.owed.is_some();
        if stopping && !cut_taken {
            // The stop's cut comes first: how much input arrived before it.
            return Some(Step::MeasureInput);
        }
        let owed = self.owed.unwrap_or(0);
        if !self.pending.is_empty() {
            if self.output == Output::Open {
                return Some(Step::Write);
            }
        } else if stopping
            && owed == 0
            && !self.first_request
            && !matches!(self.output, Output::Shut(_))
        {
            // A peer that finished is served like any other: our FIN, then delivery.
            return Some(Step::ShutdownWrite);
        } else if self.input == Input::Ended && !stopping {
            // Everything read was written back: closing sends FIN after it.
            return Some(Step::Close);
        }
        if let Output::Shut(delivery) = self.output {
            // After our FIN input is read only to be discarded; the kernel is asked about
            // delivery when the timer says, and the close waits for the input to read empty.
            return match (delivery, self.input) {
                (Delivery::Due, _) => Some(Step::CheckDelivery),
                (_, Input::Fresh | Input::Ready | Input::Exact) => Some(Step::Read(room.scratch)),
                (Delivery::Delivered, Input::Drained | Input::Ended) => Some(Step::Close),
                (Delivery::Pending, Input::Drained | Input::Ended) => None,
            };
        }
        let waiting = stopping && owed == 0 && !self.first_request;
        if !matches!(self.input, Input::Ready | Input::Exact) || waiting {
            // After the stop only what arrived before it (or a first request) is read for echo.
            return None;
        }
        let free = room.cap - self.pending.len();
        let most = if stopping && owed > 0 {
            to_len(owed)
        } else {
            usize::MAX
        };
        (free > 0).then(|| Step::Read(free.min(room.scratch).min(most)))
    }
}

/// A byte count as a buffer length (saturating on 32-bit targets).
fn to_len(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: Room = Room { cap: 8, scratch: 5 };

    fn conn() -> Conn<()> {
        Conn::new((), 0)
    }

    #[test]
    fn a_new_connection_waits_for_its_first_edge() {
        assert_eq!(conn().next_step(false, ROOM), None);
    }

    #[test]
    fn after_the_stop_a_connection_never_read_is_read_before_its_delivery_is_checked() {
        // Its input is unknown, and a close with unread input would send RST.
        let mut c = conn();
        c.output = Output::Shut(Delivery::Pending);
        assert_eq!(c.next_step(true, ROOM), Some(Step::Read(5)));
        c.on_would_block();
        assert_eq!(c.next_step(true, ROOM), None, "wait for the check timer");
        c.output = Output::Shut(Delivery::Delivered);
        c.input = Input::Fresh;
        assert_eq!(
            c.next_step(true, ROOM),
            Some(Step::Read(5)),
            "read before the close"
        );
    }

    #[test]
    fn a_due_delivery_check_comes_before_any_read() {
        // A peer that keeps sending after the stop cannot put the check off.
        let mut c = conn();
        c.output = Output::Shut(Delivery::Due);
        for input in [
            Input::Fresh,
            Input::Ready,
            Input::Exact,
            Input::Drained,
            Input::Ended,
        ] {
            c.input = input;
            assert_eq!(
                c.next_step(true, ROOM),
                Some(Step::CheckDelivery),
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_finished_peer_is_closed_at_once_outside_a_stop_and_served_like_any_other_in_it() {
        let mut c = conn();
        c.input = Input::Ended;
        assert_eq!(c.next_step(false, ROOM), Some(Step::Close));
        assert_eq!(c.next_step(true, ROOM), Some(Step::MeasureInput));
        c.on_cut(0);
        assert_eq!(c.next_step(true, ROOM), Some(Step::ShutdownWrite));
        c.output = Output::Shut(Delivery::Pending);
        assert_eq!(
            c.next_step(true, ROOM),
            None,
            "wait for the peer's acknowledgement"
        );
        c.output = Output::Shut(Delivery::Delivered);
        assert_eq!(c.next_step(true, ROOM), Some(Step::Close));
    }

    #[test]
    fn a_connection_costs_at_most_forty_bytes_of_state() {
        // With the table's slot around it, an idle connection must stay under the 64 B target.
        let size = std::mem::size_of::<Conn<std::os::fd::OwnedFd>>();
        assert!(size <= 40, "{size} bytes per connection");
    }

    #[test]
    fn a_close_needs_no_question_only_with_nothing_written_or_delivery_proven() {
        let mut c = conn();
        assert!(c.delivered(), "nothing written");
        c.written = 100;
        assert!(!c.delivered());
        c.output = Output::Shut(Delivery::Pending);
        assert!(!c.delivered());
        c.output = Output::Shut(Delivery::Delivered);
        assert!(c.delivered());
    }

    #[test]
    fn input_reads_at_most_the_room_left_under_the_cap() {
        let mut c = conn();
        c.on_readiness(Readiness::READABLE);
        assert_eq!(c.next_step(false, ROOM), Some(Step::Read(5)));
        c.pending.push(&[0; 6], 8);
        c.output = Output::Blocked;
        assert_eq!(c.next_step(false, ROOM), Some(Step::Read(2)));
        c.pending.push(&[0; 2], 8);
        assert_eq!(c.next_step(false, ROOM), None, "at the cap: paused");
    }

    #[test]
    fn a_short_read_drains_unless_the_peer_finished() {
        let mut c = conn();
        c.on_readiness(Readiness::READABLE);
        c.on_data(3, 5, 0);
        assert_eq!(c.input, Input::Drained);
        c.on_readiness(Readiness {
            read_closed: true,
            ..Readiness::READABLE
        });
        c.on_data(3, 5, 0);
        assert_eq!(
            c.input,
            Input::Exact,
            "only EOF ends a finished peer's input"
        );
        c.on_would_block();
        assert_eq!(c.input, Input::Drained);
        // An urgent byte: the next read may stop at its mark with more queued behind it.
        c.on_readiness(Readiness {
            urgent: true,
            ..Readiness::READABLE
        });
        c.on_data(3, 5, 0);
        assert_eq!(c.input, Input::Exact, "a read stopped at an urgent mark");
        c.on_would_block();
        assert_eq!(c.input, Input::Drained);
    }

    #[test]
    fn an_error_closes_before_anything_else() {
        let mut c = conn();
        c.pending.push(b"abc", 8);
        c.on_readiness(Readiness {
            error: true,
            ..Readiness::READABLE
        });
        assert_eq!(c.next_step(false, ROOM), Some(Step::Close));
    }

    #[test]
    fn after_the_stop_input_is_read_for_echo_up_to_the_cut_and_no_further() {
        let mut c = conn();
        c.pending.push(b"abcdef", 8);
        c.output = Output::Blocked;
        c.on_cut(7);
        // At the cap's edge: room for 2 more bytes, and they are owed.
        assert_eq!(c.next_step(true, ROOM), Some(Step::Read(2)));
        c.pending.push(b"gh", 8);
        c.on_data(2, 2, 0);
        assert_eq!(
            c.next_step(true, ROOM),
            None,
            "at the cap: paused, 5 still owed"
        );
        c.pending.consume(8);
        c.output = Output::Open;
        // The scratch buffer holds 5 and 5 are owed: the read stops at the cut.
        assert_eq!(c.next_step(true, ROOM), Some(Step::Read(5)));
        c.on_would_block();
        assert_eq!(
            c.owed,
            Some(5),
            "a read that would block does not cancel what was owed"
        );
        c.on_readiness(Readiness::READABLE);
        c.on_data(3, 5, 0);
        assert_eq!(
            c.next_step(true, ROOM),
            None,
            "a short read with data owed: wait for the edge"
        );
        c.on_readiness(Readiness::READABLE);
        assert_eq!(c.next_step(true, ROOM), Some(Step::Read(2)));
        c.on_data(2, 2, 0);
        assert_eq!(
            c.next_step(true, ROOM),
            Some(Step::ShutdownWrite),
            "all owed read: our FIN"
        );
    }

    #[test]
    fn after_the_stop_a_peer_never_heard_from_gets_its_first_request_echoed() {
        let mut c = conn();
        c.on_cut(0);
        assert!(c.first_request);
        assert_eq!(
            c.next_step(true, ROOM),
            None,
            "no FIN yet: its request may be on the way"
        );
        c.on_readiness(Readiness::READABLE);
        assert_eq!(c.next_step(true, ROOM), Some(Step::Read(5)));
        c.on_data(3, 5, 0);
        assert_eq!(
            c.next_step(true, ROOM),
            Some(Step::ShutdownWrite),
            "one request only"
        );
        // A peer heard from before the stop gets no such grace.
        let mut c = conn();
        c.on_readiness(Readiness::READABLE);
        c.on_data(2, 5, 0);
        c.on_cut(0);
        assert!(!c.first_request);
        assert_eq!(c.next_step(true, ROOM), Some(Step::ShutdownWrite));
    }

    #[test]
    fn past_the_deadline_owed_input_is_read_out_then_the_connection_closes() {
        let mut c = conn();
        c.on_cut(7);
        c.output = Output::Expired;
        assert_eq!(c.next_step(true, ROOM), Some(Step::Read(5)));
        c.on_data(5, 5, 0);
        assert_eq!(c.next_step(true, ROOM), Some(Step::Read(2)));
        c.on_eof();
        assert_eq!(c.next_step(true, ROOM), Some(Step::Close));
    }

    #[test]
    fn eof_closes_only_once_the_pending_output_is_written() {
        let mut c = conn();
        c.input = Input::Ended;
        c.pending.push(b"abc", 8);
        c.output = Output::Blocked;
        assert_eq!(c.next_step(false, ROOM), None);
        c.on_readiness(Readiness::WRITABLE);
        assert_eq!(c.next_step(false, ROOM), Some(Step::Write));
        c.pending.consume(3);
        assert_eq!(c.next_step(false, ROOM), Some(Step::Close));
    }

    #[test]
    fn the_stop_flushes_then_shuts_then_discards_input() {
        let mut c = conn();
        c.pending.push(b"ab", 8);
        c.on_readiness(Readiness::READABLE);
        assert_eq!(
            c.next_step(true, ROOM),
            Some(Step::MeasureInput),
            "the cut first"
        );
        c.on_cut(0);
        assert_eq!(c.next_step(true, ROOM), Some(Step::Write));
        c.output = Output::Blocked;
        assert_eq!(
            c.next_step(true, ROOM),
            None,
            "nothing arrived before the stop"
        );
        c.pending.consume(2);
        assert_eq!(c.next_step(true, ROOM), Some(Step::ShutdownWrite));
        c.output = Output::Shut(Delivery::Pending);
        assert_eq!(c.next_step(true, ROOM), Some(Step::Read(5)));
        c.on_would_block();
        assert_eq!(c.next_step(true, ROOM), None, "wait for the check timer");
        c.output = Output::Shut(Delivery::Due);
        c.on_readiness(Readiness::READABLE);
        assert_eq!(c.next_step(true, ROOM), Some(Step::CheckDelivery));
        // Delivered: the input is read once more, then the connection closes.
        c.output = Output::Shut(Delivery::Delivered);
        c.input = Input::Ready;
        assert_eq!(c.next_step(true, ROOM), Some(Step::Read(5)));
        c.on_would_block();
        assert_eq!(c.next_step(true, ROOM), Some(Step::Close));
        c.output = Output::Shut(Delivery::Pending);
        c.on_readiness(Readiness::READABLE);
        assert_eq!(
            c.next_step(true, ROOM),
            Some(Step::Read(5)),
            "input is still discarded"
        );
        c.input = Input::Ended;
        assert_eq!(
            c.next_step(true, ROOM),
            None,
            "the peer closed: its acknowledgement is still awaited"
        );
    }
}
