//! The one list of counters. Each counter is defined once below (its name, what it means, how it
//! sums over workers); the [`Report`], the live stats, the summary and the stats lines, and the
//! parsing of those lines are all derived from that list, never written out again.

use std::fmt;
use std::ops::{AddAssign, Index};

/// How a counter combines over workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Merge {
    /// Events or bytes: the total is the sum.
    Sum,
    /// A high-water mark: the total is the largest.
    Max,
}

macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $variant:ident = $name:literal, $merge:ident;)+) => {
        /// One counter of a [`Report`]. `Counter::ALL` lists them in the order they are shown.
        /// Non-exhaustive: a new counter is not a breaking change.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Counter {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl Counter {
            /// Every counter, in display order.
            pub const ALL: [Counter; COUNT] = [$(Counter::$variant),+];

            /// The name used in log lines and metrics (`snake_case`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)+
                }
            }

            /// What the counter means, in one line.
            pub fn doc(self) -> &'static str {
                match self {
                    $(Counter::$variant => concat!($($doc),+).trim(),)+
                }
            }

            const fn merge(self) -> Merge {
                match self {
                    $(Counter::$variant => Merge::$merge,)+
                }
            }
        }

        /// How many counters there are.
        pub(crate) const COUNT: usize = [$($name),+].len();
    };
}

counters! {
    /// Connections accepted and served.
    Accepted = "accepted", Sum;
    /// Connections closed (served connections only).
    Closed = "closed", Sum;
    /// Bytes read from peers to be echoed.
    BytesRead = "bytes_read", Sum;
    /// Bytes handed to the kernel for sending back; once a connection closes, each is counted as delivered, in flight, unacknowledged or lost to an error.
    BytesWritten = "bytes_written", Sum;
    /// Bytes the peers' kernels acknowledged, as the kernel reported it at each close (`tcpi_bytes_acked`, our FIN not counted).
    BytesDelivered = "bytes_delivered", Sum;
    /// Bytes not yet acknowledged at an orderly close outside a stop (after the peer's EOF): the kernel still sends them.
    BytesInFlight = "bytes_in_flight", Sum;
    /// Bytes the peer had not acknowledged when the server cut the connection without proof of delivery (drain deadline, idle timeout).
    BytesUnacked = "bytes_unacked", Sum;
    /// Bytes the peer had not acknowledged when a connection error closed the connection (reset, timeout, unreachable peer): the kernel discarded them.
    BytesLostToErrors = "bytes_lost_to_errors", Sum;
    /// Bytes read but never handed to the kernel: lost to a connection error, the drain deadline or the idle timeout (input that arrived before the stop and could not be echoed before the deadline is read out and counted here).
    BytesDropped = "bytes_dropped", Sum;
    /// Bytes that arrived after the worker took the stop (its cut), read only so the close sends no reset, never echoed.
    BytesDiscarded = "bytes_discarded", Sum;
    /// Connections closed by a connection error (reset, timeout, unreachable peer).
    ErrorCloses = "error_closes", Sum;
    /// Connections closed by the drain deadline.
    DeadlineCloses = "deadline_closes", Sum;
    /// Connections closed for silence by the idle timeout.
    IdleCloses = "idle_closes", Sum;
    /// Connections accepted and closed at once because the server was at its connection limit.
    Rejected = "rejected", Sum;
    /// `accept` failures with EMFILE: the process is out of descriptors.
    AcceptEmfile = "accept_emfile", Sum;
    /// `accept` failures with ENFILE: the system is out of descriptors.
    AcceptEnfile = "accept_enfile", Sum;
    /// `accept` failures with ENOBUFS: the kernel is out of socket buffers.
    AcceptEnobufs = "accept_enobufs", Sum;
    /// `accept` failures with ENOMEM: the kernel is out of memory.
    AcceptEnomem = "accept_enomem", Sum;
    /// Other `accept` failures that caused a back-off.
    AcceptFailed = "accept_failed", Sum;
    /// Times a connection stopped being read because its pending output reached the cap.
    BackpressurePauses = "backpressure_pauses", Sum;
    /// The most output any one connection held pending, in bytes (a high-water mark, not a setting).
    PendingHighWater = "pending_high_water_bytes", Max;
    /// Descriptors the worker closed: listener, connections, epoll instance and wake-up channel.
    DescriptorsClosed = "descriptors_closed", Sum;
    /// Workers that ended early (a panic or an error); their counters are the last they published.
    WorkersFailed = "workers_failed", Sum;
}

/// A value computed from the counters, shown beside them but never stored. Non-exhaustive: a new
/// one is not a breaking change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Derived {
    /// Connections open: accepted minus closed.
    Active,
    /// `accept` failures for lack of descriptors or memory: the four kinds together.
    AcceptExhausted,
    /// Bytes read and neither written nor dropped: the pending output of open connections.
    BytesPending,
    /// Bytes written on connections still open: whether they are delivered is not known yet.
    BytesOutstanding,
}

impl Derived {
    /// Every derived value, in display order.
    pub const ALL: [Derived; 4] = [
        Derived::Active,
        Derived::AcceptExhausted,
        Derived::BytesPending,
        Derived::BytesOutstanding,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Derived::Active => "active",
            Derived::AcceptExhausted => "accept_exhausted",
            Derived::BytesPending => "bytes_pending",
            Derived::BytesOutstanding => "bytes_outstanding",
        }
    }

    pub fn doc(self) -> &'static str {
        match self {
            Derived::Active => "Connections open: accepted minus closed.",
            Derived::AcceptExhausted => {
                "accept failures for lack of descriptors or memory (the four kinds together)."
            }
            Derived::BytesPending => {
                "Bytes read and neither written nor dropped: pending output of open connections."
            }
            Derived::BytesOutstanding => {
                "Bytes written on connections still open, not yet known delivered or lost."
            }
        }
    }

    /// True for a value that falls as well as rises (a Prometheus gauge); the others only grow.
    pub const fn is_gauge(self) -> bool {
        !matches!(self, Derived::AcceptExhausted)
    }

    /// The value for `report`.
    pub fn of(self, report: &Report) -> u64 {
        match self {
            Derived::Active => report[Counter::Accepted].saturating_sub(report[Counter::Closed]),
            Derived::AcceptExhausted => [
                Counter::AcceptEmfile,
                Counter::AcceptEnfile,
                Counter::AcceptEnobufs,
                Counter::AcceptEnomem,
            ]
            .into_iter()
            .map(|c| report[c])
            .sum(),
            Derived::BytesPending => report[Counter::BytesRead]
                .saturating_sub(report[Counter::BytesWritten] + report[Counter::BytesDropped]),
            Derived::BytesOutstanding => {
                report[Counter::BytesWritten].saturating_sub(report.settled_bytes())
            }
        }
    }
}

/// The counters of one worker (or, summed, of the whole server).
///
/// Every byte read has one fate: written or dropped; every byte written, once its connection
/// closed, one more: delivered (the kernel's figure), in flight, unacknowledged or lost to an
/// error. Until then it is pending or outstanding, so at any moment
/// `bytes_read == bytes_delivered + bytes_in_flight + bytes_unacked + bytes_lost_to_errors +
/// bytes_dropped + bytes_pending + bytes_outstanding`, and once every connection is closed the
/// last two are zero.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Report {
    values: [u64; COUNT],
}

impl Default for Report {
    fn default() -> Self {
        Report { values: [0; COUNT] }
    }
}

impl Index<Counter> for Report {
    type Output = u64;

    fn index(&self, counter: Counter) -> &u64 {
        &self.values[counter as usize]
    }
}

/// The fates of a byte written once its connection closed.
const SETTLED: [Counter; 4] = [
    Counter::BytesDelivered,
    Counter::BytesInFlight,
    Counter::BytesUnacked,
    Counter::BytesLostToErrors,
];

impl Report {
    /// The value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self[counter]
    }

    /// A derived value.
    pub fn derived(&self, value: Derived) -> u64 {
        value.of(self)
    }

    /// Connections open when the counters were taken.
    pub fn active(&self) -> u64 {
        Derived::Active.of(self)
    }

    /// Bytes written whose connection closed: delivered, in flight, unacknowledged or lost.
    fn settled_bytes(&self) -> u64 {
        SETTLED.iter().map(|&c| self[c]).sum()
    }

    /// True when no fate was counted for more bytes than could have it: no more written and
    /// dropped than read, no more settled than written. Holds at any moment.
    pub fn consistent(&self) -> bool {
        self[Counter::BytesWritten] + self[Counter::BytesDropped] <= self[Counter::BytesRead]
            && self.settled_bytes() <= self[Counter::BytesWritten]
    }

    /// True when every byte read has its final fate: consistent, with nothing pending or
    /// outstanding. Holds once every connection is closed.
    pub fn balances(&self) -> bool {
        self.consistent()
            && Derived::BytesPending.of(self) == 0
            && Derived::BytesOutstanding.of(self) == 0
    }

    /// Every counter with its value, in display order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.into_iter().map(|c| (c, self[c]))
    }

    /// Adds `n` to a counter (a high-water mark takes the larger value instead).
    pub(crate) fn add(&mut self, counter: Counter, n: u64) {
        let value = &mut self.values[counter as usize];
        match counter.merge() {
            Merge::Sum => *value += n,
            Merge::Max => *value = (*value).max(n),
        }
    }

    /// Adds one to a counter.
    pub(crate) fn count(&mut self, counter: Counter) {
        self.add(counter, 1);
    }

    /// The values as an array in `Counter::ALL` order, for publishing.
    pub(crate) fn to_array(self) -> [u64; COUNT] {
        self.values
    }

    /// The report whose values are `values`, in `Counter::ALL` order.
    pub(crate) fn from_array(values: [u64; COUNT]) -> Report {
        Report { values }
    }

    /// Reads the `name=value` pairs of a summary or stats line back into a report. Derived values
    /// are checked against the counters; words that are not `name=value` pairs are skipped, so a
    /// whole log line can be given.
    pub fn parse(line: &str) -> Result<Report, ParseError> {
        let mut report = Report::default();
        let mut seen = [false; COUNT];
        let mut derived = Vec::new();
        for (name, value) in line.split_whitespace().filter_map(|w| w.split_once('=')) {
            let parsed = || {
                value
                    .parse::<u64>()
                    .map_err(|_| ParseError(format!("{name}={value} is not a number")))
            };
            if let Some(c) = Counter::ALL.into_iter().find(|c| c.name() == name) {
                report.values[c as usize] = parsed()?;
                seen[c as usize] = true;
            } else if let Some(d) = Derived::ALL.into_iter().find(|d| d.name() == name) {
                derived.push((d, parsed()?));
            }
        }
        if let Some(missing) = Counter::ALL.into_iter().find(|&c| !seen[c as usize]) {
            return Err(ParseError(format!("counter {} missing", missing.name())));
        }
        for (d, value) in derived {
            if d.of(&report) != value {
                let what = format!("{}={value} disagrees with the counters", d.name());
                return Err(ParseError(what));
            }
        }
        Ok(report)
    }
}

/// Why [`Report::parse`] failed: a counter missing, a value not a number, or a derived value that
/// disagrees with the counters.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

impl AddAssign for Report {
    fn add_assign(&mut self, other: Report) {
        for (c, v) in other.iter() {
            self.add(c, v);
        }
    }
}

/// `active=.. accepted=.. ... accept_exhausted=.. bytes_delivered=..`: `active` first, the other
/// derived values after every counter, so the summary and the stats lines carry the same fields.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", Derived::Active.name(), self.active())?;
        for (c, v) in self.iter() {
            write!(f, " {}={v}", c.name())?;
        }
        for d in &Derived::ALL[1..] {
            write!(f, " {}={}", d.name(), d.of(self))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Report {{ {self} }}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report whose every counter holds a different value, so a swapped field shows.
    fn distinct(base: u64) -> Report {
        Report::from_array(std::array::from_fn(|i| base + 3 * i as u64))
    }

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.extend(Derived::ALL.iter().map(|d| d.name()));
        for name in &names {
            assert!(
                name.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{name}"
            );
        }
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a name is used twice");
    }

    #[test]
    fn every_counter_and_derived_value_has_a_doc_line_of_its_own() {
        let mut docs: Vec<&str> = Counter::ALL.into_iter().map(Counter::doc).collect();
        docs.extend(Derived::ALL.into_iter().map(Derived::doc));
        for doc in &docs {
            assert!(doc.len() > 10 && doc.ends_with('.'), "{doc:?}");
        }
        let count = docs.len();
        docs.sort_unstable();
        docs.dedup();
        assert_eq!(docs.len(), count, "a doc is used twice");
    }

    /// Counters only grow, so a derived value that some counter's growth can lower is a gauge,
    /// and one that none can lower is not.
    #[test]
    fn a_derived_value_is_a_gauge_exactly_when_a_growing_counter_can_lower_it() {
        // Every derived value well above zero, so a fall is not hidden by saturation.
        let mut base = Report::from_array([10; COUNT]);
        base.add(Counter::Accepted, 100);
        base.add(Counter::BytesRead, 1000);
        base.add(Counter::BytesWritten, 500);
        for d in Derived::ALL {
            assert!(d.of(&base) > 1, "{}", d.name());
            let can_fall = Counter::ALL.into_iter().any(|c| {
                let mut grown = base;
                grown.add(c, 1);
                d.of(&grown) < d.of(&base)
            });
            assert_eq!(d.is_gauge(), can_fall, "{}", d.name());
        }
    }

    #[test]
    fn debug_shows_every_counter_as_the_summary_line_does() {
        let r = distinct(7);
        assert_eq!(format!("{r:?}"), format!("Report {{ {r} }}"));
    }

    #[test]
    fn get_reads_the_counter_asked_for() {
        let r = distinct(7);
        for c in Counter::ALL {
            assert_eq!(r.get(c), r[c], "{}", c.name());
        }
    }

    #[test]
    fn sums_add_and_high_water_marks_take_the_larger() {
        let (a, b) = (distinct(5), distinct(1000));
        let mut total = a;
        total += b;
        for c in Counter::ALL {
            let want = match c {
                Counter::PendingHighWater => a[c].max(b[c]),
                _ => a[c] + b[c],
            };
            assert_eq!(total[c], want, "{}", c.name());
        }
        // Max, not the later value: the larger one came first here.
        let mut high = Report::default();
        high.add(Counter::PendingHighWater, 9);
        high.add(Counter::PendingHighWater, 4);
        assert_eq!(high[Counter::PendingHighWater], 9);
    }

    #[test]
    fn a_line_parses_back_into_the_same_report() {
        let report = distinct(7);
        let line = format!("epoll-echo: stopped: {report}");
        assert_eq!(Report::parse(&line), Ok(report));
    }

    /// A report with these counters set.
    fn with(values: &[(Counter, u64)]) -> Report {
        let mut r = Report::default();
        for &(c, v) in values {
            r.add(c, v);
        }
        r
    }

    #[test]
    fn the_line_shows_every_counter_and_the_derived_values() {
        let r = with(&[
            (Counter::Accepted, 5),
            (Counter::Closed, 2),
            (Counter::AcceptEmfile, 3),
            (Counter::AcceptEnomem, 4),
        ]);
        let text = r.to_string();
        assert!(text.starts_with("active=3 accepted=5 closed=2 "), "{text}");
        assert!(text.contains(" accept_exhausted=7 "), "{text}");
        assert!(text.ends_with(" bytes_outstanding=0"), "{text}");
        for c in Counter::ALL {
            assert!(text.contains(&format!(" {}=", c.name())), "{text}");
        }
    }

    #[test]
    fn parsing_refuses_missing_bad_and_inconsistent_values() {
        let line = distinct(1).to_string();
        let refused = |changed: String, why: &str| match Report::parse(&changed) {
            Err(e) => assert!(e.to_string().contains(why), "{e}"),
            Ok(r) => panic!("{changed} parsed as {r}"),
        };
        refused(line.replace("closed=", "kept="), "counter closed missing");
        refused(line.replace("bytes_read=", "bytes_read=x"), "not a number");
        refused(line.replacen("active=", "active=9", 1), "active=9");
    }

    #[test]
    fn the_readme_explains_every_counter() {
        let readme = include_str!("../README.md");
        let names = Counter::ALL
            .iter()
            .map(|c| c.name())
            .chain(Derived::ALL.iter().map(|d| d.name()));
        for name in names {
            let row = format!("| `{name}` |");
            assert!(readme.contains(&row), "README.md has no row for {name}");
        }
    }

    #[test]
    fn balance_detects_lost_bytes() {
        let mut r = with(&[(Counter::BytesRead, 10), (Counter::BytesWritten, 7)]);
        r.add(Counter::BytesDropped, 2);
        assert!(r.consistent() && !r.balances());
        assert_eq!(r.derived(Derived::BytesPending), 1);
        r.add(Counter::BytesDropped, 1);
        assert_eq!(
            r.derived(Derived::BytesOutstanding),
            7,
            "written, not settled"
        );
        assert!(!r.balances());
        // Each fate of a written byte settles it; none may settle more than was written.
        for (c, n) in [
            (Counter::BytesDelivered, 3),
            (Counter::BytesInFlight, 1),
            (Counter::BytesUnacked, 2),
            (Counter::BytesLostToErrors, 1),
        ] {
            assert!(!r.balances(), "before {}", c.name());
            r.add(c, n);
        }
        assert!(r.balances(), "{r}");
        r.add(Counter::BytesLostToErrors, 1);
        assert!(!r.consistent(), "more settled than written");
        let mut r = with(&[(Counter::BytesRead, 1), (Counter::BytesWritten, 2)]);
        assert!(!r.consistent(), "more written than read");
        r.add(Counter::BytesRead, 1);
        r.add(Counter::BytesDelivered, 2);
        assert!(r.balances());
    }
}
