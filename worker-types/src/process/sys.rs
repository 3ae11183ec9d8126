//! Every `libc` call the process workers make: what `std` does not offer.
//!
//! # Invariants
//!
//! 1. **[`prepare_child`] runs between `fork` and `exec` only** (from `CommandExt::pre_exec`), in
//!    a child that has one thread: it makes only async-signal-safe calls (`prctl`, `getppid`,
//!    `signal`, `fcntl`) and allocates nothing.
//! 2. **A pid is signalled only while it is known not to be reaped**: callers hold the lock that
//!    also guards reaping (see `ChildSlot` in `mod.rs`), and reaping happens in two steps:
//!    [`wait_dead`] waits without reaping, then `std`'s `Child::wait` reaps under that lock. So a
//!    pid reused by an unrelated process is never killed.
//! 3. **File descriptors passed here are borrowed and stay open for the call**; descriptors made
//!    here are returned as `OwnedFd` with `CLOEXEC` set, so no other child inherits them.
//! 4. Calls that can block (`waitid`, `ppoll`, `sendmsg`) retry on `EINTR`; errors come back as
//!    `io::Error` from `errno`.

#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// `Ok(value)` unless `value == -1`, then the `errno` error.
fn check(value: libc::c_int) -> io::Result<libc::c_int> {
    if value == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// Runs in the forked child before `exec` (invariant 1): dies with the parent thread
/// (`PR_SET_PDEATHSIG`, Linux), ignores SIGINT (Ctrl-C in a terminal reaches the whole process
/// group; the parent handles it), and lets `keep` survive `exec`.
fn prepare_child(parent_pid: libc::pid_t, keep: &[RawFd]) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number; async-signal-safe.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) })?;
        // SAFETY: getppid cannot fail and is async-signal-safe.
        if unsafe { libc::getppid() } != parent_pid {
            // The parent died before the prctl took effect: nobody will ever read us.
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent_pid;
    // SAFETY: setting a signal's disposition to SIG_IGN is async-signal-safe; SIG_IGN survives
    // exec, so the child ignores SIGINT from its very first instruction.
    if unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    for &fd in keep {
        // SAFETY: `fd` is open in this child (invariant 3); F_SETFD only clears FD_CLOEXEC.
        check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
    }
    Ok(())
}

/// Makes `command` run [`prepare_child`] in the child, keeping `keep` open across `exec`.
pub(crate) fn prepare_command(command: &mut std::process::Command, keep: &[RawFd]) {
    use std::os::unix::process::CommandExt;
    let parent = own_pid();
    let keep = keep.to_vec(); // allocated here, before the fork (invariant 1)
                              // SAFETY: the closure runs between fork and exec and only calls `prepare_child`, which keeps
                              // invariant 1 (async-signal-safe calls, no allocation: `keep` is only read).
    unsafe {
        command.pre_exec(move || prepare_child(parent, &keep));
    }
}

/// This process's id.
pub(crate) fn own_pid() -> libc::pid_t {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// Sends SIGKILL to `pid`. The caller guarantees it is not reaped yet (invariant 2).
pub(crate) fn kill(pid: u32) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill has no memory effects; a zombie or an exiting process ignores the signal.
    check(unsafe { libc::kill(pid, libc::SIGKILL) }).map(drop)
}

/// Blocks until the child `pid` has exited, without reaping it (invariant 2).
pub(crate) fn wait_dead(pid: u32) -> io::Result<()> {
    let pid = libc::id_t::from(pid);
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid writes into it and reads nothing else.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer for the duration of the call.
        let rc =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        match check(rc) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What [`poll`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The wait timed out.
    No,
    /// Readable (data or end of file) or writable, as asked.
    Yes,
    /// The peer hung up or the fd is in error.
    HangUp,
}

/// Waits up to `timeout` (`None`: forever) for `fd` to become readable (`write == false`) or
/// writable.
pub(crate) fn poll(
    fd: BorrowedFd<'_>,
    write: bool,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: if write { libc::POLLOUT } else { libc::POLLIN },
        revents: 0,
    };
    let timeout = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos()),
    });
    let timeout = timeout
        .as_ref()
        .map_or(std::ptr::null(), std::ptr::from_ref);
    loop {
        // SAFETY: `pfd` is one valid pollfd and `timeout` null or a valid timespec, for the
        // duration of the call (invariant 3).
        match check(unsafe { libc::ppoll(&mut pfd, 1, timeout, std::ptr::null()) }) {
            Ok(0) => return Ok(Ready::No),
            Ok(_) => {
                return Ok(if pfd.revents & pfd.events != 0 {
                    Ready::Yes
                } else {
                    Ready::HangUp
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (message boundaries kept, end of file on
/// close), both `CLOEXEC`.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message with `fds` attached (`SCM_RIGHTS`) on a `SOCK_SEQPACKET` socket.
pub(crate) fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fds_len = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fds_len as libc::c_uint) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iov, no control) before we fill it in.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes, enough for one cmsghdr
        // with `fds_len` bytes of data, so CMSG_FIRSTHDR is non-null and CMSG_DATA is in bounds.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len as libc::c_uint) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fds_len,
            );
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` and `control`, which live until the call returns; the
        // kernel only reads them. MSG_NOSIGNAL: a dead peer is an error, not SIGPIPE.
        let rc = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if rc >= 0 {
            return if rc as usize == data.len() {
                Ok(())
            } else {
                Err(io::Error::from(io::ErrorKind::WriteZero))
            };
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A fresh anonymous shared-memory file (`memfd`, `CLOEXEC`) holding a copy of `data`. It
/// vanishes with its last descriptor and mapping: a killed worker cannot leak it.
pub(crate) fn memfd_with(data: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a valid NUL-terminated string; the flags are plain bits.
    let fd = check(unsafe { libc::memfd_create(c"interpool-buffer".as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: memfd_create succeeded, so `fd` is fresh and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut rest = data;
    while !rest.is_empty() {
        // SAFETY: `rest` is valid for reads of `rest.len()` bytes during the call.
        let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        rest = &rest[n as usize..];
    }
    Ok(fd)
}

/// Whether the memfd `fd` is sealed against writes (`F_SEAL_WRITE`; false if it cannot tell).
pub(crate) fn sealed_against_writes(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: a plain query on a descriptor we hold.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals > 0 && seals & libc::F_SEAL_WRITE != 0
}

/// Receives one byte on a stream socket together with the descriptors attached to it
/// (`SCM_RIGHTS`, at most `max_fds`), made `CLOEXEC`. `Ok(None)`: nothing to read yet.
pub(crate) fn recv_fds(sock: BorrowedFd<'_>, max_fds: usize) -> io::Result<Option<Vec<OwnedFd>>> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space =
        unsafe { libc::CMSG_SPACE((max_fds * std::mem::size_of::<RawFd>()) as libc::c_uint) }
            as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // SAFETY: an all-zero msghdr is valid before we fill it in.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (one byte) and `control` (`space` aligned bytes), which
        // live until the call returns.
        let rc = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if rc >= 0 {
            break rc;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_controllen` bytes of `control` with well-formed cmsghdrs;
    // CMSG_FIRSTHDR/NXTHDR stay within them, and each SCM_RIGHTS payload holds descriptors that
    // are now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data_len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg);
                for i in 0..data_len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "too many descriptors attached to a message",
        ));
    }
    Ok(Some(fds))
}

/// A private, writable mapping of a whole file (copy on write: nothing reaches the file),
/// unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is only unmapped in `drop`.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` itself never reads or writes the memory.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps all of `fd`, which the caller may close afterwards.
    pub(crate) fn private(fd: BorrowedFd<'_>) -> io::Result<Self> {
        // SAFETY: an all-zero stat is valid; fstat writes into it.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `stat` is a valid out-pointer for the call.
        check(unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) })?;
        let len = usize::try_from(stat.st_size).map_err(|_| io::Error::other("bad file size"))?;
        if len == 0 {
            return Ok(Self {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh mapping at an address the kernel picks; nothing else is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// A buffer over the whole mapping, which it owns.
    pub(crate) fn into_buffer(self) -> crate::Buffer {
        let (ptr, len) = (self.ptr, self.len);
        // SAFETY: a private mapping of our own, valid until the owner (`self`) is dropped, and
        // reachable through this buffer only.
        unsafe { crate::Buffer::from_raw_exclusive(ptr, len, std::sync::Arc::new(self)) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: `ptr..ptr + len` is our own mapping, unmapped only here.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}
