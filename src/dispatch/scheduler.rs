//! Fairness and turn driving: the ready queue, rounds and turns, and what each turn asks of the
//! shell. Whoever has work (a connection or the listener) is queued once; a round serves the queue
//! as it stood when the round began, one turn each, and a turn ends at its budget (reads or
//! accepts), so whoever still has work waits at the back and new events are collected between
//! rounds. Nobody starves and nobody is forgotten.

use std::collections::VecDeque;

use super::conn::{Output, Step};
use super::outbox::{Op, Request, Source};
use super::timers::Timer;
use super::{Cause, Dispatcher, Token};

/// Whose turn it is and what is left of its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    Listener { accepts_left: u32 },
    Conn { token: Token, reads_left: u32 },
}

#[derive(Debug, Default)]
pub struct Scheduler {
    ready: VecDeque<Token>,
    /// Turns left in the current round; `None` between rounds.
    round_left: Option<usize>,
    turn: Option<Turn>,
}

impl Scheduler {
    /// Queues `token` at the back. The caller queues each token at most once.
    pub fn push(&mut self, token: Token) {
        self.ready.push_back(token);
    }

    /// True while anyone waits for a turn.
    pub fn has_queued(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn turn(&self) -> Option<Turn> {
        self.turn
    }

    /// Replaces the current turn (with less budget left, or another holder).
    pub fn set_turn(&mut self, turn: Option<Turn>) {
        self.turn = turn;
    }

    /// The next token whose turn begins in this round, or `None` when the round is over (which
    /// starts a new round at the next call).
    pub fn next_in_round(&mut self) -> Option<Token> {
        let left = self.round_left.unwrap_or(self.ready.len());
        let next = if left > 0 {
            self.ready.pop_front()
        } else {
            None
        };
        self.round_left = next.map(|_| left - 1);
        next
    }
}

/// Turn driving: who is queued, whose turn begins, what a turn issues, when it ends.
impl<S> Dispatcher<S> {
    /// Queues a connection that has work and is not queued yet.
    pub(super) fn queue_if_work(&mut self, token: Token) {
        let (stopping, room) = (self.is_stopping(), self.room());
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if conn.enqueue(stopping, room) {
            self.scheduler.push(token);
        }
    }

    pub(super) fn queue_listener(&mut self) {
        if self.listener.enqueue() {
            self.scheduler.push(Token::LISTENER);
        }
    }

    /// The listener has a connection to accept and is not backing off; while draining, it
    /// accepts until the queue is empty.
    fn listener_can_accept(&self) -> bool {
        let backing_off = self.timers.is_set(Timer::AcceptRetry);
        self.listener.can_accept(backing_off)
    }

    /// Issues the next operation of `turn`, or ends it when it has nothing more to do.
    pub(super) fn continue_turn(&mut self, turn: Turn) {
        if !self.step(turn) {
            self.end_turn(turn);
        }
    }

    /// Begins the turn of `token` (gone if its connection closed meanwhile) with a full budget.
    pub(super) fn begin_turn(&mut self, token: Token) {
        let turn = if token == Token::LISTENER {
            Some(Turn::Listener {
                accepts_left: self.settings.accepts_per_turn,
            })
        } else {
            self.conns.get(token).map(|_| Turn::Conn {
                token,
                reads_left: self.settings.reads_per_turn,
            })
        };
        self.scheduler.set_turn(turn);
    }

    /// Ends a turn; whoever still has work goes to the back of the queue.
    fn end_turn(&mut self, turn: Turn) {
        self.scheduler.set_turn(None);
        match turn {
            Turn::Listener { .. } => {
                let again = self.listener_can_accept();
                self.listener.requeue(again);
                if again {
                    self.scheduler.push(Token::LISTENER);
                }
            }
            Turn::Conn { token, .. } => {
                let (stopping, room) = (self.is_stopping(), self.room());
                let Some(conn) = self.conns.get_mut(token) else {
                    return;
                };
                if conn.requeue(stopping, room) {
                    self.scheduler.push(token);
                }
            }
        }
    }

    /// Issues the next operation of the current turn; false when the turn is over.
    fn step(&mut self, turn: Turn) -> bool {
        match turn {
            Turn::Listener { accepts_left } => {
                if !self.listener_can_accept() || accepts_left == 0 {
                    return false;
                }
                self.scheduler.set_turn(Some(Turn::Listener {
                    accepts_left: accepts_left - 1,
                }));
                self.outbox.issue(Op::Accept);
                true
            }
            Turn::Conn { token, reads_left } => self.step_conn(token, reads_left),
        }
    }

    fn step_conn(&mut self, token: Token, reads_left: u32) -> bool {
        let (stopping, room) = (self.is_stopping(), self.room());
        let Some(conn) = self.conns.get_mut(token) else {
            return false;
        };
        match conn.next_step(stopping, room) {
            None => false,
            Some(Step::Close) => {
                let cause = match conn.output() {
                    Output::Failed(_) => Cause::Error,
                    Output::Expired => Cause::Deadline,
                    Output::Shut(_) => Cause::Delivered,
                    Output::Open | Output::Blocked => Cause::Orderly,
                };
                self.close(token, cause);
                false
            }
            Some(Step::Write) => {
                self.outbox.issue(Op::Write(token, Source::Pending));
                true
            }
            Some(Step::ShutdownWrite) => {
                // Our FIN cannot be acknowledged at once: the first check comes with the timer.
                conn.shut();
                self.timers.check_delivery_later(self.now);
                self.outbox.push(Request::ShutdownWrite(token));
                true
            }
            Some(Step::CheckDelivery) => {
                self.outbox.issue(Op::Delivery(token));
                true
            }
            Some(Step::MeasureInput) => {
                self.outbox.issue(Op::MeasureInput(token));
                true
            }
            Some(Step::Read(_)) if reads_left == 0 => false,
            Some(Step::Read(len)) => {
                self.scheduler.set_turn(Some(Turn::Conn {
                    token,
                    reads_left: reads_left - 1,
                }));
                self.outbox.issue(Op::Read(token, len));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_serves_only_those_queued_when_it_began() {
        let mut s = Scheduler::default();
        s.push(Token::LISTENER);
        s.push(Token::WAKER);
        assert_eq!(s.next_in_round(), Some(Token::LISTENER));
        // Queued during the round: served in the next one.
        s.push(Token::LISTENER);
        assert_eq!(s.next_in_round(), Some(Token::WAKER));
        assert_eq!(s.next_in_round(), None, "the round is over");
        assert!(s.has_queued());
        assert_eq!(s.next_in_round(), Some(Token::LISTENER));
        assert_eq!(s.next_in_round(), None);
        assert!(!s.has_queued());
    }
}
