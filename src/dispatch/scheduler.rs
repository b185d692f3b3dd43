//! Fairness: the ready queue, rounds and turns. Whoever has work (a connection or the listener) is
//! queued once; a round serves the queue as it stood when the round began, one turn each, and a
//! turn ends at its budget (reads or accepts), so whoever still has work waits at the back and new
//! events are collected between rounds. Nobody starves and nobody is forgotten.

use std::collections::VecDeque;

use super::Token;

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
