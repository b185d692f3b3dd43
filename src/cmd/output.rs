//! Output that never blocks the server: every line for stdout or stderr goes through a bounded
//! queue to a writer thread of its own, and a line that finds the queue full is dropped and
//! counted. A stdout or stderr that is a full pipe, a closed descriptor or `/dev/full` can delay
//! or lose lines, never a stop or an echo. The logger (levels, timestamps, `RUST_LOG`) writes
//! through the stderr queue; an error passes whatever `RUST_LOG` says (a typo in it must not hide
//! why the server did not start).
//!
//! The queue counts entries, not lines: a block the server writes at once (the counters printed
//! on SIGUSR1, one line per worker) is one entry, so a burst of signals fills it no faster with
//! many workers than with one.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// Entries (lines or blocks) a stream may hold before it drops new ones.
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
        self.block(&[text]);
    }

    /// Queues lines as one entry, written together or dropped together.
    pub fn block(&self, lines: &[impl AsRef<str>]) {
        let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.as_ref().len() + 1).sum());
        for line in lines {
            bytes.extend_from_slice(line.as_ref().as_bytes());
            bytes.push(b'\n');
        }
        self.queue(bytes);
    }

    fn queue(&self, bytes: Vec<u8>) {
        self.pending.fetch_add(1, SeqCst);
        match self.lines.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
                self.pending.fetch_sub(1, SeqCst);
                let lines = b.iter().filter(|&&c| c == b'\n').count().max(1);
                self.dropped.fetch_add(lines as u64, SeqCst);
            }
        }
    }

    /// Lines dropped so far because the queue was full.
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
        let build = |mut builder: env_logger::Builder| {
            builder
                .format(|buf, record| writeln!(buf, "{}", log_line(record.level(), record.args())))
                .target(env_logger::Target::Pipe(Box::new(output.stderr.clone())))
                .build()
        };
        let chosen = build(env_logger::Builder::from_env(
            env_logger::Env::default().default_filter_or("info"),
        ));
        let mut errors = env_logger::Builder::new();
        errors.filter_level(log::LevelFilter::Error);
        let logger = Logger {
            max: chosen.filter().max(log::LevelFilter::Error),
            chosen,
            errors: build(errors),
        };
        let max = logger.max;
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

/// One log line as the logger writes it: `2024-05-01T12:00:00.123Z INFO  epoll-echo: ...`.
pub fn log_line(level: log::Level, message: &dyn std::fmt::Display) -> String {
    let now = humantime::format_rfc3339_millis(SystemTime::now());
    format!("{now} {level:<5} epoll-echo: {message}")
}

/// The operator's filter, and past it every error.
struct Logger {
    chosen: env_logger::Logger,
    errors: env_logger::Logger,
    max: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.chosen.enabled(metadata) || self.errors.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if self.chosen.matches(record) {
            self.chosen.log(record);
        } else {
            self.errors.log(record);
        }
    }

    fn flush(&self) {}
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
        let dropped = stream.dropped();
        let most = lines - QUEUE as u64;
        assert!(dropped == most || dropped == most - 1, "{dropped}");
        // A block is dropped whole and counted by its lines.
        stream.block(&["first of three", "second of three", "third of three"]);
        assert_eq!(stream.dropped(), dropped + 3);
        assert!(!stream.drain_until(Instant::now() + Duration::from_millis(20)));
        drop(held);
        assert!(stream.drain_until(Instant::now() + Duration::from_secs(30)));
    }
}
