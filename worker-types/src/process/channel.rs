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
//! **Shared memory.** A job's out-of-band buffers (pickle protocol 5) do not cross the socket:
//! each is copied once into a fresh `memfd`, whose descriptor rides on one byte (`SCM_RIGHTS`)
//! right after a frame header flagged [`HAS_BUFFERS`]; the worker maps it privately (copy on
//! write: a job may write its numpy argument without touching anything of ours) and closes the
//! descriptor. A value with buffers comes back the same way, as kind [`VALUE_BUFFERS`] whose
//! header is followed by the byte carrying the worker's memfds; the parent maps them privately and
//! the caller reads the mappings in place. The memfd of a whole `bytes` comes sealed against
//! writes (`F_SEAL_WRITE`): the caller then copies it once into its own `bytes` with
//! [`large_copy`](crate::large_copy) (otherwise its pickle would copy it, page fault by page fault). A memfd is freed with its last descriptor and mapping,
//! so a killed worker leaves no segment behind, and the parent's descriptors are closed as soon
//! as they are sent or mapped.

use std::{
    io::{self, IoSlice, Read, Write},
    os::{
        fd::{AsFd, AsRawFd},
        unix::net::UnixStream,
    },
    sync::Arc,
    time::{Duration, Instant},
};

use super::sys;
use crate::{
    protocol::{self, HAS_BUFFERS, MAX_BUFFERS, MESSAGE_HEADER_LEN, VALUE_BUFFERS},
    Buffer, Job,
};

/// The parent's end of a worker's channel (non-blocking).
#[derive(Debug)]
pub(super) struct Channel {
    pub(super) sock: Arc<UnixStream>,
}

impl Channel {
    pub(super) fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock: Arc::new(sock),
        })
    }

    fn wait(&self, write: bool) -> io::Result<()> {
        sys::poll(self.sock.as_fd(), write, -1).map(drop)
    }

    /// Writes one frame: `<Q len` + `data`.
    pub(super) fn send_frame(&self, data: &[u8]) -> io::Result<()> {
        let header = (data.len() as u64).to_le_bytes();
        self.write_all(&mut [IoSlice::new(&header), IoSlice::new(data)])
    }

    /// Writes a job's frame; its out-of-band buffers go in fresh memfds (see the module docs).
    pub(super) fn send_job(&self, job: &Job) -> io::Result<()> {
        if job.buffers.is_empty() {
            return self.send_frame(&job.payload);
        }
        if job.buffers.len() > MAX_BUFFERS {
            return Err(io::Error::other("too many out-of-band buffers"));
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

    /// Fills `buf`, spinning up to `spin` before it polls.
    fn read_exact(&self, buf: &mut [u8], spin: Duration) -> io::Result<()> {
        let mut pos = 0;
        let mut spin_until: Option<Instant> = None;
        while pos < buf.len() {
            match (&*self.sock).read(&mut buf[pos..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let until = *spin_until.get_or_insert_with(|| Instant::now() + spin);
                    if Instant::now() < until {
                        std::thread::yield_now();
                    } else {
                        self.wait(false)?;
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

    /// Reads one message: `(kind, retire, data, retire_error, buffers)`.
    pub(super) fn receive(&self, spin: Duration) -> io::Result<Message> {
        let mut header = [0u8; MESSAGE_HEADER_LEN];
        self.read_exact(&mut header, spin)?;
        let (kind, retire, data_len, error_len) = protocol::parse_message_header(&header);
        let buffers = if kind == VALUE_BUFFERS {
            self.receive_buffers()?
        } else {
            Vec::new()
        };
        let data = self.read_vec(data_len)?;
        let error = self.read_vec(error_len)?;
        Ok((kind, retire, data, error, buffers))
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

/// One message from a worker: `(kind, retire, data, retire_error, buffers)`.
pub(super) type Message = (u8, u8, Vec<u8>, Vec<u8>, Vec<Buffer>);
