//! A connection's pending output: bytes already read but not yet written back, never more than the
//! cap, and no allocation at all while empty (an idle connection holds no buffer).

/// Unwritten bytes, oldest first. Boxed, so an idle connection carries one null pointer: the bytes
/// and their bookkeeping exist only while something is pending (after a partial write, rarely).
#[derive(Default, Debug)]
pub struct OutBuf {
    inner: Option<Box<Inner>>,
}

/// `head` marks how much of `bytes` has been written already, so a partial write costs no copy.
#[derive(Debug)]
struct Inner {
    bytes: Vec<u8>,
    head: usize,
}

impl OutBuf {
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.bytes.len() - i.head)
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// The bytes still to write.
    pub fn as_slice(&self) -> &[u8] {
        self.inner.as_ref().map_or(&[], |i| &i.bytes[i.head..])
    }

    /// Heap bytes held for pending data right now (0 when empty).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.bytes.capacity())
    }

    /// Appends `data`. The caller keeps `len() + data.len() <= cap`; growth never allocates past
    /// `cap`, so memory per connection stays bounded by the cap.
    pub fn push(&mut self, data: &[u8], cap: usize) {
        assert!(
            self.len() + data.len() <= cap,
            "pending output over its cap"
        );
        if data.is_empty() {
            return;
        }
        let inner = self.inner.get_or_insert_with(|| {
            Box::new(Inner {
                bytes: Vec::new(),
                head: 0,
            })
        });
        if inner.head > 0 {
            inner.bytes.drain(..inner.head);
            inner.head = 0;
        }
        let needed = inner.bytes.len() + data.len();
        if needed > inner.bytes.capacity() {
            let target = (inner.bytes.capacity() * 2).clamp(needed, cap.max(needed));
            inner.bytes.reserve_exact(target - inner.bytes.len());
        }
        inner.bytes.extend_from_slice(data);
    }

    /// Marks `n` bytes as written; releases the allocation once everything is.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "consumed more than pending");
        if let Some(inner) = self.inner.as_mut() {
            inner.head += n;
            if inner.head == inner.bytes.len() {
                self.inner = None;
            }
        }
    }

    /// Forgets everything (connection closed); returns how many bytes were never written.
    pub fn discard(&mut self) -> usize {
        let n = self.len();
        self.inner = None;
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
    fn growth_is_geometric_so_small_pushes_cost_amortised_constant_time() {
        // A slow reader fed byte by byte must not make every push copy the whole buffer.
        let mut b = OutBuf::default();
        let mut reallocations = 0;
        for _ in 0..4096 {
            let before = b.capacity();
            b.push(&[1], 1 << 20);
            reallocations += usize::from(b.capacity() != before);
        }
        assert_eq!(b.len(), 4096);
        assert!(
            reallocations <= 13,
            "{reallocations} reallocations for 4096 one-byte pushes"
        );
    }

    #[test]
    #[should_panic(expected = "over its cap")]
    fn pushing_past_the_cap_is_a_bug() {
        let mut b = OutBuf::default();
        b.push(&[0; 11], 10);
    }

    #[test]
    fn an_idle_buffer_is_one_pointer() {
        // Every connection carries one: idle connections must stay small.
        assert_eq!(std::mem::size_of::<OutBuf>(), std::mem::size_of::<usize>());
        let mut b = OutBuf::default();
        b.push(&[], 10);
        assert!(b.is_empty() && b.capacity() == 0);
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
