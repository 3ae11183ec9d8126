//! `interpool._interpool`: the extension module under the Python package.
//!
//! Everything here runs in the **main** interpreter (the package never imports this module inside
//! a worker), so PyO3's safe API is fine here and nowhere else. The surface is small and
//! low-level: the Python front end (`interpool/_context.py`, `_call.py`) owns argument handling,
//! pickling and the event-loop integration; this module owns the workers.
//!
//! All mapping of Rust errors to Python exceptions sits in [`to_py_err`].
//!
//! Out-of-band buffers (pickle protocol 5): a job's buffers are the caller's `memoryview`s, read
//! in place by the worker through [`Buffer`]s that pin them; an outcome's buffers are host memory
//! that the caller gets as `memoryview`s of a `HostBuffer`, without another copy. Both need
//! unsafe code, which lives with the rest of interpool's FFI in
//! [`worker_types::python_buffers`].

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use pyo3::{
    exceptions::{PyRuntimeError, PyTypeError, PyValueError},
    prelude::*,
    types::{PyBytes, PyList, PyTuple},
};

use crate::{
    auto::{self, CallableKey, Failure},
    cache::{Lease, Recycling, WorkerCache},
    worker_types::{
        self,
        prewake::{self, Durations, Plan},
        python_buffers, Availability, Buffer, Finished, Job, Outcome, Stage,
    },
    Error,
};

// Outcome kinds, as returned by [`Call::result`]: the wire protocol's (a value with out-of-band
// buffers: the data is `(pickle, [memoryview, ...])`).
use worker_types::protocol::{BROKEN, LOAD_ERROR, RAISED, VALUE, VALUE_BUFFERS};

/// A BROKEN outcome's `(stage code, reason)`, as [`Call::result`] returns it.
type BrokenDetail = (u8, String);

fn to_py_err(py: Python<'_>, err: Error) -> PyErr {
    let class = match &err {
        Error::Unavailable { .. } => "WorkerTypeUnavailableError",
        Error::InvalidTarget { reason, .. } => return PyValueError::new_err(reason.clone()),
        // Only these come from the cache; the rest belong to the Rust API.
        _ => "BrokenWorkerError",
    };
    match py
        .import("interpool._types")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1((err.to_string(),)))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(import_error) => import_error,
    }
}

/// Seconds from Python (`None` or `math.inf`: forever) to a `Duration`.
fn timeout(seconds: Option<f64>) -> PyResult<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_infinite() && s > 0.0 => Ok(None),
        Some(s) if s >= 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(PyValueError::new_err(format!(
            "a timeout must be >= 0, not {s}"
        ))),
    }
}

/// `(name, available, reason, hard_kill, crash_isolation)` for every worker type of this build.
#[pyfunction]
fn worker_type_info() -> Vec<(&'static str, bool, Option<String>, bool, bool)> {
    worker_types::worker_types()
        .iter()
        .map(|t| {
            let caps = t.capabilities();
            let (available, reason) = match t.availability() {
                Availability::Available => (true, None),
                Availability::Unavailable(reason) => (false, Some(reason)),
            };
            (
                t.name(),
                available,
                reason,
                caps.hard_kill,
                caps.crash_isolation,
            )
        })
        .collect()
}

/// Closes every subinterpreter worker of the process, interrupts the running ones (nobody will
/// read their outcome), and waits up to `timeout` seconds for all to end. Returns how many are
/// still alive (stuck in C code). For the atexit hook: none may be running at finalization.
#[pyfunction]
fn end_all_subinterpreters(py: Python<'_>, timeout_seconds: f64) -> PyResult<usize> {
    let timeout = timeout(Some(timeout_seconds))?;
    Ok(py.detach(|| {
        worker_types::subinterpreter::close_all();
        worker_types::subinterpreter::interrupt_all();
        worker_types::subinterpreter::wait_all_ended(timeout)
    }))
}

/// How many subinterpreter worker threads are alive (abandoned ones included).
#[pyfunction]
fn live_subinterpreters() -> usize {
    worker_types::subinterpreter::live_workers()
}

/// Sets the modules the forkserver imports before forking workers. Returns False (and changes
/// nothing) if the forkserver is already running.
#[pyfunction]
fn configure_forkserver(preload: Vec<String>) -> bool {
    worker_types::process::set_forkserver_preload(preload)
}

/// Releases the views of finished jobs now (they are also released whenever a call is submitted
/// or its outcome taken). Returns how many jobs' buffers are still pinned by running jobs.
#[pyfunction]
fn release_buffers(py: Python<'_>) -> usize {
    python_buffers::release_pinned(py);
    python_buffers::pinned_jobs()
}

/// How many results subinterpreter workers keep alive for their callers to copy (see
/// `ffi.rs`, rule 10): each is released by its worker at its next job or when it ends.
#[pyfunction]
fn lent_buffers() -> usize {
    worker_types::lent_blocks()
}

/// `(pickle, [buffer, ...])` for a value with out-of-band buffers: a `memoryview` of a
/// [`HostBuffer`](python_buffers::HostBuffer) for host memory, or a `bytes` for memory a worker
/// lent or a process worker's whole `bytes`: the subinterpreter worker's own `bytes` when it gave
/// it up, else copied straight from that memory (the one copy of a returned `bytes` in this
/// process: its pickle rebuilds it with `bytes(buffer)`, which returns a `bytes` as it is).
/// Dropping the lent buffer hands it back to its worker.
fn value_with_buffers<'py>(
    py: Python<'py>,
    data: &[u8],
    buffers: Vec<Buffer>,
) -> PyResult<Bound<'py, PyAny>> {
    let views = buffers
        .into_iter()
        .map(|buffer| {
            if buffer.is_lent() || buffer.is_rebuilt_as_bytes() {
                return Ok(python_buffers::lent_bytes(py, buffer)?.into_any());
            }
            Ok(python_buffers::host_view(py, buffer)?.into_any())
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyTuple::new(
        py,
        [
            PyBytes::new(py, data).into_any(),
            PyList::new(py, views)?.into_any(),
        ],
    )?
    .into_any())
}

/// `Cache.wait_closed`'s result: `(retire_failures, not_ended, killed, nonzero_exit_codes)`.
type ShutdownTuple<'py> = (Vec<Bound<'py, PyBytes>>, usize, usize, Vec<i32>);

/// The workers of one worker context.
#[pyclass(module = "interpool._interpool", frozen)]
struct Cache {
    cache: WorkerCache,
    /// Called with the GIL when a worker starts; returns its setup payload (bytes).
    setup: Py<PyAny>,
    /// Run times of this cache's callables, for waking parked callers early ([`Call::arm`]).
    durations: Arc<Durations>,
}

#[pymethods]
impl Cache {
    /// `max_tasks` / `max_memory`: the worker recycling limits (validated by the front end).
    #[new]
    #[pyo3(signature = (worker_type, idle_timeout, setup, max_tasks=None, max_memory=None))]
    fn new(
        py: Python<'_>,
        worker_type: &str,
        idle_timeout: Option<f64>,
        setup: Py<PyAny>,
        max_tasks: Option<u64>,
        max_memory: Option<u64>,
    ) -> PyResult<Self> {
        let kind = worker_types::worker_type(worker_type)
            .ok_or_else(|| PyValueError::new_err(format!("unknown worker type {worker_type:?}")))?;
        let recycling = Recycling {
            max_tasks,
            max_memory,
        };
        let cache = WorkerCache::new(kind, timeout(idle_timeout)?, recycling)
            .map_err(|e| to_py_err(py, e))?;
        Ok(Self {
            cache,
            setup,
            durations: Arc::default(),
        })
    }

    /// Runs the pickled job on the hottest idle worker or a new one; never blocks on a worker.
    /// `payload` is the pickle (`bytes`), or `(pickle, buffers)` with its out-of-band buffers
    /// (contiguous `"B"` memoryviews, read in place: see [`python_buffers::pin`]).
    fn submit(&self, py: Python<'_>, payload: &Bound<'_, PyAny>) -> PyResult<Call> {
        python_buffers::release_pinned(py);
        let job = match payload.cast::<PyBytes>() {
            Ok(bytes) => Job::new(bytes.as_bytes().to_vec()),
            Err(_) => {
                let (pickle, buffers): (Bound<'_, PyBytes>, Bound<'_, PyList>) =
                    payload.extract().map_err(|_| {
                        PyValueError::new_err(
                            "a job payload must be bytes or (bytes, list of memoryviews)",
                        )
                    })?;
                Job {
                    payload: pickle.as_bytes().to_vec(),
                    buffers: python_buffers::pin(&buffers)?,
                }
            }
        };
        let setup = || -> Result<Vec<u8>, String> {
            let payload = self.setup.call0(py).map_err(|e| e.to_string())?;
            let bytes = payload
                .bind(py)
                .cast::<PyBytes>()
                .map_err(|e| e.to_string())?;
            Ok(bytes.as_bytes().to_vec())
        };
        let lease = self
            .cache
            .submit(job, &setup)
            .map_err(|e| to_py_err(py, e))?;
        Ok(Call {
            lease: Some(lease),
            durations: self.durations.clone(),
            key: None,
            plan: None,
            timed: false,
        })
    }

    /// The running estimate of this type's dispatch latency in seconds, or None before a quick
    /// call measured it.
    fn latency_estimate(&self) -> Option<f64> {
        self.cache.latency_estimate().map(|d| d.as_secs_f64())
    }

    /// `(idle_workers, running_workers)`.
    fn statistics(&self) -> (usize, usize) {
        let stats = self.cache.statistics();
        (stats.idle_workers, stats.running_workers)
    }

    /// Stops accepting jobs; idle workers end now, busy ones after their job.
    fn close(&self) {
        self.cache.close();
    }

    /// Waits (GIL released) up to `grace` seconds for the closed workers to end, then kills the
    /// stragglers that can be killed. Returns `(retire_failures: list[bytes], not_ended: int,
    /// killed: int, nonzero_exit_codes: list[int])`.
    #[pyo3(signature = (grace))]
    fn wait_closed<'py>(
        &self,
        py: Python<'py>,
        grace: Option<f64>,
    ) -> PyResult<ShutdownTuple<'py>> {
        let grace = timeout(grace)?;
        let report = py.detach(|| self.cache.wait_closed(grace));
        let failures = report
            .retire_failures
            .iter()
            .map(|records| PyBytes::new(py, records))
            .collect();
        Ok((
            failures,
            report.not_ended,
            report.killed,
            report.nonzero_exit_codes,
        ))
    }
}

/// The module that refused to load in a subinterpreter, if the exception records `data` (of a
/// LOAD_ERROR or BROKEN outcome) say one did anywhere in their chain (`"?"`: it is not named).
#[pyfunction]
fn refusal(data: &[u8]) -> Option<String> {
    auto::refusal(data)
}

/// `(module, qualname)` of a callable, looking through `functools.partial`; either may be None.
fn callable_key(
    fn_: &Bound<'_, PyAny>,
    partial: &Bound<'_, PyAny>,
) -> (Option<String>, Option<String>) {
    let mut fn_ = fn_.clone();
    while fn_.is_instance(partial).unwrap_or(false) {
        match fn_.getattr("func") {
            Ok(inner) => fn_ = inner,
            Err(_) => break,
        }
    }
    let text = |name: &str| {
        fn_.getattr(name)
            .ok()
            .and_then(|v| v.extract::<String>().ok())
    };
    (text("__module__"), text("__qualname__"))
}

/// AUTO ([`auto::Auto`]) for a Python worker context, over its [`Cache`]s: the choice of a cache
/// per call, routes, pins, the fallback and the statistics. `interpool/_auto.py` keeps the
/// choices in a list for the warm path and reads them again when [`Auto::generation`] moves.
#[pyclass(module = "interpool._interpool", frozen, name = "Auto")]
struct Auto {
    auto: auto::Auto,
    /// The caches, in the slot order of `auto`.
    caches: Vec<Py<Cache>>,
    /// `functools.partial`, which calls are looked through.
    partial: Py<PyAny>,
}

impl Auto {
    fn slot_of(&self, cache: &Bound<'_, PyAny>) -> Option<usize> {
        self.caches
            .iter()
            .position(|c| c.as_ptr() == cache.as_ptr())
    }

    fn cache(&self, py: Python<'_>, i: usize) -> Py<Cache> {
        self.caches[i].clone_ref(py)
    }
}

#[pymethods]
impl Auto {
    /// AUTO over `caches`, one per available worker type, in the registry's order.
    #[new]
    fn new(py: Python<'_>, caches: Vec<Py<Cache>>) -> PyResult<Self> {
        let shared = caches.iter().map(|c| c.get().cache.clone()).collect();
        let auto = auto::Auto::new(shared).map_err(|e| to_py_err(py, e))?;
        let partial = py.import("functools")?.getattr("partial")?.unbind();
        Ok(Self {
            auto,
            caches,
            partial,
        })
    }

    /// Changes whenever a call's choice may have changed.
    #[getter]
    fn generation(&self) -> u64 {
        self.auto.generation()
    }

    /// `(best, best_killable, away, away_killable, has_routes)`: the caches for calls without a
    /// route (`away`: the fastest that is not a subinterpreter, or None), and whether any route
    /// exists.
    #[allow(clippy::type_complexity)]
    fn choices(
        &self,
        py: Python<'_>,
    ) -> (
        Py<Cache>,
        Py<Cache>,
        Option<Py<Cache>>,
        Option<Py<Cache>>,
        bool,
    ) {
        let away = |kill| self.auto.away(kill).map(|i| self.cache(py, i));
        (
            self.cache(py, self.auto.best(false)),
            self.cache(py, self.auto.best(true)),
            away(false),
            away(true),
            self.auto.has_routes(),
        )
    }

    /// The cache for a call of `fn_`: its route's, else the best.
    fn route(&self, py: Python<'_>, fn_: &Bound<'_, PyAny>, kill_on_cancel: bool) -> Py<Cache> {
        let (module, qualname) = callable_key(fn_, self.partial.bind(py));
        let key = CallableKey {
            module: module.as_deref(),
            qualname: qualname.as_deref(),
        };
        self.cache(py, self.auto.choose(key, kill_on_cancel))
    }

    /// A call parked: True if AUTO reranked.
    fn note_parked(&self) -> bool {
        self.auto.note_parked()
    }

    /// Pins `target` (a module name, or a callable: `module:qualname`) to the worker type named
    /// `worker_type`, or unpins it (None). TypeError / ValueError for a bad target,
    /// WorkerTypeUnavailableError for a type that is not here.
    fn pin(
        &self,
        py: Python<'_>,
        target: &Bound<'_, PyAny>,
        worker_type: Option<&str>,
    ) -> PyResult<()> {
        let key = if let Ok(name) = target.extract::<String>() {
            if name.is_empty() {
                return Err(PyValueError::new_err("a module name must not be empty"));
            }
            name
        } else if target.is_callable() {
            match callable_key(target, self.partial.bind(py)) {
                (Some(module), Some(qualname)) => format!("{module}:{qualname}"),
                _ => {
                    return Err(PyTypeError::new_err(format!(
                        "cannot tell the module and name of {}; pin its module instead",
                        target.repr()?
                    )))
                }
            }
        } else {
            return Err(PyTypeError::new_err(format!(
                "pin a callable or a module name, not {}",
                target.get_type().name()?
            )));
        };
        self.auto
            .pin(&key, worker_type)
            .map_err(|e| to_py_err(py, e))
    }

    /// A failed outcome (`kind` LOAD_ERROR or BROKEN, `data` its records, `reason` BROKEN's) of
    /// a call of `fn_` on `cache`: the cache that re-runs it, or None (the outcome is the call's).
    // The arguments of `_auto.Auto.fallback`, as the call path has them.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (cache, kind, data, reason, fn_, kill_on_cancel))]
    fn fallback(
        &self,
        py: Python<'_>,
        cache: &Bound<'_, PyAny>,
        kind: u8,
        data: &[u8],
        reason: Option<BrokenDetail>,
        fn_: &Bound<'_, PyAny>,
        kill_on_cancel: bool,
    ) -> Option<Py<Cache>> {
        let from = self.slot_of(cache)?;
        let failure = match kind {
            LOAD_ERROR => Failure::Load(data),
            BROKEN => Failure::Broken {
                stage: reason.and_then(|(stage, _)| Stage::from_code(stage))?,
                records: data,
            },
            _ => return None,
        };
        let (module, qualname) = callable_key(fn_, self.partial.bind(py));
        let key = CallableKey {
            module: module.as_deref(),
            qualname: qualname.as_deref(),
        };
        let retry = self.auto.fallback(from, failure, key, kill_on_cancel)?;
        Some(self.cache(py, retry))
    }

    /// A call of `fn_` re-run after a subinterpreter's load error (`data`, its records) loaded on
    /// a process.
    fn loaded_elsewhere(&self, py: Python<'_>, fn_: &Bound<'_, PyAny>, data: &[u8]) {
        let (module, qualname) = callable_key(fn_, self.partial.bind(py));
        let key = CallableKey {
            module: module.as_deref(),
            qualname: qualname.as_deref(),
        };
        self.auto.loaded_elsewhere(key, data);
    }

    /// Per type, in slot order: `(name, idle, running, latency_estimate | None, fallbacks,
    /// [(module, refused)], [pin])`.
    #[allow(clippy::type_complexity)]
    fn statistics(
        &self,
    ) -> Vec<(
        &'static str,
        usize,
        usize,
        Option<f64>,
        u64,
        Vec<(String, String)>,
        Vec<String>,
    )> {
        self.auto
            .statistics()
            .into_iter()
            .map(|s| {
                (
                    s.worker_type,
                    s.idle_workers,
                    s.running_workers,
                    s.latency_estimate.map(|d| d.as_secs_f64()),
                    s.fallbacks,
                    s.routed_away,
                    s.pinned,
                )
            })
            .collect()
    }
}

/// One job in flight. The front end waits for it by spinning ([`Call::spin`]) and then by
/// watching [`Call::arm`]'s fd in its event loop, checking [`Call::woken`] each time it turns
/// readable.
#[pyclass(module = "interpool._interpool")]
struct Call {
    /// `None` once the outcome was taken or the worker abandoned.
    lease: Option<Lease>,
    durations: Arc<Durations>,
    /// The callable's key given to `arm`: its run time is learned when the outcome is taken.
    key: Option<u64>,
    /// The prewake planned by `arm`, if any.
    plan: Option<Plan>,
    /// Whether that prewake is a timed alarm (not one due at once), whose lateness is a sample
    /// of the wake-up latency.
    timed: bool,
}

impl Call {
    fn lease(&self) -> PyResult<&Lease> {
        self.lease
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("this call is over"))
    }
}

#[pymethods]
impl Call {
    /// Whether the outcome is in.
    fn done(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.completion().is_done())
    }

    /// Spins up to `microseconds` with the GIL released; True if the outcome is in. A call that
    /// came back by then is quick: its latency feeds its type's estimate.
    fn spin(&self, py: Python<'_>, microseconds: u64) -> PyResult<bool> {
        let lease = self.lease()?;
        let completion = lease.completion();
        let budget = Duration::from_micros(microseconds);
        let done = completion.is_done() || py.detach(|| completion.spin(budget));
        if done {
            lease.observe_quick_return(budget);
        }
        Ok(done)
    }

    /// An fd that turns readable when the outcome is in, or None if it already is. With `key`
    /// (one per callable), the fd may also turn readable shortly before the outcome is due, as
    /// learned from earlier calls with that key (see `worker_types::prewake`): then call
    /// [`Call::woken`] on every readable fd, which spins for the last stretch. Without it the fd
    /// turns readable only for the outcome.
    #[pyo3(signature = (key=None))]
    fn arm(&mut self, key: Option<u64>) -> PyResult<Option<i32>> {
        let lease = self.lease()?;
        let Some(fd) = lease.completion().arm_fd()? else {
            return Ok(None);
        };
        let plan = key.and_then(|key| self.durations.plan(key, lease.submitted()));
        let timed = plan.is_some_and(|plan| plan.at > Instant::now());
        if let Some(plan) = plan {
            // Due already: the first `woken` spins at once.
            prewake::prewake_at(plan.at, lease.shared_completion());
            lease.completion().expect(plan);
        }
        self.key = key;
        self.plan = plan;
        self.timed = timed;
        Ok(Some(fd))
    }

    /// After `arm`'s fd turned readable (or before the first wait): True if the outcome is in.
    /// If the wake was an early one, first spins (GIL released) up to the planned last stretch
    /// when `spin` is true; False means wait on the fd again (it was emptied).
    #[pyo3(signature = (spin=true))]
    fn woken(&self, py: Python<'_>, spin: bool) -> PyResult<bool> {
        let completion = self.lease()?.completion();
        completion.drain_fd();
        // Sampled whether or not the outcome came meanwhile: the late wake-ups are the ones it
        // beats, and leaving them out would teach a lead too short.
        let prewoken = completion.take_prewoken();
        if let (Some(plan), true, true) = (self.plan, self.timed, prewoken) {
            self.durations.observe_wake(plan.at, Instant::now());
        }
        if completion.is_done() {
            return Ok(true);
        }
        let (Some(plan), true) = (self.plan, prewoken) else {
            return Ok(false);
        };
        Ok(spin
            && py.detach(|| {
                let _spinning = prewake::Spinning::start();
                completion.spin(plan.spin)
            }))
    }

    /// Takes the outcome: `(kind, data, broken)`; kinds are VALUE, RAISED, LOAD_ERROR (data:
    /// pickled value or exception records), VALUE_BUFFERS (data: `(pickle, buffers)`, the
    /// buffers memoryviews of host memory) and BROKEN (broken: `(stage, reason)`, the stage one
    /// of the `STAGE_*` codes and the reason a str; data: exception records of the cause,
    /// possibly empty). The worker goes back to the cache.
    fn result<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<(u8, Bound<'py, PyAny>, Option<BrokenDetail>)> {
        let lease = self
            .lease
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("this call is over"))?;
        let completed_at = lease.completion().completed_at();
        let Finished { outcome, .. } = lease
            .finish()
            .ok_or_else(|| PyRuntimeError::new_err("the job is still running"))?;
        if let (Some(key), Some(completed_at)) = (self.key, completed_at) {
            self.durations
                .observe_run(key, lease.submitted(), completed_at);
        }
        self.lease = None;
        python_buffers::release_pinned(py);
        let bytes = |data: &[u8]| PyBytes::new(py, data).into_any();
        Ok(match outcome {
            Outcome::Value(data) => (VALUE, bytes(&data), None),
            Outcome::ValueWithBuffers(data, buffers) => {
                (VALUE_BUFFERS, value_with_buffers(py, &data, buffers)?, None)
            }
            Outcome::Raised(data) => (RAISED, bytes(&data), None),
            Outcome::LoadError(data) => (LOAD_ERROR, bytes(&data), None),
            Outcome::Broken(broken) => (
                BROKEN,
                bytes(broken.exception.as_deref().unwrap_or_default()),
                Some((broken.stage.code(), broken.reason)),
            ),
        })
    }

    /// Asks the running job to stop; returns at once. The worker is not reused.
    fn interrupt(&self) -> PyResult<()> {
        self.lease()?.interrupt();
        Ok(())
    }

    /// Gives up on the job and its worker (never reused; it ends itself when it can).
    fn abandon(&mut self) {
        if let Some(mut lease) = self.lease.take() {
            lease.abandon();
        }
    }

    /// The id of the worker running the job.
    #[getter]
    fn worker_id(&self) -> Option<u64> {
        self.lease.as_ref().and_then(Lease::worker_id)
    }
}

// `gil_used = true`: interpool is not checked for running without a GIL, so on a free-threaded
// build (Py_GIL_DISABLED) importing it re-enables the GIL, with CPython's RuntimeWarning, rather
// than claim a thread safety nobody tested. No effect on GIL builds.
#[pymodule(gil_used = true)]
fn _interpool(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Cache>()?;
    m.add_class::<Call>()?;
    m.add_class::<Auto>()?;
    m.add_class::<python_buffers::HostBuffer>()?;
    m.add_function(wrap_pyfunction!(worker_type_info, m)?)?;
    m.add_function(wrap_pyfunction!(end_all_subinterpreters, m)?)?;
    m.add_function(wrap_pyfunction!(live_subinterpreters, m)?)?;
    m.add_function(wrap_pyfunction!(configure_forkserver, m)?)?;
    m.add_function(wrap_pyfunction!(release_buffers, m)?)?;
    m.add_function(wrap_pyfunction!(lent_buffers, m)?)?;
    m.add_function(wrap_pyfunction!(refusal, m)?)?;
    // Process workers run this interpreter's executable, unless the host chose another.
    if worker_types::process::python_executable().is_none() {
        let executable: Option<String> = m.py().import("sys")?.getattr("executable")?.extract()?;
        if let Some(executable) = executable.filter(|e| !e.is_empty()) {
            worker_types::process::set_python_executable(executable);
        }
    }
    m.add("VALUE", VALUE)?;
    m.add("RAISED", RAISED)?;
    m.add("LOAD_ERROR", LOAD_ERROR)?;
    m.add("BROKEN", BROKEN)?;
    m.add("VALUE_BUFFERS", VALUE_BUFFERS)?;
    for stage in worker_types::Stage::ALL {
        m.add(format!("STAGE_{}", stage.name()).as_str(), stage.code())?;
    }
    m.add("BUFFER_THRESHOLD", worker_types::protocol::BUFFER_THRESHOLD)?;
    m.add("MAX_BUFFERS", worker_types::protocol::MAX_BUFFERS)?;
    m.add(
        "COPY_POPULATE_FROM",
        worker_types::large_copy::POPULATE_FROM,
    )?;
    m.add("COPY_SPLIT_FROM", worker_types::large_copy::SPLIT_FROM)?;
    m.add(
        "SUBINTERPRETER_REFUSALS",
        worker_types::subinterpreter::REFUSALS.to_vec(),
    )?;
    Ok(())
}
