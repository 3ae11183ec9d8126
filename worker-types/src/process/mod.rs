//! Workers that are processes: [`Spawn`] starts a fresh Python per worker, [`Forkserver`] forks
//! each worker from one preloaded server process per host.
//!
//! Both run the same Python loop as subinterpreter workers (`worker_loop.py`, plus
//! `process_loop.py` for the channel), so jobs and outcomes are the same bytes. A worker process
//! imports neither trio nor interpool's extension: it starts as `python -c BOOTSTRAP FD MODE`,
//! reads the loop's source as the first frame on its channel and registers it as
//! `sys.modules["_interpool_worker"]` (which `interpool/__init__.py` checks to stay import-safe).
//!
//! **Channel.** One Unix stream socket per worker, passed as an inherited fd (never stdin or
//! stdout: `print` in a job reaches the parent's stdout). Parent → worker: `<Q len` + bytes (the
//! loop source, the setup, then one job per frame). Worker → parent: `<BBQQ` (kind, retire,
//! `len(data)`, `len(retire_error)`) + data + retire error, once for the setup and once per job;
//! when a job's message says `RETIRE_PENDING`, the `retire` hook runs in the worker after the
//! outcome was sent and its verdict follows (`AFTER_JOB`), while the caller already has the
//! outcome and the worker is not ready for another job.
//!
//! **Shared memory.** A job's out-of-band buffers (pickle protocol 5) do not cross the socket:
//! each is copied once into a fresh `memfd`, whose descriptor rides on one byte (`SCM_RIGHTS`)
//! right after a frame header flagged [`HAS_BUFFERS`]; the worker maps it privately (copy on
//! write: a job may write its numpy argument without touching anything of ours) and closes the
//! descriptor. A value with buffers comes back the same way, as kind [`VALUE_WITH_BUFFERS`] whose
//! header is followed by the byte carrying the worker's memfds; the parent maps them privately and
//! the caller reads the mappings in place. A memfd is freed with its last descriptor and mapping,
//! so a killed worker leaves no segment behind, and the parent's descriptors are closed as soon
//! as they are sent or mapped.
//!
//! **Threads.** Each worker has one parent-side thread, like a subinterpreter worker: it takes jobs
//! from the [`Mailbox`], writes them, reads the outcome (spinning briefly on a non-blocking read
//! before it polls: see `wakeup.md` in the research notes) and completes the job's [`Completion`].
//! That thread also starts the process, so that `PR_SET_PDEATHSIG` (which fires when the *thread*
//! that forked the child ends) kills the child exactly when its manager is gone.
//!
//! **Ending.** Closing drops the parent's end of the socket: the worker reads end of file and exits
//! 0. [`Worker::interrupt`] (once it has claimed the job: a completed job is never killed),
//! [`Worker::abandon`] and [`Worker::kill`] SIGKILL it; a job it was running completes as
//! [`Outcome::Broken`] with the exit code, and a worker whose job was claimed never serves
//! another, even if its outcome arrived before the signal. A worker that dies on its own
//! (segfault, `os._exit`, an external kill) breaks its job the same way. If the parent dies, its
//! workers read end of file, and on Linux are killed by `PR_SET_PDEATHSIG` even mid-job.

use std::{
    io::{self, IoSlice, Read, Write},
    os::{
        fd::{AsFd, AsRawFd},
        unix::{net::UnixStream, process::ExitStatusExt},
    },
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock,
    },
    time::{Duration, Instant},
};

use crate::{
    mailbox::{Mailbox, Next},
    Availability, Broken, Buffer, Capabilities, Completion, Error, Finished, Job, Outcome,
    Rejected, Result, Retire, Verdict, Worker, WorkerConfig, WorkerType,
};

mod forkserver;
mod sys;

pub use forkserver::{forkserver_running, set_forkserver_preload};

/// The Python source a worker process runs: the shared loop plus the process channel.
const LOOP_SOURCE: &str = concat!(
    include_str!("../subinterpreter/worker_loop.py"),
    include_str!("process_loop.py")
);

/// `python -c` code that loads [`LOOP_SOURCE`] from the channel and serves. It keeps `__main__`
/// clean (jobs pickled as `__main__.f` must find the parent's script, not our names).
const BOOTSTRAP: &str = r#"def _interpool_boot():
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    del globals()["_interpool_boot"]
    args = sys.argv[1:]
    fd = int(args[0])
    def read(n):
        data = b""
        while len(data) < n:
            chunk = os.read(fd, n - len(data))
            if not chunk:
                os._exit(0)
            data += chunk
        return data
    source = read(int.from_bytes(read(8), "little")).decode()
    module = type(sys)("_interpool_worker")
    module.__file__ = "<interpool worker loop>"
    sys.modules["_interpool_worker"] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    if args[1] == "worker":
        code = module.serve(fd)
    else:
        code = module.forkserver(fd, int(args[2]))
    module._flush()
    os._exit(code)
_interpool_boot()
"#;

/// How long the parent-side thread spins on a non-blocking read for an outcome before it polls.
const SPIN_FOR_OUTCOME: Duration = Duration::from_micros(50);

/// Outcome kinds on the wire (`worker_loop.py` and `process_loop.py`).
const VALUE: u8 = 0;
const RAISED: u8 = 1;
const LOAD_ERROR: u8 = 2;
/// A value with out-of-band buffers: the memfds follow the header (see the module docs).
const VALUE_WITH_BUFFERS: u8 = 3;
const SETUP_OK: u8 = 10;
const SETUP_FAILED: u8 = 11;
const AFTER_JOB: u8 = 12;
const KEEP: u8 = 0;
const RETIRE: u8 = 1;
const RETIRE_FAILED: u8 = 2;
const RETIRE_PENDING: u8 = 3;
/// Set in a frame's length when memfds of out-of-band buffers follow its header.
const HAS_BUFFERS: u64 = 1 << 63;
/// At most this many buffers per job or value (`_MAX_BUFFERS` in the worker loop).
const MAX_BUFFERS: usize = 64;

static PYTHON: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Sets the Python executable that process workers run when their type names none. The Python
/// extension sets `sys.executable` when it loads (unless a host set one first); a Rust host that
/// wants process workers calls this (or uses [`Spawn::with_python`]).
pub fn set_python_executable(path: impl Into<PathBuf>) {
    *PYTHON.write().unwrap_or_else(PoisonError::into_inner) = Some(path.into());
}

/// The Python executable process workers run by default, if one was set.
pub fn python_executable() -> Option<PathBuf> {
    PYTHON
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Where a type's workers find their Python, or why they cannot.
fn resolve_python(own: &Option<PathBuf>) -> std::result::Result<PathBuf, String> {
    if !cfg!(unix) {
        return Err("process workers need a Unix system".to_owned());
    }
    let python = own.clone().or_else(python_executable).ok_or_else(|| {
        "no Python executable is configured for process workers (Rust hosts: call \
         interpool_worker_types::process::set_python_executable)"
            .to_owned()
    })?;
    if !python.is_file() {
        return Err(format!(
            "the Python executable {} does not exist",
            python.display()
        ));
    }
    Ok(python)
}

/// The [`WorkerType`] of freshly spawned worker processes (`spawn`).
#[derive(Debug, Clone, Default)]
pub struct Spawn {
    python: Option<PathBuf>,
}

impl Spawn {
    /// Workers that run `python` instead of the process-wide default
    /// ([`set_python_executable`]).
    pub fn with_python(python: impl Into<PathBuf>) -> Self {
        Self {
            python: Some(python.into()),
        }
    }
}

/// The [`WorkerType`] of worker processes forked from a server process (`forkserver`).
///
/// One server per host process, started by the first worker: it imports the modules named with
/// [`set_forkserver_preload`] and the parent's main script once, then forks a worker per request,
/// which starts in a few milliseconds with all of that already imported.
#[derive(Debug, Clone, Default)]
pub struct Forkserver {
    python: Option<PathBuf>,
}

impl Forkserver {
    /// A server that runs `python` instead of the process-wide default. The server is shared by
    /// the whole host: the first worker to start it decides its Python.
    pub fn with_python(python: impl Into<PathBuf>) -> Self {
        Self {
            python: Some(python.into()),
        }
    }
}

const PROCESS_CAPABILITIES: Capabilities = Capabilities {
    hard_kill: true,
    crash_isolation: true,
};

fn availability(python: &Option<PathBuf>) -> Availability {
    match resolve_python(python) {
        Ok(_) => Availability::Available,
        Err(reason) => Availability::Unavailable(reason),
    }
}

fn start_checked(
    name: &'static str,
    python: &Option<PathBuf>,
    forkserver: bool,
    config: Arc<WorkerConfig>,
) -> Result<Box<dyn Worker>> {
    let python = resolve_python(python).map_err(|reason| Error::Unavailable { name, reason })?;
    let shared = Arc::new(Shared::new());
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("interpool-{name}-{}", shared.id))
        .spawn(move || worker_thread(&thread_shared, &config, &python, forkserver))
        .map_err(|e| Error::Start {
            name,
            reason: e.to_string(),
        })?;
    Ok(Box::new(ProcessWorker { shared }))
}

impl WorkerType for Spawn {
    fn name(&self) -> &'static str {
        "spawn"
    }
    fn availability(&self) -> Availability {
        availability(&self.python)
    }
    fn capabilities(&self) -> Capabilities {
        PROCESS_CAPABILITIES
    }
    fn latency_prior(&self) -> Duration {
        // A pipe round trip, as a forkserver child's; after it, as its new workers start slower.
        Duration::from_micros(80)
    }
    fn start(&self, config: Arc<WorkerConfig>) -> Result<Box<dyn Worker>> {
        start_checked(self.name(), &self.python, false, config)
    }
}

impl WorkerType for Forkserver {
    fn name(&self) -> &'static str {
        "forkserver"
    }
    fn availability(&self) -> Availability {
        availability(&self.python)
    }
    fn capabilities(&self) -> Capabilities {
        PROCESS_CAPABILITIES
    }
    fn latency_prior(&self) -> Duration {
        Duration::from_micros(60)
    }
    fn start(&self, config: Arc<WorkerConfig>) -> Result<Box<dyn Worker>> {
        start_checked(self.name(), &self.python, true, config)
    }
}

/// The worker's process, as far as killing and reaping go (invariant 2 of `sys`).
#[derive(Debug)]
enum ChildSlot {
    /// Not started yet; a kill asked for meanwhile is done as soon as it starts.
    Starting { kill_requested: bool },
    /// Our own child (spawn).
    Spawned(Child),
    /// A child of the forkserver; the server kills it on request and reports its exit.
    Forked {
        pid: u32,
        server: Arc<forkserver::Server>,
    },
    /// Gone: reaped, or never started.
    Reaped,
}

impl ChildSlot {
    fn pid(&self) -> Option<u32> {
        match self {
            ChildSlot::Spawned(child) => Some(child.id()),
            ChildSlot::Forked { pid, .. } => Some(*pid),
            ChildSlot::Starting { .. } | ChildSlot::Reaped => None,
        }
    }

    fn kill(&mut self) {
        match self {
            ChildSlot::Starting { kill_requested } => *kill_requested = true,
            // An error means it is already gone (ESRCH cannot happen before reaping, but a
            // failure to kill leaves nothing better to do).
            ChildSlot::Spawned(child) => drop(sys::kill(child.id())),
            ChildSlot::Forked { pid, server } => server.kill(*pid),
            ChildSlot::Reaped => {}
        }
    }
}

/// State shared by a worker's handle and its thread.
#[derive(Debug)]
struct Shared {
    id: u64,
    mailbox: Mailbox,
    child: Mutex<ChildSlot>,
    /// The parent's end of the channel, once the worker serves jobs (for the idle check).
    channel: Mutex<Option<Arc<UnixStream>>>,
    /// Set by `interrupt`/`abandon`/`kill`: the worker ends, and a broken job says why.
    killed: AtomicBool,
    /// `Some(exit code)` once the worker has fully ended (the inner `None`: unknown).
    ended: Mutex<Option<Option<i32>>>,
    ended_changed: Condvar,
    /// The exception records of a `retire` hook that raised.
    retire_failure: Mutex<Option<Vec<u8>>>,
}

impl Shared {
    fn new() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            mailbox: Mailbox::new(),
            child: Mutex::new(ChildSlot::Starting {
                kill_requested: false,
            }),
            channel: Mutex::new(None),
            killed: AtomicBool::new(false),
            ended: Mutex::new(None),
            ended_changed: Condvar::new(),
            retire_failure: Mutex::new(None),
        }
    }

    /// The process's resident set size in bytes, where the system tells (Linux).
    fn rss(&self) -> Option<u64> {
        let pid = self.child().pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    fn child(&self) -> MutexGuard<'_, ChildSlot> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.child().kill();
    }

    fn mark_ended(&self, exit_code: Option<i32>) {
        *self.ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(exit_code);
        self.ended_changed.notify_all();
    }

    fn wait_ended(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        while ended.is_none() {
            ended = match deadline {
                None => self
                    .ended_changed
                    .wait(ended)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    self.ended_changed
                        .wait_timeout(ended, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }

    /// An idle worker's channel must be silent: anything readable (end of file, above all) means
    /// the process died while idle. Then it is closed, so that no job is lost to it. (A worker
    /// that is not idle is not asked: after a job it may be reading its retire verdict.)
    fn died_while_idle(&self) -> bool {
        if !self.mailbox.is_idle() {
            return false;
        }
        let channel = self
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(channel) = channel else {
            return false;
        };
        if matches!(
            sys::poll(channel.as_fd(), false, 0),
            Ok(sys::Ready::No) | Err(_)
        ) {
            return false;
        }
        self.mailbox.close();
        true
    }
}

/// A handle to one worker process. Dropping it closes the worker (it ends once idle).
#[derive(Debug)]
pub struct ProcessWorker {
    shared: Arc<Shared>,
}

impl Worker for ProcessWorker {
    fn id(&self) -> u64 {
        self.shared.id
    }

    fn submit(&self, job: Job) -> std::result::Result<Arc<Completion>, Rejected> {
        if self.shared.died_while_idle() {
            return Err(Rejected(job));
        }
        self.shared.mailbox.submit(job)
    }

    fn interrupt(&self) {
        if self.shared.mailbox.claim_interrupt() {
            self.shared.kill();
        }
    }

    fn abandon(&self) {
        self.shared.mailbox.close();
        self.shared.kill();
    }

    fn close(&self) {
        self.shared.mailbox.close();
    }

    fn is_accepting(&self) -> bool {
        self.shared.mailbox.is_accepting()
    }

    fn wait_ended(&self, timeout: Option<Duration>) -> bool {
        self.shared.wait_ended(timeout)
    }

    fn kill(&self) -> bool {
        self.shared.mailbox.close();
        self.shared.kill();
        true
    }

    fn exit_code(&self) -> Option<i32> {
        self.shared
            .ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flatten()
    }

    fn take_retire_failure(&self) -> Option<Vec<u8>> {
        self.shared
            .retire_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        self.shared.mailbox.close();
    }
}

/// How a process ended, as an exit code or minus a signal.
fn exit_code(status: std::process::ExitStatus) -> Option<i32> {
    status.code().or_else(|| status.signal().map(|s| -s))
}

/// `exit code -11, SIGSEGV`, for messages.
pub fn describe_exit_code(code: Option<i32>) -> String {
    let Some(code) = code else {
        return "exit code unknown".to_owned();
    };
    let name = match -code {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return format!("exit code {code}"),
    };
    format!("exit code {code}, {name}")
}

/// The parent's end of a worker's channel (non-blocking).
#[derive(Debug)]
struct Channel {
    sock: Arc<UnixStream>,
}

impl Channel {
    fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock: Arc::new(sock),
        })
    }

    fn wait(&self, write: bool) -> io::Result<()> {
        sys::poll(self.sock.as_fd(), write, -1).map(drop)
    }

    /// Writes one frame: `<Q len` + `data`.
    fn send_frame(&self, data: &[u8]) -> io::Result<()> {
        let header = (data.len() as u64).to_le_bytes();
        self.write_all(&mut [IoSlice::new(&header), IoSlice::new(data)])
    }

    /// Writes a job's frame; its out-of-band buffers go in fresh memfds (see the module docs).
    fn send_job(&self, job: &Job) -> io::Result<()> {
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
    fn receive(&self, spin: Duration) -> io::Result<Message> {
        let mut header = [0u8; 18];
        self.read_exact(&mut header, spin)?;
        let [kind, retire, rest @ ..] = header;
        let (data_len, error_len) = rest.split_at(8);
        let data_len = u64::from_le_bytes(data_len.try_into().expect("8 bytes"));
        let error_len = u64::from_le_bytes(error_len.try_into().expect("8 bytes"));
        let buffers = if kind == VALUE_WITH_BUFFERS {
            self.receive_buffers()?
        } else {
            Vec::new()
        };
        let data = self.read_vec(data_len)?;
        let error = self.read_vec(error_len)?;
        Ok((kind, retire, data, error, buffers))
    }

    /// The worker's memfds after a [`VALUE_WITH_BUFFERS`] header, mapped privately.
    fn receive_buffers(&self) -> io::Result<Vec<Buffer>> {
        let fds = loop {
            match sys::recv_fds(self.sock.as_fd(), MAX_BUFFERS)? {
                Some(fds) => break fds,
                None => self.wait(false)?,
            }
        };
        fds.iter()
            .map(|fd| sys::Mapping::private(fd.as_fd()).map(sys::Mapping::into_buffer))
            .collect()
    }
}

/// One message from a worker: `(kind, retire, data, retire_error, buffers)`.
type Message = (u8, u8, Vec<u8>, Vec<u8>, Vec<Buffer>);

/// A running worker process, as its thread sees it.
#[derive(Debug)]
struct Running {
    channel: Channel,
    /// Forkserver children: the pipe on which the server reports the exit code.
    status: Option<UnixStream>,
}

/// Starts the process (in the worker's own thread: see the module docs) and registers it.
fn launch(
    shared: &Shared,
    python: &PathBuf,
    forkserver: bool,
    setup: &[u8],
) -> io::Result<Running> {
    let (ours, theirs) = UnixStream::pair()?;
    // Everything that can fail before the process exists fails here: once it does, it must be
    // registered (and so killed and reaped) whatever happens next.
    let channel = Channel::new(ours)?;
    let (slot, status) = if forkserver {
        let (pid, status, server) = forkserver::fork(python, setup, &theirs)?;
        drop(theirs);
        (ChildSlot::Forked { pid, server }, Some(status))
    } else {
        let mut command = Command::new(python);
        command
            .arg("-c")
            .arg(BOOTSTRAP)
            .arg(theirs.as_raw_fd().to_string())
            .arg("worker")
            .stdin(Stdio::null());
        sys::prepare_command(&mut command, &[theirs.as_raw_fd()]);
        let child = command.spawn()?;
        drop(theirs);
        (ChildSlot::Spawned(child), None)
    };
    {
        let mut child = shared.child();
        let kill_requested = matches!(
            *child,
            ChildSlot::Starting {
                kill_requested: true
            }
        );
        *child = slot;
        if kill_requested {
            child.kill();
        }
    }
    Ok(Running { channel, status })
}

/// Waits for the process to end (killing it first if `kill`), reaps it, and returns its exit
/// code.
fn reap(shared: &Shared, running: Option<&mut Running>, kill: bool) -> Option<i32> {
    let pid = {
        let mut child = shared.child();
        if kill {
            child.kill();
        }
        match &*child {
            ChildSlot::Spawned(child) => Some(child.id()),
            ChildSlot::Forked { .. } => None,
            ChildSlot::Starting { .. } | ChildSlot::Reaped => {
                *child = ChildSlot::Reaped;
                return None;
            }
        }
    };
    let code = if let Some(pid) = pid {
        // Not under the lock: a kill must stay possible while we wait (sys invariant 2).
        let _ = sys::wait_dead(pid);
        let mut child = shared.child();
        match std::mem::replace(&mut *child, ChildSlot::Reaped) {
            ChildSlot::Spawned(mut child) => child.wait().ok().and_then(exit_code),
            _ => None,
        }
    } else {
        let mut code = [0u8; 8];
        let status = running.and_then(|r| r.status.as_mut());
        let code = match status.map(|s| s.read_exact(&mut code)) {
            Some(Ok(())) => i32::try_from(i64::from_le_bytes(code)).ok(),
            _ => None,
        };
        *shared.child() = ChildSlot::Reaped;
        code
    };
    code
}

/// The loop's source (spawned workers load it; forkserver children have it) and the worker's
/// setup, sent and acknowledged.
fn handshake(
    running: &Running,
    setup: &[u8],
    forkserver: bool,
) -> std::result::Result<(), Handshake> {
    if !forkserver {
        running
            .channel
            .send_frame(LOOP_SOURCE.as_bytes())
            .map_err(|_| Handshake::Died)?;
    }
    running
        .channel
        .send_frame(setup)
        .map_err(|_| Handshake::Died)?;
    match running.channel.receive(Duration::ZERO) {
        Ok((SETUP_OK, ..)) => Ok(()),
        Ok((SETUP_FAILED, _, reason, records, _)) => Err(Handshake::Failed(Broken {
            reason: String::from_utf8_lossy(&reason).into_owned(),
            exception: Some(records),
            exit_code: None,
        })),
        Ok(_) | Err(_) => Err(Handshake::Died),
    }
}

enum Handshake {
    /// The setup raised (e.g. `init`): the worker reported it and exits.
    Failed(Broken),
    /// The process died, or the channel broke or carried garbage.
    Died,
}

/// Why the channel broke, with the exit code.
fn died(shared: &Shared, during: &str, code: Option<i32>) -> Broken {
    let reason = if shared.killed.load(Ordering::Acquire) {
        format!(
            "the job was interrupted: its worker process was killed ({})",
            describe_exit_code(code)
        )
    } else {
        format!(
            "the worker process died unexpectedly {during} ({})",
            describe_exit_code(code)
        )
    };
    Broken {
        reason,
        exception: None,
        exit_code: code,
    }
}

/// A job's outcome message: the outcome, and whether the retire verdict follows.
fn parse_outcome((kind, retire, data, _, buffers): Message) -> Option<(Finished, bool)> {
    let outcome = match kind {
        VALUE => Outcome::Value(data),
        VALUE_WITH_BUFFERS => Outcome::ValueWithBuffers(data, buffers),
        RAISED => Outcome::Raised(data),
        LOAD_ERROR => Outcome::LoadError(data),
        _ => return None,
    };
    let pending = match retire {
        KEEP => false,
        RETIRE_PENDING => true,
        _ => return None,
    };
    let retire = Retire::Keep;
    Some((Finished { outcome, retire }, pending))
}

/// What the worker's own work after a job decided.
enum AfterJob {
    Keep,
    End,
    /// The process died or sent garbage (nobody's job broke: its outcome was delivered).
    Died,
}

/// Reads the retire verdict that follows a `RETIRE_PENDING` outcome.
fn receive_retire_verdict(shared: &Shared, channel: &Channel) -> AfterJob {
    match channel.receive(Duration::ZERO) {
        Ok((AFTER_JOB, KEEP, ..)) => AfterJob::Keep,
        Ok((AFTER_JOB, RETIRE, ..)) => AfterJob::End,
        Ok((AFTER_JOB, RETIRE_FAILED, _, records, _)) => {
            *shared
                .retire_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(records);
            AfterJob::End
        }
        Ok(_) | Err(_) => AfterJob::Died,
    }
}

/// The body of a worker's thread: start the process, serve jobs until closed, idle, retired or
/// broken, then end and reap it.
fn worker_thread(shared: &Shared, config: &WorkerConfig, python: &PathBuf, forkserver: bool) {
    shared.mailbox.register_worker_thread();
    let mut running = None;
    let mut jobs: u64 = 0;
    // `Some(exit code)` once the process is reaped.
    let mut reaped: Option<Option<i32>> = None;
    let startup = match launch(shared, python, forkserver, &config.setup) {
        Ok(r) => {
            let outcome = handshake(&r, &config.setup, forkserver);
            running = Some(r);
            match outcome {
                Ok(()) => Ok(()),
                Err(Handshake::Failed(broken)) => Err(broken),
                Err(Handshake::Died) => {
                    let code = reap(shared, running.as_mut(), true);
                    reaped = Some(code);
                    Err(died(shared, "while starting", code))
                }
            }
        }
        Err(e) => {
            // Kills and reaps a process that was started before the failure.
            reaped = Some(reap(shared, None, true));
            Err(Broken::new(format!(
                "could not start the worker process: {e}"
            )))
        }
    };
    if let (Ok(()), Some(r)) = (&startup, &running) {
        *shared
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(r.channel.sock.clone());
    }
    loop {
        let (job, completion) = match shared.mailbox.next(config.idle_timeout) {
            Next::Run(job, completion) => (job, completion),
            Next::End => break,
        };
        let (Ok(()), Some(r)) = (&startup, &mut running) else {
            let broken = startup
                .clone()
                .err()
                .unwrap_or_else(|| Broken::new("no worker process"));
            shared.mailbox.job_done(true);
            completion.complete(Finished {
                outcome: Outcome::Broken(broken),
                retire: Retire::Retire,
            });
            break;
        };
        let sent = r.channel.send_job(&job);
        // The worker has its own copy of everything now: the caller's buffers are free.
        drop(job);
        jobs += 1;
        let received = match sent.and_then(|()| r.channel.receive(SPIN_FOR_OUTCOME)) {
            Ok(message) => parse_outcome(message),
            Err(_) => None,
        };
        // Decided before anything else: an interrupt claimed first means the caller kills (or
        // has killed) the process, so it serves nobody again, whatever it sent.
        let interrupted = completion.settle() == Verdict::Interrupted;
        let Some((mut finished, pending)) = received.filter(|_| !interrupted) else {
            let code = reap(shared, Some(r), true);
            reaped = Some(code);
            shared.mailbox.job_done(true);
            completion.complete(Finished {
                outcome: Outcome::Broken(died(shared, "during the job", code)),
                retire: Retire::Retire,
            });
            break;
        };
        let tasks_done = config.max_tasks.is_some_and(|max| jobs >= max);
        let ending = tasks_done || shared.killed.load(Ordering::Acquire);
        if ending {
            finished.retire = Retire::Retire;
        }
        if !pending && config.max_memory.is_none() {
            // Idle (or closed) before the outcome is visible, so a caller who sees it can reuse
            // us.
            let go_on = shared.mailbox.job_done(ending);
            completion.complete(finished);
            if !go_on {
                break;
            }
            continue;
        }
        // The caller gets the outcome now; the retire hook and the memory check come after.
        if ending {
            shared.mailbox.job_done(true);
        } else {
            shared.mailbox.retiring();
        }
        completion.complete(finished);
        let after = if pending {
            receive_retire_verdict(shared, &r.channel)
        } else {
            AfterJob::Keep
        };
        let after = match (after, config.max_memory) {
            (AfterJob::Keep, Some(max)) if shared.rss().is_some_and(|rss| rss > max) => {
                AfterJob::End
            }
            (after, _) => after,
        };
        match after {
            AfterJob::Died => {
                reaped = Some(reap(shared, Some(r), true));
                shared.mailbox.job_done(true);
                break;
            }
            AfterJob::End => {
                shared.mailbox.job_done(true);
                break;
            }
            AfterJob::Keep if ending || !shared.mailbox.job_done(false) => break,
            AfterJob::Keep => {}
        }
    }
    *shared
        .channel
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    let exit_code = match reaped {
        Some(code) => code,
        None => {
            // End of file tells the worker to exit; the grace period is the host's
            // (`Worker::kill`).
            if let Some(r) = &running {
                let _ = r.channel.sock.shutdown(std::net::Shutdown::Both);
            }
            let killed = shared.killed.load(Ordering::Acquire);
            reap(shared, running.as_mut(), killed)
        }
    };
    drop(running);
    shared.mark_ended(exit_code);
}
