//! The connection table: slots with a free list, and the tokens that name them. A token carries its
//! slot's generation, so an event for a closed connection can never reach a new connection that
//! reuses the slot (or the descriptor).

/// Identifies what an epoll registration is for: the waker, the listener, or a connection's slot
/// and that slot's generation. Only this module makes connection tokens.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Token(u64);

impl Token {
    /// The worker's wake-up channel.
    pub const WAKER: Token = Token(u64::MAX);
    /// The worker's listening socket.
    pub const LISTENER: Token = Token(u64::MAX - 1);

    /// Slots never reach `u32::MAX - 1`, so a connection token never equals a reserved token.
    fn conn(slot: u32, generation: u32) -> Token {
        Token((u64::from(generation) << 32) | u64::from(slot))
    }

    pub(super) fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// True for the tokens of connections (not the waker or the listener).
    pub fn is_conn(self) -> bool {
        self != Token::WAKER && self != Token::LISTENER
    }

    /// The value stored with an epoll registration.
    pub(crate) fn to_epoll(self) -> u64 {
        self.0
    }

    /// The token of an epoll event. Any value is harmless: one that names no live connection is
    /// ignored by the core.
    pub(crate) fn from_epoll(data: u64) -> Token {
        Token(data)
    }
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Values (connections) in reusable slots, each reached through its token.
#[derive(Debug)]
pub struct Table<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Table<T> {
    /// Stores `value` in a free slot and returns its token.
    pub fn insert(&mut self, value: T) -> Token {
        let slot = self.free.pop().unwrap_or_else(|| {
            let index = u32::try_from(self.slots.len())
                .ok()
                .filter(|&i| i < u32::MAX - 1)
                .expect("fewer than 2^32 - 2 connections");
            self.slots.push(Slot {
                generation: 0,
                value: None,
            });
            index
        });
        let entry = &mut self.slots[slot as usize];
        entry.value = Some(value);
        self.len += 1;
        Token::conn(slot, entry.generation)
    }

    /// The value `token` names, if it is still there.
    pub fn get(&self, token: Token) -> Option<&T> {
        let slot = self.slots.get(token.slot())?;
        (token.is_conn() && slot.generation == token.generation()).then_some(())?;
        slot.value.as_ref()
    }

    pub fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        let slot = self.slots.get_mut(token.slot())?;
        (token.is_conn() && slot.generation == token.generation()).then_some(())?;
        slot.value.as_mut()
    }

    /// Takes the value out; its token is dead from now on and the slot may be reused.
    pub fn remove(&mut self, token: Token) -> Option<T> {
        self.get(token)?;
        let entry = &mut self.slots[token.slot()];
        let value = entry.value.take();
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(token.slot() as u32);
        self.len -= 1;
        value
    }

    /// Values stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The tokens of every stored value, in slot order.
    pub fn tokens(&self) -> Vec<Token> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.value.is_some())
            .map(|(i, s)| Token::conn(i as u32, s.generation))
            .collect()
    }

    /// Every stored value.
    #[cfg(test)]
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|s| s.value.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reaches_its_value_until_removed() {
        let mut t = Table::default();
        let a = t.insert('a');
        let b = t.insert('b');
        assert_eq!((t.get(a), t.get(b)), (Some(&'a'), Some(&'b')));
        assert_eq!(t.remove(a), Some('a'));
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None, "removing twice is harmless");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_reused_slot_gets_a_new_token_and_the_old_one_is_dead() {
        let mut t = Table::default();
        let old = t.insert(1);
        t.remove(old);
        let new = t.insert(2);
        assert_eq!(new.slot(), old.slot(), "the slot is reused");
        assert_ne!(new, old);
        assert_eq!(t.get(old), None);
        assert_eq!(t.get_mut(old), None);
        assert_eq!(t.get(new), Some(&2));
    }

    #[test]
    fn reserved_tokens_and_unknown_slots_name_nothing() {
        let mut t = Table::default();
        t.insert(());
        assert!(!Token::WAKER.is_conn() && !Token::LISTENER.is_conn());
        assert_eq!(t.get(Token::WAKER), None);
        assert_eq!(t.get(Token::LISTENER), None);
        assert_eq!(t.get(Token::conn(77, 0)), None);
    }

    #[test]
    fn a_token_round_trips_through_epoll_data() {
        let t = Token::conn(7, 3);
        assert_eq!((t.slot(), t.generation()), (7, 3));
        assert_eq!(Token::from_epoll(t.to_epoll()), t);
    }

    #[test]
    fn tokens_lists_the_live_values_only() {
        let mut t = Table::default();
        let a = t.insert(1);
        let b = t.insert(2);
        let c = t.insert(3);
        t.remove(b);
        assert_eq!(t.tokens(), [a, c]);
        assert_eq!(t.values().sum::<i32>(), 4);
    }
}
