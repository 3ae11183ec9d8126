//! Workers that are processes: [`Spawn`] starts a fresh Python per worker, [`Forkserver`] forks
//! each worker from one preloaded server process per host.
//!
//! Both run the same Python loop as subinterpreter workers (`worker_loop.py`, plus
//! `process_loop.py` for the channel), so jobs and outcomes are the same bytes and the same wire
//! protocol (`crate::protocol`). A worker process imports neither trio nor interpool's extension:
//! it starts as `python -c BOOTSTRAP FD MODE`, reads the loop's source as the first frame on its
//! channel and registers it as `sys.modules["_interpool_worker"]` (which `interpool/__init__.py`
//! checks to stay import-safe).
//!
//! The parts, one job each:
//! - `channel`: the parent's end of the worker's socket (frames, and peer memory or shared
//!   memory for out-of-band buffers);
//! - `child`: starting the process, killing and reaping it;
//! - `thread`: the parent-side thread that owns one worker process and serves its jobs through
//!   the [`Mailbox`]'s serve loop;
//! - `forkserver`: the one server per host that forks preloaded workers;
//! - `sys`: the system calls (poll, memfds, `SCM_RIGHTS`, kill and wait), behind safe functions.
//!
//! This module holds the worker types and the handle ([`ProcessWorker`]) and the state its
//! handle and thread share.
//!
//! **Ending.** Closing drops the parent's end of the socket: the worker reads end of file and exits
//! 0. [`Worker::interrupt`] (once it has claimed the job: a completed job is never killed),
//! [`Worker::abandon`] and [`Worker::kill`] SIGKILL it; a job it was running completes as
//! [`Outcome::Broken`](crate::Outcome::Broken) with the exit code, and a worker whose job was
//! claimed never serves another, even if its outcome arrived before the signal. A worker that dies
//! on its own (segfault, `os._exit`, an external kill) breaks its job the same way. If the parent
//! dies, its workers read end of file, and on Linux are killed by `PR_SET_PDEATHSIG` even mid-job.

use std::{
    os::{fd::AsFd, unix::net::UnixStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError, RwLock,
    },
    time::Duration,
};

use crate::{
    mailbox::Mailbox, Availability, Capabilities, Completion, Error, Job, Rejected, Result, Worker,
    WorkerConfig, WorkerType,
};

mod channel;
mod child;
mod forkserver;
mod sys;
mod thread;

pub use child::describe_exit_code;
pub use forkserver::{forkserver_running, set_forkserver_preload};

use child::ChildSlot;

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
        .spawn(move || thread::worker_thread(&thread_shared, &config, &python, forkserver))
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

/// State shared by a worker's handle and its thread.
#[derive(Debug)]
struct Shared {
    pub(super) id: u64,
    pub(super) mailbox: Mailbox,
    pub(super) child: Mutex<ChildSlot>,
    /// The parent's end of the channel, once the worker serves jobs (for the idle check).
    pub(super) channel: Mutex<Option<Arc<UnixStream>>>,
    /// Set by `interrupt`/`abandon`/`kill`: the worker ends, and a broken job says why.
    pub(super) killed: AtomicBool,
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
        }
    }

    /// The process's resident set size in bytes, where the system tells (Linux).
    pub(super) fn rss(&self) -> Option<u64> {
        let pid = self.child().pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub(super) fn child(&self) -> MutexGuard<'_, ChildSlot> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.child().kill();
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
            sys::poll(channel.as_fd(), false, Some(Duration::ZERO)),
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
        self.shared.mailbox.wait_ended(timeout)
    }

    fn kill(&self) -> bool {
        self.shared.mailbox.close();
        self.shared.kill();
        true
    }

    fn exit_code(&self) -> Option<i32> {
        self.shared.mailbox.exit_code()
    }

    fn take_retire_failure(&self) -> Option<Vec<u8>> {
        self.shared.mailbox.take_retire_failure()
    }
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        self.shared.mailbox.close();
    }
}
