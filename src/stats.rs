//! Live counters. Each worker publishes its running [`Report`] into its own [`WorkerStats`] once per
//! loop turn (not per message), with `Relaxed` stores: a reader such as the `SIGUSR1` handler gets
//! numbers at most one turn old, each counter exact, the set not a single atomic snapshot.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::dispatch::Report;

/// Number of counters in a [`Report`].
const FIELDS: usize = 18;

fn to_array(r: &Report) -> [u64; FIELDS] {
    [
        r.accepted,
        r.closed,
        r.bytes_read,
        r.bytes_written,
        r.bytes_dropped,
        r.bytes_discarded,
        r.deadline_closes,
        r.accept_exhausted,
        r.accept_emfile,
        r.accept_enfile,
        r.accept_enobufs,
        r.accept_enomem,
        r.accept_failed,
        r.backpressure_pauses,
        r.max_pending,
        r.descriptors_closed,
        r.idle_closes,
        r.rejected,
    ]
}

fn from_array(a: [u64; FIELDS]) -> Report {
    Report {
        accepted: a[0],
        closed: a[1],
        bytes_read: a[2],
        bytes_written: a[3],
        bytes_dropped: a[4],
        bytes_discarded: a[5],
        deadline_closes: a[6],
        accept_exhausted: a[7],
        accept_emfile: a[8],
        accept_enfile: a[9],
        accept_enobufs: a[10],
        accept_enomem: a[11],
        accept_failed: a[12],
        backpressure_pauses: a[13],
        max_pending: a[14],
        descriptors_closed: a[15],
        idle_closes: a[16],
        rejected: a[17],
    }
}

/// One worker's published counters.
#[derive(Default, Debug)]
pub struct WorkerStats {
    cells: [AtomicU64; FIELDS],
}

impl WorkerStats {
    /// Stores the worker's counters; called by the worker only.
    pub fn publish(&self, report: &Report) {
        for (cell, value) in self.cells.iter().zip(to_array(report)) {
            cell.store(value, Relaxed);
        }
    }

    /// The counters as last published.
    pub fn load(&self) -> Report {
        from_array(std::array::from_fn(|i| self.cells[i].load(Relaxed)))
    }
}

/// A cloneable view of every worker's live counters.
#[derive(Clone, Debug, Default)]
pub struct LiveStats {
    workers: Vec<Arc<WorkerStats>>,
}

impl LiveStats {
    pub fn new(workers: Vec<Arc<WorkerStats>>) -> Self {
        LiveStats { workers }
    }

    /// Each worker's counters, in worker order.
    pub fn per_worker(&self) -> Vec<Report> {
        self.workers.iter().map(|w| w.load()).collect()
    }
}

/// Renders counters as log lines: one per worker, then the total.
pub struct StatsLines<'a>(pub &'a [Report]);

impl fmt::Display for StatsLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut total = Report::default();
        for (i, r) in self.0.iter().enumerate() {
            writeln!(f, "epoll-echo: stats worker={i} active={} {r}", r.active())?;
            total += *r;
        }
        write!(
            f,
            "epoll-echo: stats total active={} {total}",
            total.active()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_round_trips_through_the_cells() {
        // Distinct values, so a swapped or forgotten field shows.
        let values: [u64; FIELDS] = std::array::from_fn(|i| 100 + i as u64);
        let report = from_array(values);
        assert_eq!(to_array(&report), values);
        let stats = WorkerStats::default();
        stats.publish(&report);
        assert_eq!(stats.load(), report);
    }

    #[test]
    fn lines_show_each_worker_and_the_total() {
        let a = Report {
            accepted: 3,
            closed: 1,
            ..Report::default()
        };
        let b = Report {
            accepted: 5,
            closed: 5,
            ..Report::default()
        };
        let text = StatsLines(&[a, b]).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("epoll-echo: stats worker=0 active=2 accepted=3"));
        assert!(lines[1].starts_with("epoll-echo: stats worker=1 active=0 accepted=5"));
        assert!(lines[2].starts_with("epoll-echo: stats total active=2 accepted=8 closed=6"));
    }
}
