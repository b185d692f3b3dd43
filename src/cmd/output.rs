//! Output that never blocks the server: every line for stdout or stderr goes through a bounded
//! queue to a writer thread of its own, and a line that finds the queue full is dropped and
//! counted. A stdout or stderr that is a full pipe, a closed descriptor or `/dev/full` can delay
//! or lose lines, never a stop or an echo. The logger (levels, timestamps, `RUST_LOG`) writes
//! through the stderr queue.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Lines a stream may hold before it drops new ones.
const QUEUE: usize = 1024;

/// One output stream's queue; cloning shares it.
#[derive(Clone)]
pub struct Stream {
    lines: SyncSender<Vec<u8>>,
    /// Lines queued and not yet written.
    pending: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl Stream {
    /// A stream whose writer thread writes to `sink`, ignoring errors (a closed or full device
    /// must not stop the server).
    fn spawn(name: &str, mut sink: impl Write + Send + 'static) -> Stream {
        let (lines, queue) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        let written = Arc::clone(&pending);
        // If the thread cannot start, lines stay queued and are dropped once the queue is full.
        let _ = thread::Builder::new()
            .name(format!("epoll-echo-{name}"))
            .spawn(move || {
                for line in queue {
                    let _ = sink.write_all(&line).and_then(|()| sink.flush());
                    written.fetch_sub(1, SeqCst);
                }
            });
        Stream {
            lines,
            pending,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues one line (a newline is added); drops it when the queue is full.
    pub fn line(&self, text: &str) {
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        self.queue(bytes);
    }

    fn queue(&self, bytes: Vec<u8>) {
        self.pending.fetch_add(1, SeqCst);
        match self.lines.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, SeqCst);
                self.dropped.fetch_add(1, SeqCst);
            }
        }
    }

    /// Lines dropped so far because the stream was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(SeqCst)
    }

    /// Waits until every queued line is written, or until `deadline`; true if all were.
    pub fn drain_until(&self, deadline: Instant) -> bool {
        while self.pending.load(SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

/// The logger's sink: each record arrives as one `write` of a whole formatted line.
impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.queue(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The process's stdout and stderr.
#[derive(Clone)]
pub struct Output {
    pub stdout: Stream,
    pub stderr: Stream,
}

impl Output {
    /// Starts both writer threads, installs the logger (`RUST_LOG`, default `info`, with a
    /// timestamp and a level on each line) and routes panic messages through it.
    pub fn start() -> Output {
        let output = Output {
            stdout: Stream::spawn("stdout", io::stdout()),
            stderr: Stream::spawn("stderr", io::stderr()),
        };
        let logger =
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .format(|buf, record| {
                    writeln!(
                        buf,
                        "{} {:<5} epoll-echo: {}",
                        buf.timestamp_millis(),
                        record.level(),
                        record.args()
                    )
                })
                .target(env_logger::Target::Pipe(Box::new(output.stderr.clone())))
                .build();
        let max = logger.filter();
        if log::set_boxed_logger(Box::new(logger)).is_ok() {
            log::set_max_level(max);
        }
        // The default hook writes to stderr directly and could block on a full pipe.
        std::panic::set_hook(Box::new(|info| log::error!("{info}")));
        output
    }

    /// Writes what is queued for at most `within`, then gives up: nothing waits on a full pipe.
    pub fn finish(&self, within: Duration) {
        let deadline = Instant::now() + within;
        self.stdout.drain_until(deadline);
        self.stderr.drain_until(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that blocks until released, like a pipe nobody reads.
    struct Stuck(Arc<Mutex<()>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _held = self.0.lock().expect("lock");
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_drops_and_counts_lines_instead_of_blocking() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().expect("lock");
        let stream = Stream::spawn("test", Stuck(Arc::clone(&gate)));
        let lines = QUEUE as u64 + 100;
        for i in 0..lines {
            stream.line(&format!("line {i}"));
        }
        // One line may sit in the writer, the queue holds QUEUE more: the rest was dropped.
        assert!(
            stream.dropped() >= lines - QUEUE as u64 - 1,
            "{}",
            stream.dropped()
        );
        assert!(!stream.drain_until(Instant::now() + Duration::from_millis(20)));
        drop(held);
        assert!(stream.drain_until(Instant::now() + Duration::from_secs(30)));
    }
}
