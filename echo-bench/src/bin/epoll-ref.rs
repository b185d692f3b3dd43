//! The reference: a minimal epoll echo server with no buffering and no limits, the speed of light for
//! this design. Per thread one `SO_REUSEPORT` listener and one epoll instance; connections are
//! edge-triggered and read until `EAGAIN`, each chunk written straight back. A write the kernel does
//! not take whole is retried in a busy loop (unguarded: a peer that stops reading stalls the thread),
//! so it stays correct for a client that always reads.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

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

fn set_one(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) {
    let one: libc::c_int = 1;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let one = (&one as *const libc::c_int).cast();
    // SAFETY: the descriptor is open (borrowed); a pointer to a live c_int and its exact size.
    unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, one, len) };
}

/// A non-blocking `SO_REUSEPORT` listener on `addr` (port 0: any); returns it and its address.
fn listen(addr: SocketAddr) -> io::Result<(OwnedFd, SocketAddr)> {
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
    Ok((sock.into(), local))
}

fn add(ep: BorrowedFd<'_>, fd: BorrowedFd<'_>, data: u64, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    let (ep, fd) = (ep.as_raw_fd(), fd.as_raw_fd());
    // SAFETY: `ev` is live for the call; both descriptors are open (borrowed).
    check(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
    Ok(())
}

/// Writes all of `buf`, retrying until the kernel takes it; false when the connection failed.
fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: the descriptor is open (borrowed); `buf` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
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

/// Accepts every queued connection and registers it edge-triggered for input, its descriptor as its
/// token. From then on the connection belongs to the epoll loop, which closes it by that token.
fn accept_all(ep: BorrowedFd<'_>, listener: BorrowedFd<'_>) {
    loop {
        // SAFETY: null address pointers are allowed; the listener is open (borrowed).
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return;
        }
        // SAFETY: accept4 just returned this descriptor and nothing else owns it.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        set_one(conn.as_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY);
        let events = (libc::EPOLLIN | libc::EPOLLET) as u32;
        if add(ep, conn.as_fd(), fd as u64, events).is_ok() {
            // Owned by the loop now, through its token; a failed registration closes it here.
            let _ = conn.into_raw_fd();
        }
    }
}

/// Reads until `EAGAIN`, writing each chunk straight back; false when the connection is finished
/// (end of input or an error) and must be closed.
fn echo(fd: BorrowedFd<'_>, buf: &mut [u8]) -> bool {
    loop {
        // SAFETY: the descriptor is open (borrowed); `buf` is valid for writes of its length.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r > 0 {
            if !write_all(fd, &buf[..r as usize]) {
                return false;
            }
        } else if r == 0 {
            return false;
        } else {
            let e = io::Error::last_os_error().raw_os_error();
            if e != Some(libc::EINTR) {
                return e == Some(libc::EAGAIN);
            }
        }
    }
}

fn serve(listener: OwnedFd) -> io::Result<()> {
    // SAFETY: epoll_create1 takes no pointers.
    let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: epoll_create1 just returned this descriptor and nothing else owns it.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    add(ep.as_fd(), listener.as_fd(), LISTENER, libc::EPOLLIN as u32)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the epoll descriptor is open; `events` holds 256 writable entries.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), 256, -1) };
        if n < 0 {
            continue;
        }
        for ev in &events[..n as usize] {
            if ev.u64 == LISTENER {
                accept_all(ep.as_fd(), listener.as_fd());
                continue;
            }
            let fd = ev.u64 as RawFd;
            // SAFETY: a connection's token is its descriptor, handed to the loop by accept_all and
            // closed only just below, which also takes it out of the epoll set: it is open here.
            let conn = unsafe { BorrowedFd::borrow_raw(fd) };
            if !echo(conn, &mut buf) {
                // SAFETY: the loop owns the descriptor (see above) and never uses it again.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
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
