//! The opt-in metrics endpoint (`--metrics-addr`): `GET /metrics` in the Prometheus text format,
//! served on a thread of its own from the counters the workers already publish once per turn.
//!
//! The echo path pays nothing for it: a scrape only loads the published cells. Whatever a client
//! sends (garbage, a huge head, one byte a second, a flood of connections) is answered with
//! 400/404/405/431 or closed, and no connection can hold the thread: every socket is non-blocking,
//! each connection has a total deadline, and at the connection cap the oldest one makes room.
//! This file is the handle; `endpoint` is the poll loop, `http` the request and response, and
//! `exposition` the series.

mod endpoint;
mod exposition;
mod http;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};

use epoll_echo::Report;

use endpoint::Endpoint;

/// The counters at one moment, as a scrape shows them.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Each worker's published counters, in worker order.
    pub per_worker: Vec<Report>,
    /// Workers that ended early (the live cells do not carry this; the server counts it).
    pub failed_workers: u64,
}

/// Where a scrape gets its sample.
pub type Source = Box<dyn Fn() -> Sample + Send>;

/// The metrics address, bound but not yet served: binding comes first so that a taken address
/// fails start-up before anything is served.
pub struct Listener(TcpListener);

impl Listener {
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Listener(listener))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The running endpoint. Stopping (or dropping) it closes the listener and every connection, and
/// joins the thread.
pub struct Metrics {
    /// Closing this end wakes the thread and tells it to stop.
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl Metrics {
    /// Serves `listener` on a thread of its own; `workers` and the version go in the info series.
    pub fn serve(listener: Listener, workers: usize, source: Source) -> io::Result<Metrics> {
        let (stop, stopped) = UnixStream::pair()?;
        let thread = thread::Builder::new()
            .name("epoll-echo-metrics".into())
            .spawn(move || Endpoint::new(listener.0, stopped, workers, source).run())?;
        Ok(Metrics {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Dropping the endpoint closes the listener and every open scrape, and waits for the thread.
impl Drop for Metrics {
    fn drop(&mut self) {
        // Closing our end makes the thread's end readable (end of file).
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the metrics thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    fn sample() -> Sample {
        Sample {
            per_worker: vec![Report::default(); 2],
            failed_workers: 1,
        }
    }

    /// Dropping the endpoint waits for its thread: a scrape being rendered finishes before the
    /// drop returns, so nothing of the endpoint outlives its handle (the binary drops it once
    /// the workers joined, then prints the summary).
    #[test]
    fn dropping_the_endpoint_waits_for_its_thread() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{mpsc, Arc};
        let (began, beginning) = mpsc::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&finished);
        let slow: Source = Box::new(move || {
            let _ = began.send(());
            thread::sleep(Duration::from_millis(100));
            done.store(true, Ordering::SeqCst);
            sample()
        });
        let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let addr = listener.local_addr().expect("address");
        let metrics = Metrics::serve(listener, 2, slow).expect("serve");
        let mut client = TcpStream::connect(addr).expect("connect");
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("send the request");
        beginning
            .recv_timeout(Duration::from_secs(30))
            .expect("the scrape began");
        drop(metrics);
        assert!(
            finished.load(Ordering::SeqCst),
            "the drop returned while the thread was still rendering a scrape"
        );
    }

    #[test]
    fn the_endpoint_serves_and_stop_closes_its_listener() {
        let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let addr = listener.local_addr().expect("address");
        let metrics = Metrics::serve(listener, 2, Box::new(sample)).expect("serve");
        let mut client = TcpStream::connect(addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("send the request");
        let mut lines = io::BufReader::new(client).lines();
        let first = lines.next().and_then(Result::ok);
        assert_eq!(first.as_deref(), Some("HTTP/1.1 200 OK"));
        let body: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(
            body.iter()
                .any(|l| l == "epoll_echo_workers_failed_total 1"),
            "{body:?}"
        );
        drop(metrics);
        let refused = TcpStream::connect(addr).expect_err("the listener is closed");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }
}
