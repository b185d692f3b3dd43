//! The binary's `--metrics-addr` endpoint over TCP: the scrape read back with a Prometheus parser
//! and compared with the live counters and the exit summary; bad, slow and flooding clients
//! answered or closed while scrapes go on; a taken address refused at start-up.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::process::{lowest_descriptor_limit, on_loopback, Process};
use common::{connect, echoes, eventually, reset, small_window, IO_TIMEOUT};
use epoll_echo::{Counter, Derived, Report};
use prometheus_parse::{Scrape, Value};

/// The per-connection deadline of the endpoint is 2 s; a verdict allows this much.
const DEADLINE_BOUND: Duration = Duration::from_secs(10);

/// A server on a free loopback port with metrics on another; returns it with both addresses.
fn start(args: &[&str]) -> (Process, SocketAddr, SocketAddr) {
    let mut all = vec!["--metrics-addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (mut server, addr) = Process::start(&all);
    let line = server.stderr_line_with("metrics on http://");
    let metrics = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"));
    (server, addr, metrics)
}

/// Sends `request` as one write and returns the whole response (the endpoint closes after it).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect(addr);
    stream.write_all(request).expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    String::from_utf8(response).expect("a text response")
}

/// The status line of the response to `request`.
fn status(addr: SocketAddr, request: &[u8]) -> String {
    let response = http(addr, request);
    response.lines().next().unwrap_or_default().to_string()
}

/// One scrape, checked for a 200 and the content type, parsed.
fn scrape(addr: SocketAddr) -> Scrape {
    let response = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = Scrape::parse(lines).expect("the text format parses");
    // The parser skips lines it cannot read: every sample line must have become a sample.
    let sample_lines = body.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(
        parsed.samples.len(),
        sample_lines,
        "unparsed lines in\n{body}"
    );
    parsed
}

/// The value of `metric` (with `worker="N"` when given) and whether it is a gauge.
fn read(scrape: &Scrape, metric: &str, worker: Option<usize>) -> (u64, bool) {
    let worker = worker.map(|w| w.to_string());
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("worker") == worker.as_deref())
        .unwrap_or_else(|| panic!("no {metric} for worker {worker:?}"));
    let (value, gauge) = match sample.value {
        Value::Counter(v) => (v, false),
        Value::Gauge(v) => (v, true),
        ref other => panic!("{metric}: {other:?}"),
    };
    assert!(value >= 0.0 && value.fract() == 0.0, "{metric} = {value}");
    (value as u64, gauge)
}

/// The series name of a counter: `_total` for a count, none for a gauge.
fn series(name: &str, gauge: bool, per_worker: bool) -> String {
    let worker = if per_worker { "worker_" } else { "" };
    let total = if gauge { "" } else { "_total" };
    format!("epoll_echo_{worker}{name}{total}")
}

/// The counters of a scrape, total and per worker, as reports.
fn reports(scrape: &Scrape, workers: usize) -> (Report, Vec<Report>) {
    let line = |worker: Option<usize>| {
        let fields: Vec<String> = Counter::ALL
            .iter()
            .map(|c| {
                let gauge = *c == Counter::PendingHighWater;
                let value = if *c == Counter::WorkersFailed && worker.is_some() {
                    0 // the server counts failed workers; the cells of a worker do not
                } else {
                    let name = series(c.name(), gauge, worker.is_some());
                    let (value, is_gauge) = read(scrape, &name, worker);
                    assert_eq!(is_gauge, gauge, "{name}");
                    value
                };
                format!("{}={value}", c.name())
            })
            .collect();
        Report::parse(&fields.join(" ")).expect("every counter")
    };
    (line(None), (0..workers).map(|w| line(Some(w))).collect())
}

#[test]
fn a_scrape_shows_every_counter_and_agrees_with_the_stats_and_the_summary() {
    let (mut server, addr, metrics) = start(&["--maxListeners", "2"]);
    let mut sent = 0;
    for i in 0..8 {
        let mut client = connect(addr);
        let message = format!("client {i}");
        assert!(echoes(&mut client, message.as_bytes()));
        sent += message.len() as u64;
    }
    let mut open = connect(addr);
    assert!(echoes(&mut open, b"still here"));
    sent += b"still here".len() as u64;
    // Workers publish at the end of a turn, which can come after the client
    // has its echo: wait until the last close and the last echo are visible.
    let mut last = None;
    let settled = eventually(|| {
        let scraped = scrape(metrics);
        let (total, _) = reports(&scraped, 2);
        let done = total[Counter::Accepted] == 9
            && total[Counter::Closed] == 8
            && total[Counter::BytesRead] == sent
            && total[Counter::BytesWritten] == sent;
        last = Some(scraped);
        done
    });
    let scraped = last.expect("at least one scrape");
    assert!(
        settled,
        "the counters never showed 9 accepted, 8 closed, {sent} bytes read and written"
    );
    let (total, workers) = reports(&scraped, 2);

    // Totals: the same as the SIGUSR1 line, summed (or maxed) over the workers.
    assert_eq!(total, server.stats(), "scrape and SIGUSR1 disagree");
    let mut summed = Report::default();
    for w in &workers {
        summed += *w;
    }
    assert_eq!(summed, total, "the workers do not add up to the total");
    assert_eq!(read(&scraped, "epoll_echo_active", None), (1, true));
    for d in Derived::ALL {
        let gauge = d.is_gauge();
        let name = series(d.name(), gauge, false);
        assert_eq!(read(&scraped, &name, None), (d.of(&total), gauge), "{name}");
        for (i, w) in workers.iter().enumerate() {
            let name = series(d.name(), gauge, true);
            assert_eq!(read(&scraped, &name, Some(i)).0, d.of(w), "{name} {i}");
        }
    }
    // Each series carries the counter's own doc line as its help.
    for c in Counter::ALL {
        let name = series(c.name(), c == Counter::PendingHighWater, false);
        assert_eq!(scraped.docs.get(&name).map(String::as_str), Some(c.doc()));
    }
    let info = scraped
        .samples
        .iter()
        .find(|s| s.metric == "epoll_echo_info")
        .expect("an info series");
    assert_eq!(info.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(info.labels.get("workers"), Some("2"));

    drop(open);
    let exit = server.terminate();
    let summary = exit.assert_clean();
    // Scrapes come and go without a word: an empty accept queue is not a failure.
    let warnings: Vec<&String> = exit
        .stderr
        .iter()
        .filter(|l| l.contains(" WARN "))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    for c in [Counter::Accepted, Counter::BytesRead, Counter::BytesWritten] {
        assert_eq!(summary[c], total[c], "{}: {summary}", c.name());
    }
    assert_eq!(summary[Counter::Closed], total[Counter::Closed] + 1);
}

#[test]
fn bad_requests_are_answered_and_scrapes_go_on() {
    let (server, addr, metrics) = start(&[]);
    let mut whole = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    whole.resize(9_000 - 4, b'a');
    whole.extend_from_slice(b"\r\n\r\n");
    let mut long_url = b"GET /metrics?".to_vec();
    long_url.resize(10_000, b'a');
    long_url.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    let cases: [(&[u8], &str); 10] = [
        (
            b"GET http://localhost/metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "200 OK",
        ),
        (
            b"GET /metrics HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "400 Bad Request",
        ),
        // The head bound holds for a head that arrives whole, as for one that trickles in.
        (&whole, "431 Request Header Fields Too Large"),
        (&long_url, "414 URI Too Long"),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics HTTP/7.0\r\n\r\n", "400 Bad Request"),
        (b"GET / HTTP/1.1\r\n\r\n", "404 Not Found"),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "405 Method Not Allowed",
        ),
        (
            b"DELETE /metrics HTTP/1.0\r\n\r\n",
            "405 Method Not Allowed",
        ),
        (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", "200 OK"),
    ];
    for (request, want) in cases {
        let got = status(metrics, request);
        assert_eq!(
            got,
            format!("HTTP/1.1 {want}"),
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
    // HEAD: the head of a scrape, no body.
    let head = http(metrics, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "a body after HEAD: {head}");

    // A huge head, never finished: 431 once it passes the bound, while it is still being sent.
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while huge.len() < 64 * 1024 {
        huge.extend_from_slice(
            b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    let got = status(metrics, &huge);
    assert_eq!(got, "HTTP/1.1 431 Request Header Fields Too Large");
    let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let got = status(metrics, &many);
    assert_eq!(got, "HTTP/1.1 431 Request Header Fields Too Large");

    // A client that connects and leaves, or half a request and leaves: nothing to answer.
    drop(connect(metrics));
    let mut half = connect(metrics);
    half.write_all(b"GET /met").expect("send half a request");
    drop(half);

    scrape(metrics);
    assert!(echoes(&mut connect(addr), b"echo unharmed"));
    server.terminate().assert_clean();
}

/// Sends `request` one byte every `gap` until the server closes the connection (or
/// `DEADLINE_BOUND` passes); returns how long it lasted and what came back.
fn trickle(addr: SocketAddr, request: &'static [u8], gap: Duration) -> (Duration, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(gap)).expect("read timeout");
    let start = Instant::now();
    let mut received = Vec::new();
    for byte in request.iter().cycle() {
        if start.elapsed() > DEADLINE_BOUND {
            break;
        }
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    (start.elapsed(), received)
}

/// A request that arrives in pieces, each soon after the last (as a slow network delivers it),
/// is answered once it is whole: the endpoint waits for the rest rather than giving up.
#[test]
fn a_request_in_pieces_is_answered_once_whole() {
    let (server, _, metrics) = start(&[]);
    let mut stream = connect(metrics);
    for piece in [&b"GET /metr"[..], b"ics HTTP/1.1\r\nHo", b"st: x\r\n\r\n"] {
        stream.write_all(piece).expect("send a piece");
        thread::sleep(Duration::from_millis(20));
    }
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let response = String::from_utf8(response).expect("a text response");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    server.terminate().assert_clean();
}

#[test]
fn a_client_sending_one_byte_at_a_time_is_cut_off_and_holds_no_scrape() {
    let (server, _, metrics) = start(&[]);
    let slow = thread::spawn(move || {
        let request = b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: 1\r\n\r\n";
        trickle(metrics, request, Duration::from_millis(250))
    });
    // Scrapes are answered while the slow client trickles.
    for _ in 0..3 {
        let start = Instant::now();
        scrape(metrics);
        assert!(
            start.elapsed() < DEADLINE_BOUND,
            "a scrape waited for the slow client"
        );
        thread::sleep(Duration::from_millis(300));
    }
    let (lasted, received) = slow.join().expect("the slow client");
    assert!(
        lasted < DEADLINE_BOUND,
        "the slow client was kept for {lasted:?}"
    );
    assert!(
        received.is_empty(),
        "a trickled request was answered: {received:?}"
    );
    server.terminate().assert_clean();
}

#[test]
fn a_flood_of_idle_connections_does_not_lock_out_a_scrape() {
    let (server, _, metrics) = start(&[]);
    let flood: Vec<TcpStream> = (0..100).map(|_| connect(metrics)).collect();
    let start = Instant::now();
    scrape(metrics);
    assert!(
        start.elapsed() < DEADLINE_BOUND,
        "the scrape waited for the flood"
    );
    // Every idle connection is closed by the server: the oldest at once, the rest at the deadline.
    for mut idle in flood {
        idle.set_read_timeout(Some(DEADLINE_BOUND))
            .expect("read timeout");
        let mut buf = [0u8; 16];
        match idle.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("an idle connection got {n} bytes"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("an idle connection was not closed: {e}"),
        }
    }
    assert!(start.elapsed() < DEADLINE_BOUND * 2);
    scrape(metrics);
    server.terminate().assert_clean();
}

#[test]
fn a_metrics_address_that_cannot_be_bound_fails_start_up_with_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a listener");
    let addr = taken.local_addr().expect("its address").to_string();
    let not_here = "192.0.2.1:9100"; // TEST-NET-1: never a local address
    let mut cases = vec![(addr.as_str(), "another socket already listens there")];
    // Binding sends nothing; a host with net.ipv4.ip_nonlocal_bind=1 would allow it, though.
    if TcpListener::bind("192.0.2.1:0").is_err() {
        cases.push((not_here, "Cannot assign requested address"));
    } else {
        println!("skipped {not_here}: this host binds addresses it does not have");
    }
    for (metrics, why) in cases {
        let exit = Process::spawn(&on_loopback(&["--metrics-addr", metrics])).exit();
        assert_eq!(exit.status.code(), Some(1), "{:?}", exit.stderr);
        assert_eq!(exit.stderr.len(), 1, "want one line: {:?}", exit.stderr);
        let line = &exit.stderr[0];
        assert!(
            line.contains(&format!("cannot serve metrics on {metrics}")),
            "{line}"
        );
        assert!(line.contains(why), "{line}");
        assert!(exit.stdout.is_empty(), "it served: {:?}", exit.stdout);
        exit.assert_no_panic();
    }
}

#[test]
fn the_readme_lists_every_series() {
    let (server, _, metrics) = start(&[]);
    let scraped = scrape(metrics);
    server.terminate().assert_clean();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let operations = readme
        .split_once("## Operations")
        .map(|(_, rest)| rest)
        .expect("an Operations section");
    // Per-worker series are documented by their rule, the others one by one.
    let mut missing: Vec<&String> = scraped
        .docs
        .keys()
        .filter(|name| !name.starts_with("epoll_echo_worker_"))
        .filter(|name| !operations.contains(&format!("`{name}")))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "README's Operations section lacks {missing:?}"
    );
}

/// Scrapes through a small window: waits before reading, then reads in small pieces and sends a
/// line after each. Returns the response's announced body length and
/// what arrived, and the error that ended the exchange, if any.
fn slow_scrape(metrics: SocketAddr) -> (usize, Vec<u8>, Option<std::io::Error>) {
    let mut stream = small_window(metrics, 4096);
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send the request");
    // The endpoint fills the window and its send buffer meanwhile; well inside its deadline.
    thread::sleep(Duration::from_millis(300));
    let (mut response, mut chunk) = (Vec::new(), [0u8; 1024]);
    let mut announced = None;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) => return (announced.unwrap_or(0), response, Some(e)),
        }
        let text = String::from_utf8_lossy(&response);
        announced = announced.or_else(|| {
            let (head, _) = text.split_once("\r\n\r\n")?;
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))?;
            length.trim().parse::<usize>().ok()
        });
        // However long the response, one of these comes after the endpoint's last write.
        if let Err(e) = stream.write_all(b"more\r\n") {
            return (announced.unwrap_or(0), response, Some(e));
        }
    }
    (announced.unwrap_or(0), response, None)
}

/// A scrape bigger than the endpoint's send buffer and the scraper's window, read slowly by a
/// scraper that keeps sending lines, arrives whole: the endpoint waits for room rather
/// than giving up, and after its last byte it reads what the scraper still sends until the
/// scraper closes, instead of closing at once (input that reaches a closed socket is answered
/// with a reset, which ends the exchange and can throw away an unsent tail). Runs in a private
/// network namespace whose TCP send buffers are capped at 16 KiB, so the response cannot fit
/// whatever the host's settings; needs root, and says so when it skips (CI runs as root).
#[test]
fn a_scrape_larger_than_the_send_buffer_reaches_a_slow_reader_whole() {
    if !common::root_for_a_namespace() {
        return;
    }
    let scraped = common::in_private_network(|| {
        std::fs::write("/proc/sys/net/ipv4/tcp_wmem", "4096 16384 16384")
            .expect("cap the send buffers in the namespace");
        // 32 workers: a response of about 50 KiB.
        let (server, _, metrics) = start(&["--maxListeners", "32"]);
        let scraped = slow_scrape(metrics);
        server.terminate().assert_clean();
        scraped
    });
    let Some((announced, response, error)) = scraped else {
        panic!("root, yet no private network namespace: unshare(CLONE_NEWNET) or `ip` failed");
    };
    assert!(
        announced > 2 * 16384,
        "a response of {announced} bytes fits the buffers: nothing was tested"
    );
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(0, |(_, body)| body.len());
    assert!(
        error.is_none() && body == announced,
        "{body} of {announced} bytes arrived, then {error:?}"
    );
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
}

/// Out of descriptors, the endpoint cannot accept a scrape: it says so, then leaves its listener
/// alone for the back-off (100 ms) before it tries again, instead of retrying at once. A scrape
/// left waiting for a second after the first warning gets about ten more, where a retry without
/// the back-off warns (or spins silently) thousands of times.
#[test]
fn out_of_descriptors_the_endpoint_warns_and_backs_off() {
    let args = on_loopback(&["--metrics-addr", "127.0.0.1:0", "--maxListeners", "1"]);
    let nofile = lowest_descriptor_limit(&args);
    let mut server = Process::spawn_with(&args, Stdio::piped(), Stdio::piped(), Some(nofile));
    server.listening();
    let line = server.stderr_line_with("metrics on http://");
    let metrics: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"));
    let mut waiting = connect(metrics);
    waiting
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .expect("send the request");
    let warning = "metrics endpoint: accept failed";
    let first = server.stderr_line_with(warning);
    assert!(first.contains(" WARN "), "{first}");
    let cpu = server.cpu_time();
    thread::sleep(Duration::from_secs(1));
    let spent = server.cpu_time() - cpu;
    let exit = server.terminate();
    let warnings = exit.stderr.iter().filter(|l| l.contains(warning)).count();
    let dropped = exit.stderr.iter().any(|l| l.contains("were dropped"));
    println!("{warnings} warnings and {spent:?} of CPU in a second of back-off");
    assert!(
        warnings <= 30 && !dropped,
        "{warnings} warnings (lines dropped: {dropped}) in about a second: no back-off"
    );
    assert!(
        spent < Duration::from_millis(500),
        "the endpoint spent {spent:?} of CPU in a second of back-off"
    );
}

/// A scraper that resets its connection, whether mid-request, while the response waits for room
/// or after the response, is closed at once, not kept until its two-second deadline (a socket
/// whose writes fail is always ready, so keeping it would also spin a core). Its descriptor is
/// gone well before the deadline. In a private network namespace whose send buffers are capped
/// at 16 KiB, so the response does wait for room; needs root, and says so when it skips (CI runs
/// as root).
#[test]
fn a_scraper_that_resets_is_closed_at_once() {
    if !common::root_for_a_namespace() {
        return;
    }
    let request = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";
    let outcome = common::in_private_network(move || {
        std::fs::write("/proc/sys/net/ipv4/tcp_wmem", "4096 16384 16384")
            .expect("cap the send buffers in the namespace");
        let (server, _, metrics) = start(&["--maxListeners", "32"]);
        let before = server.descriptors();
        let accepted = Instant::now();
        let mut mid_request = connect(metrics);
        mid_request
            .write_all(b"GET /met")
            .expect("send half a request");
        let mut waiting = small_window(metrics, 4096);
        waiting.write_all(request).expect("send the request");
        let mut after = connect(metrics);
        after.write_all(request).expect("send the request");
        let mut response = Vec::new();
        after.read_to_end(&mut response).expect("read the response");
        // Let the endpoint fill the small window and its send buffer.
        thread::sleep(Duration::from_millis(100));
        for stream in [mid_request, waiting, after] {
            reset(stream);
        }
        let reset_at = accepted.elapsed();
        let mut open = server.descriptors();
        while open > before && accepted.elapsed() < Duration::from_millis(1500) {
            thread::sleep(Duration::from_millis(5));
            open = server.descriptors();
        }
        let closed_at = accepted.elapsed();
        server.terminate().assert_clean();
        (open - before, reset_at, closed_at)
    });
    let Some((left, reset_at, closed_at)) = outcome else {
        panic!("root, yet no private network namespace: unshare(CLONE_NEWNET) or `ip` failed");
    };
    println!("reset at {reset_at:?} after connecting, closed by {closed_at:?}");
    assert_eq!(
        left, 0,
        "{left} scrape(s) still open {closed_at:?} after connecting (reset at {reset_at:?})"
    );
}
