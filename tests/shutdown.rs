//! Stopping the server: graceful drain with idle and busy clients, the shutdown audit (every
//! descriptor the server opened is closed, the byte counts balance), idempotent and concurrent
//! `stop`, `Drop`, and failed starts that leave nothing behind.
//!
//! The tests compare this process's descriptors before and after, so they run one at a time: the
//! test harness runs tests on parallel threads, and another test's sockets would spoil the count.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    config, connect, echoes, open_fds, payload, read_exact_chunked, read_to_eof, serial, start,
    stop, within, write_chunked, write_until_stalled, Rng, IO_TIMEOUT,
};
use epoll_echo::{failing, Counter, Report, Server, StartError};

/// A test of this process's descriptors: it runs alone, and when it ends no worker thread is left
/// and the descriptors are those it began with.
struct Alone {
    _serial: MutexGuard<'static, ()>,
    fds: BTreeMap<u32, PathBuf>,
}

impl Alone {
    fn begin() -> Alone {
        Alone {
            _serial: serial(),
            fds: open_fds(),
        }
    }

    fn end(self) {
        assert_workers_gone();
        let after = open_fds();
        let leaked: Vec<_> = after
            .iter()
            .filter(|(fd, _)| !self.fds.contains_key(fd))
            .collect();
        assert!(leaked.is_empty(), "descriptors left open: {leaked:?}");
        assert_eq!(after, self.fds, "descriptors changed");
    }
}

/// Worker threads alive in this process (they are named `epoll-echo-N`).
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("list /proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("epoll-echo-"))
        .count()
}

/// Waits until exactly `n` worker threads are seen. A thread names itself only once it runs, and a
/// joined thread can linger in `/proc` while the kernel reaps it, so this polls, up to the usual
/// timeout.
fn wait_for_workers(n: usize) {
    let give_up = Instant::now() + IO_TIMEOUT;
    loop {
        let seen = worker_threads();
        if seen == n {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{seen} worker threads, expected {n}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn assert_workers_gone() {
    wait_for_workers(0);
}

/// One echo round trip, so the client is surely accepted and registered.
fn echo_round(stream: &mut TcpStream, seed: u64) {
    let data = payload(seed, 1000);
    write_chunked(stream, &data, &mut Rng::new(seed), 1000);
    let back = read_exact_chunked(stream, data.len(), &mut Rng::new(seed), 1000);
    assert!(back == data, "echo differs");
}

/// A client that keeps sending while reading back, until the server's EOF. Returns how many
/// bytes it got back, after checking they are exactly a prefix of what it sent.
fn busy_client(addr: SocketAddr, seed: u64, ready: Arc<Barrier>) -> u64 {
    const LEN: usize = 2 << 20;
    let data = Arc::new(payload(seed, LEN));
    let mut stream = connect(addr);
    echo_round(&mut stream, seed);
    let mut writer = stream.try_clone().expect("clone the client socket");
    let finished = Arc::new(AtomicBool::new(false));
    let sender = {
        let (data, finished) = (Arc::clone(&data), Arc::clone(&finished));
        thread::spawn(move || {
            let mut at = 0;
            while at < LEN && !finished.load(Ordering::Relaxed) {
                let end = (at + 4096).min(LEN);
                // Errors are expected once the server closes; the reader checks the echo.
                match writer.write(&data[at..end]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
    };
    ready.wait();
    let mut got = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("busy client {seed}: read failed before EOF: {e}"),
        }
    }
    finished.store(true, Ordering::Relaxed);
    sender.join().expect("busy client writer");
    assert!(
        got == data[..got.len()],
        "busy client {seed}: echo is not a prefix of the input"
    );
    got.len() as u64 + 1000
}

/// A connected client that does nothing until the server's EOF, then closes.
fn idle_client(addr: SocketAddr, seed: u64, ready: Arc<Barrier>) -> u64 {
    let mut stream = connect(addr);
    echo_round(&mut stream, seed);
    ready.wait();
    let rest = read_to_eof(&mut stream);
    assert!(rest.is_empty(), "idle client {seed}: unexpected bytes");
    1000
}

#[test]
fn stop_with_idle_and_busy_clients_closes_everything_it_opened() {
    const IDLE: u64 = 6;
    const BUSY: u64 = 6;
    const WORKERS: usize = 3;
    let alone = Alone::begin();
    // Clients close as soon as they see EOF; the deadline is only a backstop.
    let server_config = config(WORKERS).drain_timeout(IO_TIMEOUT);
    let server = start(server_config);
    let addr = server.local_addr();
    wait_for_workers(WORKERS);

    let ready = Arc::new(Barrier::new((IDLE + BUSY + 1) as usize));
    let clients: Vec<_> = (0..IDLE + BUSY)
        .map(|seed| {
            let ready = Arc::clone(&ready);
            thread::spawn(move || {
                if seed < IDLE {
                    idle_client(addr, seed, ready)
                } else {
                    busy_client(addr, seed, ready)
                }
            })
        })
        .collect();
    ready.wait();
    let report = stop(server);
    let echoed: u64 = clients
        .into_iter()
        .map(|c| c.join().expect("a client saw a wrong echo or a reset"))
        .sum();
    eprintln!("echoed {echoed} bytes; {report}");

    assert_eq!(report[Counter::Accepted], IDLE + BUSY, "{report}");
    assert_eq!(report[Counter::Closed], IDLE + BUSY, "{report}");
    assert_eq!(report[Counter::DeadlineCloses], 0, "{report}");
    assert_eq!(report[Counter::BytesWritten], echoed, "{report}");
    assert_eq!(report[Counter::BytesDropped], 0, "{report}");
    // A listener, an epoll instance and a wake-up channel per worker, and every connection.
    assert_eq!(
        report[Counter::DescriptorsClosed],
        3 * WORKERS as u64 + IDLE + BUSY,
        "{report}"
    );
    alone.end();
}

#[test]
fn the_drain_deadline_closes_a_client_that_never_reads() {
    let alone = Alone::begin();
    let server_config = config(1)
        .max_pending(4096)
        .drain_timeout(Duration::from_millis(300));
    let server = start(server_config);
    let mut stuck = connect(server.local_addr());
    // Fill the path both ways so the server holds output it can never flush.
    write_until_stalled(&mut stuck, &payload(1, 16 << 20), Duration::from_secs(1));

    let report = stop(server);
    assert_eq!(report[Counter::DeadlineCloses], 1, "{report}");
    drop(stuck);
    alone.end();
}

#[test]
fn stop_twice_returns_the_same_report() {
    let _serial = serial();
    let server = start(config(2));
    let mut client = connect(server.local_addr());
    echo_round(&mut client, 1);
    client.shutdown(Shutdown::Write).expect("half-close");
    assert!(read_to_eof(&mut client).is_empty());
    drop(client);

    let server = Arc::new(server);
    let first = within("first stop", {
        let server = Arc::clone(&server);
        move || server.stop()
    });
    let second = within("second stop", move || server.stop());
    assert_eq!(first[Counter::Accepted], 1, "{first}");
    assert_eq!(first, second);
}

#[test]
fn stop_from_two_other_threads_at_once() {
    let alone = Alone::begin();
    let server = Arc::new(start(config(3)));
    let mut client = connect(server.local_addr());
    echo_round(&mut client, 2);
    // The client closes once it sees EOF, so the concurrent stops end promptly.
    let closer = thread::spawn(move || read_to_eof(&mut client));

    let go = Arc::new(Barrier::new(2));
    let stoppers: Vec<_> = (0..2)
        .map(|_| {
            let (server, go) = (Arc::clone(&server), Arc::clone(&go));
            thread::spawn(move || {
                go.wait();
                server.stop()
            })
        })
        .collect();
    let reports: Vec<Report> = within("two concurrent stops", move || {
        stoppers
            .into_iter()
            .map(|s| s.join().expect("a stopping thread panicked"))
            .collect()
    });
    assert_eq!(reports[0], reports[1]);
    assert_eq!(reports[0][Counter::Accepted], 1, "{}", reports[0]);
    assert!(reports[0].balances(), "{}", reports[0]);
    assert!(closer.join().expect("client").is_empty());
    assert_workers_gone();
    drop(server);
    alone.end();
}

#[test]
fn dropping_a_running_server_stops_it() {
    let alone = Alone::begin();
    let server = start(config(2));
    let addr = server.local_addr();
    let mut client = connect(addr);
    echo_round(&mut client, 3);
    let closer = thread::spawn(move || read_to_eof(&mut client));

    within("drop of a running server", move || drop(server));
    assert!(closer.join().expect("client").is_empty());
    assert_workers_gone();
    let refused = TcpStream::connect(addr).expect_err("the port still accepts after drop");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    alone.end();
}

#[test]
fn stop_right_after_start_never_loses_the_wake_up() {
    let alone = Alone::begin();
    // Some of these stops come before the workers first reach epoll_wait.
    for _ in 0..20 {
        let report = stop(start(config(2)));
        // Each worker closed its listener, epoll instance and wake-up channel, and nothing else.
        for (counter, value) in report.iter() {
            let want = if counter == Counter::DescriptorsClosed {
                6
            } else {
                0
            };
            assert_eq!(value, want, "{report}");
        }
    }
    alone.end();
}

#[test]
fn a_port_in_use_is_a_bind_error_and_leaves_nothing_open() {
    let alone = Alone::begin();
    // A listener without SO_REUSEPORT cannot share its port.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a plain listener");
    let server_config = config(3).addr(taken.local_addr().expect("its address"));
    match Server::start(server_config) {
        Err(StartError::Bind { addr, source }) => {
            assert_eq!(addr, taken.local_addr().expect("its address"));
            assert_eq!(source.raw_os_error(), Some(libc::EADDRINUSE), "{source}");
        }
        Err(e) => panic!("expected a bind error, got: {e}"),
        Ok(_) => panic!("started on a port that is in use"),
    }
    drop(taken);

    // An address this machine does not have (TEST-NET-1) fails the same clean way.
    let server_config = config(2).addr("192.0.2.1:0".parse().expect("address"));
    assert!(matches!(
        Server::start(server_config),
        Err(StartError::Bind { .. })
    ));

    assert_eq!(worker_threads(), 0, "a worker started after all");
    alone.end();
}

#[test]
fn an_invalid_config_is_refused_before_anything_opens() {
    let alone = Alone::begin();
    let no_workers = config(0);
    assert!(matches!(
        Server::start(no_workers),
        Err(StartError::InvalidConfig(_))
    ));
    let no_room = config(1).max_pending(0);
    assert!(matches!(
        Server::start(no_room),
        Err(StartError::InvalidConfig(_))
    ));
    assert_eq!(worker_threads(), 0);
    alone.end();
}

#[test]
fn a_failed_worker_is_counted_keeps_its_last_counts_and_gives_back_its_slots() {
    let alone = Alone::begin();
    // Worker 0 panics as soon as it has accepted one connection.
    let server_config = config(2).max_conns(Some(2));
    let server = failing::start(server_config, 0, 1).expect("server starts");
    let addr = server.local_addr();
    // Connections go to either worker; the first that reaches worker 0 ends it.
    for attempt in 0.. {
        assert!(attempt < 500, "worker 0 never got a connection");
        let mut c = connect(addr);
        let _ = echoes(&mut c, b"probe");
        drop(c);
        if server.failed_workers() == 1 {
            break;
        }
    }
    // Its slot came back: worker 1 alone admits two connections at once.
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    for (i, c) in held.iter_mut().enumerate() {
        assert!(
            echoes(c, b"after the failure"),
            "connection {i} refused: a slot leaked"
        );
    }
    drop(held);
    let report = within("Server::stop", move || server.stop());
    assert_eq!(report[Counter::WorkersFailed], 1, "{report}");
    // Worker 0's last published counts are in the sum: the connection it accepted.
    assert!(report[Counter::Accepted] >= 3, "{report}");
    alone.end();
}
