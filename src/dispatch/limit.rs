//! The server-wide connection limit (`--max-conns`), shared by every worker, and each worker's
//! lease on it.
//!
//! At the limit the core accepts the new connection and closes it at once (counted as `rejected`):
//! the backlog keeps draining, so clients get a prompt close instead of hanging in a full queue, and
//! the listener never needs a wake-up from another worker when a slot frees. A worker holds its
//! slots through a [`Lease`], which gives back whatever it still holds when dropped, so a worker
//! that ends early (even by a panic) leaks no slot.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Counts open connections across workers against a maximum.
#[derive(Debug)]
pub struct ConnLimit {
    max: usize,
    open: AtomicUsize,
}

impl ConnLimit {
    pub fn new(max: usize) -> Self {
        ConnLimit {
            max,
            open: AtomicUsize::new(0),
        }
    }

    /// Takes a slot for a new connection; false at the limit.
    fn try_acquire(&self) -> bool {
        // A counter only: no other memory is published through it, so Relaxed suffices.
        self.open
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .is_ok()
    }

    /// Gives back `n` slots.
    fn release(&self, n: usize) {
        let _ = self
            .open
            .fetch_update(Relaxed, Relaxed, |open| Some(open.saturating_sub(n)));
    }

    /// Connections holding a slot.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }
}

/// One worker's slots of a [`ConnLimit`]; dropping it gives them all back.
#[derive(Debug)]
pub struct Lease {
    limit: Arc<ConnLimit>,
    held: usize,
}

impl Lease {
    pub fn new(limit: Arc<ConnLimit>) -> Self {
        Lease { limit, held: 0 }
    }

    /// Takes a slot; false at the limit.
    pub fn try_acquire(&mut self) -> bool {
        let ok = self.limit.try_acquire();
        self.held += usize::from(ok);
        ok
    }

    /// Gives back one slot this lease holds.
    pub fn release(&mut self) {
        if self.held > 0 {
            self.held -= 1;
            self.limit.release(1);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.limit.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_maximum_and_again_after_a_release() {
        let limit = Arc::new(ConnLimit::new(2));
        let mut lease = Lease::new(Arc::clone(&limit));
        assert!(lease.try_acquire());
        assert!(lease.try_acquire());
        assert!(!lease.try_acquire());
        lease.release();
        assert!(lease.try_acquire());
        assert_eq!(limit.open(), 2);
    }

    #[test]
    fn threads_never_exceed_the_maximum_together() {
        let limit = Arc::new(ConnLimit::new(100));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let mut lease = Lease::new(Arc::clone(&limit));
                std::thread::spawn(move || {
                    let n = (0..1000).filter(|_| lease.try_acquire()).count();
                    std::mem::forget(lease);
                    n
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(admitted, 100);
        assert_eq!(limit.open(), 100);
    }

    #[test]
    fn a_dropped_lease_gives_back_every_slot_it_held() {
        let limit = Arc::new(ConnLimit::new(10));
        let mut other = Lease::new(Arc::clone(&limit));
        assert!(other.try_acquire());
        let mut lease = Lease::new(Arc::clone(&limit));
        for _ in 0..5 {
            assert!(lease.try_acquire());
        }
        lease.release();
        drop(lease);
        assert_eq!(limit.open(), 1, "only the other lease's slot is held");
        // Releasing more than held never takes another lease's slot.
        let mut empty = Lease::new(Arc::clone(&limit));
        empty.release();
        assert_eq!(limit.open(), 1);
    }
}
