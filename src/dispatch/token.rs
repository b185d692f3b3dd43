//! Event tokens: the `u64` stored with each epoll registration, built so that an event for a closed
//! connection can never be mistaken for a new connection that reuses its slot or descriptor.

/// Identifies what an event is for. Connection tokens carry a slot index and that slot's generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Token(pub u64);

impl Token {
    /// The worker's wake-up channel.
    pub const WAKER: Token = Token(u64::MAX);
    /// The worker's listening socket.
    pub const LISTENER: Token = Token(u64::MAX - 1);

    /// Slots are indexed by `u32` and never reach `u32::MAX - 1`, so a connection token never equals
    /// one of the reserved tokens above.
    pub(crate) fn conn(slot: u32, generation: u32) -> Token {
        Token((u64::from(generation) << 32) | u64::from(slot))
    }

    pub(crate) fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// True for the tokens of connections (not the waker or the listener).
    pub fn is_conn(self) -> bool {
        self != Token::WAKER && self != Token::LISTENER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_token_round_trips_slot_and_generation() {
        let t = Token::conn(7, 3);
        assert_eq!((t.slot(), t.generation()), (7, 3));
        assert!(t.is_conn());
    }

    #[test]
    fn a_reused_slot_gets_a_different_token() {
        assert_ne!(Token::conn(5, 1), Token::conn(5, 2));
    }

    #[test]
    fn reserved_tokens_are_not_connections() {
        assert!(!Token::WAKER.is_conn());
        assert!(!Token::LISTENER.is_conn());
    }
}
