//! The server-wide connection limit (`--max-conns`), shared by every worker.
//!
//! At the limit a worker accepts the new connection and closes it at once (counted as `rejected`):
//! the backlog keeps draining, so clients get a prompt close instead of hanging in a full queue, and
//! the listener never needs a wake-up from another worker when a slot frees.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

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
    pub fn try_acquire(&self) -> bool {
        // A counter only: no other memory is published through it, so Relaxed suffices.
        self.open
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .is_ok()
    }

    /// Gives back the slot of a closed connection.
    pub fn release(&self) {
        let _ = self
            .open
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// Connections holding a slot.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn admits_up_to_the_maximum_and_again_after_a_release() {
        let limit = ConnLimit::new(2);
        assert!(limit.try_acquire());
        assert!(limit.try_acquire());
        assert!(!limit.try_acquire());
        limit.release();
        assert!(limit.try_acquire());
        assert_eq!(limit.open(), 2);
    }

    #[test]
    fn threads_never_exceed_the_maximum_together() {
        let limit = Arc::new(ConnLimit::new(100));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limit = Arc::clone(&limit);
                std::thread::spawn(move || (0..1000).filter(|_| limit.try_acquire()).count())
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(admitted, 100);
        assert_eq!(limit.open(), 100);
    }
}
