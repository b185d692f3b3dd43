//! The opt-in metrics endpoint (`--metrics-addr`): `GET /metrics` in the Prometheus text format,
//! served on a thread of its own from the counters the workers already publish once per turn, by a
//! small poll loop that bounds every connection in size and time.
//!
//! The echo path pays nothing for it: a scrape only loads the published cells. Whatever a client
//! sends (garbage, a huge head, one byte a second, a flood of connections) is answered with
//! 400/404/405/431 or closed, and no connection can hold the thread: every socket is non-blocking,
//! each connection has a total deadline, and at the connection cap the oldest one makes room.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use epoll_echo::{Counter, Derived, Report};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The longest request head taken; a longer one is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// Most headers in a request head; more is answered 431.
const MAX_HEADERS: usize = 32;
/// How long one connection may take from accept to close, however it trickles.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; a new one beyond this closes the oldest.
const MAX_CONNS: usize = 64;
/// Connections accepted per turn of the loop, so the open ones are not kept waiting.
const ACCEPTS_PER_TURN: usize = 64;
/// How long to leave the listener alone after an accept failure such as EMFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Every series name starts with this.
const PREFIX: &str = "epoll_echo";

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

    /// Closes the listener and every open scrape, and waits for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        // Closing our end makes the thread's end readable (end of file).
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the metrics thread panicked");
            }
        }
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The thread's state: the listener, the stop signal, and the open connections, oldest first.
struct Endpoint {
    listener: TcpListener,
    stopped: UnixStream,
    workers: usize,
    source: Source,
    conns: Vec<Conn>,
    /// While set, the listener is not polled (an accept failure such as EMFILE).
    accept_paused_until: Option<Instant>,
}

impl Endpoint {
    fn new(listener: TcpListener, stopped: UnixStream, workers: usize, source: Source) -> Self {
        Endpoint {
            listener,
            stopped,
            workers,
            source,
            conns: Vec::new(),
            accept_paused_until: None,
        }
    }

    fn run(mut self) {
        loop {
            let now = Instant::now();
            self.conns.retain(|c| c.deadline > now);
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
            }
            let accepting = self.accept_paused_until.is_none();
            let ready = match self.wait(now, accepting) {
                Ok(Some(ready)) => ready,
                Ok(None) => continue,
                Err(e) => {
                    log::error!("metrics endpoint: cannot wait for events ({e}); closing it");
                    return;
                }
            };
            if !ready.stop.is_empty() {
                return;
            }
            let (workers, source) = (self.workers, &self.source);
            let metrics = || render(workers, source);
            let mut events = ready.conns.into_iter();
            self.conns.retain_mut(|conn| {
                let woken = events.next().is_some_and(|e| !e.is_empty());
                !woken || conn.progress(&metrics)
            });
            if accepting && !ready.listener.is_empty() {
                self.accept();
            }
        }
    }

    /// Polls the stop signal, the listener (when `accepting`) and every connection until one is
    /// ready or the next deadline; returns the events of each, or `None` when interrupted.
    fn wait(&self, now: Instant, accepting: bool) -> nix::Result<Option<Ready>> {
        let next = self
            .conns
            .iter()
            .map(|c| c.deadline)
            .chain(self.accept_paused_until)
            .min();
        let timeout = match next {
            // Deadlines are at most DEADLINE away, which fits in u16 milliseconds; +1 rounds up.
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::from(u16::try_from(ms).unwrap_or(u16::MAX))
            }
            None => PollTimeout::NONE,
        };
        let mut fds = Vec::with_capacity(self.conns.len() + 2);
        fds.push(PollFd::new(self.stopped.as_fd(), PollFlags::POLLIN));
        let listen = if accepting {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        fds.push(PollFd::new(self.listener.as_fd(), listen));
        for conn in &self.conns {
            fds.push(PollFd::new(conn.stream.as_fd(), conn.interest()));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut events = fds
            .iter()
            .map(|fd| fd.revents().unwrap_or(PollFlags::empty()));
        Ok(Some(Ready {
            stop: events.next().unwrap_or(PollFlags::empty()),
            listener: events.next().unwrap_or(PollFlags::empty()),
            conns: events.collect(),
        }))
    }

    /// Accepts what is waiting, closing the oldest connections beyond the cap.
    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.conns.len() >= MAX_CONNS {
                        log::debug!(
                            "metrics endpoint: {MAX_CONNS} connections open, closing the oldest"
                        );
                        self.conns.remove(0);
                    }
                    self.conns.push(Conn::new(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    log::warn!("metrics endpoint: accept failed ({e}); retrying shortly");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }
}

/// What one poll found: the events of the stop signal, the listener and each connection in order.
struct Ready {
    stop: PollFlags,
    listener: PollFlags,
    conns: Vec<PollFlags>,
}

/// Where a connection is.
enum Phase {
    /// Reading the request head.
    Head(Vec<u8>),
    /// Sending the response.
    Reply { bytes: Vec<u8>, sent: usize },
    /// Response sent and write side shut: reading what the client still sends until it closes,
    /// so our close does not reset the connection before the client has read the response.
    Linger,
}

/// One client of the endpoint.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    phase: Phase,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            deadline: Instant::now() + DEADLINE,
            phase: Phase::Head(Vec::new()),
        }
    }

    fn interest(&self) -> PollFlags {
        match self.phase {
            Phase::Head(_) | Phase::Linger => PollFlags::POLLIN,
            Phase::Reply { .. } => PollFlags::POLLOUT,
        }
    }

    /// Moves the connection on after `events`; false once it is finished and should be closed.
    fn progress(&mut self, metrics: &dyn Fn() -> Option<String>) -> bool {
        loop {
            match &mut self.phase {
                Phase::Head(head) => match read_head(&mut self.stream, head) {
                    Ok(Some(request)) => {
                        self.phase = Phase::Reply {
                            bytes: respond(request, metrics),
                            sent: 0,
                        };
                    }
                    Ok(None) => return true,
                    Err(()) => return false,
                },
                Phase::Reply { bytes, sent } => match self.stream.write(&bytes[*sent..]) {
                    Ok(0) => return false,
                    Ok(n) => {
                        *sent += n;
                        if *sent == bytes.len() {
                            if self.stream.shutdown(Shutdown::Write).is_err() {
                                return false;
                            }
                            self.phase = Phase::Linger;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                },
                Phase::Linger => {
                    let mut sink = [0u8; 4096];
                    match self.stream.read(&mut sink) {
                        Ok(0) => return false,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return false,
                    }
                }
            }
        }
    }
}

/// What a complete request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// A head that is not HTTP/1.x.
    Bad,
    /// A head over the size or header-count bound.
    TooLarge,
    /// A well-formed request for `path` with `method`.
    Valid { method: String, path: String },
}

/// Reads what the client sent; a request once the head is complete (or known bad), `None` while
/// more is needed, `Err` when the client closed or failed before that.
fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) -> Result<Option<Request>, ()> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(()),
            Ok(n) => {
                head.extend_from_slice(&chunk[..n]);
                if let Some(request) = parse_head(head) {
                    return Ok(Some(request));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}

/// The request in `head`, or `None` while it is incomplete and within the bound.
fn parse_head(head: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => Some(Request::Valid {
            method: request.method.unwrap_or_default().to_string(),
            path: request.path.unwrap_or_default().to_string(),
        }),
        Ok(httparse::Status::Partial) if head.len() > MAX_HEAD => Some(Request::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Request::TooLarge),
        Err(_) => Some(Request::Bad),
    }
}

/// The whole response to `request` (the connection closes after it).
fn respond(request: Request, metrics: &dyn Fn() -> Option<String>) -> Vec<u8> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (method, path) = match request {
        Request::Bad => return response("400 Bad Request", TEXT, "bad request\n", true, &[]),
        Request::TooLarge => {
            let body = "request header fields too large\n";
            return response("431 Request Header Fields Too Large", TEXT, body, true, &[]);
        }
        Request::Valid { method, path } => (method, path),
    };
    // A query string (`?name[]=...` from some scrapers) does not change the answer.
    if path.split('?').next() != Some("/metrics") {
        let body = "not found: the metrics are at /metrics\n";
        return response("404 Not Found", TEXT, body, true, &[]);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let allow = [("Allow", "GET, HEAD")];
        let body = "method not allowed: use GET\n";
        return response("405 Method Not Allowed", TEXT, body, true, &allow);
    }
    match metrics() {
        Some(text) => response(
            "200 OK",
            prometheus_text::CONTENT_TYPE,
            &text,
            !head_only,
            &[],
        ),
        None => {
            let body = "cannot encode the metrics\n";
            response("500 Internal Server Error", TEXT, body, true, &[])
        }
    }
}

fn response(
    status: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if with_body {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

/// The exposition text for the counters now; `None` if encoding failed.
fn render(workers: usize, source: &Source) -> Option<String> {
    let snapshot = Snapshot {
        sample: source(),
        workers,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).ok()?;
    Some(text)
}

/// One scrape's worth of counters, written out as series.
#[derive(Debug)]
struct Snapshot {
    sample: Sample,
    workers: usize,
}

/// Whether a counter is a gauge rather than a count of events or bytes: the high-water mark only.
fn is_gauge(counter: Counter) -> bool {
    counter == Counter::PendingHighWater
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let info = Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("workers", self.workers.to_string()),
        ]);
        let help = "The server's version and worker count.";
        info.encode(encoder.encode_descriptor(PREFIX, help, None, info.metric_type())?)?;

        let workers = &self.sample.per_worker;
        let mut total = Report::default();
        for report in workers {
            total += *report;
        }
        for counter in Counter::ALL {
            let gauge = is_gauge(counter);
            // The live cells never count a failed worker; the server does.
            if counter == Counter::WorkersFailed {
                let name = format!("{PREFIX}_{}", counter.name());
                let value = self.sample.failed_workers;
                series(&mut encoder, &name, counter.doc(), false, value)?;
                continue;
            }
            let name = format!("{PREFIX}_{}", counter.name());
            series(&mut encoder, &name, counter.doc(), gauge, total[counter])?;
            let name = format!("{PREFIX}_worker_{}", counter.name());
            let values = workers.iter().map(|r| r[counter]);
            per_worker(&mut encoder, &name, counter.doc(), gauge, values)?;
        }
        for derived in Derived::ALL {
            let gauge = derived == Derived::Active;
            let name = format!("{PREFIX}_{}", derived.name());
            series(
                &mut encoder,
                &name,
                derived.doc(),
                gauge,
                derived.of(&total),
            )?;
            let name = format!("{PREFIX}_worker_{}", derived.name());
            let values = workers.iter().map(|r| derived.of(r));
            per_worker(&mut encoder, &name, derived.doc(), gauge, values)?;
        }
        Ok(())
    }
}

fn metric_type(gauge: bool) -> MetricType {
    if gauge {
        MetricType::Gauge
    } else {
        MetricType::Counter
    }
}

/// One series without labels (a counter gets the `_total` suffix from the encoder).
fn series(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    gauge: bool,
    value: u64,
) -> Result<(), fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, metric_type(gauge))?;
    if gauge {
        ConstGauge::new(value).encode(metric)
    } else {
        ConstCounter::new(value).encode(metric)
    }
}

/// One series per worker, labelled `worker="N"`.
fn per_worker(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    gauge: bool,
    values: impl Iterator<Item = u64>,
) -> Result<(), fmt::Error> {
    let help = format!("{help} Per worker.");
    let mut family = encoder.encode_descriptor(name, &help, None, metric_type(gauge))?;
    for (index, value) in values.enumerate() {
        let labels = [("worker", index.to_string())];
        let metric = family.encode_family(&labels)?;
        if gauge {
            ConstGauge::new(value).encode(metric)?;
        } else {
            ConstCounter::new(value).encode(metric)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// A report whose counters are all distinct, offset by `base`.
    fn distinct(base: u64) -> Report {
        let line = Counter::ALL
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}={}", c.name(), base + 10 * i as u64))
            .collect::<Vec<_>>()
            .join(" ");
        Report::parse(&line).expect("a line of every counter")
    }

    /// The value of the sample line that starts with `series ` (name and labels).
    fn value(text: &str, series: &str) -> u64 {
        let prefix = format!("{series} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line[prefix.len()..].parse().expect("an integer value")
    }

    fn sample() -> Sample {
        Sample {
            per_worker: vec![distinct(1), distinct(1000)],
            failed_workers: 1,
        }
    }

    #[test]
    fn every_counter_is_shown_per_worker_and_in_total() {
        let source: Source = Box::new(sample);
        let text = render(2, &source).expect("encodes");
        let (a, b) = (distinct(1), distinct(1000));
        let mut total = a;
        total += b;
        for counter in Counter::ALL {
            if counter == Counter::WorkersFailed {
                continue;
            }
            let suffix = if is_gauge(counter) { "" } else { "_total" };
            let name = counter.name();
            assert_eq!(
                value(&text, &format!("epoll_echo_{name}{suffix}")),
                total[counter]
            );
            for (i, r) in [a, b].iter().enumerate() {
                let series = format!("epoll_echo_worker_{name}{suffix}{{worker=\"{i}\"}}");
                assert_eq!(value(&text, &series), r[counter], "{series}");
            }
            assert!(text.contains(&format!(
                "# HELP epoll_echo_{name}{suffix} {}\n",
                counter.doc()
            )));
        }
        // The high-water mark is the larger of the workers', not their sum.
        let high = value(&text, "epoll_echo_pending_high_water_bytes");
        assert_eq!(
            high,
            a[Counter::PendingHighWater].max(b[Counter::PendingHighWater])
        );
        assert!(text.contains("# TYPE epoll_echo_pending_high_water_bytes gauge\n"));
        assert!(text.contains("# TYPE epoll_echo_active gauge\n"));
        assert_eq!(value(&text, "epoll_echo_active"), total.active());
        let delivered = value(&text, "epoll_echo_bytes_delivered_total");
        assert_eq!(delivered, total.derived(Derived::BytesDelivered));
        assert_eq!(value(&text, "epoll_echo_workers_failed_total"), 1);
        let info = format!(
            "epoll_echo_info{{version=\"{}\",workers=\"2\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&text, &info), 1);
    }

    #[test]
    fn heads_are_parsed_bounded_and_refused() {
        let valid = |method: &str, path: &str| {
            Some(Request::Valid {
                method: method.into(),
                path: path.into(),
            })
        };
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_head(get), valid("GET", "/metrics"));
        // Every prefix of a good head asks for more.
        for end in 0..get.len() {
            assert_eq!(parse_head(&get[..end]), None, "{end}");
        }
        assert_eq!(
            parse_head(b"\x00\x01\x02 nonsense\r\n\r\n"),
            Some(Request::Bad)
        );
        assert_eq!(
            parse_head(b"GET /metrics HTTP/9.9\r\n\r\n"),
            Some(Request::Bad)
        );
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse_head(&huge), Some(Request::TooLarge));
        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many), Some(Request::TooLarge));
    }

    /// The status line of the response to `request`.
    fn status(request: Request) -> String {
        let bytes = respond(request, &|| Some("x 1\n".into()));
        let text = String::from_utf8(bytes).expect("text");
        text.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn each_request_gets_its_status() {
        let valid = |method: &str, path: &str| Request::Valid {
            method: method.into(),
            path: path.into(),
        };
        assert_eq!(status(valid("GET", "/metrics")), "HTTP/1.1 200 OK");
        assert_eq!(status(valid("GET", "/metrics?x=1")), "HTTP/1.1 200 OK");
        assert_eq!(status(valid("HEAD", "/metrics")), "HTTP/1.1 200 OK");
        assert_eq!(status(valid("GET", "/")), "HTTP/1.1 404 Not Found");
        assert_eq!(
            status(valid("POST", "/metrics")),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(status(Request::Bad), "HTTP/1.1 400 Bad Request");
        assert_eq!(
            status(Request::TooLarge),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        let head = respond(valid("HEAD", "/metrics"), &|| Some("x 1\n".into()));
        assert!(head.ends_with(b"Content-Length: 4\r\nConnection: close\r\n\r\n"));
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
        metrics.stop();
        let refused = TcpStream::connect(addr).expect_err("the listener is closed");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }
}
