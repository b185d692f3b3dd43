//! Live counters. Each worker publishes its running [`Report`] into its own [`WorkerStats`] once per
//! loop turn (not per message), with `Relaxed` stores: a reader (the `SIGUSR1` handler, a metrics
//! scrape) gets numbers at most one turn old, each counter exact, the set not a single atomic
//! snapshot. The cells follow [`Counter::ALL`](crate::Counter::ALL), so no counter is listed here.

use std::array;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::report::{Report, COUNT};

/// One worker's published counters.
#[derive(Debug)]
pub(crate) struct WorkerStats {
    cells: [AtomicU64; COUNT],
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            cells: array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl WorkerStats {
    /// Stores the worker's counters; called by the worker only.
    pub fn publish(&self, report: &Report) {
        for (cell, value) in self.cells.iter().zip(report.to_array()) {
            cell.store(value, Relaxed);
        }
    }

    /// The counters as last published.
    pub fn load(&self) -> Report {
        Report::from_array(array::from_fn(|i| self.cells[i].load(Relaxed)))
    }
}

/// A cloneable view of every worker's live counters.
#[derive(Clone, Debug, Default)]
pub struct LiveStats {
    workers: Vec<Arc<WorkerStats>>,
}

impl LiveStats {
    pub(crate) fn new(workers: Vec<Arc<WorkerStats>>) -> Self {
        LiveStats { workers }
    }

    /// Each worker's counters, in worker order.
    pub fn per_worker(&self) -> Vec<Report> {
        self.workers.iter().map(|w| w.load()).collect()
    }

    /// The counters summed over workers.
    pub fn total(&self) -> Report {
        let mut total = Report::default();
        for r in self.per_worker() {
            total += r;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Counter;

    #[test]
    fn every_counter_round_trips_through_the_cells() {
        // Distinct values, so a swapped or forgotten cell shows.
        let report = Report::from_array(array::from_fn(|i| 100 + i as u64));
        let stats = WorkerStats::default();
        stats.publish(&report);
        assert_eq!(stats.load(), report);
    }

    #[test]
    fn the_total_sums_the_workers() {
        let (a, b) = (
            Arc::new(WorkerStats::default()),
            Arc::new(WorkerStats::default()),
        );
        let mut r = Report::default();
        r.add(Counter::Accepted, 3);
        a.publish(&r);
        r.add(Counter::Accepted, 2);
        b.publish(&r);
        let live = LiveStats::new(vec![a, b]);
        assert_eq!(live.per_worker().len(), 2);
        assert_eq!(live.total()[Counter::Accepted], 8);
    }
}
