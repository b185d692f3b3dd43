//! Idle-timeout behaviour of the worker over the simulated kernel, with the clock moved by hand: no
//! sleeping, no sockets.

use std::time::Duration;

use super::*;
use crate::dispatch::Settings;
use crate::report::Counter;

const TIMEOUT: Duration = Duration::from_millis(800);

/// A worker over the kernel, and a few clients the test moves by hand.
struct Harness {
    worker: Worker<Sim<SeedRng, Steps>>,
}

impl Harness {
    fn new(idle_timeout: Option<Duration>) -> Self {
        let settings = Settings {
            idle_timeout,
            max_pending: 1024,
            scratch_len: 1024,
            ..Settings::default()
        };
        Harness {
            worker: stepped(Setup::new(Faults::none()), Terms::of(&settings), settings),
        }
    }

    fn kernel(&mut self) -> &mut Kernel<SeedRng> {
        &mut self.worker.io_mut().kernel
    }

    fn now(&self) -> u64 {
        self.worker.io().kernel.now()
    }

    /// When the worker would wake at the latest, in virtual time.
    fn deadline(&self) -> Option<u64> {
        let sim = self.worker.io();
        self.worker
            .core()
            .poll_timeout()
            .map(|t| sim.kernel.virtual_of(t))
    }

    /// Runs worker turns until nothing is ready and no work is queued.
    fn settle(&mut self) {
        for _ in 0..100 {
            self.worker.turn().expect("a simulated wait cannot fail");
            let now = self.now();
            if !self.worker.io().kernel.has_ready() && self.deadline() != Some(now) {
                return;
            }
        }
        panic!("the worker never settles");
    }

    /// Moves the clock and lets the worker run.
    fn advance(&mut self, by: Duration) {
        self.kernel().advance(by);
        self.settle();
    }

    /// A client connects and is accepted; its echo fits in a 64 KiB send buffer and window.
    fn connect(&mut self) -> usize {
        self.connect_with(65_536)
    }

    fn connect_with(&mut self, send_buffer: usize) -> usize {
        let link = self
            .kernel()
            .connect(usize::MAX, send_buffer, 1, send_buffer)
            .expect("the listener is open");
        self.settle();
        assert!(self.kernel().links[link].is_open(), "not accepted");
        link
    }

    /// A client whose window and whose server-side send buffer hold 100 bytes each sends 1200
    /// and reads nothing: 1000 stay pending.
    fn connect_unread(&mut self) -> usize {
        let link = self.connect_with(100);
        self.send(link, 1200);
        assert_eq!(self.worker.core().pending_bytes(), 1000);
        link
    }

    fn send(&mut self, link: usize, n: usize) {
        self.kernel().client_send(link, &vec![7; n]);
        self.settle();
    }

    fn closed(&mut self, link: usize) -> bool {
        !self.kernel().links[link].is_open()
    }

    fn report(&self) -> crate::report::Report {
        self.worker.core().report()
    }
}

#[test]
fn a_silent_connection_is_closed_after_the_timeout_and_not_before() {
    let mut h = Harness::new(Some(TIMEOUT));
    let c = h.connect();
    let (step, timeout) = (Duration::from_millis(10), TIMEOUT.as_nanos() as u64);
    let mut waited = Duration::ZERO;
    while !h.closed(c) {
        // The worker sleeps until the core's deadline; never longer than a sweep period.
        let deadline = h.deadline().expect("a sweep is scheduled");
        assert!(deadline <= h.now() + timeout, "sweep deadline too far away");
        // A deadline already passed would make the worker poll without sleeping: a spin.
        assert!(deadline > h.now(), "sweep deadline not in the future");
        h.advance(step);
        waited += step;
        assert!(waited < 2 * TIMEOUT, "never closed");
    }
    assert!(waited >= TIMEOUT, "closed after only {waited:?}");
    assert_eq!(h.report()[Counter::IdleCloses], 1);
    assert_eq!(h.worker.core().active_connections(), 0);
    // Nothing left to sweep: the worker may sleep until the next event.
    assert_eq!(h.deadline(), None);
}

#[test]
fn input_keeps_a_connection_alive() {
    let mut h = Harness::new(Some(TIMEOUT));
    let c = h.connect();
    for _ in 0..20 {
        h.advance(TIMEOUT / 2);
        h.send(c, 10);
    }
    assert!(!h.closed(c), "an active connection was closed");
    assert_eq!(h.report()[Counter::BytesWritten], 200);
    h.advance(2 * TIMEOUT);
    assert!(h.closed(c));
}

#[test]
fn output_progress_keeps_a_connection_alive_and_a_stall_drops_it() {
    let mut h = Harness::new(Some(TIMEOUT));
    let c = h.connect_unread();
    // It drains 100 bytes every half timeout: slow, but traffic, and the only traffic.
    for _ in 0..5 {
        h.kernel().advance(TIMEOUT / 2);
        h.kernel().client_recv(c, 100);
        h.settle();
    }
    assert!(!h.closed(c), "a slowly draining connection was closed");
    assert_eq!(h.worker.core().pending_bytes(), 500);
    // Then it stalls for good: closed, and its pending bytes are counted as dropped.
    h.advance(TIMEOUT + TIMEOUT / 2);
    assert!(h.closed(c));
    let report = h.report();
    assert_eq!(report[Counter::BytesDropped], 500);
    assert!(report.balances());
}

#[test]
fn a_write_that_would_block_is_not_progress() {
    let mut h = Harness::new(Some(TIMEOUT));
    let c = h.connect_unread();
    // Writable edges keep coming, but the peer takes nothing.
    let mut waited = Duration::ZERO;
    while !h.closed(c) {
        h.kernel().advance(TIMEOUT / 4);
        waited += TIMEOUT / 4;
        h.kernel().inject_edge(c, WRITABLE);
        h.settle();
        assert!(
            waited <= 3 * TIMEOUT,
            "a peer that takes nothing was never closed"
        );
    }
    assert_eq!(h.report()[Counter::BytesDropped], 1000);
}

#[test]
fn only_the_silent_connection_of_two_is_closed() {
    let mut h = Harness::new(Some(TIMEOUT));
    let silent = h.connect();
    let busy = h.connect();
    for _ in 0..4 {
        h.advance(TIMEOUT / 2);
        h.send(busy, 1);
    }
    assert!(h.closed(silent));
    assert!(!h.closed(busy));
    assert_eq!(h.worker.core().active_connections(), 1);
}

#[test]
fn without_a_timeout_idle_connections_stay_and_no_wake_up_is_scheduled() {
    let mut h = Harness::new(None);
    let c = h.connect();
    assert_eq!(h.deadline(), None);
    h.advance(Duration::from_secs(3600));
    assert!(!h.closed(c));
    assert_eq!(h.report()[Counter::IdleCloses], 0);
}
