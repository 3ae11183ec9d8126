//! Large copies into fresh memory: every copy of a payload buffer goes through [`copy_to_fresh`].
//!
//! A large buffer's destination is almost always fresh memory: glibc maps every allocation of
//! 32 MiB or more anew, and a memfd's pages do not exist before they are written. Its first touch,
//! not the copy, is the cost: a page fault per 4 KiB page, each zeroing its page (here a 64 MiB
//! `memcpy` into fresh memory took 40 ms, into warm memory 7 ms). So above [`POPULATE_FROM`]
//! the destination's pages are made present first, in one system call per chunk
//! (`MADV_POPULATE_WRITE`, Linux 5.14; where it is refused the copy just faults as before), and
//! above [`SPLIT_FROM`] the copy is split with one process-wide helper thread, **only when a core
//! is free** ([`crate::cores`]): the chunks are shared, so a helper that wakes late or gets no
//! core just takes fewer of them. Huge pages are deliberately not asked for: in a long-lived
//! process the kernel compacts memory on the fault (docs/payloads.md, "Fresh memory").
//!
//! The same chunks move a process worker's buffers without shared memory: [`read_from_process`]
//! and [`write_to_process`] copy straight between this process and a worker process's memory
//! (`process_vm_readv`/`process_vm_writev`, one call per chunk), populated and split alike (the
//! pages of a write fault in the worker's address space, which this process cannot populate).
//!
//! **Lifetimes do not change:** [`copy_to_fresh`] returns only once every chunk is copied and the
//! helper has let go of the copy; the helper never holds a pointer past that. The helper is
//! pure Rust (no Python, no interpreter attached, no lock of the caller's held), started with the
//! first split copy and parked between copies; one copy at a time uses it, another copy that
//! comes meanwhile runs alone. A process forked after it started has no helper (threads do not
//! survive `fork`), so there every copy runs alone.

#![allow(unsafe_code)]

use std::{
    io,
    sync::{
        atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering},
        Condvar, Mutex, MutexGuard, OnceLock, PoisonError,
    },
    time::{Duration, Instant},
};

/// Copies at least this long populate their destination before copying it (smaller ones are
/// one plain `memcpy`: their memory is usually warm heap memory).
pub const POPULATE_FROM: usize = 1 << 20;
/// Copies at least this long are split with the helper thread when a core is free.
pub const SPLIT_FROM: usize = 8 << 20;
/// The unit the two threads take turns on: small enough that the last one to finish waits little,
/// large enough that taking one costs nothing.
const CHUNK: usize = 1 << 20;
/// How long the caller spins (yielding) for the helper's last chunk before it sleeps.
const FINISH_SPIN: Duration = Duration::from_millis(2);

/// Copies `src` into `dst`, which is likely fresh memory (see the module docs).
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes, not overlap `src`, and not be read or
/// written by anyone else until this returns.
pub unsafe fn copy_to_fresh(dst: *mut u8, src: &[u8]) {
    let (dst, src, len) = (dst as usize, src.as_ptr() as usize, src.len());
    // SAFETY: per the caller; a local copy cannot fail.
    let _ = unsafe { copy_chunked(dst, src, len, Peer::Local, splits(len)) };
}

/// Copies `len` bytes at `remote` in process `pid` into a new vector (fresh memory: see the
/// module docs). An error is the first that `process_vm_readv` reported (`ESRCH`: the process is
/// gone; `EFAULT`: the range is not mapped there; `EPERM`: not allowed), or `OutOfMemory`.
pub(crate) fn read_from_process(
    pid: libc::pid_t,
    remote: usize,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    data.try_reserve_exact(len)
        .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
    let dst = data.as_mut_ptr() as usize;
    // SAFETY: `data` has room for `len` bytes, which nobody else sees until we return; they are
    // all initialized once the copy succeeded.
    unsafe {
        copy_chunked(dst, remote, len, Peer::ReadFrom(pid), splits(len))?;
        data.set_len(len);
    }
    Ok(data)
}

/// Copies `src` to `remote` in process `pid` (`process_vm_writev`), split like a local copy. An
/// error is the first the kernel reported, as for [`read_from_process`].
pub(crate) fn write_to_process(pid: libc::pid_t, remote: usize, src: &[u8]) -> io::Result<()> {
    let (src, len) = (src.as_ptr() as usize, src.len());
    // SAFETY: `src` is ours to read for the call; the destination is the other process's memory,
    // which the kernel checks.
    unsafe { copy_chunked(remote, src, len, Peer::WriteTo(pid), splits(len)) }
}

/// Whether a copy of `len` bytes is shared with the helper: long enough, and a core is free.
fn splits(len: usize) -> bool {
    len >= SPLIT_FROM && crate::cores::fit(1)
}

/// Which side of a copy is another process's memory.
#[derive(Clone, Copy)]
enum Peer {
    /// Neither: a `memcpy`.
    Local,
    /// The source is in this process (`process_vm_readv`).
    ReadFrom(libc::pid_t),
    /// The destination is in this process (`process_vm_writev`).
    WriteTo(libc::pid_t),
}

/// Copies `len` bytes from `src` to `dst` (addresses in the processes `peer` says) in chunks,
/// populated as the module docs say, and split with the helper if `split` and the helper is there
/// and free.
///
/// # Safety
/// Whichever of `dst` and `src` is local memory must be valid for the copy (writes to `dst`,
/// reads of `src`), not overlap the other, and not be touched by anyone else until this returns.
unsafe fn copy_chunked(
    dst: usize,
    src: usize,
    len: usize,
    peer: Peer,
    split: bool,
) -> io::Result<()> {
    if len < POPULATE_FROM {
        // SAFETY: per the caller.
        return unsafe { copy_one(dst, src, len, peer) };
    }
    let copy = ChunkedCopy {
        dst,
        src,
        len,
        lead: (page_size() - dst % page_size()) % page_size(),
        next: AtomicUsize::new(0),
        peer,
        failed: AtomicI32::new(0),
    };
    match split.then(helper).flatten() {
        Some(helper) => helper.share(&copy),
        // SAFETY: per the caller, on this thread alone.
        None => unsafe { copy.work() },
    }
    match copy.failed.load(Ordering::Acquire) {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// One piece of a copy, without populating.
///
/// # Safety
/// As [`copy_chunked`], for these `len` bytes.
unsafe fn copy_one(dst: usize, src: usize, len: usize, peer: Peer) -> io::Result<()> {
    let (pid, read) = match peer {
        Peer::Local => {
            // SAFETY: per the caller.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
            return Ok(());
        }
        Peer::ReadFrom(pid) => (pid, true),
        Peer::WriteTo(pid) => (pid, false),
    };
    let mut done = 0;
    while done < len {
        let local = libc::iovec {
            iov_base: ((if read { dst } else { src }) + done) as *mut libc::c_void,
            iov_len: len - done,
        };
        let remote = libc::iovec {
            iov_base: ((if read { src } else { dst }) + done) as *mut libc::c_void,
            iov_len: len - done,
        };
        // SAFETY: `local` is the caller's memory, valid for this copy's direction; the kernel
        // checks the other process's range and only reads the two iovecs.
        let n = unsafe {
            if read {
                libc::process_vm_readv(pid, &local, 1, &remote, 1, 0)
            } else {
                libc::process_vm_writev(pid, &local, 1, &remote, 1, 0)
            }
        };
        match n {
            // A partial copy stops at a range the kernel could not touch: retrying says why.
            1.. => done += n as usize,
            0 => return Err(io::Error::from_raw_os_error(libc::EFAULT)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// One copy in chunks: chunk 0 runs to the first page boundary of `dst` past `CHUNK`, every later
/// chunk is `CHUNK` long and starts on a page boundary of `dst` (the last may be shorter), so that
/// each chunk populates whole pages of its own.
struct ChunkedCopy {
    dst: usize,
    src: usize,
    len: usize,
    /// Bytes before `dst`'s first page boundary.
    lead: usize,
    /// The next chunk to take.
    next: AtomicUsize,
    peer: Peer,
    /// The first error (an `errno`), 0 while there is none; once set, no chunk is started.
    failed: AtomicI32,
}

impl ChunkedCopy {
    fn chunk_start(&self, index: usize) -> usize {
        match index {
            0 => 0,
            _ => self.len.min(self.lead + index * CHUNK),
        }
    }

    /// Copies chunks until none is left or one failed.
    ///
    /// # Safety
    /// As [`copy_chunked`]'s, for `dst..dst + len` and `src..src + len`; every thread working on
    /// this copy takes distinct chunks (`next`).
    unsafe fn work(&self) {
        while self.failed.load(Ordering::Relaxed) == 0 {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            let start = self.chunk_start(index);
            if start >= self.len {
                return;
            }
            let end = self.chunk_start(index + 1);
            let (dst, src) = (self.dst + start, self.src + start);
            if !matches!(self.peer, Peer::WriteTo(_)) {
                // SAFETY: `dst..dst + (end - start)` is local memory of the caller's, and this
                // thread alone took the chunk.
                unsafe { populate(dst as *mut u8, end - start) };
            }
            // SAFETY: `start..end` lies in both ranges, and this thread alone took the chunk.
            if let Err(e) = unsafe { copy_one(dst, src, end - start, self.peer) } {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                let _ = self
                    .failed
                    .compare_exchange(0, errno, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }
}

fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf only reads a system constant.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    })
}

/// Whether the kernel takes `MADV_POPULATE_WRITE` (cleared on the first refusal).
static POPULATE: AtomicBool = AtomicBool::new(true);

/// Makes the whole pages of `dst..dst + len` present and writable, if the kernel can and they are
/// not present yet (judged by the first one: populating present pages costs a walk over them,
/// ~60 µs per MiB here, for nothing).
///
/// # Safety
/// `dst..dst + len` must be memory this thread may write (nothing is written: populating keeps
/// the contents).
unsafe fn populate(dst: *mut u8, len: usize) {
    if !POPULATE.load(Ordering::Relaxed) {
        return;
    }
    let page = page_size();
    let start = (dst as usize).next_multiple_of(page);
    let end = (dst as usize + len) / page * page;
    if end <= start {
        return;
    }
    let mut resident = 0u8;
    // SAFETY: one whole page of the caller's range; mincore writes one byte per page into
    // `resident`.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, page, &mut resident) };
    if rc == 0 && resident & 1 != 0 {
        return; // warm memory: the copy alone is cheaper
    }
    // SAFETY: whole pages inside the caller's writable range; populating writes nothing.
    let rc = unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_WRITE,
        )
    };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        POPULATE.store(false, Ordering::Relaxed); // an older kernel: the copy faults as before
    }
}

/// The process-wide helper thread's side of a copy. A `static` of its own, so that the thread
/// can be started from [`helper`]'s initializer.
struct Helper {
    /// Taken by the one copy that uses the helper now.
    busy: AtomicBool,
    offer: Mutex<Offer>,
    /// Signalled when a copy is offered.
    offered: Condvar,
    /// Signalled when the helper lets go of a copy.
    released: Condvar,
}

/// What the helper is doing with a copy, under `Helper::offer`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Offer {
    None,
    /// The address of a [`ChunkedCopy`] on its caller's stack, not taken yet.
    Offered(usize),
    /// The helper works on it.
    Taken,
    /// The helper let go of it.
    Released,
}

static HELPER: Helper = Helper {
    busy: AtomicBool::new(false),
    offer: Mutex::new(Offer::None),
    offered: Condvar::new(),
    released: Condvar::new(),
};

/// The process the helper thread was started in, once it was (0 if it could not start).
static HELPER_PID: OnceLock<u32> = OnceLock::new();

/// Whether this process may use the helper: it was not forked after the helper started.
fn helper_allowed() -> bool {
    HELPER_PID
        .get()
        .is_none_or(|&pid| pid == std::process::id())
}

/// The helper, started if need be, if this process has it and it is not in use.
fn helper() -> Option<&'static Helper> {
    if !helper_allowed() {
        return None;
    }
    let pid = *HELPER_PID.get_or_init(|| {
        std::thread::Builder::new()
            .name("interpool-copy".into())
            .spawn(|| HELPER.serve())
            .map_or(0, |_| std::process::id())
    });
    (pid == std::process::id()
        && HELPER
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok())
    .then_some(&HELPER)
}

impl Helper {
    fn offer(&self) -> MutexGuard<'_, Offer> {
        self.offer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn serve(&self) -> ! {
        loop {
            let mut offer = self.offer();
            let copy = loop {
                match *offer {
                    Offer::Offered(copy) => break copy,
                    _ => {
                        offer = self
                            .offered
                            .wait(offer)
                            .unwrap_or_else(PoisonError::into_inner)
                    }
                }
            };
            *offer = Offer::Taken;
            drop(offer);
            // SAFETY: the copy's caller waits in `share` until this thread sets `Released`, so the
            // `ChunkedCopy` and both ranges outlive this; the chunks are shared through `next`.
            unsafe { (*(copy as *const ChunkedCopy)).work() };
            *self.offer() = Offer::Released;
            self.released.notify_one();
        }
    }

    /// Runs `copy` on this thread and the helper's; returns once both are done with it.
    fn share(&self, copy: &ChunkedCopy) {
        *self.offer() = Offer::Offered(copy as *const ChunkedCopy as usize);
        self.offered.notify_one();
        // SAFETY: the caller of `copy_to_fresh` gave us the ranges until we return; the helper
        // takes distinct chunks.
        unsafe { copy.work() };
        let spin_until = Instant::now() + FINISH_SPIN;
        let mut offer = self.offer();
        loop {
            match *offer {
                // Not taken: the helper never sees it.
                Offer::Offered(_) | Offer::Released | Offer::None => break,
                Offer::Taken if Instant::now() < spin_until => {
                    drop(offer);
                    std::thread::yield_now();
                    offer = self.offer();
                }
                Offer::Taken => {
                    offer = self
                        .released
                        .wait(offer)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
        *offer = Offer::None;
        drop(offer);
        self.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes at `offset` into a fresh block, copied from a source at `src_offset`, split
    /// with the helper if `split` and the helper is free.
    fn check_copy(len: usize, offset: usize, src_offset: usize, split: bool) {
        let source: Vec<u8> = (0..len + src_offset)
            .map(|i| (i * 31 + i / 4096) as u8)
            .collect();
        let src = &source[src_offset..];
        let mut dst = vec![0xAAu8; len + offset + 1];
        let dst_at = dst.as_mut_ptr() as usize + offset;
        // SAFETY: `dst[offset..offset + len]` is ours and does not overlap `src`.
        unsafe { copy_chunked(dst_at, src.as_ptr() as usize, len, Peer::Local, split) }.unwrap();
        assert!(
            dst[offset..offset + len] == *src,
            "{len} bytes at +{offset}/+{src_offset}"
        );
        assert!(
            dst[..offset].iter().all(|&b| b == 0xAA),
            "wrote before the range"
        );
        assert_eq!(dst[offset + len], 0xAA, "wrote past the range");
    }

    #[test]
    fn copies_are_exact_at_every_threshold_and_alignment() {
        for len in [
            0,
            1,
            POPULATE_FROM - 1,
            POPULATE_FROM,
            POPULATE_FROM + 1,
            SPLIT_FROM - 1,
            SPLIT_FROM,
            SPLIT_FROM + 1,
            SPLIT_FROM + CHUNK + 4095,
        ] {
            for (offset, src_offset) in [(0, 0), (1, 0), (0, 3), (4095, 7), (4097, 1)] {
                check_copy(len, offset, src_offset, false);
                check_copy(len, offset, src_offset, true);
            }
        }
    }

    #[test]
    fn chunks_cover_the_copy_once_and_start_on_page_boundaries() {
        let page = page_size();
        for (dst, len) in [
            (0, 3 * CHUNK),
            (1, 3 * CHUNK + 5),
            (page - 1, CHUNK),
            (5, 7),
        ] {
            let copy = ChunkedCopy {
                dst,
                src: 0,
                len,
                lead: (page - dst % page) % page,
                next: AtomicUsize::new(0),
                peer: Peer::Local,
                failed: AtomicI32::new(0),
            };
            let mut covered = 0;
            for index in 0.. {
                let (start, end) = (copy.chunk_start(index), copy.chunk_start(index + 1));
                if start >= len {
                    break;
                }
                assert_eq!(start, covered);
                assert!(end > start && end - start <= CHUNK + page);
                if index > 0 {
                    assert_eq!((dst + start) % page, 0);
                }
                covered = end;
            }
            assert_eq!(covered, len);
        }
    }

    #[test]
    fn a_child_forked_after_the_helper_started_copies_alone() {
        check_copy(SPLIT_FROM, 0, 0, true); // starts the helper in this process
        assert_eq!(HELPER_PID.get(), Some(&std::process::id()));
        let src: Vec<u8> = (0..SPLIT_FROM + 4097)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let mut dst = vec![0u8; src.len()];
        // SAFETY: the child allocates nothing and takes no lock (it has no helper: the pid
        // differs), so other threads of this test process holding one cannot block it; it
        // leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let (to, from) = (dst.as_mut_ptr() as usize, src.as_ptr() as usize);
            // SAFETY: `dst` is the child's own copy, as long as `src`.
            let _ = unsafe { copy_chunked(to, from, src.len(), Peer::Local, true) };
            let exact = dst == src;
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(if exact { 0 } else { 1 }) };
        }
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
    }

    #[test]
    fn copies_from_and_to_a_process_are_exact_and_report_the_kernels_errors() {
        let pid = std::process::id() as libc::pid_t; // this process: the same system calls
        for len in [0, 1, POPULATE_FROM + 1, SPLIT_FROM + CHUNK + 4095] {
            let source: Vec<u8> = (0..len).map(|i| (i * 31 + i / 4096) as u8).collect();
            let read = read_from_process(pid, source.as_ptr() as usize, len).unwrap();
            assert!(read == source, "{len} bytes read");
            let mut written = vec![0u8; len];
            write_to_process(pid, written.as_mut_ptr() as usize, &source).unwrap();
            assert!(written == source, "{len} bytes written");
        }
        let unmapped = read_from_process(pid, 8, POPULATE_FROM); // the first page
        assert_eq!(unmapped.unwrap_err().raw_os_error(), Some(libc::EFAULT));
        let mut dst = [0u8];
        let gone = write_to_process(libc::pid_t::MAX, dst.as_mut_ptr() as usize, &[1]);
        assert_eq!(gone.unwrap_err().raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn concurrent_copies_share_one_helper_and_stay_exact() {
        let threads: Vec<_> = (0..4)
            .map(|i| std::thread::spawn(move || check_copy(SPLIT_FROM + i * 12345, i, 3 * i, true)))
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let helpers = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter(|task| {
                let comm = task.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm).is_ok_and(|name| name.trim() == "interpool-copy")
            })
            .count();
        assert!(helpers <= 1, "{helpers} helper threads");
    }
}
