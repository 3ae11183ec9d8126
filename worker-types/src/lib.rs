//! The worker types of interpool, behind one trait.
//!
//! A *worker type* ([`WorkerType`]) knows whether it can run here ([`Availability`]), what it can
//! promise ([`Capabilities`]) and how to start a [`Worker`]. A worker runs one [`Job`] at a time:
//! bytes in, a [`Finished`] outcome out, delivered through a [`Completion`] that the caller can spin
//! on, block on, or wait for through a file descriptor from an event loop.
//!
//! Jobs and results are **bytes** made and read inside interpreters (pickle payloads); no Python
//! object ever crosses between interpreters. This crate knows nothing of the scheduler, the worker
//! cache or any Python front end: adding a worker type is one new module plus one entry in
//! [`worker_types`].
//!
//! Implementations:
//! - [`subinterpreter`]: CPython subinterpreters with their own GIL (PEP 684), one OS thread each,
//!   driven through raw `pyo3-ffi`. It needs CPython ≥ 3.13.
//! - [`process`]: worker processes running the same Python loop, either spawned afresh
//!   ([`process::Spawn`]) or forked from a preloaded server ([`process::Forkserver`]). They can be
//!   killed and survive crashes. Unix only.
//!
//! # Where the unsafe code is
//!
//! All of interpool's CPython FFI is in this crate, behind safe functions, so that the crate
//! above it (the worker cache, the Rust `Pool`, the extension module) forbids unsafe code. That
//! keeps one vocabulary for the C API's contracts (which thread state is attached, which
//! interpreter owns an object, who keeps memory alive) and one place to review them. Unsafe code
//! is denied here too, except in these modules, each of which opens with the rules its `unsafe`
//! blocks keep (every block names the rule it relies on):
//! - `attached`: the `Attached` guard, proof that a thread state is attached; dropping it
//!   detaches. Every C-API call goes through one.
//! - `subinterpreter::ffi`: every C-API call of subinterpreter workers (creating, running,
//!   interrupting and ending interpreters).
//! - [`embed`]: initializing CPython for a Rust host, asking it where its installation is, and
//!   which version is linked in (`Py_GetVersion`, which subinterpreters' availability reads).
//! - `python_buffers` (feature `pyo3`): out-of-band buffers to and from objects of the main
//!   interpreter, for the extension module: pinning the caller's `memoryview`s, and exporting
//!   host memory through the buffer protocol (PyO3's `__getbuffer__` is an `unsafe fn`).
//! - `buffer`: [`Buffer`], raw memory plus an owner that keeps it valid.
//! - `process::sys`: every `libc` call of process workers.
//! - [`large_copy`]: the one copy routine for payload buffers (populating fresh pages, a helper
//!   thread for the second half).

#![deny(unsafe_code)]

use std::{fmt, sync::Arc, time::Duration};

mod attached;
mod buffer;
mod completion;
mod cores;
pub mod embed;
pub mod large_copy;
mod mailbox;
pub mod prewake;
pub mod process;
pub mod protocol;
#[cfg(feature = "pyo3")]
pub mod python_buffers;
pub mod subinterpreter;

pub use buffer::{lent_blocks, Buffer, Loans, Owner};
pub use completion::{Completion, Verdict};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the worker layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The worker type cannot run on this interpreter or platform.
    #[error("worker type {name:?} is unavailable: {reason}")]
    Unavailable {
        /// The worker type's name.
        name: &'static str,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// The operating system refused to start a worker (no thread, no process).
    #[error("could not start a {name} worker: {reason}")]
    Start {
        /// The worker type's name.
        name: &'static str,
        /// What failed.
        reason: String,
    },
}

/// One unit of work: a pickled `(callable, args)` tuple, made in the caller's interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The pickle payload.
    pub payload: Vec<u8>,
    /// The payload's out-of-band buffers (pickle protocol 5), in the order its `NEXT_BUFFER`
    /// opcodes take them; usually none.
    pub buffers: Vec<Buffer>,
}

impl Job {
    /// A job without out-of-band buffers.
    pub fn new(payload: Vec<u8>) -> Self {
        Self {
            payload,
            buffers: Vec::new(),
        }
    }
}

/// A job handed back by a worker that will not run it (it closed itself, e.g. on idle timeout).
/// The job never started: the caller may give it to another worker.
#[derive(Debug)]
pub struct Rejected(pub Job);

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The callable returned; the pickled value.
    Value(Vec<u8>),
    /// The callable returned; the pickled value and its out-of-band buffers (pickle protocol 5),
    /// for values holding large buffers.
    ValueWithBuffers(Vec<u8>, Vec<Buffer>),
    /// The callable raised (or its value could not be pickled); the pickled exception records.
    Raised(Vec<u8>),
    /// The job could not even be loaded in the worker (unpickling the callable or its arguments
    /// failed, e.g. a module that refuses to import there). The callable never started, so the job
    /// may be retried on another worker type. Pickled exception records.
    LoadError(Vec<u8>),
    /// The worker failed around the job: it could not start, its `init` raised, it was interrupted
    /// or it died. The worker ends, except a subinterpreter that survived an interrupt (its
    /// [`Finished::retire`] says [`Retire::Keep`]).
    Broken(Broken),
}

/// Why a worker broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// When it broke, for code that acts on it (the reason is for people).
    pub stage: Stage,
    /// A one-line description, lowercase, e.g. `the worker's init raised an exception`.
    pub reason: String,
    /// Pickled exception records of the underlying Python exception, if there is one.
    pub exception: Option<Vec<u8>>,
    /// How the worker's process ended, if it is a process that did: its exit code, or minus the
    /// signal that killed it (`-11` for a segfault, `-9` for SIGKILL), as `multiprocessing` says.
    pub exit_code: Option<i32>,
}

impl Broken {
    /// A `Broken` with a stage and a reason only.
    pub fn new(stage: Stage, reason: impl Into<String>) -> Self {
        Self {
            stage,
            reason: reason.into(),
            exception: None,
            exit_code: None,
        }
    }
}

/// When a worker broke. Its code ([`Stage::code`]) is how the Python front end receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// The worker could not be started: no interpreter, no process.
    Start,
    /// Preparing the worker failed before `init` ran: unpickling its configuration, `init` or
    /// `retire`.
    Setup,
    /// The worker's `init` raised.
    Init,
    /// The worker loop itself failed around a job (passing it in, or a malformed outcome).
    Job,
    /// The job was interrupted (cancelled).
    Interrupted,
    /// The worker's process died (a crash, `os._exit`, an external kill).
    Died,
}

impl Stage {
    /// Every stage, in the order of their codes.
    pub const ALL: [Stage; 6] = [
        Stage::Start,
        Stage::Setup,
        Stage::Init,
        Stage::Job,
        Stage::Interrupted,
        Stage::Died,
    ];

    /// The stage's number, as the Python front end receives it (`interpool._outcome`).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The stage whose [`Stage::code`] this is, if any.
    pub fn from_code(code: u8) -> Option<Stage> {
        Stage::ALL.get(usize::from(code)).copied()
    }

    /// The stage's name in capitals, e.g. `INIT`, as the Python front end names its code.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Start => "START",
            Stage::Setup => "SETUP",
            Stage::Init => "INIT",
            Stage::Job => "JOB",
            Stage::Interrupted => "INTERRUPTED",
            Stage::Died => "DIED",
        }
    }
}

/// The worker's fate as known when a job's outcome is published.
///
/// The `retire` hook and the memory limit run *after* the outcome is published (the caller does
/// not wait for them): a worker that ends because of them said `Keep` here and closes itself
/// afterwards; one whose hook raised keeps the exception for [`Worker::take_retire_failure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retire {
    /// The worker stays (unless its own work after the job ends it).
    Keep,
    /// The worker ends after this job.
    Retire,
}

/// A job's outcome together with the worker's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// What became of the job.
    pub outcome: Outcome,
    /// Whether the worker ends after this job.
    pub retire: Retire,
}

impl Finished {
    /// Whether the worker that produced this is ending (so must not be reused).
    pub fn worker_ends(&self) -> bool {
        self.retire != Retire::Keep
    }
}

/// Whether a worker type can run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It can.
    Available,
    /// It cannot, for this reason (e.g. "subinterpreters with their own GIL need CPython >= 3.13;
    /// this is 3.11.7").
    Unavailable(String),
}

/// What a worker type can promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A running job can be stopped whatever it is doing (a process can be SIGKILLed; a
    /// subinterpreter stuck in C code cannot).
    pub hard_kill: bool,
    /// A crash in a job (segfault, abort) leaves the host alive.
    pub crash_isolation: bool,
}

/// Everything a new worker needs before its first job.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Pickled `(sys_path, argv, main_kind, main_ref, init, retire[, path_prepend[, authkey]])`, by the
    /// front end: see the worker loop's `setup`. Opaque to Rust.
    pub setup: Vec<u8>,
    /// How long an idle worker waits for a job before it ends itself; `None`: forever.
    pub idle_timeout: Option<Duration>,
    /// The worker ends after this many jobs (`max_tasks_per_child`); `None`: never.
    pub max_tasks: Option<u64>,
    /// The worker ends after a job that leaves its memory above this many bytes (a process: its
    /// RSS; a subinterpreter: the arenas its own object allocator holds); `None`: no limit.
    pub max_memory: Option<u64>,
}

impl fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("setup", &format_args!("<{} bytes>", self.setup.len()))
            .field("idle_timeout", &self.idle_timeout)
            .field("max_tasks", &self.max_tasks)
            .field("max_memory", &self.max_memory)
            .finish()
    }
}

/// A kind of worker: subinterpreter, spawned process, forkserver child.
pub trait WorkerType: Send + Sync + fmt::Debug {
    /// The stable lowercase name, as in `WorkerType.SUBINTERPRETER == "subinterpreter"`.
    fn name(&self) -> &'static str;
    /// Whether workers of this type can run in this process.
    fn availability(&self) -> Availability;
    /// What this type can promise.
    fn capabilities(&self) -> Capabilities;

    /// The dispatch latency AUTO expects of this type (handing a trivial job to a warm worker and
    /// getting its outcome back) until calls have measured it: where it ranks among the
    /// available types before the first measurement (see the root crate's `scheduler`).
    fn latency_prior(&self) -> Duration;
    /// Starts a worker. It returns as soon as the worker exists; the worker finishes starting in
    /// the background and runs the first submitted job once it is ready.
    fn start(&self, config: Arc<WorkerConfig>) -> Result<Box<dyn Worker>>;
}

/// One worker: runs one job at a time.
///
/// Dropping a `Worker` closes it: it ends once its current job (if any) returns.
pub trait Worker: Send + Sync + fmt::Debug {
    /// A process-unique id, for statistics and messages.
    fn id(&self) -> u64;
    /// Hands the worker a job. The worker must be idle: a worker that has closed itself (idle
    /// timeout, retire) or is busy returns the job untouched.
    fn submit(&self, job: Job) -> std::result::Result<Arc<Completion>, Rejected>;
    /// Asks the running job to stop. Asynchronous: it returns at once and the job's completion
    /// reports what happened. A job that has completed is not interrupted (the completion's
    /// verdict decides: [`Completion::claim_interrupt`]), and its worker is reused as if nothing
    /// happened. Types without `hard_kill` may fail to stop code blocked in C.
    fn interrupt(&self);
    /// Gives up on the worker: it is never reused and ends by itself as soon as it can.
    fn abandon(&self);
    /// Accepts no more jobs; ends once idle.
    fn close(&self);
    /// Whether the worker still accepts jobs (false once it has closed itself or been closed).
    fn is_accepting(&self) -> bool;
    /// Waits until the worker has fully ended, up to `timeout` (`None`: forever). True if it has.
    fn wait_ended(&self, timeout: Option<Duration>) -> bool;
    /// Ends the worker now, whatever it is doing, for shutdown past its grace period. Returns
    /// whether it could (types without `hard_kill` cannot, and do nothing).
    fn kill(&self) -> bool {
        false
    }
    /// How the worker's process ended, once it has: its exit code, or minus the signal that
    /// killed it. `None` while it runs, or for workers that are not processes.
    fn exit_code(&self) -> Option<i32> {
        None
    }
    /// The pickled exception records of a `retire` hook that raised (the worker then ended),
    /// once; `None` if it did not.
    fn take_retire_failure(&self) -> Option<Vec<u8>> {
        None
    }
}

/// Every worker type this build knows, in the default order of preference.
pub fn worker_types() -> Vec<Arc<dyn WorkerType>> {
    vec![
        Arc::new(subinterpreter::Subinterpreters),
        Arc::new(process::Forkserver::default()),
        Arc::new(process::Spawn::default()),
    ]
}

/// Looks a worker type up by its name.
pub fn worker_type(name: &str) -> Option<Arc<dyn WorkerType>> {
    worker_types().into_iter().find(|t| t.name() == name)
}
