//! Every timer of a worker in one table: one place answers "when must the shell wake me?". Each
//! timer is a variant of [`Timer`]; [`Timers::next`] is their minimum and [`Timers::expired`] the
//! only test. The growing delays of the accept back-off and of the delivery checks live here too.

use std::time::{Duration, Instant};

/// First delay after an accept failure for lack of resources.
pub const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Longest delay between accept retries, so a waiting backlog is served within about half a second.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(200);
/// First wait before asking the kernel again whether peers hold every byte. No event announces
/// the last acknowledgement, so the core asks: soon at first, since it usually comes within a
/// round trip, then less and less often.
pub const MIN_DELIVERY_CHECK: Duration = Duration::from_millis(1);
/// Longest wait between two delivery checks: a stop never waits longer than this for a peer that
/// already holds everything.
pub const MAX_DELIVERY_CHECK: Duration = Duration::from_millis(50);

/// The timers of one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Accepting resumes (after a failure for lack of descriptors or memory).
    AcceptRetry,
    /// Connections silent for the idle timeout are closed.
    IdleSweep,
    /// The stop's drain ends: whatever remains is closed.
    DrainDeadline,
    /// Connections waiting for the peer's acknowledgement after our FIN are asked about again.
    DeliveryCheck,
}

impl Timer {
    const COUNT: usize = 4;
}

/// When each timer fires, if it is set, and how long the next accept back-off and delivery check
/// wait.
#[derive(Debug)]
pub struct Timers {
    at: [Option<Instant>; Timer::COUNT],
    accept_backoff: Backoff,
    delivery_backoff: Backoff,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            at: [None; Timer::COUNT],
            accept_backoff: Backoff::new(MIN_ACCEPT_BACKOFF, MAX_ACCEPT_BACKOFF),
            delivery_backoff: Backoff::new(MIN_DELIVERY_CHECK, MAX_DELIVERY_CHECK),
        }
    }
}

impl Timers {
    /// A peer did not yet hold every byte: ask again later (once per worker, however many wait).
    pub fn check_delivery_later(&mut self, now: Instant) {
        if !self.is_set(Timer::DeliveryCheck) {
            let delay = self.delivery_backoff.failed();
            self.set(Timer::DeliveryCheck, now + delay);
        }
    }

    /// An accept failed for lack of resources: accepting waits for the next back-off delay.
    pub fn back_off_accepting(&mut self, now: Instant) {
        let delay = self.accept_backoff.failed();
        self.set(Timer::AcceptRetry, now + delay);
    }

    /// An accept succeeded: the next failure backs off from the shortest delay again.
    pub fn accept_succeeded(&mut self) {
        self.accept_backoff.reset();
    }

    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer as usize] = Some(at);
    }

    /// Unsets a timer; returns whether it was set.
    pub fn clear(&mut self, timer: Timer) -> bool {
        self.at[timer as usize].take().is_some()
    }

    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer as usize]
    }

    pub fn is_set(&self, timer: Timer) -> bool {
        self.get(timer).is_some()
    }

    /// True when the timer is set and its time has come.
    pub fn expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| now >= t)
    }

    /// The earliest timer set.
    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
}

/// A growing delay: each failure in a row doubles it, from `min` up to `max`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The delay to wait after this failure.
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// A success: the next failure starts again from the shortest delay.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// `now + delay`, or `None` when that lies beyond what `Instant` can hold (a deadline so far away
/// means "never"; adding must not panic).
pub fn after(now: Instant, delay: Duration) -> Option<Instant> {
    now.checked_add(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_the_earliest_timer_set() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        assert_eq!(timers.next(), None);
        timers.set(Timer::DrainDeadline, t0 + Duration::from_secs(5));
        timers.set(Timer::AcceptRetry, t0 + Duration::from_millis(5));
        assert_eq!(timers.next(), Some(t0 + Duration::from_millis(5)));
        assert!(timers.clear(Timer::AcceptRetry));
        assert!(!timers.clear(Timer::AcceptRetry));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_timer_expires_at_its_time_and_not_before() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.set(Timer::IdleSweep, t0 + Duration::from_millis(10));
        assert!(!timers.expired(Timer::IdleSweep, t0 + Duration::from_millis(9)));
        assert!(timers.expired(Timer::IdleSweep, t0 + Duration::from_millis(10)));
        assert!(!timers.expired(Timer::DrainDeadline, t0 + Duration::from_secs(99)));
    }

    #[test]
    fn back_off_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(MIN_ACCEPT_BACKOFF, MAX_ACCEPT_BACKOFF);
        let delays: Vec<u128> = (0..9).map(|_| b.failed().as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 200, 200, 200]);
        b.reset();
        assert_eq!(b.failed(), MIN_ACCEPT_BACKOFF);
    }

    #[test]
    fn delivery_checks_come_soon_then_less_often_and_one_at_a_time() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut gaps = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            timers.check_delivery_later(now);
            // A second connection waiting does not move the one timer.
            timers.check_delivery_later(now);
            let at = timers
                .get(Timer::DeliveryCheck)
                .expect("a check is scheduled");
            gaps.push((at - now).as_millis());
            now = at;
            timers.clear(Timer::DeliveryCheck);
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 50, 50]);
    }

    #[test]
    fn a_delay_past_the_end_of_time_is_never() {
        let t0 = Instant::now();
        assert_eq!(after(t0, Duration::MAX), None);
        assert_eq!(
            after(t0, Duration::from_secs(1)),
            Some(t0 + Duration::from_secs(1))
        );
    }
}
