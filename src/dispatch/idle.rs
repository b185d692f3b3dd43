//! The idle clock: coarse ticks so that each connection stores its last activity in a `u32`, and one
//! cheap sweep per tick finds the connections silent for the idle timeout.
//!
//! A tick is an eighth of the timeout (at least 1 ms). A connection last active in tick `t` is
//! expired from tick `t + limit + 1` on, where `limit` ticks cover the timeout: it is never closed
//! early, and with a sweep every tick it is closed within the timeout plus about three ticks.

use std::time::{Duration, Instant};

/// Shortest tick, so a tiny timeout does not turn into a busy sweep.
const MIN_TICK: Duration = Duration::from_millis(1);
/// Ticks per timeout: the precision of idle closes.
const TICKS_PER_TIMEOUT: u32 = 8;

/// Converts instants to ticks and decides expiry.
#[derive(Clone, Copy, Debug)]
pub struct IdleClock {
    epoch: Instant,
    tick: Duration,
    /// Whole ticks after the activity tick before a connection expires.
    limit: u32,
}

impl IdleClock {
    /// A clock for `timeout` (non-zero) whose tick 0 starts at `epoch`.
    pub fn new(timeout: Duration, epoch: Instant) -> Self {
        assert!(!timeout.is_zero(), "an idle timeout must be non-zero");
        let tick = (timeout / TICKS_PER_TIMEOUT).max(MIN_TICK);
        let limit = timeout.as_nanos().div_ceil(tick.as_nanos());
        IdleClock {
            epoch,
            tick,
            limit: u32::try_from(limit).unwrap_or(u32::MAX - 1) + 1,
        }
    }

    /// The tick `now` falls in. Wraps after 2^32 ticks; expiry compares with wrapping arithmetic,
    /// which is exact because every connection is swept long before.
    pub fn tick(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.epoch);
        (elapsed.as_nanos() / self.tick.as_nanos()) as u32
    }

    /// True when a connection last active in tick `last` has been silent for the timeout at `now`.
    pub fn expired(&self, last: u32, now: Instant) -> bool {
        self.tick(now).wrapping_sub(last) >= self.limit
    }

    /// How often to sweep.
    pub fn period(&self) -> Duration {
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_expires_before_the_timeout() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(800);
        let clock = IdleClock::new(timeout, t0);
        // Activity at any point inside a tick, checked at every millisecond up to the timeout.
        for active_ms in [0u64, 1, 99, 100, 101, 555] {
            let active = t0 + Duration::from_millis(active_ms);
            let last = clock.tick(active);
            for after in 0..800 {
                let now = active + Duration::from_millis(after);
                assert!(
                    !clock.expired(last, now),
                    "expired {after} ms after activity"
                );
            }
        }
    }

    #[test]
    fn expires_within_three_ticks_after_the_timeout() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(800);
        let clock = IdleClock::new(timeout, t0);
        assert_eq!(clock.period(), Duration::from_millis(100));
        for active_ms in [0u64, 1, 99, 100, 555] {
            let active = t0 + Duration::from_millis(active_ms);
            let last = clock.tick(active);
            let now = active + timeout + 2 * clock.period();
            assert!(clock.expired(last, now), "not expired at {now:?}");
        }
    }

    #[test]
    fn tiny_timeouts_use_the_minimum_tick() {
        let t0 = Instant::now();
        let clock = IdleClock::new(Duration::from_micros(10), t0);
        assert_eq!(clock.period(), MIN_TICK);
        assert!(!clock.expired(0, t0));
        assert!(clock.expired(0, t0 + 2 * MIN_TICK));
    }

    #[test]
    fn expiry_survives_tick_wrap_around() {
        let t0 = Instant::now();
        let clock = IdleClock::new(Duration::from_millis(8), t0);
        let wrap = Duration::from_millis(1 << 32);
        // Active in the last tick before the wrap; two ticks later the tick counter reads 1.
        let last = clock.tick(t0 + wrap - Duration::from_millis(1));
        assert_eq!(last, u32::MAX);
        assert!(!clock.expired(last, t0 + wrap + Duration::from_millis(1)));
        assert!(clock.expired(last, t0 + wrap + Duration::from_millis(20)));
    }
}
