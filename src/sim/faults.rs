//! The one fault schedule: how often the simulated kernel answers an operation with something other
//! than the plain result. Each place a fault can happen is a [`Fault`]; [`Faults`] holds a rate per
//! fault, in per mille of the operations it applies to. Every layer (the network runs, the model
//! properties, the fuzz target) sets the rates and the kernel draws each fault from its entropy at
//! the moment it could happen.

use super::entropy::Entropy;

/// A place where the kernel can answer other than plainly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    WaitEintr,
    /// A wait reports only part of the ready list (the rest stays for the next wait).
    ShortBatch,
    /// An edge with no new state behind it (allowed by epoll, must be harmless).
    SpuriousEdge,
    /// An event carrying the token of a connection closed earlier.
    StaleEvent,
    AcceptEintr,
    /// `accept` fails with `EMFILE` although descriptors are left.
    AcceptEmfile,
    AcceptEnfile,
    /// The connection at the head of the backlog died there (`ECONNABORTED`).
    AcceptAborted,
    RegisterFail,
    ReadEintr,
    /// A read returns less than is queued; the rest "arrives" just after and raises an edge.
    ReadShort,
    /// A read would block with data queued; it "arrives" just after and raises an edge.
    ReadEagain,
    /// The peer's reset is seen by a read.
    ReadReset,
    WriteEintr,
    /// A write takes less than there is room for; room "frees" just after and raises an edge.
    WriteShort,
    /// A write would block with room; room "frees" just after and raises an edge.
    WriteEagain,
    /// The peer's reset is seen by a write.
    WriteReset,
    /// What was sent has not landed at the peer's kernel yet, or its acknowledgement is still
    /// on its way: it lands at a later chance.
    AckLate,
    /// What our kernel still counted unacknowledged had reached the peer (its acknowledgement
    /// delayed): a RST after our close spares it.
    RstSpares,
}

const COUNT: usize = 19;

impl Fault {
    pub const ALL: [Fault; COUNT] = [
        Fault::WaitEintr,
        Fault::ShortBatch,
        Fault::SpuriousEdge,
        Fault::StaleEvent,
        Fault::AcceptEintr,
        Fault::AcceptEmfile,
        Fault::AcceptEnfile,
        Fault::AcceptAborted,
        Fault::RegisterFail,
        Fault::ReadEintr,
        Fault::ReadShort,
        Fault::ReadEagain,
        Fault::ReadReset,
        Fault::WriteEintr,
        Fault::WriteShort,
        Fault::WriteEagain,
        Fault::WriteReset,
        Fault::AckLate,
        Fault::RstSpares,
    ];

    /// How many times rarer than the common faults this one is: a fault that ends a connection
    /// (so its echo is no longer checked) must not end most of them.
    fn damping(self) -> u32 {
        match self {
            Fault::AcceptEnfile | Fault::AcceptAborted | Fault::RegisterFail => 4,
            Fault::ReadReset | Fault::WriteReset => 300,
            _ => 1,
        }
    }
}

/// A rate per fault, in per mille.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    rates: [u32; COUNT],
}

impl Faults {
    /// No faults: every operation gets the plain result.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Every fault at `rate`, the rarer ones damped.
    pub fn all(rate: u32) -> Faults {
        let mut faults = Faults::none();
        for f in Fault::ALL {
            faults.rates[f as usize] = rate / f.damping();
        }
        faults
    }

    /// The same with one rate replaced.
    pub fn with(mut self, fault: Fault, rate: u32) -> Faults {
        self.rates[fault as usize] = rate;
        self
    }

    pub fn rate(&self, fault: Fault) -> u32 {
        self.rates[fault as usize]
    }

    /// Rates drawn for one run: each fault off, rare, frequent or very frequent (damped).
    pub fn draw(e: &mut impl Entropy) -> Faults {
        let mut faults = Faults::none();
        for f in Fault::ALL {
            faults.rates[f as usize] = e.pick(&[0, 20, 100, 300]) / f.damping();
        }
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_has_its_own_rate() {
        let mut faults = Faults::none();
        for (i, f) in Fault::ALL.into_iter().enumerate() {
            faults = faults.with(f, i as u32 + 1);
        }
        for (i, f) in Fault::ALL.into_iter().enumerate() {
            assert_eq!(faults.rate(f), i as u32 + 1, "{f:?}");
        }
    }

    #[test]
    fn resets_are_damped_the_most() {
        let all = Faults::all(1000);
        assert_eq!(all.rate(Fault::ReadShort), 1000);
        assert_eq!(all.rate(Fault::AcceptAborted), 250);
        assert_eq!(all.rate(Fault::WriteReset), 3);
    }
}
