//! The signals the binary takes: blocked in every thread from the first instruction of `main`, and
//! read from a signalfd, so none is ever delivered to a handler or kills the process, however early
//! it comes. A repeated stop signal within a short window is the same request (`timeout` and
//! process managers signal the process and then its group).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// A second stop signal this soon after the first is taken as a duplicate of it.
pub const REPEAT_WINDOW: Duration = Duration::from_millis(500);

/// The signals that stop the server.
const STOP: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Blocks the signals the binary takes in the calling thread; returns them.
pub fn block_mask() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for signal in STOP.into_iter().chain([Signal::SIGUSR1]) {
        set.add(signal);
    }
    set.thread_block()?;
    Ok(set)
}

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// A graceful stop (the first stop signal).
    Stop(Signal),
    /// Print the live counters.
    Stats,
    /// Exit at once (a stop signal after the window).
    Exit(Signal),
}

/// The blocked signals and their descriptor.
pub struct Signals {
    fd: SignalFd,
    /// The first stop signal and when it came.
    first_stop: Option<(Signal, Instant)>,
}

impl Signals {
    /// Blocks the stop signals and SIGUSR1 in this thread (and so in every thread it starts).
    pub fn block() -> nix::Result<Signals> {
        let set = block_mask()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Signals {
            fd,
            first_stop: None,
        })
    }

    /// Waits up to `timeout` for a signal that asks for something; `None` when none came.
    pub fn next(&mut self, timeout: Duration) -> nix::Result<Option<Request>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(info) = self.fd.read_signal()? {
                let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                if let Some(request) = self.classify(signal, Instant::now()) {
                    return Ok(Some(request));
                }
                continue;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// What `signal` at `now` asks for; `None` for a duplicate of the first stop signal.
    fn classify(&mut self, signal: Signal, now: Instant) -> Option<Request> {
        if signal == Signal::SIGUSR1 {
            return Some(Request::Stats);
        }
        match self.first_stop {
            None => {
                self.first_stop = Some((signal, now));
                Some(Request::Stop(signal))
            }
            Some((first, at)) if first == signal && now.duration_since(at) < REPEAT_WINDOW => {
                log::debug!("{signal} again within {REPEAT_WINDOW:?}: the same request");
                None
            }
            Some(_) => Some(Request::Exit(signal)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signals without a descriptor, for the classification alone.
    fn classify(events: &[(Signal, u64)]) -> Vec<Option<Request>> {
        let mut signals = Signals {
            fd: SignalFd::new(&SigSet::empty()).expect("signalfd"),
            first_stop: None,
        };
        let t0 = Instant::now();
        events
            .iter()
            .map(|&(s, ms)| signals.classify(s, t0 + Duration::from_millis(ms)))
            .collect()
    }

    #[test]
    fn a_repeat_within_the_window_is_the_same_request_and_a_later_one_exits() {
        use Signal::*;
        let got = classify(&[(SIGTERM, 0), (SIGTERM, 100), (SIGUSR1, 200), (SIGTERM, 600)]);
        assert_eq!(
            got,
            [
                Some(Request::Stop(SIGTERM)),
                None,
                Some(Request::Stats),
                Some(Request::Exit(SIGTERM))
            ]
        );
    }

    #[test]
    fn another_stop_signal_exits_even_within_the_window() {
        use Signal::*;
        let got = classify(&[(SIGHUP, 0), (SIGINT, 10)]);
        assert_eq!(
            got,
            [Some(Request::Stop(SIGHUP)), Some(Request::Exit(SIGINT))]
        );
    }
}
