//! The few system calls the load generator needs that std does not offer: epoll, connecting from a
//! chosen source address with a timeout (through socket2, for both address families), CPU
//! affinity, signals and the clock tick.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: the descriptor was just created and nothing else owns it.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: both descriptors are open and `ev` outlives the call.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits up to `timeout` (nanosecond precision, for open-loop pacing); returns how many entries
    /// of `events` were filled (0 on `EINTR`).
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        let cap = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` holds `cap` writable entries and `ts` is live for the call; a null signal
        // mask leaves the mask alone.
        let res = unsafe {
            libc::epoll_pwait2(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                cap,
                &ts,
                std::ptr::null(),
            )
        };
        match check(res) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live c_int and its exact size.
    check(unsafe {
        libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), len)
    })?;
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
                sock.as_raw_fd(),
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
