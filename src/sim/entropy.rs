//! Where the simulation's choices come from: a seeded generator (also the one random source of the
//! integration tests' payloads), or the fuzzer's input bytes. With the bytes exhausted every choice
//! falls back to its benign default (no fault injected, the largest size), so any input ends in a
//! run that can finish.

/// A source of choices. Only `below` is required; the rest are built on it so that a source of
/// zeros means "no fault, full size, lowest setting".
pub trait Entropy {
    /// A number in `0..n` (0 when `n` is 0 or 1).
    fn below(&mut self, n: u64) -> u64;

    /// True with probability `per_mille / 1000`; false on zero entropy.
    fn chance(&mut self, per_mille: u32) -> bool {
        let p = u64::from(per_mille.min(1000));
        p > 0 && self.below(1000) >= 1000 - p
    }

    /// A size in `1..=max` (`max` on zero entropy; 0 when `max` is 0).
    fn upto(&mut self, max: u64) -> u64 {
        max - self.below(max)
    }

    /// A number in `lo..=hi` (`lo` on zero entropy).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// One of `items` (the first on zero entropy).
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// SplitMix64: tiny, fast and good enough to drive a schedule. Same seed, same run.
#[derive(Clone, Debug)]
pub struct SeedRng(u64);

impl SeedRng {
    pub fn new(seed: u64) -> Self {
        SeedRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `len` reproducible bytes: the same seed gives the same payload.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

impl Entropy for SeedRng {
    fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Choices read from fuzzer input: one byte per small choice, more for larger ranges; zeros after
/// the end.
#[derive(Clone, Debug)]
pub struct ByteSource<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> ByteSource<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        ByteSource { data, pos: 0 }
    }

    /// True once every byte was used: from here on every choice is the benign default.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Takes the next `n` bytes as a slice (shorter at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }
}

impl Entropy for ByteSource<'_> {
    fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        let width = match n {
            0..=256 => 1,
            257..=65_536 => 2,
            _ => 4,
        };
        let v = self
            .take(width)
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        v % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_bytes_choose_the_benign_default() {
        let mut e = ByteSource::new(&[]);
        assert!(!e.chance(999));
        assert_eq!(e.upto(40), 40);
        assert_eq!(e.range(3, 9), 3);
        assert_eq!(e.pick(&['a', 'b']), 'a');
    }

    #[test]
    fn a_seed_repeats_its_choices() {
        let draw = |seed| {
            let mut r = SeedRng::new(seed);
            (0..8).map(|_| r.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
