//! The parent's end of a worker process's channel.
//!
//! One Unix stream socket per worker, passed as an inherited fd (never stdin or stdout: `print`
//! in a job reaches the parent's stdout), non-blocking on our side. Parent → worker: `<Q len` +
//! bytes (the loop source, the setup, then one job per frame). Worker → parent: the protocol's
//! [`MESSAGE_HEADER`](crate::protocol::MESSAGE_HEADER) (kind, verdict, `len(data)`,
//! `len(records)`) + data + records, once for the setup and once per job; when a job's message
//! says `RETIRE_PENDING`, the `retire` hook runs in the worker after the outcome was sent and its
//! verdict follows (`AFTER_JOB`), while the caller already has the outcome and the worker is not
//! ready for another job. The worker's side is `process_loop.py`.
//!
//! **Peer memory.** A job's out-of-band buffers (pickle protocol 5) do not cross the socket. When
//! the parent may reach the worker's memory (probed once per worker: the worker's `SETUP_OK`
//! points at [`PEER_PROBE`] in its memory, which the parent reads back there), it copies them
//! itself, each once, with [`large_copy::write_to_process`] (`process_vm_writev`): every job frame
//! is flagged [`PEER_MEMORY`]; one with buffers is followed by their sizes, the worker makes each
//! (a `bytes` for a whole `bytes`, else a private anonymous mapping) and answers
//! [`BUFFER_ADDRESSES`], the parent writes them there, then sends the payload. A value's buffers
//! come back as addresses after a [`VALUE_BUFFERS`] header; the parent copies each once into host
//! memory with [`large_copy::read_from_process`] (`process_vm_readv`), then sends [`RELEASE`],
//! until which the worker keeps them unchanged (its `retire` hook waits for it). Nothing is
//! shared, so nothing outlives either process. A worker that dies meanwhile fails the copy
//! (`ESRCH`), and its job breaks as for any broken channel. A spawned worker's pid names no
//! other process while its thread here runs (it is reaped only after). A forkserver child is
//! reaped by the server as soon as it dies; a copy then fails, unless, within the microseconds
//! between the worker's answer and the copy, it was killed, reaped, and its pid taken by a new
//! process of the same user with memory mapped at that address: a window this design accepts
//! (`process_vm_*` take no pidfd).
//!
//! **Shared memory**, where peer memory is refused (Yama's `ptrace_scope` 2 or 3, a seccomp
//! filter, a worker of another user, or `INTERPOOL_PEER_MEMORY` set to anything but `1`): each buffer is copied once
//! into a fresh `memfd`, whose descriptor rides on one byte (`SCM_RIGHTS`)
//! right after a frame header flagged [`HAS_BUFFERS`]; the worker maps it privately (copy on
//! write: a job may write its numpy argument without touching anything of ours) and closes the
//! descriptor. A value with buffers comes back the same way, as kind [`VALUE_BUFFERS`] whose
//! header is followed by the byte carrying the worker's memfds; the parent maps them privately and
//! the caller reads the mappings in place. The memfd of a whole `bytes` comes sealed against
//! writes (`F_SEAL_WRITE`): the caller then copies it once into its own `bytes` with
//! [`large_copy`] (otherwise its pickle would copy it, page fault by page fault). A memfd is freed
//! with its last descriptor and mapping, so a killed worker leaves no segment behind, and the
//! parent's descriptors are closed as soon as they are sent or mapped.

use std::{
    io::{self, IoSlice, Read, Write},
    os::{
        fd::{AsFd, AsRawFd},
        unix::net::UnixStream,
    },
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use super::sys;
use crate::{
    large_copy,
    prewake::{self, Plan, Spinning, Wait},
    protocol::{
        self, BUFFER_ADDRESSES, HAS_BUFFERS, MAX_BUFFERS, MESSAGE_HEADER_LEN, NUDGE, PEER_MEMORY,
        PEER_PROBE, RELEASE, VALUE_BUFFERS, WHOLE_BYTES,
    },
    Buffer, Job,
};

/// Unset or `1` in the environment, workers started from then on may use peer memory; any
/// other value (`0`, `off`, a typo) makes them use memfds, the path that needs no permission.
const PEER_MEMORY_VAR: &str = "INTERPOOL_PEER_MEMORY";

/// The parent's end of a worker's channel (non-blocking).
#[derive(Debug)]
pub(super) struct Channel {
    pub(super) sock: Arc<UnixStream>,
    /// The worker's pid, once the probe showed that we reach its memory (see the module docs).
    peer: OnceLock<libc::pid_t>,
}

impl Channel {
    pub(super) fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock: Arc::new(sock),
            peer: OnceLock::new(),
        })
    }

    /// Probes the memory of the worker `pid` at the place its `SETUP_OK` named (`probe`: `<QQ`
    /// address, length); if it holds [`PEER_PROBE`] there, its buffers go by peer memory from
    /// now on. Returns whether they do.
    pub(super) fn probe_peer_memory(&self, pid: u32, probe: &[u8]) -> bool {
        let allowed = std::env::var_os(PEER_MEMORY_VAR).is_none_or(|v| v == "1");
        let (Ok(pid), Some(&[address, len])) =
            (libc::pid_t::try_from(pid), words(probe).as_deref())
        else {
            return false;
        };
        let reached = allowed
            && usize::try_from(address).is_ok_and(|address| {
                len == PEER_PROBE.len() as u64
                    && large_copy::read_from_process(pid, address, PEER_PROBE.len())
                        .is_ok_and(|read| read == PEER_PROBE.as_bytes())
            });
        reached && self.peer.set(pid).is_ok()
    }

    fn wait(&self, write: bool) -> io::Result<()> {
        sys::poll(self.sock.as_fd(), write, None).map(drop)
    }

    /// Writes one frame: `<Q len` + `data`.
    pub(super) fn send_frame(&self, data: &[u8]) -> io::Result<()> {
        let header = (data.len() as u64).to_le_bytes();
        self.write_all(&mut [IoSlice::new(&header), IoSlice::new(data)])
    }

    /// Writes a job's frame; its out-of-band buffers go by peer memory or in fresh memfds (see
    /// the module docs).
    pub(super) fn send_job(&self, job: &Job) -> io::Result<()> {
        if job.buffers.len() > MAX_BUFFERS {
            return Err(io::Error::other("too many out-of-band buffers"));
        }
        if let Some(&pid) = self.peer.get() {
            return self.send_job_by_peer_memory(job, pid);
        }
        if job.buffers.is_empty() {
            return self.send_frame(&job.payload);
        }
        let memfds = job
            .buffers
            .iter()
            .map(|b| sys::memfd_with(b.as_slice()))
            .collect::<io::Result<Vec<_>>>()?;
        let header = (job.payload.len() as u64 | HAS_BUFFERS).to_le_bytes();
        self.write_all(&mut [IoSlice::new(&header)])?;
        let raw: Vec<_> = memfds.iter().map(|fd| fd.as_raw_fd()).collect();
        loop {
            match sys::send_with_fds(self.sock.as_fd(), &[0], &raw) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(true)?,
                Err(e) => return Err(e),
            }
        }
        drop(memfds); // the worker holds its own descriptors now
        self.write_all(&mut [IoSlice::new(&job.payload)])
    }

    /// [`Channel::send_job`] to a worker whose memory we reach: the sizes, the worker's
    /// addresses for them, our copies there, then the payload.
    fn send_job_by_peer_memory(&self, job: &Job, pid: libc::pid_t) -> io::Result<()> {
        let len = job.payload.len() as u64 | PEER_MEMORY;
        if job.buffers.is_empty() {
            let header = len.to_le_bytes();
            return self.write_all(&mut [IoSlice::new(&header), IoSlice::new(&job.payload)]);
        }
        let mut head = Vec::with_capacity(8 * (2 + job.buffers.len()));
        head.extend((len | HAS_BUFFERS).to_le_bytes());
        head.extend((job.buffers.len() as u64).to_le_bytes());
        for buffer in &job.buffers {
            let whole = if buffer.is_rebuilt_as_bytes() {
                WHOLE_BYTES
            } else {
                0
            };
            head.extend((buffer.len() as u64 | whole).to_le_bytes());
        }
        self.write_all(&mut [IoSlice::new(&head)])?;
        let (kind, _, addresses, _, _) = self.receive(Duration::ZERO, &|| None)?;
        let addresses = words(&addresses).unwrap_or_default();
        if kind != BUFFER_ADDRESSES || addresses.len() != job.buffers.len() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        for (buffer, &address) in job.buffers.iter().zip(&addresses) {
            let address = usize::try_from(address)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            buffer.read(|bytes| large_copy::write_to_process(pid, address, bytes))?;
        }
        self.write_all(&mut [IoSlice::new(&job.payload)])
    }

    /// Writes `bufs` back to back.
    fn write_all(&self, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        while !bufs.is_empty() {
            match (&*self.sock).write_vectored(bufs) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(true)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes a nudge: the worker spins for its next frame until `until` (see [`NUDGE`]).
    pub(super) fn send_nudge(&self, until: Instant) -> io::Result<()> {
        let micros = until.saturating_duration_since(Instant::now()).as_micros();
        let header =
            (NUDGE | u64::try_from(micros).unwrap_or(0).min(u64::from(u32::MAX))).to_le_bytes();
        self.write_all(&mut [IoSlice::new(&header)])
    }

    /// Fills `buf`, spinning up to `spin` before it polls; once that spin is over, waits as
    /// `expected()` plans (see [`Plan::wait`]), if it does.
    fn read_exact(
        &self,
        buf: &mut [u8],
        spin: Duration,
        expected: &dyn Fn() -> Option<Plan>,
    ) -> io::Result<()> {
        let mut pos = 0;
        let mut spin_until: Option<Instant> = None;
        // Once the first spin is over: how to wait from there.
        let mut wait: Option<Wait> = None;
        let mut _spinning = None;
        while pos < buf.len() {
            match (&*self.sock).read(&mut buf[pos..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now < *spin_until.get_or_insert(now + spin) {
                        std::thread::yield_now();
                        continue;
                    }
                    let planned = wait.get_or_insert_with(|| {
                        expected().map_or(Wait::Park, |plan| plan.wait(now, prewake::core_free))
                    });
                    match *planned {
                        Wait::Park => self.wait(false)?,
                        Wait::SpinUntil(end) if now < end => {
                            _spinning.get_or_insert_with(Spinning::start);
                            std::thread::yield_now();
                        }
                        Wait::SpinUntil(_) => {
                            _spinning = None;
                            *planned = Wait::Park;
                        }
                        Wait::ParkThenSpin(plan) if now < plan.at => {
                            sys::poll(self.sock.as_fd(), false, Some(plan.at - now))?;
                        }
                        Wait::ParkThenSpin(plan) => *planned = plan.woken(now, prewake::core_free),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads `len` bytes into a new vector (not zeroed first: large payloads are the point).
    fn read_vec(&self, len: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let mut data = Vec::new();
        data.try_reserve_exact(len)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        while data.len() < len {
            let left = (len - data.len()) as u64;
            match (&*self.sock).take(left).read_to_end(&mut data) {
                Ok(_) if data.len() < len => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(false)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(data)
    }

    /// Reads one message: `(kind, retire, data, retire_error, buffers)`, spinning for it and
    /// then waiting as [`Channel::read_exact`] says.
    pub(super) fn receive(
        &self,
        spin: Duration,
        expected: &dyn Fn() -> Option<Plan>,
    ) -> io::Result<Message> {
        let mut header = [0u8; MESSAGE_HEADER_LEN];
        self.read_exact(&mut header, spin, expected)?;
        let (kind, retire, data_len, error_len) = protocol::parse_message_header(&header);
        let buffers = match (kind, self.peer.get()) {
            (VALUE_BUFFERS, Some(&pid)) => self.read_peer_buffers(pid)?,
            (VALUE_BUFFERS, None) => self.receive_buffers()?,
            _ => Vec::new(),
        };
        let data = self.read_vec(data_len)?;
        let error = self.read_vec(error_len)?;
        Ok((kind, retire, data, error, buffers))
    }

    /// The buffers described after a [`VALUE_BUFFERS`] header, each copied once from the worker
    /// into host memory; then the worker may free them ([`RELEASE`]).
    fn read_peer_buffers(&self, pid: libc::pid_t) -> io::Result<Vec<Buffer>> {
        let mut count = [0u8; 8];
        self.read_exact(&mut count, Duration::ZERO, &|| None)?;
        let count = u64::from_le_bytes(count);
        if count == 0 || count > MAX_BUFFERS as u64 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let mut described = vec![0u8; 16 * count as usize];
        self.read_exact(&mut described, Duration::ZERO, &|| None)?;
        let buffers = words(&described)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|entry| {
                let (address, len) = (entry[0], entry[1] & !WHOLE_BYTES);
                let (Ok(address), Ok(len)) = (usize::try_from(address), usize::try_from(len))
                else {
                    return Err(io::Error::from(io::ErrorKind::InvalidData));
                };
                let buffer = Buffer::from_vec(large_copy::read_from_process(pid, address, len)?);
                Ok(if entry[1] & WHOLE_BYTES != 0 {
                    buffer.rebuilt_as_bytes()
                } else {
                    buffer
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        self.write_all(&mut [IoSlice::new(&RELEASE.to_le_bytes())])?;
        Ok(buffers)
    }

    /// The worker's memfds after a [`VALUE_BUFFERS`] header, mapped privately; one sealed against
    /// writes holds a whole `bytes`, which the caller rebuilds as a `bytes` of its own.
    fn receive_buffers(&self) -> io::Result<Vec<Buffer>> {
        let fds = loop {
            match sys::recv_fds(self.sock.as_fd(), MAX_BUFFERS)? {
                Some(fds) => break fds,
                None => self.wait(false)?,
            }
        };
        fds.iter()
            .map(|fd| {
                let buffer = sys::Mapping::private(fd.as_fd())?.into_buffer();
                Ok(if sys::sealed_against_writes(fd.as_fd()) {
                    buffer.rebuilt_as_bytes()
                } else {
                    buffer
                })
            })
            .collect()
    }
}

/// `bytes` as little-endian `u64`s; `None` unless its length is a multiple of 8.
fn words(bytes: &[u8]) -> Option<Vec<u64>> {
    let words = bytes.chunks_exact(8);
    words.remainder().is_empty().then(|| {
        words
            .map(|word| u64::from_le_bytes(word.try_into().expect("8 bytes")))
            .collect()
    })
}

/// One message from a worker: `(kind, retire, data, retire_error, buffers)`.
pub(super) type Message = (u8, u8, Vec<u8>, Vec<u8>, Vec<Buffer>);

#[cfg(test)]
mod tests {
    use std::{
        os::fd::RawFd,
        process::{Command, Stdio},
    };

    use super::*;
    use crate::protocol::{KEEP, PYTHON_CONSTANTS, VALUE};

    /// A Python child serving `_Channel` of process_loop.py on `fd`: it echoes every frame.
    fn echo_child(fd: RawFd) -> std::process::Child {
        let source = format!(
            "{PYTHON_CONSTANTS}{}\nimport sys\nchannel = _Channel(int(sys.argv[1]))\n\
             while (frame := channel.receive()) is not None:\n    \
             channel.send(VALUE, KEEP, bytes(frame[0]))\n",
            include_str!("process_loop.py")
        );
        let python = std::env::var_os("PYO3_PYTHON").unwrap_or_else(|| "python3".into());
        let mut command = Command::new(python);
        command
            .arg("-c")
            .arg(source)
            .arg(fd.to_string())
            .stdin(Stdio::null());
        sys::prepare_command(&mut command, &[fd]);
        command.spawn().expect("a Python to run the worker loop")
    }

    #[test]
    fn peer_memory_is_used_only_where_the_probe_reads_back_the_probe_string() {
        let pid = std::process::id(); // this process: the same system call as for a worker's
        let probe_of = |bytes: &[u8], len: usize| {
            let mut probe = (bytes.as_ptr() as u64).to_le_bytes().to_vec();
            probe.extend((len as u64).to_le_bytes());
            probe
        };
        let channel = || Channel::new(UnixStream::pair().unwrap().0).unwrap();
        let right = PEER_PROBE.as_bytes().to_vec();
        let mut wrong = right.clone();
        wrong[0] ^= 1;
        let probe = probe_of(&right, right.len());
        assert!(
            !channel().probe_peer_memory(pid, &probe[..12]),
            "a short probe"
        );
        assert!(
            !channel().probe_peer_memory(pid, &probe_of(&right, 3)),
            "a wrong length"
        );
        assert!(
            !channel().probe_peer_memory(pid, &probe_of(&wrong, wrong.len())),
            "wrong bytes"
        );
        assert!(
            !channel().probe_peer_memory(pid, &probe_of(&[0; 0][..], 0)),
            "nothing"
        );
        let unmapped = [8u64.to_le_bytes(), (right.len() as u64).to_le_bytes()].concat();
        assert!(
            !channel().probe_peer_memory(pid, &unmapped),
            "an unmapped address"
        );
        let reached = channel();
        assert!(reached.probe_peer_memory(pid, &probe));
        assert_eq!(reached.peer.get(), Some(&(pid as libc::pid_t)));
    }

    #[test]
    fn a_nudged_worker_loop_serves_its_next_frame_and_a_planned_wait_reads_it() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut child = echo_child(theirs.as_raw_fd());
        drop(theirs);
        let channel = Channel::new(ours).unwrap();
        let echoed = |expected: &dyn Fn() -> Option<Plan>| {
            let (kind, verdict, data, _, buffers) =
                channel.receive(Duration::ZERO, expected).unwrap();
            assert_eq!((kind, verdict, buffers.len()), (VALUE, KEEP, 0));
            data
        };
        channel
            .send_nudge(Instant::now() + Duration::from_millis(5))
            .unwrap();
        channel.send_frame(b"after a nudge").unwrap();
        assert_eq!(echoed(&|| None), b"after a nudge");
        // A nudge already over, two in a row, and the parent waiting as a caller's plan says.
        channel.send_nudge(Instant::now()).unwrap();
        channel
            .send_nudge(Instant::now() + Duration::from_secs(1))
            .unwrap();
        channel.send_frame(b"second").unwrap();
        let due_now = Plan {
            at: Instant::now(),
            spin: Duration::from_millis(1),
        };
        assert_eq!(echoed(&|| Some(due_now)), b"second");
        channel.send_frame(b"third").unwrap();
        let due_later = Plan {
            at: Instant::now() + Duration::from_millis(1),
            spin: Duration::from_millis(1),
        };
        assert_eq!(echoed(&|| Some(due_later)), b"third");
        drop(channel); // end of file: the loop ends
        assert!(child.wait().unwrap().success());
    }
}
