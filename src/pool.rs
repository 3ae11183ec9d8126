//! The Rust embedding API: [`Pool`], its [`PoolBuilder`], and the [`Call`] future.
//!
//! A pool owns a [`WorkerCache`] of one worker type, a limiter (`max_workers` permits), and the
//! setup payload every new worker gets. A call pickles its arguments in Rust, takes a permit,
//! submits the job to the hottest idle worker, spins briefly for the outcome and otherwise parks
//! on the completion's waker; the futures need no particular async runtime.
//!
//! Every pool runs on an [`Auto`] (`src/auto.rs`, the same AUTO as the Python front end's): a
//! pool of one kind is AUTO over that one type, a [`WorkerKind::Auto`] pool over every available
//! type, ranked by measured latency, with pins ([`PoolBuilder::pin`]) and the fallback of jobs
//! that fail to load in a subinterpreter.

use std::{
    fmt,
    future::Future,
    hash::{Hash, Hasher},
    marker::PhantomData,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Condvar, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use interpool_worker_types::{
    embed,
    prewake::{self, Durations, Plan, Spinning},
    process, Availability, Buffer, Finished, Job, Outcome, WorkerType,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Semaphore;

use crate::{
    auto::{Auto, CallableKey, Failure, TypeStatistics},
    cache::{Lease, Recycling, Statistics, WorkerCache},
    wire::{self, Target},
    Error, Result,
};

/// How long a call spins for its outcome before it parks, by default.
const DEFAULT_SPIN: Duration = Duration::from_micros(20);
/// How long an idle worker waits for a job before it ends, by default (as in the Python API).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Which kind of worker a [`Pool`] runs its calls on.
///
/// The process kinds need a Python executable: the one given with
/// [`PoolBuilder::python_executable`], else the process-wide one set with
/// [`interpool_worker_types::process::set_python_executable`], else `python{VERSION}` (then
/// `python3`) in the embedded interpreter's `sysconfig` `BINDIR`. [`PoolBuilder::build`] answers
/// [`Error::Unavailable`], with the reason, for a kind that cannot run here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WorkerKind {
    /// CPython subinterpreters with their own GIL (PEP 684), one OS thread each, in this process.
    /// Needs CPython >= 3.13. Fast (µs round trips), but a crash takes the host down, code stuck
    /// in C cannot be interrupted, and extension modules without per-interpreter-GIL support
    /// (numpy, for one) refuse to import.
    Subinterpreter,
    /// Child processes forked from one server process per host (started by the first worker;
    /// then a new worker is a fork, ~10 ms). Unix only. A crash kills only that
    /// worker ([`Error::Broken`] with the exit code), a cancelled call's process is SIGKILLed, and
    /// every extension module loads.
    Forkserver,
    /// A freshly started Python process per worker (~30–70 ms plus imports). Unix only; otherwise
    /// as [`WorkerKind::Forkserver`].
    Spawn,
    /// Every available kind of `Subinterpreter`, `Forkserver`, `Spawn`, ranked per call: by
    /// capability, then by their measured dispatch latency (before any measurement, in that
    /// order), with pins ([`PoolBuilder::pin`]) and a per-call fallback: on subinterpreters, a
    /// call whose job fails to load ([`Error::Load`]) runs once more on the fastest process kind
    /// (`Forkserver`, then `Spawn`, until measured), whose outcome is the call's. A load error
    /// is also a module refusing subinterpreters while the function runs (an `import numpy` in
    /// its body: the function may have done things before it, and does them again on the
    /// process). When a module refused (numpy, most PyO3 and Cython packages; an `ImportError`
    /// in the chain says "does not support loading in subinterpreters", "cannot load module more
    /// than once per process", "PyO3 modules do not yet support subinterpreters" or "Interpreter
    /// change detected"), or when the process loaded the job, later calls to the same module go
    /// there directly. An `init` that refuses sends the whole pool to processes. An exception
    /// raised by the function itself is never retried, nor is a pinned callable. See
    /// docs/auto.md.
    #[default]
    Auto,
}

impl WorkerKind {
    /// The stable lowercase name, as in the Python API (`"subinterpreter"`, …, `"auto"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Subinterpreter => "subinterpreter",
            Self::Forkserver => "forkserver",
            Self::Spawn => "spawn",
            Self::Auto => "auto",
        }
    }

    /// The worker type of a concrete kind (not `Auto`) here, or why there is none. `python` is
    /// the executable for the process kinds.
    fn worker_type(
        self,
        python: &dyn Fn() -> Result<PathBuf, String>,
    ) -> Result<Arc<dyn WorkerType>> {
        let unavailable = |reason: String| Error::Unavailable {
            worker_type: self.name(),
            reason,
        };
        let kind: Arc<dyn WorkerType> = match self {
            Self::Subinterpreter => interpool_worker_types::worker_type(self.name())
                .ok_or_else(|| unavailable("not in this build".into()))?,
            Self::Forkserver => Arc::new(process::Forkserver::with_python(
                python().map_err(unavailable)?,
            )),
            Self::Spawn => Arc::new(process::Spawn::with_python(python().map_err(unavailable)?)),
            Self::Auto => unreachable!("Auto is resolved by WorkerKind::resolve"),
        };
        match kind.availability() {
            Availability::Available => Ok(kind),
            Availability::Unavailable(reason) => Err(unavailable(reason)),
        }
    }

    /// The worker types this kind stands for here (`Auto`: every available one, in the order of
    /// preference; the others: that one), or why there is none.
    fn resolve(
        self,
        python: &dyn Fn() -> Result<PathBuf, String>,
    ) -> Result<Vec<Arc<dyn WorkerType>>> {
        if self != Self::Auto {
            return Ok(vec![self.worker_type(python)?]);
        }
        let mut reasons = Vec::new();
        let mut available = Vec::new();
        for kind in [Self::Subinterpreter, Self::Forkserver, Self::Spawn] {
            match kind.worker_type(python) {
                Ok(found) => available.push(found),
                Err(Error::Unavailable {
                    worker_type,
                    reason,
                }) => reasons.push(format!("{worker_type}: {reason}")),
                Err(other) => return Err(other),
            }
        }
        if available.is_empty() {
            return Err(Error::Unavailable {
                worker_type: self.name(),
                reason: format!("no worker type is available ({})", reasons.join("; ")),
            });
        }
        Ok(available)
    }
}

/// Configures and builds a [`Pool`]; from [`Pool::builder`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    kind: WorkerKind,
    max_workers: Option<usize>,
    idle_timeout: Option<Duration>,
    python_path: Vec<PathBuf>,
    init: Option<String>,
    python_executable: Option<PathBuf>,
    spin: Duration,
    recycling: Recycling,
    pins: Vec<(String, WorkerKind)>,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        Self {
            kind: WorkerKind::Auto,
            max_workers: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            python_path: Vec::new(),
            init: None,
            python_executable: None,
            spin: DEFAULT_SPIN,
            recycling: Recycling::default(),
            pins: Vec::new(),
        }
    }
}

impl PoolBuilder {
    /// The kind of worker (default [`WorkerKind::Auto`]).
    pub fn worker_type(mut self, kind: WorkerKind) -> Self {
        self.kind = kind;
        self
    }

    /// How many calls run at once, and so how many workers exist (default: the number of CPUs;
    /// 0 counts as 1). Further calls wait for a free slot. A worker abandoned by a cancelled
    /// call (stuck in C code) no longer counts.
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n.max(1));
        self
    }

    /// How long an idle worker waits for a job before it ends (default 600 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Idle workers never end by themselves.
    pub fn no_idle_timeout(mut self) -> Self {
        self.idle_timeout = None;
        self
    }

    /// A worker is replaced by a fresh one after `n` jobs (`ProcessPoolExecutor`'s
    /// `max_tasks_per_child`; default: never). The check runs after the caller has its result.
    ///
    /// # Errors
    /// [`PoolBuilder::build`] answers [`Error::Setup`] for 0.
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.recycling.max_tasks = Some(n);
        self
    }

    /// A worker whose memory is above `bytes` after a job is replaced by a fresh one (default: no
    /// limit): a process worker's resident set size (Linux; elsewhere not measured), a
    /// subinterpreter's arenas of its own object allocator. The check runs after the caller has
    /// its result.
    ///
    /// # Errors
    /// [`PoolBuilder::build`] answers [`Error::Setup`] for 0.
    pub fn max_worker_memory(mut self, bytes: u64) -> Self {
        self.recycling.max_memory = Some(bytes);
        self
    }

    /// Directories put in front of `sys.path` in every worker, in this order (relative paths are
    /// made absolute against the current directory at [`PoolBuilder::build`]). May be called more
    /// than once; entries add up.
    pub fn python_path<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        self.python_path
            .extend(paths.into_iter().map(|p| p.as_ref().to_path_buf()));
        self
    }

    /// A callable `"module:function"` that every worker calls once, with no arguments, before
    /// its first job. If it raises, that worker's first call fails with [`Error::Broken`]
    /// (carrying the exception) and the worker ends.
    pub fn init(mut self, callable: impl Into<String>) -> Self {
        self.init = Some(callable.into());
        self
    }

    /// The Python executable for the process worker types (and `Auto`'s fallback; not used by
    /// subinterpreters). It should be the Python the crate was built against (same version):
    /// workers run the same loop and exchange pickles with it.
    ///
    /// When it is not given: the one set process-wide with
    /// [`interpool_worker_types::process::set_python_executable`] if the host did, else
    /// `python{VERSION}` (e.g. `python3.13`), else `python3`, in the embedded interpreter's
    /// `sysconfig.get_config_var("BINDIR")`: the installation the crate was built and linked
    /// against. Never `sys.executable` or `sys._base_executable`, which in an embedded
    /// interpreter are derived from the host program. If none of these exists, the process kinds
    /// are [`Error::Unavailable`] with that reason (and `Auto` has no fallback).
    ///
    /// That executable does not see a virtual environment's packages: put its `site-packages` on
    /// [`PoolBuilder::python_path`], as for the embedded interpreter.
    pub fn python_executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.python_executable = Some(path.into());
        self
    }

    /// How long a call spins (yielding the core between checks) for its outcome before it parks
    /// its task (default 20 µs). Spinning saves the wake-up of a parked task, which costs more
    /// than a fast job; `Duration::ZERO` never spins. Spinning blocks the executor thread.
    pub fn spin(mut self, budget: Duration) -> Self {
        self.spin = budget;
        self
    }

    /// Sends every call of `target` to `kind` on a [`WorkerKind::Auto`] pool, overriding AUTO's
    /// ranking and its fallback: `target` is a callable (`"module:qualname"`, as given to
    /// [`Pool::call`]) or a module (its submodules too). For packages that load in a
    /// subinterpreter but misbehave later there: `.pin("polars", WorkerKind::Forkserver)`. A
    /// pinned callable's load error is the call's, on whatever kind it is pinned to. A later pin
    /// of the same target replaces an earlier one; [`WorkerKind::Auto`] removes it. The pins are
    /// in [`Pool::statistics_by_type`].
    ///
    /// # Errors
    /// [`PoolBuilder::build`] answers [`Error::Setup`] for a pool that is not `Auto`,
    /// [`Error::InvalidTarget`] for an empty target, [`Error::Unavailable`] for a kind that
    /// cannot run here.
    pub fn pin(mut self, target: impl Into<String>, kind: WorkerKind) -> Self {
        self.pins.push((target.into(), kind));
        self
    }

    /// Builds the pool: picks the worker type, initializes the embedded interpreter if nobody
    /// has (see the crate docs), and prepares the workers' setup. Workers start on demand.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the worker type cannot run here, with the reason (for the
    /// process kinds: no Python executable, see [`PoolBuilder::python_executable`]);
    /// [`Error::InvalidTarget`] for a malformed `init`; [`Error::Setup`] for a `python_path`
    /// entry that is not UTF-8 or cannot be made absolute, or a recycling limit of 0; the
    /// errors of [`PoolBuilder::pin`].
    pub fn build(self) -> Result<Pool> {
        for (name, value) in [
            ("max_tasks_per_worker", self.recycling.max_tasks),
            ("max_worker_memory", self.recycling.max_memory),
        ] {
            if value == Some(0) {
                return Err(Error::Setup(format!("{name} must be at least 1, not 0")));
            }
        }
        let init = self.init.as_deref().map(Target::parse).transpose()?;
        let python_path = self
            .python_path
            .iter()
            .map(|p| {
                let absolute = std::path::absolute(p)
                    .map_err(|e| Error::Setup(format!("python path {}: {e}", p.display())))?;
                absolute.to_str().map(str::to_owned).ok_or_else(|| {
                    Error::Setup(format!("python path {} is not UTF-8", p.display()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let setup = wire::setup(init.as_ref(), &python_path)?;
        embed::ensure_initialized();
        let given = self.python_executable.clone();
        let python = move || match &given {
            Some(path) => Ok(path.clone()),
            None => process::python_executable().map_or_else(embed::python_executable, Ok),
        };
        if self.kind != WorkerKind::Auto && !self.pins.is_empty() {
            return Err(Error::Setup(format!(
                "pinning needs a WorkerKind::Auto pool; this one is {}",
                self.kind.name()
            )));
        }
        let worker_types = self.kind.resolve(&python)?;
        let uses_processes = worker_types
            .iter()
            .any(|t| t.name() != WorkerKind::Subinterpreter.name());
        let python_executable = uses_processes.then(|| python().ok()).flatten();
        let caches = worker_types
            .into_iter()
            .map(|kind| WorkerCache::new(kind, self.idle_timeout, self.recycling))
            .collect::<Result<Vec<_>>>()?;
        let auto = Auto::new(caches)?;
        for (target, kind) in &self.pins {
            auto.pin(target, (*kind != WorkerKind::Auto).then(|| kind.name()))?;
        }
        let max_workers = self.max_workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        Ok(Pool::over(
            auto,
            max_workers,
            setup,
            self.spin,
            python_executable,
        ))
    }
}

#[derive(Debug)]
struct Inner {
    /// The caches, and which one serves a call (one cache unless the pool is `Auto`).
    auto: Auto,
    limiter: Arc<Semaphore>,
    max_workers: usize,
    setup: Vec<u8>,
    spin: Duration,
    /// The executable the pool's process workers run, if it has any.
    python_executable: Option<PathBuf>,
    /// Calls holding a worker, for `shutdown` to wait on.
    running: Mutex<usize>,
    running_changed: Condvar,
    /// Run times per callable, one table per cache (they include that type's hand-off), for
    /// waking a parked call shortly before its job is due (`worker_types::prewake`).
    durations: Vec<Durations>,
}

impl Inner {
    fn caches(&self) -> impl Iterator<Item = &WorkerCache> {
        self.auto.caches()
    }

    /// Runs `payload` on a worker of slot `i`'s cache and waits for it. Dropping the future
    /// cancels it.
    /// `key` names the callable, whose learned run time lets a parked call wake before its job
    /// is due.
    async fn attempt(&self, i: usize, job: Job, key: Option<u64>) -> Result<Outcome> {
        let setup = || Ok(self.setup.clone());
        let lease = self.auto.cache(i).submit(job, &setup)?;
        let prewake = key.map(|key| (&self.durations[i], key));
        Ok(InFlight::new(self, lease, prewake).await.outcome)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every clone and every call is gone: idle workers end now (in the background).
        for cache in self.caches() {
            cache.close();
        }
    }
}

/// A pickled value with its out-of-band buffers (pickle protocol 5), as
/// [`Pool::call_pickled_with_buffers`] returns it: `pickle.loads(data, buffers=buffers)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pickled {
    /// The pickle stream.
    pub data: Vec<u8>,
    /// The buffers its `NEXT_BUFFER` opcodes take, in order: host memory of this process,
    /// writable by whoever holds it alone (no further copy was made).
    pub buffers: Vec<Buffer>,
}

/// A job's outcome as the caller's result. Only protocol-5 jobs get buffers back
/// (worker_loop.py): those of [`Pool::call_pickled_with_buffers`].
fn into_result(outcome: Outcome) -> Result<Pickled> {
    match outcome {
        Outcome::Value(data) => Ok(Pickled {
            data,
            buffers: Vec::new(),
        }),
        // Memory a subinterpreter lent (a returned `bytes`) is copied here, once: a caller may
        // keep these buffers for as long as it likes.
        Outcome::ValueWithBuffers(data, buffers) => Ok(Pickled {
            data,
            buffers: buffers.into_iter().map(Buffer::into_owned).collect(),
        }),
        Outcome::Raised(records) => Err(Error::Python(Box::new(wire::exception(&records)))),
        Outcome::LoadError(records) => Err(Error::Load(Box::new(wire::exception(&records)))),
        Outcome::Broken(broken) => Err(Error::Broken {
            stage: broken.stage,
            reason: broken.reason,
            exit_code: broken.exit_code,
            exception: broken
                .exception
                .filter(|records| !records.is_empty())
                .map(|records| Box::new(wire::exception(&records))),
        }),
    }
}

/// A pool of Python workers that runs `"module:function"` callables with pickled arguments.
///
/// `Pool` is `Send + Sync` and cheap to clone (an `Arc`); clones share the workers, and any
/// number of tasks may call at once (at most [`PoolBuilder::max_workers`] run at a time, the
/// rest wait). Its futures work on any async runtime. Dropping the last clone (once no call is
/// running) closes the workers in the background; [`Pool::shutdown`] does it and waits.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// # fn main() -> Result<(), interpool::Error> {
/// let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
/// runtime.block_on(async {
///     let pool = interpool::Pool::builder()
///         .worker_type(interpool::WorkerKind::Subinterpreter)
///         .max_workers(2)
///         .build()?;
///     // Any module-level callable the worker can import; arguments are a tuple.
///     let sum: i64 = pool.call("operator:add", (2, 3)).await?;
///     assert_eq!(sum, 5);
///     let words: Vec<String> = pool.call("builtins:str.split", ("two words",)).await?;
///     assert_eq!(words, ["two", "words"]);
///     // Python exceptions come back as errors, traceback included.
///     match pool.call::<_, i64>("builtins:int", ("x",)).await {
///         Err(interpool::Error::Python(e)) => assert_eq!(e.type_name, "ValueError"),
///         other => panic!("expected a ValueError, got {other:?}"),
///     }
///     pool.shutdown(Duration::from_secs(5)).await
/// })
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    fn over(
        auto: Auto,
        max_workers: usize,
        setup: Vec<u8>,
        spin: Duration,
        python_executable: Option<PathBuf>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                limiter: Arc::new(Semaphore::new(max_workers)),
                max_workers,
                setup,
                spin,
                python_executable,
                running: Mutex::new(0),
                running_changed: Condvar::new(),
                durations: auto.caches().map(|_| Durations::new()).collect(),
                auto,
            }),
        }
    }

    /// A builder with the defaults: [`WorkerKind::Auto`], one worker per CPU, 600 s idle
    /// timeout, no extra `sys.path`, no `init`.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Calls `callable` (`"module:function"`, or `"module:Class.method"`) in a worker with
    /// `args`, and converts its return value to `R`.
    ///
    /// `args` is pickled here, with serde-pickle: pass a tuple (`()` for no arguments, `(x,)`
    /// for one). Rust strings become `str`, integers `int`, `Vec`s `list`, maps `dict`, structs
    /// `dict`; the return value is read back the same way (use `serde_pickle::Value` to take
    /// anything). The module is imported in the worker from its `sys.path` (see
    /// [`PoolBuilder::python_path`]).
    ///
    /// The future is `Send + 'static` when `R` is. **Dropping it cancels the call**: a process
    /// worker is killed (SIGKILL, whatever it was doing) and replaced on demand; a
    /// subinterpreter running Python is interrupted (`KeyboardInterrupt` at the next bytecode)
    /// and its worker replaced; one stuck in C code is abandoned (never reused; it ends when the
    /// C call returns).
    ///
    /// On a [`WorkerKind::Auto`] pool a call whose module refuses to load in a subinterpreter
    /// runs again on a process worker (see [`WorkerKind::Auto`]); until its module is known to
    /// need that, such a pool keeps a copy of the job's payload while it runs.
    ///
    /// # Errors
    /// [`Error::Python`] if it raised, [`Error::Load`] if the job could not be loaded in the
    /// worker, [`Error::Broken`] if the worker failed (a process worker's exit code or killing
    /// signal in `exit_code`), [`Error::Conversion`] if the value is not an `R`,
    /// [`Error::Closed`] after [`Pool::shutdown`], [`Error::InvalidTarget`] /
    /// [`Error::Arguments`] for a bad callable name or arguments.
    pub fn call<A, R>(&self, callable: &str, args: A) -> Call<R>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        let payload = Target::parse(callable)
            .and_then(|target| wire::job(&target, &args))
            .map(|(payload, buffers)| Job { payload, buffers });
        Call::new(
            self.clone(),
            payload,
            self.callable_to_route(callable),
            |pickled| wire::value::<R>(&pickled.data),
        )
    }

    /// Like [`Pool::call`], with the arguments already pickled (a pickle of the argument tuple,
    /// any protocol) and the pickled return value (protocol 5) handed back as is.
    pub fn call_pickled(&self, callable: &str, pickled_args: impl AsRef<[u8]>) -> Call<Vec<u8>> {
        let payload = Target::parse(callable)
            .and_then(|target| wire::job_pickled(&target, pickled_args.as_ref()))
            .map(Job::new);
        Call::new(
            self.clone(),
            payload,
            self.callable_to_route(callable),
            |p| Ok(p.data),
        )
    }

    /// Like [`Pool::call_pickled`], with pickle protocol 5 out-of-band buffers both ways:
    /// `pickled_args` is a protocol-5 pickle of the argument tuple whose `NEXT_BUFFER` opcodes
    /// take `buffers` in order (as `pickle.loads(pickled_args, buffers=buffers)` would), and the
    /// value comes back as [`Pickled`]: its pickle plus its large buffers (from 256 KiB:
    /// `bytes`, `memoryview`s, numpy arrays, see docs/payloads.md), to be loaded the same way.
    ///
    /// The buffers are not copied into the job: a subinterpreter worker reads them in place
    /// (wrap a `Vec<u8>` with [`Buffer::from_vec`]), a process worker gets them through shared
    /// memory. The job keeps them until the worker is done with them.
    pub fn call_pickled_with_buffers(
        &self,
        callable: &str,
        pickled_args: impl AsRef<[u8]>,
        buffers: Vec<Buffer>,
    ) -> Call<Pickled> {
        let payload = Target::parse(callable)
            .and_then(|target| {
                wire::job_pickled_with_buffers(&target, pickled_args.as_ref(), buffers.len())
            })
            .map(|payload| Job { payload, buffers });
        Call::new(self.clone(), payload, self.callable_to_route(callable), Ok)
    }

    /// The callable, where AUTO chooses among several types and so may have to route it.
    fn callable_to_route(&self, callable: &str) -> Option<String> {
        self.inner.auto.chooses().then(|| callable.to_owned())
    }

    /// Stops the pool: new calls fail with [`Error::Closed`], calls waiting for a slot too;
    /// calls already running finish. Waits up to `grace` for them and for every worker of the
    /// pool to end. Workers abandoned by cancelled calls (stuck in C code) are not the pool's
    /// any more and are not waited for; before finalizing Python itself, a host waits for them
    /// with [`crate::worker_types::subinterpreter::wait_all_ended`]. Process workers still alive
    /// when `grace` runs out are killed. On an `Auto` pool, a call whose fallback to a process
    /// worker would start after shutdown began fails with [`Error::Closed`].
    ///
    /// # Errors
    /// [`Error::ShutdownTimeout`] if some had not ended in time (a job still running, or a
    /// subinterpreter stuck in C code); they end by themselves later.
    pub async fn shutdown(&self, grace: Duration) -> Result<()> {
        self.inner.limiter.close();
        for cache in self.inner.caches() {
            cache.close();
        }
        let inner = self.inner.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        // Waiting for threads is blocking: do it off the caller's executor.
        std::thread::Builder::new()
            .name("interpool-shutdown".into())
            .spawn(move || {
                let deadline = Instant::now() + grace;
                let running = {
                    let mut running = inner.running.lock().unwrap_or_else(PoisonError::into_inner);
                    while *running > 0 {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        running = inner
                            .running_changed
                            .wait_timeout(running, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    *running
                };
                let not_ended: usize = inner
                    .caches()
                    .map(|cache| {
                        let left = deadline.saturating_duration_since(Instant::now());
                        cache.wait_closed(Some(left)).not_ended
                    })
                    .sum();
                let _ = done.send(running + not_ended);
            })
            .map_err(|e| Error::Setup(format!("cannot start the shutdown thread: {e}")))?;
        match result.await {
            Ok(0) => Ok(()),
            Ok(not_ended) => Err(Error::ShutdownTimeout { not_ended }),
            Err(_) => Err(Error::Setup("the shutdown thread panicked".into())),
        }
    }

    /// Counts of idle workers and running calls (`Auto`: of every type).
    pub fn statistics(&self) -> Statistics {
        self.inner
            .caches()
            .map(WorkerCache::statistics)
            .fold(Statistics::default(), |sum, s| Statistics {
                idle_workers: sum.idle_workers + s.idle_workers,
                running_workers: sum.running_workers + s.running_workers,
            })
    }

    /// Per worker type of the pool (`Auto`: every available one, in the order of preference):
    /// its counts, its measured dispatch latency, and what AUTO learnt: fallbacks, modules
    /// routed away from subinterpreters, pins. As the Python API's `statistics().by_type`.
    pub fn statistics_by_type(&self) -> Vec<TypeStatistics> {
        self.inner.auto.statistics()
    }

    /// The name of the worker type a call without a route runs on now (`"subinterpreter"`, …):
    /// a [`WorkerKind::Auto`] pool's best ranked type.
    pub fn worker_type(&self) -> &'static str {
        let auto = &self.inner.auto;
        auto.name(auto.best(false))
    }

    /// The process worker type (`"forkserver"` or `"spawn"`) that a [`WorkerKind::Auto`] pool on
    /// subinterpreters falls back to for modules that refuse subinterpreters, as ranked now;
    /// `None` for other pools, or where no process type is available.
    pub fn fallback_worker_type(&self) -> Option<&'static str> {
        let auto = &self.inner.auto;
        let best = auto.best(false);
        if !auto.may_fall_back(best, CallableKey::default()) {
            return None;
        }
        auto.away(false).map(|i| auto.name(i))
    }

    /// How many calls may run at once.
    pub fn max_workers(&self) -> usize {
        self.inner.max_workers
    }

    /// The Python executable the pool's process workers run (given with
    /// [`PoolBuilder::python_executable`], or found as it describes); `None` if the pool has no
    /// process workers.
    pub fn python_executable(&self) -> Option<&Path> {
        self.inner.python_executable.as_deref()
    }

    /// Runs one job: takes a slot, submits, waits; on an `Auto` pool, routes it by `callable`
    /// and falls back as [`Auto::fallback`] says. Not generic, so it is compiled once.
    async fn run(self, payload: Result<Job>, callable: Option<String>) -> Result<Pickled> {
        let payload = payload?;
        let limiter = self.inner.limiter.clone();
        // Held across a fallback's second attempt too; dropped after the attempt in flight (the
        // later local), so a cancelled job gives its slot back once it is interrupted.
        let _permit = match limiter.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                limiter.acquire_owned().await.map_err(|_| Error::Closed)?
            }
        };
        let inner = &*self.inner;
        let auto = &inner.auto;
        let key = callable
            .as_deref()
            .map(CallableKey::parse)
            .unwrap_or_default();
        let run_key = callable.as_deref().map(|callable| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            callable.hash(&mut hasher);
            hasher.finish()
        });
        let first = auto.choose(key, false);
        if !auto.may_fall_back(first, key) {
            return into_result(inner.attempt(first, payload, run_key).await?);
        }
        let retry = payload.clone();
        let outcome = inner.attempt(first, payload, run_key).await?;
        let Some(failure) = Failure::of(&outcome) else {
            return into_result(outcome);
        };
        let Some(second) = auto.fallback(first, failure, key, false) else {
            return into_result(outcome);
        };
        // A second load error (or a broken worker) is the call's, and teaches nothing.
        let retried = inner.attempt(second, retry, run_key).await?;
        if let Outcome::LoadError(records) = &outcome {
            if !matches!(retried, Outcome::LoadError(_) | Outcome::Broken(_)) {
                auto.loaded_elsewhere(key, records);
            }
        }
        into_result(retried)
    }
}

/// A job holding a worker. Dropping it before the outcome is in cancels the job.
struct InFlight<'a> {
    inner: &'a Inner,
    lease: Option<Lease>,
    spin: Duration,
    spun: bool,
    /// The callable's run times and key, if it has one: see [`InFlight::park`].
    prewake: Option<(&'a Durations, u64)>,
    /// The prewake planned when the call parked, and whether it was a timed one (its lateness
    /// is a sample of the wake-up latency).
    plan: Option<(Plan, bool)>,
}

impl<'a> InFlight<'a> {
    fn new(inner: &'a Inner, lease: Lease, prewake: Option<(&'a Durations, u64)>) -> Self {
        *inner.running.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Self {
            inner,
            lease: Some(lease),
            spin: inner.spin,
            spun: false,
            prewake,
            plan: None,
        }
    }

    /// On the first park (the waker is registered): if the callable's run time is learned, asks
    /// the alarm to wake the task shortly before the job is due, as `run_sync` does.
    fn park(&mut self, lease: &Lease) {
        let Some((durations, key)) = self.prewake else {
            return;
        };
        if let Some(plan) = durations.plan(key, lease.submitted()) {
            self.plan = Some((plan, plan.at > Instant::now()));
            prewake::prewake_at(plan.at, lease.shared_completion());
            lease.completion().expect(plan);
        }
    }
}

impl Future for InFlight<'_> {
    type Output = Finished;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Finished> {
        let this = self.get_mut();
        let mut lease = this.lease.take().expect("polled after completion");
        let completion = lease.completion();
        // Spin once, on the first poll: a fast job is then done without any wake-up, and its
        // round trip is this type's dispatch latency (AUTO's ranking).
        let first_poll = !this.spun;
        let spun_to_done = first_poll && completion.spin(this.spin);
        this.spun = true;
        if spun_to_done {
            lease.observe_quick_return(this.spin);
        } else {
            if let (Some((plan, timed)), true) = (this.plan, completion.take_prewoken()) {
                // Woken before the job is due (sampled even if the outcome came meanwhile, as
                // `run_sync`'s are): spin the last stretch, blocking this executor thread as the
                // first spin does.
                if let (true, Some((durations, _))) = (timed, this.prewake) {
                    durations.observe_wake(plan.at, Instant::now());
                }
                if !completion.is_done() {
                    let _spinning = Spinning::start();
                    completion.spin(plan.spin);
                }
            }
            if completion.poll_done(cx).is_pending() {
                if first_poll {
                    this.inner.auto.note_parked();
                    this.park(&lease);
                }
                this.lease = Some(lease);
                return Poll::Pending;
            }
        }
        // Run times are learned from calls that parked, as `run_sync`'s are: a quick call
        // needs no wake-up, and its hot path stays as it was.
        if let (Some((durations, key)), false) = (this.prewake, spun_to_done) {
            if let Some(completed_at) = completion.completed_at() {
                durations.observe_run(key, lease.submitted(), completed_at);
            }
        }
        let finished = lease.finish().expect("the completion is done");
        Poll::Ready(finished)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            // Cancelled: the outcome is not in (or nobody took it). Interrupt a running job (a
            // process worker is SIGKILLed); the lease's drop then hands back a finished worker or
            // abandons a busy one (a killed process is reaped by its own thread).
            if !lease.completion().is_done() {
                lease.interrupt();
            }
            drop(lease);
        }
        let mut running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *running -= 1;
        self.inner.running_changed.notify_all();
    }
}

/// The future of [`Pool::call`] / [`Pool::call_pickled`]: resolves to the converted result.
///
/// Dropping it before it resolves cancels the call (see [`Pool::call`]).
#[must_use = "a call does nothing unless awaited, and dropping it cancels it"]
pub struct Call<R> {
    run: Pin<Box<dyn Future<Output = Result<Pickled>> + Send>>,
    convert: fn(Pickled) -> Result<R>,
    _result: PhantomData<fn() -> R>,
}

impl<R> Call<R> {
    fn new(
        pool: Pool,
        payload: Result<Job>,
        module: Option<String>,
        convert: fn(Pickled) -> Result<R>,
    ) -> Self {
        Self {
            run: Box::pin(pool.run(payload, module)),
            convert,
            _result: PhantomData,
        }
    }
}

impl<R> Future for Call<R> {
    type Output = Result<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        match self.run.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => Poll::Ready(result.and_then(self.convert)),
        }
    }
}

impl<R> fmt::Debug for Call<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("result", &std::any::type_name::<R>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auto::tests::{auto_over, fake, measure};

    /// A pool over fake types, whose workers answer each job with its payload at once.
    fn fake_pool(types: Vec<Arc<dyn WorkerType>>) -> Pool {
        Pool::over(auto_over(types), 1, Vec::new(), DEFAULT_SPIN, None)
    }

    fn idle_by_type(pool: &Pool) -> Vec<(&'static str, usize)> {
        pool.statistics_by_type()
            .iter()
            .map(|s| (s.worker_type, s.idle_workers))
            .collect()
    }

    #[test]
    fn calls_go_to_the_type_measured_fastest() {
        let pool = fake_pool(vec![
            fake("subinterpreter", false, 15),
            fake("forkserver", true, 60),
        ]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let call = |pool: &Pool| runtime.block_on(pool.call_pickled("m:f", b"args")).unwrap();
        call(&pool);
        assert_eq!(
            idle_by_type(&pool),
            [("subinterpreter", 1), ("forkserver", 0)],
            "the prior order first"
        );
        let auto = &pool.inner.auto;
        assert!(
            auto.cache(0).latency_estimate().is_some(),
            "a quick call measured it"
        );
        measure(auto, 0, Duration::from_micros(90));
        measure(auto, 1, Duration::from_micros(20));
        for _ in 0..crate::auto::RERANK_EVERY {
            auto.note_parked(); // as many calls that parked would
        }
        assert_eq!(pool.worker_type(), "forkserver");
        assert_eq!(pool.fallback_worker_type(), None, "not on subinterpreters");
        call(&pool);
        assert_eq!(
            idle_by_type(&pool),
            [("subinterpreter", 1), ("forkserver", 1)]
        );
    }

    #[test]
    fn a_recycling_limit_of_zero_is_refused_with_its_name() {
        for (builder, name) in [
            (
                Pool::builder().max_tasks_per_worker(0),
                "max_tasks_per_worker",
            ),
            (Pool::builder().max_worker_memory(0), "max_worker_memory"),
        ] {
            match builder.build() {
                Err(Error::Setup(message)) => assert!(message.contains(name), "{message}"),
                other => panic!("expected Error::Setup, got {other:?}"),
            }
        }
    }
}
