//! The end-of-run audit: the worker's report against the report the oracle builds from its own
//! record and the model's counts, counter by counter. The bytes delivered and the cause of each
//! close come from the record (what the client's kernel had acknowledged at the close, what the
//! worker was told, the clock and the stop), never from what the worker derived.

use super::{Oracle, Record};
use crate::report::{Counter, Report};
use crate::sim::model::link::{Link, Stage};
use crate::sim::model::Kernel;

/// The counters the audit holds against the record, in the order disagreements are listed.
const AUDITED: [Counter; 16] = [
    Counter::Accepted,
    Counter::Closed,
    Counter::BytesRead,
    Counter::BytesWritten,
    Counter::BytesDelivered,
    Counter::BytesInFlight,
    Counter::BytesUnacked,
    Counter::BytesLostToErrors,
    Counter::BytesDropped,
    Counter::BytesDiscarded,
    Counter::ErrorCloses,
    Counter::DeadlineCloses,
    Counter::IdleCloses,
    Counter::DescriptorsClosed,
    Counter::AcceptEmfile,
    Counter::AcceptEnfile,
];

/// What the kernel sees of a counter in the worker's report: connections turned away at the
/// limit were accepted and closed all the same.
fn as_the_kernel_sees(report: &Report, counter: Counter) -> u64 {
    match counter {
        Counter::Accepted | Counter::Closed => report[counter] + report[Counter::Rejected],
        _ => report[counter],
    }
}

/// The counter that names why a served connection closed.
fn cause(l: &Link, r: &Record) -> Option<Counter> {
    let counter = if r.error_told {
        Counter::ErrorCloses
    } else if r.deadline_close {
        Counter::DeadlineCloses
    } else if r.idle_close {
        Counter::IdleCloses
    } else {
        Counter::Closed
    };
    (l.stage == Stage::Closed && l.token.is_some()).then_some(counter)
}

/// Where a closed connection's bytes written and not acknowledged are counted, by its cause.
fn unacked_counter(cause: Option<Counter>) -> Counter {
    match cause {
        Some(Counter::ErrorCloses) => Counter::BytesLostToErrors,
        Some(Counter::DeadlineCloses | Counter::IdleCloses) => Counter::BytesUnacked,
        // Before the stop; during it the rules allow nothing unacknowledged.
        _ => Counter::BytesInFlight,
    }
}

impl Oracle {
    /// The report the worker should have written, built from the record: per connection, what
    /// it read, wrote, discarded and dropped, what the client's kernel had acknowledged at the
    /// close and why it closed; the kernel's own counts for accepts and descriptors.
    pub fn expected_report<E>(&self, k: &Kernel<E>) -> Report {
        let mut want = Report::default();
        want.add(Counter::Accepted, k.counts.accepted);
        want.add(Counter::DescriptorsClosed, k.counts.closes);
        want.add(Counter::AcceptEmfile, k.counts.emfile);
        want.add(Counter::AcceptEnfile, k.counts.enfile);
        for (link, l) in k.links.iter().enumerate() {
            let r = self.record(link);
            want.add(Counter::Closed, u64::from(l.stage == Stage::Closed));
            want.add(Counter::BytesRead, r.echo_read);
            want.add(Counter::BytesWritten, r.written);
            want.add(Counter::BytesDropped, r.echo_read - r.written);
            want.add(Counter::BytesDiscarded, r.discarded);
            let cause = cause(l, r);
            let delivered = r.acked_at_close.unwrap_or(0).min(r.written);
            want.add(Counter::BytesDelivered, delivered);
            want.add(unacked_counter(cause), r.written - delivered);
            if let Some(c) = cause.filter(|&c| c != Counter::Closed) {
                want.count(c);
            }
        }
        want
    }

    /// Compares the worker's report with the record; returns each disagreement. Meant for the
    /// end of a run, once every connection is closed.
    pub fn audit<E>(&self, k: &Kernel<E>, report: &Report) -> Vec<String> {
        let want = self.expected_report(k);
        let mut wrong: Vec<String> = AUDITED
            .iter()
            .map(|&c| (c, as_the_kernel_sees(report, c), want[c]))
            .filter(|(_, got, want)| got != want)
            .map(|(c, got, want)| format!("{}: report {got}, kernel {want}", c.name()))
            .collect();
        if !report.balances() {
            wrong.push(format!("the report does not balance: {report}"));
        }
        let cap = self.terms.max_pending as u64;
        if report[Counter::PendingHighWater] > cap {
            wrong.push(format!(
                "pending output reached {} over the cap {cap}",
                report[Counter::PendingHighWater]
            ));
        }
        wrong
    }
}
