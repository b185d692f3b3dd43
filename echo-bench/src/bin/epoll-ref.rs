//! The reference: a minimal epoll echo server with no buffering and no limits, the speed of light for
//! this design. Per thread one `SO_REUSEPORT` listener and one epoll instance; connections are
//! edge-triggered and read until `EAGAIN`, each chunk written straight back. A write the kernel does
//! not take whole is retried in a busy loop (unguarded: a peer that stops reading stalls the thread),
//! so it stays correct for a client that always reads.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{IntoRawFd, RawFd};

use clap::Parser;
use socket2::{Domain, Socket, Type};

#[derive(Parser)]
struct Args {
    /// TCP port (0 picks a free one; the first line printed names it).
    #[arg(long, default_value_t = 8082)]
    port: u16,
    /// Address to listen on, IPv4 or IPv6.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// Threads, each with its own listener and epoll instance.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

const LISTENER: u64 = u64::MAX;

fn check(res: libc::c_int) -> io::Result<libc::c_int> {
    if res == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res)
    }
}

fn set_one(fd: RawFd, level: libc::c_int, name: libc::c_int) {
    let one: libc::c_int = 1;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a pointer to a live c_int and its exact size.
    unsafe { libc::setsockopt(fd, level, name, (&one as *const libc::c_int).cast(), len) };
}

/// A non-blocking `SO_REUSEPORT` listener on `addr` (port 0: any); returns it and its address.
fn listen(addr: SocketAddr) -> io::Result<(RawFd, SocketAddr)> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the listener has no IP address"))?;
    // The serving thread owns the descriptor from here on, for as long as the process lives.
    Ok((sock.into_raw_fd(), local))
}

fn add(ep: RawFd, fd: RawFd, data: u64, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is live for the call; both descriptors are open.
    check(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
    Ok(())
}

fn close(fd: RawFd) {
    // SAFETY: `fd` is a connection this thread owns and never uses again.
    unsafe { libc::close(fd) };
}

/// Writes all of `buf`, retrying until the kernel takes it; false when the connection failed.
fn write_all(fd: RawFd, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            buf = &buf[n as usize..];
        } else {
            let e = io::Error::last_os_error().raw_os_error();
            if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
                return false;
            }
        }
    }
    true
}

fn serve(listener: RawFd) -> io::Result<()> {
    // SAFETY: epoll_create1 takes no pointers.
    let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    add(ep, listener, LISTENER, libc::EPOLLIN as u32)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `events` holds 256 writable entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 256, -1) };
        if n < 0 {
            continue;
        }
        for ev in &events[..n as usize] {
            if ev.u64 == LISTENER {
                loop {
                    // SAFETY: null address pointers are allowed.
                    let fd = unsafe {
                        libc::accept4(
                            listener,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        break;
                    }
                    set_one(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY);
                    if add(ep, fd, fd as u64, (libc::EPOLLIN | libc::EPOLLET) as u32).is_err() {
                        close(fd);
                    }
                }
                continue;
            }
            let fd = ev.u64 as RawFd;
            loop {
                // SAFETY: `buf` is valid for writes of its length.
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r > 0 {
                    if !write_all(fd, &buf[..r as usize]) {
                        close(fd);
                        break;
                    }
                } else if r == 0 {
                    close(fd);
                    break;
                } else {
                    let e = io::Error::last_os_error().raw_os_error();
                    if e == Some(libc::EINTR) {
                        continue;
                    }
                    if e != Some(libc::EAGAIN) {
                        close(fd);
                    }
                    break;
                }
            }
        }
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let (first, addr) = listen(SocketAddr::new(args.bind, args.port))?;
    let mut listeners = vec![first];
    for _ in 1..args.threads.max(1) {
        listeners.push(listen(addr)?.0);
    }
    println!("epoll-ref: listening on {addr}");
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| std::thread::spawn(move || serve(l)))
        .collect();
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("epoll-ref: {e}");
        }
    }
    Ok(())
}
