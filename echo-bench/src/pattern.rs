//! The bytes every connection sends: one random stream shared by all, each connection starting at its
//! own offset. Echoed bytes are compared with what was sent at the same stream offset, so loss,
//! duplication, reordering or mixing of connections shows up as a mismatch.

/// Length of the repeating stream.
const PERIOD: usize = 1 << 20;
/// Longest slice handed out; the buffer repeats this much of its start after `PERIOD`.
pub const MAX_SLICE: usize = 64 * 1024;

pub struct Pattern {
    bytes: Vec<u8>,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        let mut x = seed | 1;
        let mut bytes: Vec<u8> = (0..PERIOD)
            .map(|_| {
                // xorshift64: fast, and random enough that any slip is caught.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        bytes.extend_from_within(..MAX_SLICE);
        Pattern { bytes }
    }

    /// A start offset for connection `i`, far from its neighbours'.
    pub fn base(i: usize) -> u64 {
        (i as u64).wrapping_mul(0x9E37_79B9) % PERIOD as u64
    }

    /// The `len <= MAX_SLICE` bytes at stream offset `off`.
    pub fn slice(&self, off: u64, len: usize) -> &[u8] {
        assert!(len <= MAX_SLICE, "slice of {len} bytes");
        let start = (off % PERIOD as u64) as usize;
        &self.bytes[start..start + len]
    }

    /// True when `got` equals the stream at offset `off` (any length).
    pub fn matches(&self, off: u64, got: &[u8]) -> bool {
        got.chunks(MAX_SLICE)
            .enumerate()
            .all(|(i, c)| c == self.slice(off + (i * MAX_SLICE) as u64, c.len()))
    }

    /// Index in `got` of the first byte that differs from the stream at offset `off`; for
    /// reporting, after `matches` said no.
    pub fn first_mismatch(&self, off: u64, got: &[u8]) -> Option<usize> {
        got.chunks(MAX_SLICE).enumerate().find_map(|(i, c)| {
            let want = self.slice(off + (i * MAX_SLICE) as u64, c.len());
            let at = c.iter().zip(want).position(|(a, b)| a != b)?;
            Some(i * MAX_SLICE + at)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_wrap_around_the_period() {
        let p = Pattern::new(7);
        let end = p.slice(PERIOD as u64 - 3, 6).to_vec();
        assert_eq!(&end[3..], p.slice(0, 3));
    }

    #[test]
    fn a_shifted_or_altered_echo_does_not_match() {
        let p = Pattern::new(7);
        let sent = p.slice(100, 64).to_vec();
        assert!(p.matches(100, &sent));
        assert!(!p.matches(101, &sent));
        let mut bad = sent.clone();
        bad[10] ^= 1;
        assert!(!p.matches(100, &bad));
        assert_eq!(p.first_mismatch(100, &bad), Some(10));
        assert_eq!(p.first_mismatch(100, &sent), None);
    }

    #[test]
    fn the_first_mismatch_is_found_past_the_first_slice() {
        let p = Pattern::new(7);
        let mut long = Vec::new();
        for k in 0..3 {
            long.extend_from_slice(p.slice(5 + (k * MAX_SLICE) as u64, MAX_SLICE));
        }
        long[MAX_SLICE + 1234] ^= 0x80;
        assert_eq!(p.first_mismatch(5, &long), Some(MAX_SLICE + 1234));
    }
}
