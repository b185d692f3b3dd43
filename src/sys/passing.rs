//! Descriptor passing over a Unix socket (`SCM_RIGHTS`): how one instance hands its listening
//! sockets to the next.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::syscall;

/// Most descriptors Linux takes in one message (`SCM_MAX_FD`).
const MAX_PER_MESSAGE: usize = 253;

/// A control buffer aligned for `cmsghdr`, with room for `count` descriptors.
fn control_buffer(count: usize) -> (Vec<u64>, usize) {
    let data = (count * mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data) } as usize;
    (vec![0u64; space.div_ceil(8)], space)
}

/// A message of one buffer (`iov`) and `space` bytes of control data in `control`.
fn message(iov: &mut libc::iovec, control: &mut [u64], space: usize) -> libc::msghdr {
    // SAFETY: msghdr is plain old data; all-zero bytes are a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    msg
}

/// Sends `fds` over the connected Unix socket `sock`, one byte of payload per message of at most
/// 253 descriptors. The kernel duplicates them into the receiver; ours stay open.
pub(crate) fn send_fds(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    for chunk in fds.chunks(MAX_PER_MESSAGE) {
        let raw: Vec<RawFd> = chunk.iter().map(|fd| fd.as_raw_fd()).collect();
        let (mut control, space) = control_buffer(raw.len());
        let payload = [b'L'];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        let msg = message(&mut iov, &mut control, space);
        // SAFETY: the control buffer is live, aligned for cmsghdr and `space` bytes long, which
        // CMSG_SPACE sized for one header and `raw.len()` descriptors, so the first header and its
        // data lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((raw.len() * mem::size_of::<RawFd>()) as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(cmsg).cast(), raw.len());
        }
        // SAFETY: msg points to the live iovec, payload and control buffer built above.
        syscall!(sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL))?;
    }
    Ok(())
}

/// Receives every descriptor sent over `sock` until the sender closes it, close-on-exec.
pub(crate) fn recv_fds(sock: BorrowedFd<'_>) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    loop {
        let (mut control, space) = control_buffer(MAX_PER_MESSAGE);
        let mut payload = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        let mut msg = message(&mut iov, &mut control, space);
        // SAFETY: msg points to the live iovec, payload and control buffer above, of the sizes given.
        let got = syscall!(recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC))?;
        // SAFETY: recvmsg filled the control buffer and set msg_controllen; the CMSG_* macros walk
        // the headers it wrote and stop at its end. Each descriptor it carries is new to this
        // process and owned by nothing else, so each is taken into an OwnedFd at once.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..data / mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(first.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other("descriptors were cut off in passing"));
        }
        if got == 0 {
            return Ok(fds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn every_descriptor_sent_arrives_open_and_the_senders_stay_open() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // More than one message holds, so the receiver must gather several.
        let pipes: Vec<(UnixStream, UnixStream)> = (0..MAX_PER_MESSAGE + 3)
            .map(|_| UnixStream::pair().unwrap())
            .collect();
        let sent: Vec<BorrowedFd<'_>> = pipes.iter().map(|(a, _)| a.as_fd()).collect();
        send_fds(ours.as_fd(), &sent).unwrap();
        drop(ours);
        let got = recv_fds(theirs.as_fd()).unwrap();
        assert_eq!(got.len(), pipes.len());
        for (fd, (mine, mut peer)) in got.into_iter().zip(pipes) {
            // SAFETY: F_GETFD takes no pointer; the descriptor is open.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
            // The received one is the same socket as ours: what it writes, our pair's peer reads.
            UnixStream::from(fd).write_all(b"x").unwrap();
            let mut one = [0u8; 1];
            peer.read_exact(&mut one).unwrap();
            drop(mine);
        }
    }

    /// With `SO_PASSCRED` on, Linux adds the sender's credentials to every message: another
    /// control message of level `SOL_SOCKET`, which must not be read as descriptors.
    #[test]
    fn credentials_beside_the_descriptors_are_not_taken_for_descriptors() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let on: libc::c_int = 1;
        // SAFETY: passes a pointer to a live c_int and its exact size.
        let set = unsafe {
            libc::setsockopt(
                theirs.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "{}", io::Error::last_os_error());
        let (one, _peer) = UnixStream::pair().unwrap();
        send_fds(ours.as_fd(), &[one.as_fd()]).unwrap();
        drop(ours);
        assert_eq!(recv_fds(theirs.as_fd()).unwrap().len(), 1);
    }

    #[test]
    fn a_sender_that_sends_nothing_yields_no_descriptor() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(ours);
        assert!(recv_fds(theirs.as_fd()).unwrap().is_empty());
    }
}
