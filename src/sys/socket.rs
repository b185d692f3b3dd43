//! TCP socket calls: the listener, accept, read, write, shutdown.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::syscall;

/// How a listener takes its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The server's first listener: bound without `SO_REUSEPORT`, so the bind fails while any other
    /// socket listens on the address (however it was bound), then opened to the server's other
    /// listeners by enabling `SO_REUSEPORT` before `listen`.
    First,
    /// A listener joining one already bound with `SO_REUSEPORT` (the server's own, or, when
    /// sharing is asked for, another process's).
    Share,
}

/// A non-blocking, close-on-exec TCP listener on `addr` with `SO_REUSEADDR` and, once bound,
/// `SO_REUSEPORT`, so that every worker can bind its own listener to the same port. An IPv6
/// wildcard address serves IPv4 too (`IPV6_V6ONLY` off).
///
/// `backlog` is how many completed connections the kernel may queue for it; `None` asks for the
/// kernel's own limit (`net.core.somaxconn`, to which Linux caps any larger value), so a
/// reconnection storm after a restart is not turned away by a smaller one of ours.
pub(crate) fn bind_listener(
    addr: SocketAddr,
    claim: Claim,
    backlog: Option<u32>,
) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket takes no pointers, only the family, the type with its flags, and the protocol.
    let fd = syscall!(socket(
        family,
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        0
    ))?;
    // SAFETY: socket just returned this descriptor and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    set_flag(&sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, true)?;
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        set_flag(&sock, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, false)?;
    }
    if claim == Claim::Share {
        set_flag(&sock, libc::SOL_SOCKET, libc::SO_REUSEPORT, true)?;
    }
    let (storage, len) = sockaddr_of(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the family of the socket.
    syscall!(bind(
        sock.as_raw_fd(),
        (&storage as *const libc::sockaddr_storage).cast(),
        len
    ))?;
    if claim == Claim::First {
        set_flag(&sock, libc::SOL_SOCKET, libc::SO_REUSEPORT, true)?;
    }
    set_inherited_flags(&sock)?;
    let backlog = backlog.map_or(libc::c_int::MAX, |n| {
        libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: listen on a bound socket we own.
    syscall!(listen(sock.as_raw_fd(), backlog))?;
    Ok(sock)
}

/// Accepted sockets inherit both, which saves a call per connection: urgent bytes stay in the
/// stream (echoed like any other byte, as RFC 6093 advises), and Nagle's delay is off (echoes are
/// small and latency-bound).
fn set_inherited_flags(sock: &OwnedFd) -> io::Result<()> {
    set_flag(sock, libc::SOL_SOCKET, libc::SO_OOBINLINE, true)?;
    set_flag(sock, libc::IPPROTO_TCP, libc::TCP_NODELAY, true)
}

/// Takes a listener made elsewhere (handed over by another instance, or by the program embedding
/// the server): it must be a listening TCP socket; it is made non-blocking and close-on-exec and
/// given the flags accepted sockets inherit, like one of ours. The descriptor may be a duplicate,
/// so these settings reach every holder of the socket.
pub(crate) fn adopt_listener(sock: OwnedFd) -> io::Result<OwnedFd> {
    let tcp = get_int(&sock, libc::SOL_SOCKET, libc::SO_PROTOCOL)? == libc::IPPROTO_TCP;
    let listening = get_int(&sock, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0;
    if !(tcp && listening) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening TCP socket",
        ));
    }
    // SAFETY: fcntl with F_GETFL takes no pointer; the descriptor is ours and open.
    let status = syscall!(fcntl(sock.as_raw_fd(), libc::F_GETFL))?;
    // SAFETY: fcntl with F_SETFL takes an int; the descriptor is ours and open.
    syscall!(fcntl(
        sock.as_raw_fd(),
        libc::F_SETFL,
        status | libc::O_NONBLOCK
    ))?;
    // SAFETY: fcntl with F_SETFD takes an int; the descriptor is ours and open.
    syscall!(fcntl(sock.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
    set_inherited_flags(&sock)?;
    Ok(sock)
}

/// Accepts one connection: non-blocking, close-on-exec, with the listener's `SO_OOBINLINE` and
/// `TCP_NODELAY`.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: null address pointers are allowed; `listener` is an open listening socket.
    let fd = syscall!(accept4(
        listener.as_raw_fd(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        flags
    ))?;
    // SAFETY: accept4 just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    syscall!(read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())).map(|n| n as usize)
}

/// Writes with `MSG_NOSIGNAL`: a closed peer yields `EPIPE`, never `SIGPIPE`.
pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    syscall!(send(
        fd.as_raw_fd(),
        buf.as_ptr().cast(),
        buf.len(),
        libc::MSG_NOSIGNAL
    ))
    .map(|n| n as usize)
}

/// Bytes of the connection's output the peer's kernel acknowledged, our FIN counted as one more
/// once acknowledged (`tcpi_bytes_acked` of `TCP_INFO`, Linux 4.1 and later; the SYN is not
/// counted). It stays readable after a reset or a timeout. A kernel whose `tcp_info` ends before
/// the field answers `ENOPROTOOPT`, so nothing is taken as acknowledged.
pub(crate) fn acked(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let (info, len) = tcp_info(fd)?;
    if !holds(
        len,
        mem::offset_of!(libc::tcp_info, tcpi_bytes_acked),
        mem::size_of::<u64>(),
    ) {
        return Err(io::Error::from_raw_os_error(libc::ENOPROTOOPT));
    }
    Ok(info.tcpi_bytes_acked)
}

/// Bytes waiting in the connection's receive queue (`FIONREAD`, which Linux counts past an urgent
/// mark where a read stops).
pub(crate) fn queued_input(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to a live c_int.
    syscall!(ioctl(
        fd.as_raw_fd(),
        libc::FIONREAD,
        &mut queued as *mut libc::c_int
    ))?;
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// Connections waiting in a listener's accept queue (`tcpi_unacked` of `TCP_INFO`, which a
/// listening socket reports as its queue's length).
pub(crate) fn accept_queue(listener: BorrowedFd<'_>) -> io::Result<usize> {
    let (info, len) = tcp_info(listener)?;
    if !holds(
        len,
        mem::offset_of!(libc::tcp_info, tcpi_unacked),
        mem::size_of::<u32>(),
    ) {
        return Err(io::Error::from_raw_os_error(libc::ENOPROTOOPT));
    }
    Ok(info.tcpi_unacked as usize)
}

/// A duplicate of this process's socket connected to `peer`, found among its descriptors: a
/// library server runs in the test's own process, so a test can read the TCP state of the server's
/// side of a connection with it. Drop it before the server closes the socket.
#[cfg(test)]
pub(crate) fn find_connection(peer: SocketAddr) -> Option<OwnedFd> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A descriptor that closed since the listing answers EBADF; one reused meanwhile is
        // checked by its peer below like any other.
        let Ok(dup) = syscall!(fcntl(fd, libc::F_DUPFD_CLOEXEC, 0)) else {
            continue;
        };
        // SAFETY: fcntl just returned this new descriptor and nothing else owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(dup) };
        let stream = std::net::TcpStream::from(sock);
        if stream.peer_addr().is_ok_and(|a| a == peer) && stream.local_addr().is_ok() {
            return Some(OwnedFd::from(stream));
        }
    }
    None
}

/// Whether the first `len` bytes of a struct hold the field at `offset` of `size` bytes: an older
/// kernel fills in fewer fields of `tcp_info`.
fn holds(len: usize, offset: usize, size: usize) -> bool {
    len >= offset + size
}

/// `TCP_INFO`, and how many of its bytes this kernel filled in (older kernels know fewer fields;
/// the rest stay zero).
fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<(libc::tcp_info, usize)> {
    // SAFETY: tcp_info is plain old data; all-zero bytes are a valid value.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live tcp_info and its exact size; the kernel writes at most
    // `len` bytes and stores how many it wrote in `len`.
    syscall!(getsockopt(
        fd.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_INFO,
        (&mut info as *mut libc::tcp_info).cast(),
        &mut len
    ))?;
    Ok((info, len as usize))
}

/// The window the peer last advertised, in bytes (`tcpi_snd_wnd`, Linux 5.4 and later): how much
/// more our kernel may send before the peer reads. Tests build a full window with it.
#[cfg(test)]
pub(crate) fn peer_window(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let (info, len) = tcp_info(fd)?;
    if !holds(
        len,
        mem::offset_of!(libc::tcp_info, tcpi_snd_wnd),
        mem::size_of::<u32>(),
    ) {
        return Err(io::Error::from_raw_os_error(libc::ENOPROTOOPT));
    }
    Ok(info.tcpi_snd_wnd)
}

/// Bytes of the connection's output the kernel holds unsent or unacknowledged, our FIN counted once
/// queued (`SIOCOUTQ`, which Linux defines as `TIOCOUTQ`). Tests compare it with [`acked`].
#[cfg(test)]
pub(crate) fn unacked(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut held: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int through the pointer, which points to a live c_int.
    syscall!(ioctl(
        fd.as_raw_fd(),
        libc::TIOCOUTQ,
        &mut held as *mut libc::c_int
    ))?;
    Ok(usize::try_from(held).unwrap_or(0))
}

pub(crate) fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown takes no pointers and the descriptor is borrowed, so open.
    syscall!(shutdown(fd.as_raw_fd(), libc::SHUT_WR)).map(drop)
}

fn set_flag(sock: &OwnedFd, level: libc::c_int, name: libc::c_int, on: bool) -> io::Result<()> {
    let one: libc::c_int = on.into();
    let len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live c_int and its exact size.
    syscall!(setsockopt(
        sock.as_raw_fd(),
        level,
        name,
        (&one as *const libc::c_int).cast(),
        len
    ))
    .map(drop)
}

fn get_int(sock: &OwnedFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live c_int and its exact size.
    syscall!(getsockopt(
        sock.as_raw_fd(),
        level,
        name,
        (&mut value as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok(value)
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn local_addr(fd: &OwnedFd) -> SocketAddr {
        TcpListener::from(fd.try_clone().unwrap())
            .local_addr()
            .unwrap()
    }

    fn flag(fd: &OwnedFd, level: libc::c_int, name: libc::c_int) -> bool {
        get_int(fd, level, name).expect("getsockopt") != 0
    }

    #[test]
    fn accepted_sockets_inherit_urgent_inline_and_no_delay() {
        let listener = bind_listener("127.0.0.1:0".parse().unwrap(), Claim::First, None).unwrap();
        accepted_sockets_inherit_our_flags(&listener);
    }

    fn accepted_sockets_inherit_our_flags(listener: &OwnedFd) {
        use std::os::fd::AsFd;
        let _client = std::net::TcpStream::connect(local_addr(listener)).unwrap();
        let sock = loop {
            match accept(listener.as_fd()) {
                Ok(sock) => break sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert!(flag(&sock, libc::SOL_SOCKET, libc::SO_OOBINLINE));
        assert!(flag(&sock, libc::IPPROTO_TCP, libc::TCP_NODELAY));
    }

    #[test]
    fn a_field_is_read_only_where_the_kernel_filled_it_in() {
        // A field of 8 bytes at offset 8 needs 16 bytes, no fewer.
        assert!(holds(16, 8, 8));
        assert!(holds(24, 8, 8));
        assert!(!holds(15, 8, 8));
        assert!(!holds(8, 8, 8));
        assert!(!holds(0, 0, 4));
    }

    #[test]
    fn an_adopted_listener_is_made_like_ours() {
        use std::os::fd::AsFd;
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let listener = adopt_listener(OwnedFd::from(plain)).expect("a listening TCP socket");
        // Non-blocking: an empty queue answers at once.
        let empty = accept(listener.as_fd()).expect_err("nothing queued");
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        // SAFETY: F_GETFD takes no pointer; the descriptor is open.
        let fd_flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        accepted_sockets_inherit_our_flags(&listener);
    }

    #[test]
    fn only_a_listening_tcp_socket_is_adopted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for sock in [OwnedFd::from(connected), OwnedFd::from(udp)] {
            let e = adopt_listener(sock).expect_err("not a listener");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
    }

    #[test]
    fn the_servers_listeners_share_one_port() {
        let first = bind_listener("127.0.0.1:0".parse().unwrap(), Claim::First, None).unwrap();
        let addr = local_addr(&first);
        let second = bind_listener(addr, Claim::Share, None);
        assert!(second.is_ok(), "could not share {addr}: {second:?}");
    }

    #[test]
    fn a_first_listener_refuses_a_port_held_either_way() {
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_listener(plain.local_addr().unwrap(), Claim::First, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
        // Another server's listeners, bound with SO_REUSEPORT, refuse a first listener too.
        let other = bind_listener("127.0.0.1:0".parse().unwrap(), Claim::First, None).unwrap();
        let err = bind_listener(local_addr(&other), Claim::First, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
        // Sharing on purpose joins them.
        assert!(bind_listener(local_addr(&other), Claim::Share, None).is_ok());
    }

    #[test]
    fn the_ipv6_wildcard_serves_ipv4_too() {
        let Ok(any) = bind_listener("[::]:0".parse().unwrap(), Claim::First, None) else {
            return; // A host without IPv6: the server falls back to 0.0.0.0 (tested there).
        };
        let port = local_addr(&any).port();
        let v4 = std::net::TcpStream::connect(("127.0.0.1", port));
        assert!(v4.is_ok(), "an IPv4 client of [::]:{port}: {v4:?}");
    }

    /// A loopback pair: a client whose receive buffer is fixed at `rcvbuf` bytes (so its window
    /// is small and never autotuned) and the server's accepted socket, non-blocking.
    fn pair_with_small_window(rcvbuf: usize) -> (OwnedFd, OwnedFd) {
        use nix::sys::socket::{
            connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = match listener.local_addr().unwrap() {
            SocketAddr::V4(a) => SockaddrIn::from(a),
            SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        };
        let client = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        setsockopt(&client, sockopt::RcvBuf, &rcvbuf).unwrap();
        connect(client.as_raw_fd(), &addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, OwnedFd::from(server))
    }

    /// Waits up to 10 s for `done`, polling; the verdict is the condition, not the time.
    fn wait_for(mut done: impl FnMut() -> bool) -> bool {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < give_up {
            if done() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        done()
    }

    /// Bytes waiting in the client's receive queue (a peek that takes nothing).
    fn held_by_peer(client: &OwnedFd) -> usize {
        use nix::sys::socket::{recv, MsgFlags};
        let mut buf = vec![0; 1 << 20];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        recv(client.as_raw_fd(), &mut buf, flags).unwrap_or(0)
    }

    /// Writes until the kernel takes no more; returns how much it took.
    fn fill(server: &OwnedFd) -> u64 {
        use std::os::fd::AsFd;
        let chunk = vec![1; 64 * 1024];
        let mut written = 0;
        while let Ok(n) = write(server.as_fd(), &chunk) {
            written += n as u64;
        }
        written
    }

    #[test]
    fn acked_is_what_the_peers_kernel_holds_read_or_not() {
        use std::os::fd::AsFd;
        let (client, server) = pair_with_small_window(4096);
        assert_eq!(
            acked(server.as_fd()).unwrap(),
            0,
            "the handshake is not counted"
        );
        let written = fill(&server);
        // The client never reads: its kernel holds what it acknowledged, and the rest waits in ours.
        let settled = wait_for(|| acked(server.as_fd()).unwrap() == held_by_peer(&client) as u64);
        let (got, held) = (acked(server.as_fd()).unwrap(), held_by_peer(&client));
        assert!(settled, "acked {got}, the peer holds {held}");
        assert!(got > 0 && got < written, "acked {got} of {written}");
        assert_eq!(unacked(server.as_fd()).unwrap() as u64, written - got);
    }

    #[test]
    fn after_a_reset_the_kernel_still_says_what_was_acknowledged_and_what_was_not() {
        use std::os::fd::AsFd;
        let (client, server) = pair_with_small_window(4096);
        let written = fill(&server);
        assert!(wait_for(
            || acked(server.as_fd()).unwrap() == held_by_peer(&client) as u64
        ));
        let before = acked(server.as_fd()).unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &linger).unwrap();
        drop(client);
        let mut buf = [0; 16];
        assert!(wait_for(|| read(server.as_fd(), &mut buf)
            .is_err_and(|e| e.raw_os_error() == Some(libc::ECONNRESET))));
        assert_eq!(
            acked(server.as_fd()).unwrap(),
            before,
            "what was acknowledged stays"
        );
        assert_eq!(
            unacked(server.as_fd()).unwrap() as u64,
            written - before,
            "the rest is still counted, though the reset destroyed it"
        );
    }

    #[test]
    fn a_fin_into_a_full_window_waits_but_every_byte_is_acknowledged() {
        use std::os::fd::AsFd;
        let (client, server) = pair_with_small_window(4096);
        // Fill the peer's window exactly: write what it advertises, let it be acknowledged, and
        // again, until every byte is acknowledged and the window is shut.
        let mut written = 0u64;
        for _ in 0..1000 {
            let window = peer_window(server.as_fd()).unwrap() as usize;
            if window == 0 {
                break;
            }
            written += write(server.as_fd(), &vec![2; window]).unwrap() as u64;
            assert!(
                wait_for(|| acked(server.as_fd()).unwrap() == written),
                "{written} written, {} acknowledged",
                acked(server.as_fd()).unwrap()
            );
        }
        assert_eq!(
            peer_window(server.as_fd()).unwrap(),
            0,
            "the window never shut"
        );
        shutdown_write(server.as_fd()).unwrap();
        // Our FIN cannot go into a zero window: the kernel holds it alone.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(unacked(server.as_fd()).unwrap(), 1, "only our FIN waits");
        assert_eq!(
            acked(server.as_fd()).unwrap(),
            written,
            "every byte acknowledged"
        );
        // Once the peer reads, the window opens and the FIN is acknowledged too.
        let mut buf = vec![0; 1 << 20];
        let mut got = 0;
        while got < written as usize {
            got += nix::unistd::read(client.as_raw_fd(), &mut buf).unwrap();
        }
        assert!(wait_for(|| acked(server.as_fd()).unwrap() == written + 1));
        assert_eq!(unacked(server.as_fd()).unwrap(), 0);
    }

    #[test]
    fn the_cut_counts_queued_bytes_past_an_urgent_mark_and_queued_connections() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let listener = bind_listener("127.0.0.1:0".parse().unwrap(), Claim::First, None).unwrap();
        let addr = local_addr(&listener);
        assert_eq!(accept_queue(listener.as_fd()).unwrap(), 0);
        let mut clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        assert!(wait_for(|| accept_queue(listener.as_fd()).unwrap() == 3));
        let server = loop {
            match accept(listener.as_fd()) {
                Ok(sock) => break sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert_eq!(accept_queue(listener.as_fd()).unwrap(), 2);
        // 100 bytes, an urgent byte, 100 more: a read stops at the mark, FIONREAD does not.
        clients[0].write_all(&[1; 100]).unwrap();
        let flags = nix::sys::socket::MsgFlags::MSG_OOB;
        nix::sys::socket::send(clients[0].as_raw_fd(), &[9], flags).unwrap();
        clients[0].write_all(&[2; 100]).unwrap();
        assert!(wait_for(|| queued_input(server.as_fd()).unwrap() == 201));
        let mut buf = [0; 4096];
        assert_eq!(
            read(server.as_fd(), &mut buf).unwrap(),
            100,
            "stops at the mark"
        );
        assert_eq!(queued_input(server.as_fd()).unwrap(), 101);
        clients.truncate(1);
    }

    #[test]
    fn the_backlog_is_the_kernels_limit_unless_one_is_given() {
        use std::os::fd::AsFd;
        let limit = |backlog| {
            let l = bind_listener("127.0.0.1:0".parse().unwrap(), Claim::First, backlog).unwrap();
            // A listener's TCP_INFO gives its queue's limit in tcpi_sacked.
            tcp_info(l.as_fd()).unwrap().0.tcpi_sacked
        };
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(limit(None), somaxconn);
        assert_eq!(limit(Some(16)), 16);
        assert_eq!(limit(Some(u32::MAX)), somaxconn, "Linux caps it");
    }

    #[test]
    fn unacked_counts_what_the_peer_has_not_acknowledged() {
        use std::io::{Read, Write};
        use std::net::TcpStream;
        use std::os::fd::AsFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let fd = OwnedFd::from(server.try_clone().unwrap());
        assert_eq!(unacked(fd.as_fd()).unwrap(), 0);
        // On loopback a write is acknowledged by the peer's kernel as soon as it is queued there,
        // so wait until the count settles at 0 again, then check the FIN is counted until acked.
        (&server).write_all(b"hello").unwrap();
        let mut five = [0; 5];
        client.read_exact(&mut five).unwrap();
        shutdown_write(fd.as_fd()).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert!(
            unacked(fd.as_fd()).unwrap() <= 1,
            "only the FIN may still be in flight"
        );
    }

    #[test]
    fn ipv6_loopback_binds() {
        // Machines without IPv6 cannot run this check; everything else must bind.
        match bind_listener("[::1]:0".parse().unwrap(), Claim::First, None) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{e}"),
        }
    }
}
