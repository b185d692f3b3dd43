//! Named readiness sets and the merge of two, the simulation's own: the core only reads flags, so
//! building and merging them is test machinery.

use crate::dispatch::Readiness;

/// The set with only these of the flags a wait reports for a plain edge.
const fn only(readable: bool, writable: bool) -> Readiness {
    Readiness {
        readable,
        writable,
        read_closed: false,
        hangup: false,
        error: false,
        urgent: false,
    }
}

/// Nothing ready.
pub const NONE: Readiness = only(false, false);
/// Input is waiting (`EPOLLIN`).
pub const READABLE: Readiness = only(true, false);
/// The send buffer has room (`EPOLLOUT`).
pub const WRITABLE: Readiness = only(false, true);

/// The merge of readiness sets.
pub trait Union {
    /// Both sets of flags, as epoll merges edges that come before a wait.
    fn union(self, other: Readiness) -> Readiness;
}

impl Union for Readiness {
    fn union(self, other: Readiness) -> Readiness {
        Readiness {
            readable: self.readable || other.readable,
            writable: self.writable || other.writable,
            read_closed: self.read_closed || other.read_closed,
            hangup: self.hangup || other.hangup,
            error: self.error || other.error,
            urgent: self.urgent || other.urgent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set whose flags are the bits of `bits`, in field order.
    fn set(bits: u8) -> Readiness {
        let bit = |i: u8| bits & (1 << i) != 0;
        Readiness {
            readable: bit(0),
            writable: bit(1),
            read_closed: bit(2),
            hangup: bit(3),
            error: bit(4),
            urgent: bit(5),
        }
    }

    #[test]
    fn a_union_keeps_every_flag_of_either_and_no_other() {
        for a in 0..64 {
            for b in 0..64 {
                assert_eq!(set(a).union(set(b)), set(a | b), "{a:06b} | {b:06b}");
            }
        }
        assert_eq!(set(0), NONE);
        assert_eq!(set(1), READABLE);
        assert_eq!(set(2), WRITABLE);
    }
}
