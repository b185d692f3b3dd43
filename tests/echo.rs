//! Echo behaviour of a running server over real loopback sockets: integrity under concurrency and
//! arbitrary chunking, backpressure with a bounded pending output, half-close, resets, and several
//! workers sharing one port.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{
    config, connect, echo_half_close, listening_sockets, payload, read_exact_chunked, read_to_eof,
    start, stop, write_chunked, write_until_stalled, Rng,
};
use epoll_echo::{Counter, StartError};

/// A small cap, so a client that does not read quickly pushes the server to it.
const SMALL_CAP: usize = 4096;
/// No write progress for this long means the path to the server and back is full.
const STALL: Duration = Duration::from_secs(1);

/// Sends `data` in random write sizes from one thread while reading in random sizes on another,
/// half-closes, and checks the echo byte for byte and the EOF after it.
fn check_echo(stream: TcpStream, data: Vec<u8>, seed: u64) {
    let len = data.len();
    let mut writer = stream.try_clone().expect("clone the client socket");
    let sender = thread::spawn(move || {
        let mut rng = Rng::new(seed ^ 0x5752);
        write_chunked(&mut writer, &data, &mut rng, 8 * 1024);
        writer.shutdown(Shutdown::Write).expect("half-close");
        data
    });
    let mut reader = stream;
    let mut rng = Rng::new(seed ^ 0x5244);
    let back = read_exact_chunked(&mut reader, len, &mut rng, 8 * 1024);
    let rest = read_to_eof(&mut reader);
    let data = sender.join().expect("writer thread");
    assert!(back == data, "connection {seed}: echo differs from input");
    assert!(
        rest.is_empty(),
        "connection {seed}: {} extra bytes",
        rest.len()
    );
}

#[test]
fn sixty_four_concurrent_connections_echo_random_payloads() {
    const CONNS: u64 = 64;
    let server = start(config(4));
    let addr = server.local_addr();
    let all_connected = Arc::new(Barrier::new(CONNS as usize));
    let total = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CONNS)
        .map(|seed| {
            let all_connected = Arc::clone(&all_connected);
            let total = Arc::clone(&total);
            thread::spawn(move || {
                let stream = connect(addr);
                // Every connection is open before any sends, so all 64 are served at once.
                all_connected.wait();
                let len = Rng::new(seed).below(96 * 1024) + 1;
                total.fetch_add(len as u64, Ordering::Relaxed);
                check_echo(stream, payload(seed, len), seed);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client saw a wrong echo");
    }
    let report = stop(server);
    let total = total.load(Ordering::Relaxed);
    assert_eq!(report[Counter::Accepted], CONNS, "{report}");
    assert_eq!(report[Counter::Closed], CONNS, "{report}");
    assert_eq!(report[Counter::BytesRead], total, "{report}");
    assert_eq!(report[Counter::BytesWritten], total, "{report}");
    assert_eq!(report[Counter::BytesDropped], 0, "{report}");
}

/// A client writes until the path to the server and back is full, reading nothing, then reads
/// everything back while writing the rest. Returns the server's report.
fn write_megabytes_before_reading(attempt: u64) -> epoll_echo::Report {
    const LEN: usize = 16 << 20;
    let server_config = config(1).max_pending(SMALL_CAP);
    let server = start(server_config);
    let mut stream = connect(server.local_addr());
    let data = Arc::new(payload(7 + attempt, LEN));

    let sent_before_reading = write_until_stalled(&mut stream, &data, STALL);
    eprintln!("attempt {attempt}: sent {sent_before_reading} bytes before reading anything");
    assert!(
        sent_before_reading > SMALL_CAP,
        "the server took only {sent_before_reading} bytes before the client read"
    );

    // Reads time out if the server deadlocked; the writer sends the rest meanwhile.
    let mut writer = stream.try_clone().expect("clone the client socket");
    let rest = Arc::clone(&data);
    let sender = thread::spawn(move || {
        let mut rng = Rng::new(8);
        write_chunked(
            &mut writer,
            &rest[sent_before_reading..],
            &mut rng,
            64 * 1024,
        );
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let back = read_exact_chunked(&mut stream, LEN, &mut Rng::new(9), 64 * 1024);
    sender.join().expect("writer thread");
    assert!(back == *data, "echo differs from input");
    assert!(read_to_eof(&mut stream).is_empty(), "bytes after the echo");
    drop(stream);

    let report = stop(server);
    assert_eq!(report[Counter::BytesRead], LEN as u64, "{report}");
    assert!(
        report[Counter::PendingHighWater] <= SMALL_CAP as u64,
        "pending output {} over the cap {SMALL_CAP}",
        report[Counter::PendingHighWater]
    );
    report
}

#[test]
fn a_client_that_writes_megabytes_before_reading_gets_all_back_within_the_cap() {
    // A full path means the server stopped reading at its cap, unless the machine merely did not
    // run the server for a whole stall window; so allow a few attempts for the cap to show.
    const ATTEMPTS: u64 = 3;
    for attempt in 0..ATTEMPTS {
        let report = write_megabytes_before_reading(attempt);
        if report[Counter::BackpressurePauses] >= 1
            && report[Counter::PendingHighWater] == SMALL_CAP as u64
        {
            return;
        }
        eprintln!("attempt {attempt}: the cap was not reached: {report}");
    }
    panic!("the server never paused at its cap in {ATTEMPTS} attempts");
}

#[test]
fn half_close_returns_every_byte_then_eof() {
    let server = start(config(2));
    let addr = server.local_addr();

    let mut empty = connect(addr);
    empty.shutdown(Shutdown::Write).expect("half-close");
    assert!(read_to_eof(&mut empty).is_empty(), "echo of nothing");

    let data = payload(11, 1 << 20);
    let back = echo_half_close(&mut connect(addr), data.clone(), 11);
    assert!(back == data, "echo before EOF differs from input");

    let report = stop(server);
    assert_eq!(report[Counter::Accepted], 2, "{report}");
}

#[test]
fn eof_while_output_is_pending_flushes_it_all_before_closing() {
    // Far more than the kernel buffers of the way back (the client's unread receive buffer does
    // not grow), far less than the cap: the server reads everything and our FIN while holding
    // megabytes it could not write yet.
    const LEN: usize = 12 << 20;
    let server_config = config(1).max_pending(16 << 20);
    let server = start(server_config);
    let mut stream = connect(server.local_addr());
    let data = payload(13, LEN);

    write_chunked(&mut stream, &data, &mut Rng::new(13), 256 * 1024);
    stream.shutdown(Shutdown::Write).expect("half-close");
    let back = read_to_eof(&mut stream);
    assert_eq!(back.len(), LEN, "echoed length");
    assert!(back == data, "echo differs from input");

    let report = stop(server);
    assert!(
        report[Counter::PendingHighWater] > 0,
        "the server never held output: {report}"
    );
    assert_eq!(report[Counter::BytesDropped], 0, "{report}");
}

/// Closes `stream` with echoed bytes still unread, which makes Linux send RST instead of FIN
/// (RFC 2525, 2.17): the same as a close with `SO_LINGER` 0, without unsafe code.
fn reset(stream: TcpStream) {
    let mut one = [0; 1];
    let n = stream.peek(&mut one).expect("wait for an echo to arrive");
    assert_eq!(n, 1, "the server closed before echoing");
    drop(stream);
}

#[test]
fn a_reset_peer_does_not_disturb_other_connections() {
    let server_config = config(1).max_pending(SMALL_CAP);
    let server = start(server_config);
    let addr = server.local_addr();

    let mut steady = connect(addr);
    let round = |stream: &mut TcpStream, seed: u64| {
        let data = payload(seed, 3000);
        write_chunked(stream, &data, &mut Rng::new(seed), 1000);
        let back = read_exact_chunked(stream, data.len(), &mut Rng::new(seed), 1000);
        assert!(back == data, "steady connection: echo differs");
    };
    round(&mut steady, 1);

    // Reset while the server holds pending output for it (paused at the cap)...
    let mut full = connect(addr);
    write_until_stalled(&mut full, &payload(2, 16 << 20), STALL);
    reset(full);
    // ...and while it holds none.
    let mut light = connect(addr);
    write_chunked(&mut light, &payload(3, 100), &mut Rng::new(3), 100);
    reset(light);

    round(&mut steady, 4);
    let fresh = connect(addr);
    check_echo(fresh, payload(5, 50_000), 5);
    round(&mut steady, 6);
    steady.shutdown(Shutdown::Write).expect("half-close");
    assert!(read_to_eof(&mut steady).is_empty(), "bytes after the echo");

    let report = stop(server);
    assert_eq!(report[Counter::Accepted], 4, "{report}");
    assert_eq!(report[Counter::Closed], 4, "{report}");
}

#[test]
fn several_workers_share_one_port() {
    const WORKERS: usize = 3;
    let server = start(config(WORKERS));
    let addr = server.local_addr();
    assert_eq!(server.workers(), WORKERS);
    assert_eq!(
        listening_sockets(addr.port()),
        WORKERS,
        "one listening socket per worker on port {}",
        addr.port()
    );
    for seed in 0..20 {
        check_echo(connect(addr), payload(seed, 2000), seed);
    }
    let report = stop(server);
    assert_eq!(report[Counter::Accepted], 20, "{report}");
    assert_eq!(listening_sockets(addr.port()), 0, "listeners left open");
}

#[test]
fn ipv6_loopback_echoes_when_the_machine_has_it() {
    let server_config = config(2).addr("[::1]:0".parse().expect("IPv6 loopback address"));
    let server = match epoll_echo::Server::start(server_config) {
        Ok(server) => server,
        Err(StartError::Bind { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
            ) =>
        {
            eprintln!("no IPv6 loopback here: {source}");
            return;
        }
        Err(e) => panic!("start on [::1]: {e}"),
    };
    let addr: SocketAddr = server.local_addr();
    assert!(addr.is_ipv6() && addr.port() != 0, "{addr}");
    check_echo(connect(addr), payload(17, 100_000), 17);
    let report = stop(server);
    assert_eq!(report[Counter::Accepted], 1, "{report}");
}

#[test]
fn a_flooding_connection_does_not_starve_another() {
    const ROUNDS: u64 = 100;
    let server = start(config(1));
    let addr = server.local_addr();

    // The flood sends and reads back as fast as it can until the other client is done.
    let done = Arc::new(AtomicBool::new(false));
    let flood = connect(addr);
    let mut flood_writer = flood.try_clone().expect("clone the client socket");
    let writer_done = Arc::clone(&done);
    let flood_sender = thread::spawn(move || {
        let chunk = payload(21, 64 * 1024);
        let mut sent = 0u64;
        while !writer_done.load(Ordering::Relaxed) {
            write_chunked(&mut flood_writer, &chunk, &mut Rng::new(sent), 64 * 1024);
            sent += chunk.len() as u64;
        }
        flood_writer.shutdown(Shutdown::Write).expect("half-close");
        sent
    });
    let flood_reader = thread::spawn(move || {
        let mut flood = flood;
        let mut buf = vec![0; 64 * 1024];
        let mut received = 0u64;
        loop {
            match flood.read(&mut buf) {
                Ok(0) => return received,
                Ok(n) => received += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("flood read: {e}"),
            }
        }
    });

    // Each round trip must be answered while the flood goes on; starvation times a read out.
    let mut small = connect(addr);
    for seed in 0..ROUNDS {
        let data = payload(seed, 100);
        write_chunked(&mut small, &data, &mut Rng::new(seed), 100);
        let back = read_exact_chunked(&mut small, data.len(), &mut Rng::new(seed), 100);
        assert!(back == data, "round {seed}: echo differs");
    }
    done.store(true, Ordering::Relaxed);
    let sent = flood_sender.join().expect("flood writer");
    let received = flood_reader.join().expect("flood reader");
    assert_eq!(received, sent, "flood echo length");
    drop(small);

    stop(server);
}

#[test]
fn reused_descriptors_never_mix_up_connections() {
    // Closed connections' descriptors are reused at once by new ones; each must get exactly its
    // own bytes, and a long-lived connection on the same worker must be unaffected.
    const CYCLES: u64 = 200;
    let server = start(config(1));
    let addr = server.local_addr();
    let mut steady = connect(addr);
    for seed in 0..CYCLES {
        let mut a = connect(addr);
        let mut b = connect(addr);
        let (data_a, data_b) = (payload(seed, 700), payload(seed + CYCLES, 900));
        write_chunked(&mut a, &data_a, &mut Rng::new(seed), 300);
        write_chunked(&mut b, &data_b, &mut Rng::new(seed), 300);
        let back_b = read_exact_chunked(&mut b, data_b.len(), &mut Rng::new(seed), 300);
        drop(b);
        let back_a = read_exact_chunked(&mut a, data_a.len(), &mut Rng::new(seed), 300);
        assert!(
            back_a == data_a && back_b == data_b,
            "cycle {seed}: echo mixed up"
        );
        if seed % 20 == 0 {
            let data = payload(seed + 2 * CYCLES, 100);
            write_chunked(&mut steady, &data, &mut Rng::new(seed), 100);
            let back = read_exact_chunked(&mut steady, data.len(), &mut Rng::new(seed), 100);
            assert!(
                back == data,
                "cycle {seed}: long-lived connection disturbed"
            );
        }
    }
    drop(steady);
    let report = stop(server);
    assert_eq!(report[Counter::Accepted], 2 * CYCLES + 1, "{report}");
    assert_eq!(
        report[Counter::Closed],
        report[Counter::Accepted],
        "{report}"
    );
}

#[test]
fn a_request_with_an_urgent_byte_in_the_middle_is_echoed_byte_exact() {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    let server = start(config(1));
    let mut client = connect(server.local_addr());
    for round in 0..20u8 {
        let before = payload(u64::from(round), 1000);
        let after = payload(u64::from(round) + 100, 1000);
        client.write_all(&before).expect("send");
        // TCP urgent data: a read stops at its mark, with the rest queued and no new edge.
        let urgent = [round];
        let sent = send(client.as_raw_fd(), &urgent, MsgFlags::MSG_OOB).expect("send urgent");
        assert_eq!(sent, 1);
        client.write_all(&after).expect("send");
        let mut want = before.clone();
        want.extend_from_slice(&urgent);
        want.extend_from_slice(&after);
        // A request/response client waits for its whole answer: a stalled echo times this out.
        let back = read_exact_chunked(&mut client, want.len(), &mut Rng::new(7), 4096);
        assert!(back == want, "round {round}: the echo differs");
    }
    drop(client);
    let report = stop(server);
    assert_eq!(report[Counter::BytesRead], 20 * 2001, "{report}");
}
