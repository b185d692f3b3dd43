//! The reference: a minimal epoll echo server with no buffering and no limits, the speed of light for
//! this design. Per thread one `SO_REUSEPORT` listener and one epoll instance; connections are
//! edge-triggered and read until `EAGAIN`, each chunk written straight back. A write the kernel does
//! not take whole is retried in a busy loop (unguarded: a peer that stops reading stalls the thread),
//! so it stays correct for a client that always reads.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 8082)]
    port: u16,
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    bind: Ipv4Addr,
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

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}

fn set_one(fd: RawFd, level: libc::c_int, name: libc::c_int) {
    let one: libc::c_int = 1;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a pointer to a live c_int and its exact size.
    unsafe { libc::setsockopt(fd, level, name, (&one as *const libc::c_int).cast(), len) };
}

/// A listener on `ip:port` (0: any); returns it and its port.
fn listen(ip: Ipv4Addr, port: u16) -> io::Result<(RawFd, u16)> {
    // SAFETY: socket takes no pointers.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    set_one(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR);
    set_one(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT);
    let mut sa = sockaddr(ip, port);
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sa` is a valid sockaddr_in of `len` bytes.
    check(unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len) })?;
    // SAFETY: listen takes no pointers.
    check(unsafe { libc::listen(fd, 4096) })?;
    // SAFETY: `sa` and `len` are live and sized for a sockaddr_in.
    check(unsafe { libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) })?;
    Ok((fd, u16::from_be(sa.sin_port)))
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
    let (first, port) = listen(args.bind, args.port)?;
    let mut listeners = vec![first];
    for _ in 1..args.threads.max(1) {
        listeners.push(listen(args.bind, port)?.0);
    }
    println!("epoll-ref: listening on {}:{port}", args.bind);
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
