//! The few system calls the load generator needs that std does not offer: epoll, connecting from a
//! chosen source address with a timeout (through socket2, for both address families), CPU
//! affinity, signals and the clock tick.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

fn check(res: libc::c_int) -> io::Result<libc::c_int> {
    if res == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res)
    }
}

/// An epoll instance for the client's connections.
pub struct Epoll(OwnedFd);

/// Input, output and error, edge-triggered: registered once per connection.
pub const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32;

/// Set once the kernel answered `ENOSYS` to `epoll_pwait2` (before Linux 5.11): every later wait
/// goes straight to `epoll_wait`.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

/// The kernel's `struct __kernel_timespec`: 64-bit fields on every architecture, unlike
/// `libc::timespec` on 32-bit ones.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: the descriptor was just created and nothing else owns it.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn add(&self, fd: BorrowedFd<'_>, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        let (ep, fd) = (self.0.as_raw_fd(), fd.as_raw_fd());
        // SAFETY: both descriptors are open (one owned, one borrowed) and `ev` outlives the call.
        check(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits up to `timeout` (nanosecond precision, for open-loop pacing); returns how many entries
    /// of `events` were filled (0 on `EINTR`). On a kernel without `epoll_pwait2` the timeout is
    /// rounded up to whole milliseconds.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let res = if NO_PWAIT2.load(Ordering::Relaxed) {
            self.wait_ms(events, timeout)
        } else {
            match self.pwait2(events, timeout) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    NO_PWAIT2.store(true, Ordering::Relaxed);
                    self.wait_ms(events, timeout)
                }
                res => res,
            }
        };
        match res {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            res => res,
        }
    }

    /// `epoll_pwait2` through the raw system call, not glibc's wrapper: the wrapper would make the
    /// binary need glibc 2.35 to load at all, where a missing call is an error it can recover from.
    fn pwait2(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let ts = KernelTimespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let cap = events.len().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: `events` holds `cap` writable entries and `ts` is live for the call, laid out as
        // the kernel's __kernel_timespec; with a null signal mask the kernel leaves the mask alone
        // and ignores the mask size.
        let res = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                cap,
                &ts as *const KernelTimespec,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res as usize)
        }
    }

    /// `epoll_wait`, the timeout rounded up to whole milliseconds so that a wait never ends early.
    fn wait_ms(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        let cap = events.len().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: `events` holds `cap` writable entries for the duration of the call.
        let n =
            check(unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), cap, ms) })?;
        Ok(n as usize)
    }
}

fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let value = (&value as *const libc::c_int).cast();
    // SAFETY: the descriptor is open (borrowed); passes a pointer to a live c_int and its exact size.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value, len) })?;
    Ok(())
}

/// Connects to `dst` from `src` (any port), non-blocking, with Nagle off; fails after `timeout`.
/// Several source addresses give several ephemeral port ranges, for many connections or churn.
/// Every error names `dst`.
pub fn connect(dst: SocketAddr, src: Option<IpAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("connect to {dst}: {e}"));
    let sock =
        Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)).map_err(named)?;
    if let Some(ip) = src {
        // Let connect pick the port, so each source address has a full port range per destination.
        if ip.is_ipv4() {
            set_int(
                sock.as_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                1,
            )
            .map_err(named)?;
        }
        sock.bind(&SocketAddr::new(ip, 0).into()).map_err(named)?;
    }
    sock.connect_timeout(&dst.into(), timeout).map_err(named)?;
    sock.set_nonblocking(true).map_err(named)?;
    sock.set_tcp_nodelay(true).map_err(named)?;
    Ok(sock.into())
}

/// Restricts thread or process `pid` (0: the calling thread) to `cpus`.
pub fn set_affinity(pid: libc::pid_t, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET only writes inside `set` for cpu < CPU_SETSIZE, which callers keep.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
    check(unsafe { libc::sched_setaffinity(pid, size, &set) })?;
    Ok(())
}

/// Sends `sig` to a process this program started.
pub fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes no pointers.
    check(unsafe { libc::kill(pid as libc::pid_t, sig) })?;
    Ok(())
}

/// Ticks per second of the CPU times in `/proc/<pid>/stat`.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Raises the open-files soft limit to the hard limit (many idle connections).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a live rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// Makes `cmd`'s process start restricted to `cpus` (its threads inherit the set).
pub fn pin_command(cmd: &mut std::process::Command, cpus: Vec<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls sched_setaffinity,
    // which is async-signal-safe; `cpus` was allocated before the fork.
    unsafe {
        cmd.pre_exec(move || set_affinity(0, &cpus));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Instant;

    type Wait = fn(&Epoll, &mut [libc::epoll_event], Duration) -> io::Result<usize>;

    #[test]
    fn both_waits_report_readiness_and_never_end_before_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let waits: [(&str, Wait); 2] = [
            ("epoll_pwait2", Epoll::pwait2),
            ("epoll_wait", Epoll::wait_ms),
        ];
        for (name, wait) in waits {
            let ready = Epoll::new().expect("epoll");
            // Level-triggered, so each wait sees the writable socket.
            ready
                .add(client.as_fd(), 7, libc::EPOLLOUT as u32)
                .expect("add");
            match wait(&ready, &mut events, Duration::from_secs(5)) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    println!("{name}: not in this kernel");
                    continue;
                }
                res => assert_eq!(res.expect(name), 1, "{name}"),
            }
            let token = events[0].u64;
            assert_eq!(token, 7, "{name}");
            let idle = Epoll::new().expect("epoll");
            let timeout = Duration::from_micros(1500);
            let start = Instant::now();
            assert_eq!(wait(&idle, &mut events, timeout).expect(name), 0, "{name}");
            assert!(start.elapsed() >= timeout, "{name}: {:?}", start.elapsed());
        }
    }
}
