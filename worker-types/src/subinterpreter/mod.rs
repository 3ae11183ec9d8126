//! Workers that are CPython subinterpreters with their own GIL (PEP 684).
//!
//! Each worker is one OS thread that owns one isolated interpreter for its whole life: it creates
//! it, runs every job in it, and ends it (see [`ffi`] for the C-API rules this follows). The
//! thread serves through the mailbox's serve loop (`crate::mailbox`), which every worker kind
//! shares; `ffi` says only how a job runs in the interpreter. Jobs and
//! outcomes cross as bytes; the loop that unpickles a job, calls it and pickles the outcome is plain
//! Python (`worker_loop.py`) that runs inside the interpreter and never imports interpool itself.
//!
//! What this type cannot do, by nature: stop code blocked in C (an interrupt is an exception
//! injected at the next bytecode boundary; a worker that does not stop is *abandoned*: never reused,
//! it ends itself when the C call returns), and survive a crash (a segfault takes the process down).
//! A worker whose job was interrupted in Python code is kept: ending an interpreter is what costs
//! memory on 3.13 (see `ffi`, rule 9).
//!
//! Version notes: on 3.13 (3.13.0 to at least 3.13.18) each interpreter ended leaks about 1.7 MiB,
//! fixed in 3.14, which is one more reason a worker keeps its interpreter for as long as it can; a
//! free-threaded build refuses this type (`availability` below).
//!
//! Every live worker is registered process-wide, so a host can end them all before it finalizes
//! ([`close_all`], [`wait_all_ended`]): a subinterpreter still running at `Py_FinalizeEx` aborts
//! the process.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, PoisonError, Weak,
    },
    time::{Duration, Instant},
};

use crate::{
    mailbox::Mailbox, Availability, Capabilities, Completion, Error, Job, Rejected, Result, Worker,
    WorkerConfig, WorkerType,
};

#[cfg(Py_3_13)]
mod ffi;

/// The Python source of the loop every worker interpreter runs, the wire protocol's numbers first.
#[cfg(Py_3_13)]
const WORKER_LOOP_SOURCE: &str = concat!(
    crate::protocol::python_constants!(),
    include_str!("worker_loop.py")
);

/// What an extension module's import error says when it refuses to load in an isolated
/// subinterpreter: CPython's own check, its single-phase-init check, and PyO3's two. A load error
/// whose exception chain mentions one of these can run in a process worker instead. The first one
/// reads "module NAME does not support loading in subinterpreters".
pub const REFUSALS: [&str; 4] = [
    "does not support loading in subinterpreters",
    "cannot load module more than once per process",
    "PyO3 modules do not yet support subinterpreters",
    "Interpreter change detected",
];

/// The [`WorkerType`] of OWN_GIL subinterpreters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subinterpreters;

/// The running CPython's version as `(major, minor, "3.13.0")`.
fn python_version() -> (u32, u32, String) {
    let full = crate::embed::version();
    let number = full.split_whitespace().next().unwrap_or("").to_owned();
    let mut parts = number.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), number)
}

impl WorkerType for Subinterpreters {
    fn name(&self) -> &'static str {
        "subinterpreter"
    }

    fn availability(&self) -> Availability {
        let (major, minor, version) = python_version();
        if (major, minor) < (3, 13) || cfg!(not(Py_3_13)) {
            return Availability::Unavailable(format!(
                "subinterpreters with their own GIL need CPython >= 3.13; this is {version}"
            ));
        }
        // A free-threaded build has no GIL to give each interpreter, and this worker's protocol
        // (tstate handoffs, interrupts, teardown) is built and tested on GIL builds only, so it
        // refuses instead of assuming (docs/installation.md, "Free-threaded builds").
        if cfg!(Py_GIL_DISABLED) {
            return Availability::Unavailable(format!(
                "this is a free-threaded build of CPython {version} (Py_GIL_DISABLED), where \
                 interpool's subinterpreter workers are not supported; threads already run Python \
                 in parallel there, and the process worker types are available"
            ));
        }
        Availability::Available
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_kill: false,
            crash_isolation: false,
        }
    }

    fn latency_prior(&self) -> Duration {
        Duration::from_micros(15)
    }

    fn start(&self, config: Arc<WorkerConfig>) -> Result<Box<dyn Worker>> {
        if let Availability::Unavailable(reason) = self.availability() {
            return Err(Error::Unavailable {
                name: self.name(),
                reason,
            });
        }
        start(config)
    }
}

#[cfg(Py_3_13)]
fn start(config: Arc<WorkerConfig>) -> Result<Box<dyn Worker>> {
    ffi::prepare_main_interpreter().map_err(|reason| Error::Unavailable {
        name: "subinterpreter",
        reason,
    })?;
    let shared = Arc::new(Shared::new());
    registry().push(Arc::downgrade(&shared));
    count_started();
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("interpool-subinterpreter-{}", shared.id))
        .spawn(move || ffi::worker_thread(thread_shared, config))
        .map_err(|e| {
            shared.mark_ended();
            Error::Start {
                name: "subinterpreter",
                reason: e.to_string(),
            }
        })?;
    Ok(Box::new(SubinterpreterWorker { shared }))
}

#[cfg(not(Py_3_13))]
fn start(_config: Arc<WorkerConfig>) -> Result<Box<dyn Worker>> {
    unreachable!("availability() is Unavailable on this build")
}

/// State shared by a worker's handle, its thread, and interrupters.
#[derive(Debug)]
pub(crate) struct Shared {
    id: u64,
    pub(crate) mailbox: Mailbox,
    /// Sequence number of the last job handed over (0: none yet).
    submitted_seq: AtomicU64,
    /// Set when nobody will read this worker's outcomes again.
    pub(crate) abandoned: AtomicBool,
    /// The interpreter while it exists, for interrupters (see `ffi::interrupt`).
    #[cfg(Py_3_13)]
    pub(crate) interpreter: Mutex<Option<ffi::InterpreterHandle>>,
}

// Made only by `start` and ended only by the worker thread: neither exists without `Py_3_13`.
#[cfg(Py_3_13)]
impl Shared {
    fn new() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            mailbox: Mailbox::new(),
            submitted_seq: AtomicU64::new(0),
            abandoned: AtomicBool::new(false),
            #[cfg(Py_3_13)]
            interpreter: Mutex::new(None),
        }
    }

    /// Called once by the worker thread as its very last act (or if it never started).
    pub(crate) fn mark_ended(&self) {
        // Uncounted first: whoever sees this worker ended also sees it gone from the count.
        {
            let (lock, changed) = live_count();
            let mut live = lock.lock().unwrap_or_else(PoisonError::into_inner);
            *live = live.saturating_sub(1);
            changed.notify_all();
        }
        self.mailbox.mark_ended(None);
    }
}

impl Shared {
    /// Asks the job submitted last to stop, unless it has completed (then nothing happens).
    fn interrupt(self: &Arc<Self>) {
        // The job that holds the worker cannot be followed by another until it completes, and
        // then the claim fails: `seq` is the claimed job's.
        let seq = self.submitted_seq.load(Ordering::Acquire);
        if seq == 0 || !self.mailbox.claim_interrupt() {
            return;
        }
        #[cfg(Py_3_13)]
        {
            // Interrupting waits for the target's GIL (up to a switch interval, ~5 ms, or for
            // ever if C code holds it): never on the caller's thread.
            let shared = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("interpool-interrupt-{}", self.id))
                .spawn(move || ffi::interrupt(&shared, seq));
            if spawned.is_err() {
                // Without a thread we cannot interrupt; the worker ends after the job.
                self.abandoned.store(true, Ordering::Release);
            }
        }
    }
}

/// A handle to one subinterpreter worker. Dropping it closes the worker.
#[derive(Debug)]
pub struct SubinterpreterWorker {
    shared: Arc<Shared>,
}

impl Worker for SubinterpreterWorker {
    fn id(&self) -> u64 {
        self.shared.id
    }

    fn submit(&self, job: Job) -> std::result::Result<Arc<Completion>, Rejected> {
        // The seq is bumped first so that an `interrupt` right after `submit` targets this job.
        let seq = self.shared.submitted_seq.fetch_add(1, Ordering::AcqRel) + 1;
        match self.shared.mailbox.submit(job) {
            Ok(completion) => Ok(completion),
            Err(rejected) => {
                let _ = self.shared.submitted_seq.compare_exchange(
                    seq,
                    seq - 1,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                Err(rejected)
            }
        }
    }

    fn interrupt(&self) {
        self.shared.interrupt();
    }

    fn abandon(&self) {
        self.shared.abandoned.store(true, Ordering::Release);
        self.shared.mailbox.close();
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

    fn take_retire_failure(&self) -> Option<Vec<u8>> {
        self.shared.mailbox.take_retire_failure()
    }
}

impl Drop for SubinterpreterWorker {
    fn drop(&mut self) {
        self.shared.mailbox.close();
    }
}

fn registry() -> std::sync::MutexGuard<'static, Vec<Weak<Shared>>> {
    static REGISTRY: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());
    let mut guard = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    guard.retain(|w| w.strong_count() > 0);
    guard
}

/// Number of worker threads alive, with a condvar signalled whenever one ends.
fn live_count() -> &'static (Mutex<usize>, Condvar) {
    static LIVE: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());
    &LIVE
}

#[cfg(Py_3_13)]
fn count_started() {
    let (lock, _) = live_count();
    *lock.lock().unwrap_or_else(PoisonError::into_inner) += 1;
}

/// How many subinterpreter worker threads are alive in this process (abandoned ones included).
pub fn live_workers() -> usize {
    *live_count()
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Closes every subinterpreter worker of the process: idle ones end now, busy ones after their
/// job. For hosts about to finalize.
pub fn close_all() {
    for shared in registry().iter().filter_map(Weak::upgrade) {
        shared.mailbox.close();
    }
}

/// Interrupts the running job of every subinterpreter worker of the process.
pub fn interrupt_all() {
    for shared in registry().iter().filter_map(Weak::upgrade) {
        shared.interrupt();
    }
}

/// Waits until no subinterpreter worker thread is alive, up to `timeout` (`None`: forever).
/// Returns how many are still alive.
pub fn wait_all_ended(timeout: Option<Duration>) -> usize {
    let deadline = timeout.map(|t| Instant::now() + t);
    let (lock, changed) = live_count();
    let mut live = lock.lock().unwrap_or_else(PoisonError::into_inner);
    while *live > 0 {
        match deadline {
            None => live = changed.wait(live).unwrap_or_else(PoisonError::into_inner),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    break;
                }
                live = changed
                    .wait_timeout(live, d - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
    *live
}

#[cfg(test)]
mod tests {
    use super::REFUSALS;

    #[test]
    fn the_worker_loop_knows_every_refusal() {
        // The worker loop has its own copy, to tell a refusal while a job runs from its errors.
        for marker in REFUSALS {
            assert!(
                include_str!("worker_loop.py").contains(&format!("    {marker:?},\n")),
                "worker_loop.py's REFUSALS lacks {marker:?}"
            );
        }
    }
}
