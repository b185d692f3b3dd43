//! What a worker did, counted by the core and returned when the worker ends.

use std::fmt;

use super::ResourceError;
use std::ops::AddAssign;

/// Counters of one worker (or, summed, of the whole server).
///
/// Invariant once every connection is closed: `bytes_read == bytes_written + bytes_dropped`.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Report {
    pub accepted: u64,
    pub closed: u64,
    /// Bytes read for echoing.
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Bytes read but never written: lost to a peer error or to the drain deadline.
    pub bytes_dropped: u64,
    /// Bytes a peer sent after shutdown began, read only to close cleanly and not echoed.
    pub bytes_discarded: u64,
    /// Connections closed by the drain deadline.
    pub deadline_closes: u64,
    /// `accept` failures for lack of descriptors or memory (the sum of the four kinds below).
    pub accept_exhausted: u64,
    /// `EMFILE`: the process is out of descriptors.
    pub accept_emfile: u64,
    /// `ENFILE`: the system is out of descriptors.
    pub accept_enfile: u64,
    pub accept_enobufs: u64,
    pub accept_enomem: u64,
    /// Other `accept` failures that caused a back-off.
    pub accept_failed: u64,
    /// Times a connection stopped being read because its pending output reached the cap.
    pub backpressure_pauses: u64,
    /// The largest pending output any connection held.
    pub max_pending: u64,
    /// Descriptors the worker closed (filled in by the shell).
    pub descriptors_closed: u64,
    /// Connections closed for silence by the idle timeout.
    pub idle_closes: u64,
    /// Connections accepted and closed at once because the server was at `--max-conns` (filled in
    /// by the shell; not counted in `accepted`).
    pub rejected: u64,
}

impl Report {
    /// Connections open when the counters were taken.
    pub fn active(&self) -> u64 {
        self.accepted.saturating_sub(self.closed)
    }

    /// The counter of one kind of accept failure.
    pub fn accept_exhausted_by_kind(&mut self, kind: ResourceError) -> &mut u64 {
        match kind {
            ResourceError::ProcessDescriptors => &mut self.accept_emfile,
            ResourceError::SystemDescriptors => &mut self.accept_enfile,
            ResourceError::Buffers => &mut self.accept_enobufs,
            ResourceError::Memory => &mut self.accept_enomem,
        }
    }

    /// True when every byte read was either written or counted as dropped.
    pub fn balances(&self) -> bool {
        self.bytes_read == self.bytes_written + self.bytes_dropped
    }
}

impl AddAssign for Report {
    fn add_assign(&mut self, o: Report) {
        self.accepted += o.accepted;
        self.closed += o.closed;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.bytes_dropped += o.bytes_dropped;
        self.bytes_discarded += o.bytes_discarded;
        self.deadline_closes += o.deadline_closes;
        self.accept_exhausted += o.accept_exhausted;
        self.accept_emfile += o.accept_emfile;
        self.accept_enfile += o.accept_enfile;
        self.accept_enobufs += o.accept_enobufs;
        self.accept_enomem += o.accept_enomem;
        self.accept_failed += o.accept_failed;
        self.backpressure_pauses += o.backpressure_pauses;
        self.max_pending = self.max_pending.max(o.max_pending);
        self.descriptors_closed += o.descriptors_closed;
        self.idle_closes += o.idle_closes;
        self.rejected += o.rejected;
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} closed={} bytes_read={} bytes_written={} bytes_dropped={} bytes_discarded={} \
             deadline_closes={} idle_closes={} rejected={} accept_exhausted={} accept_emfile={} \
             accept_enfile={} accept_enobufs={} accept_enomem={} accept_failed={} \
             backpressure_pauses={} max_pending={} descriptors_closed={}",
            self.accepted,
            self.closed,
            self.bytes_read,
            self.bytes_written,
            self.bytes_dropped,
            self.bytes_discarded,
            self.deadline_closes,
            self.idle_closes,
            self.rejected,
            self.accept_exhausted,
            self.accept_emfile,
            self.accept_enfile,
            self.accept_enobufs,
            self.accept_enomem,
            self.accept_failed,
            self.backpressure_pauses,
            self.max_pending,
            self.descriptors_closed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_accept_failure_kind_has_its_own_counter() {
        let mut r = Report::default();
        *r.accept_exhausted_by_kind(ResourceError::ProcessDescriptors) += 1;
        *r.accept_exhausted_by_kind(ResourceError::SystemDescriptors) += 2;
        *r.accept_exhausted_by_kind(ResourceError::Buffers) += 3;
        *r.accept_exhausted_by_kind(ResourceError::Memory) += 4;
        let kinds = (
            r.accept_emfile,
            r.accept_enfile,
            r.accept_enobufs,
            r.accept_enomem,
        );
        assert_eq!(kinds, (1, 2, 3, 4));
    }

    #[test]
    fn sums_and_shows_the_resilience_counters() {
        let one = Report {
            accepted: 5,
            closed: 2,
            idle_closes: 1,
            rejected: 3,
            accept_emfile: 4,
            ..Report::default()
        };
        let mut total = one;
        total += one;
        assert_eq!(total.active(), 6);
        let text = total.to_string();
        for field in ["idle_closes=2", "rejected=6", "accept_emfile=8"] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
    }
}
