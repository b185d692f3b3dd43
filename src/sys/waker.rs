//! The wake-up channel: an eventfd. A wake is a counter increment, so it stays pending until the worker
//! drains it and can never be lost, even if it comes before the worker first waits.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::syscall;

#[derive(Debug)]
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd takes no pointers, only an initial count and flags.
        let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        // SAFETY: eventfd just returned this descriptor and nothing else owns it.
        Ok(Waker {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the eventfd readable. Safe from any thread.
    pub fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // A non-blocking write never sleeps, so it is never interrupted (no EINTR arm).
        // SAFETY: writes 8 bytes from a live u64 to an open eventfd.
        match syscall!(write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8)) {
            Ok(_) => Ok(()),
            // The counter is saturated: a wake-up is already pending.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Resets the counter so the next wake raises a new edge.
    pub fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an open eventfd. Would-block means nothing to drain.
        let _ = syscall!(read(
            self.fd.as_raw_fd(),
            (&mut value as *mut u64).cast(),
            8
        ));
    }

    /// Blocks until `other` is readable (`Ok(true)`) or a wake-up is pending (`Ok(false)`, which
    /// stays pending): a thread that waits for one descriptor and must still be stoppable.
    pub fn wait_with(&self, other: BorrowedFd<'_>) -> io::Result<bool> {
        let mut fds = [
            libc::pollfd {
                fd: other.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: passes a live array of two pollfd and its length.
            match syscall!(poll(fds.as_mut_ptr(), 2, -1)) {
                Ok(_) if fds[1].revents != 0 => return Ok(false),
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// A wake-up already pending at the counter's limit (where a write would block) is a wake-up,
    /// not an error.
    #[test]
    fn a_wake_at_the_counters_limit_is_still_a_wake() {
        let waker = Waker::new().unwrap();
        let most: u64 = u64::MAX - 1;
        // SAFETY: writes 8 bytes from a live u64 to an open eventfd.
        let wrote = unsafe { libc::write(waker.fd.as_raw_fd(), (&most as *const u64).cast(), 8) };
        assert_eq!(wrote, 8, "{}", io::Error::last_os_error());
        waker.wake().expect("a wake-up is pending");
        let (_, never) = UnixStream::pair().unwrap();
        assert!(!waker.wait_with(never.as_fd()).unwrap(), "woken");
    }

    /// A program embedding the server may handle signals on any thread: a wait they interrupt
    /// goes on waiting.
    #[test]
    fn a_signal_does_not_end_a_wait() {
        extern "C" fn ignore(_: libc::c_int) {}
        // SAFETY: installs a handler that does nothing for SIGURG, which no other test uses;
        // without SA_RESTART, so the wait sees EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
            assert_eq!(
                libc::sigaction(libc::SIGURG, &action, std::ptr::null_mut()),
                0
            );
        }
        let waker = std::sync::Arc::new(Waker::new().unwrap());
        let woken = std::sync::Arc::clone(&waker);
        let (_writer, reader) = UnixStream::pair().unwrap();
        let (ready, started) = std::sync::mpsc::channel();
        let waiting = std::thread::spawn(move || {
            // SAFETY: pthread_self takes no arguments.
            ready.send(unsafe { libc::pthread_self() }).unwrap();
            woken.wait_with(reader.as_fd())
        });
        let thread = started.recv().unwrap();
        for _ in 0..20 {
            // SAFETY: the thread is not joined yet, so its id stays valid even if it ended.
            unsafe { libc::pthread_kill(thread, libc::SIGURG) };
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        waker.wake().unwrap();
        assert!(!waiting.join().unwrap().expect("no error"), "woken");
    }

    #[test]
    fn a_wait_with_another_descriptor_ends_on_either() {
        let waker = Waker::new().unwrap();
        let (mut writer, reader) = UnixStream::pair().unwrap();
        waker.wake().unwrap();
        assert!(!waker.wait_with(reader.as_fd()).unwrap(), "woken");
        waker.drain();
        writer.write_all(b"x").unwrap();
        assert!(waker.wait_with(reader.as_fd()).unwrap(), "readable");
    }
}
