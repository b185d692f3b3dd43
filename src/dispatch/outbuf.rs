//! A connection's pending output: bytes already read but not yet written back, never more than the
//! cap, and no allocation at all while empty (an idle connection holds no buffer).

/// Unwritten bytes, oldest first. `head` marks how much of `bytes` has been written already, so a
/// partial write costs no copy.
#[derive(Default, Debug)]
pub struct OutBuf {
    bytes: Vec<u8>,
    head: usize,
}

impl OutBuf {
    pub fn len(&self) -> usize {
        self.bytes.len() - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes still to write.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.head..]
    }

    /// Heap bytes held right now (0 when empty).
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Appends `data`. The caller keeps `len() + data.len() <= cap`; growth never allocates past
    /// `cap`, so memory per connection stays bounded by the cap.
    pub fn push(&mut self, data: &[u8], cap: usize) {
        assert!(
            self.len() + data.len() <= cap,
            "pending output over its cap"
        );
        if self.head > 0 {
            self.bytes.drain(..self.head);
            self.head = 0;
        }
        let needed = self.bytes.len() + data.len();
        if needed > self.bytes.capacity() {
            let target = (self.bytes.capacity() * 2).clamp(needed, cap.max(needed));
            self.bytes.reserve_exact(target - self.bytes.len());
        }
        self.bytes.extend_from_slice(data);
    }

    /// Marks `n` bytes as written; releases the allocation once everything is.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "consumed more than pending");
        self.head += n;
        if self.head == self.bytes.len() {
            self.bytes = Vec::new();
            self.head = 0;
        }
    }

    /// Forgets everything (connection closed); returns how many bytes were never written.
    pub fn discard(&mut self) -> usize {
        let n = self.len();
        self.bytes = Vec::new();
        self.head = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_consume_keeps_the_remainder_in_order() {
        let mut b = OutBuf::default();
        b.push(b"hello world", 64);
        b.consume(6);
        assert_eq!(b.as_slice(), b"world");
        b.push(b"!", 64);
        assert_eq!(b.as_slice(), b"world!");
    }

    #[test]
    fn draining_fully_frees_the_allocation() {
        let mut b = OutBuf::default();
        b.push(&[1; 100], 1024);
        assert!(b.capacity() >= 100);
        b.consume(100);
        assert_eq!(b.capacity(), 0);
        assert!(b.is_empty());
    }

    #[test]
    fn growth_never_allocates_past_the_cap() {
        let mut b = OutBuf::default();
        for _ in 0..10 {
            b.push(&[7; 100], 1000);
        }
        assert_eq!(b.len(), 1000);
        assert!(b.capacity() <= 1000, "capacity {} over cap", b.capacity());
    }

    #[test]
    #[should_panic(expected = "over its cap")]
    fn pushing_past_the_cap_is_a_bug() {
        let mut b = OutBuf::default();
        b.push(&[0; 11], 10);
    }

    #[test]
    fn discard_reports_unwritten_bytes() {
        let mut b = OutBuf::default();
        b.push(&[0; 30], 100);
        b.consume(10);
        assert_eq!(b.discard(), 20);
        assert_eq!(b.capacity(), 0);
    }
}
