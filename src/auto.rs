//! AUTO: which worker type serves a call, and falling back when a job cannot load. One
//! implementation for both front ends: the Python bindings (`src/python/mod.rs`, under
//! `interpool/_auto.py`) and the Rust [`crate::Pool`].
//!
//! An [`Auto`] owns one [`WorkerCache`] per available worker type and what AUTO has learnt:
//!
//! - **the ranking** ([`crate::scheduler::rank`]): capabilities first (`kill_on_cancel` needs a
//!   type with `hard_kill`), then each type's measured dispatch latency (the cache's estimate, fed
//!   by quick calls) or, before any call measured it, its
//!   [`latency_prior`](interpool_worker_types::WorkerType::latency_prior). The choice per requirement (`best`, and `away`:
//!   the fastest type that is not a subinterpreter) is recomputed only when something changes (a
//!   fallback, a pin, a statistics read, every [`RERANK_EVERY`] calls that parked), never per
//!   call, and each recomputation bumps [`Auto::generation`], so that a front end caching the
//!   choice (the Python warm path reads one list) knows when to read it again.
//! - **routes**: pins (a callable, `module:qualname`, or a module and its submodules, sent to one
//!   type) and modules routed away from subinterpreters after a load error. A call is looked up
//!   only once some route exists: its own pin first, then its module's route, then its
//!   packages' (`a.b.c`, `a.b`, `a`).
//! - **the fallback of load errors** ([`Auto::fallback`]): a job whose callable, arguments or the
//!   parent's main script could not be *unpickled* in a subinterpreter, for any reason, or that hit
//!   a module refusing to load there *while it ran* (the worker loop tells such an import from a
//!   user's `raise`), is re-run once on the fastest process type, and the process's outcome is
//!   the call's. A module that refused ([`refusal`]) is routed away at once; one that failed to
//!   load otherwise, once a process loaded it ([`Auto::loaded_elsewhere`]). An `init` that
//!   refuses makes the whole context skip subinterpreters. A pinned callable never falls back.
//!   Nothing else is retried: not an exception raised by the user's function.
//!
//! Refusals are read from the worker's **exception records** (see `src/wire.rs`): the type
//! name, the message and, for an `ImportError`, its `name`, over the whole cause/context chain,
//! with the markers of [`interpool_worker_types::subinterpreter::REFUSALS`] (CPython's,
//! PyO3's and Cython's messages; numpy's "Original error was: ..." is a chained one).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

use interpool_worker_types::{subinterpreter::REFUSALS, Outcome, Stage};

use crate::{
    cache::WorkerCache,
    scheduler::{self, Candidate},
    wire::{self, Record},
    Error, Result,
};

/// Calls that parked (the slow path) between two rankings.
pub const RERANK_EVERY: usize = 64;

/// The worker type name AUTO treats as the one to fall back from.
const SUBINTERPRETER: &str = "subinterpreter";
/// No type: an `away` choice where only subinterpreters are available.
const NONE: usize = usize::MAX;

/// What identifies a call for its routes: the callable's module and qualified name, when known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallableKey<'a> {
    /// `os.path` of `os.path:join`.
    pub module: Option<&'a str>,
    /// `join` of `os.path:join`, `Class.method` of a method.
    pub qualname: Option<&'a str>,
}

impl<'a> CallableKey<'a> {
    /// The key of a `"module:qualname"` target (a module alone without the colon).
    pub fn parse(target: &'a str) -> Self {
        match target.split_once(':') {
            Some((module, qualname)) => Self {
                module: Some(module),
                qualname: Some(qualname),
            },
            None => Self {
                module: Some(target),
                qualname: None,
            },
        }
    }
}

/// Where a route sends a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Pinned to this type (an index into the slots of [`Auto`]).
    To(usize),
    /// Away from subinterpreters: to the fastest other type.
    Away,
}

/// A failed outcome, as [`Auto::fallback`] weighs it.
#[derive(Debug, Clone, Copy)]
pub enum Failure<'a> {
    /// The job did not load (or a module refused to load while it ran): its exception records.
    Load(&'a [u8]),
    /// The worker broke: when, and the records of its exception (possibly empty).
    Broken {
        /// The `Broken` stage: only [`Stage::Setup`] and [`Stage::Init`] (the worker failed
        /// before any job ran) can fall back.
        stage: Stage,
        /// Pickled exception records, or empty.
        records: &'a [u8],
    },
}

impl<'a> Failure<'a> {
    /// The failure an outcome is, if it is one [`Auto::fallback`] weighs: a load error or a
    /// broken worker.
    pub fn of(outcome: &'a Outcome) -> Option<Self> {
        match outcome {
            Outcome::LoadError(records) => Some(Failure::Load(records)),
            Outcome::Broken(broken) => Some(Failure::Broken {
                stage: broken.stage,
                records: broken.exception.as_deref().unwrap_or_default(),
            }),
            _ => None,
        }
    }
}

/// One worker type of an [`Auto`], as its statistics say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeStatistics {
    /// The type's name (`"subinterpreter"`, `"forkserver"`, `"spawn"`).
    pub worker_type: &'static str,
    /// Its workers waiting for a job.
    pub idle_workers: usize,
    /// Its jobs in progress.
    pub running_workers: usize,
    /// Its measured dispatch latency, if quick calls measured it.
    pub latency_estimate: Option<Duration>,
    /// Jobs re-run on a process after they failed to load here (subinterpreters only).
    pub fallbacks: u64,
    /// Modules routed away from this type, each with the module that refused to load (or
    /// `<ErrorType>` when the job failed to load otherwise and loaded on a process); `<init>`
    /// when the `init` hook refused. Subinterpreters only; in the order they were learnt.
    pub routed_away: Vec<(String, String)>,
    /// The pins to this type (modules, or `module:qualname`), in the order they were made.
    pub pinned: Vec<String>,
}

/// One available worker type and its cache.
#[derive(Debug)]
struct Slot {
    name: &'static str,
    hard_kill: bool,
    prior: Duration,
    cache: WorkerCache,
}

#[derive(Debug, Default)]
struct State {
    /// Key (module, or `module:qualname`) → route. Empty on the fast path.
    routes: HashMap<String, Route>,
    /// Key → pinned type, in the order pinned.
    pins: Vec<(String, usize)>,
    /// Module → the module that refused (or `<ErrorType>`), in the order learnt.
    routed_away: Vec<(String, String)>,
    /// The module an `init` refused to load with: the context skips subinterpreters.
    init_refused: Option<String>,
    fallbacks: u64,
}

/// AUTO over the caches of the available worker types: see the module docs.
#[derive(Debug)]
pub struct Auto {
    slots: Vec<Slot>,
    /// The subinterpreter slot, if that type is here.
    subinterpreter: Option<usize>,
    state: Mutex<State>,
    /// `best[kill_on_cancel]`: the slot serving a call with no route.
    best: [AtomicUsize; 2],
    /// `away[kill_on_cancel]`: the fastest slot that is not a subinterpreter, or [`NONE`].
    away: [AtomicUsize; 2],
    /// Whether any route exists (else no call is looked up).
    has_routes: AtomicBool,
    /// Bumped by every ranking.
    generation: AtomicU64,
    /// Calls that parked since the last ranking.
    parked: AtomicUsize,
}

impl Auto {
    /// AUTO over `caches` (one per worker type, in the registry's order; every type available).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when `caches` is empty.
    pub fn new(caches: Vec<WorkerCache>) -> Result<Self> {
        if caches.is_empty() {
            return Err(Error::Unavailable {
                worker_type: "auto",
                reason: "no worker type is available".into(),
            });
        }
        let slots: Vec<Slot> = caches
            .into_iter()
            .map(|cache| {
                let kind = cache.worker_type();
                Slot {
                    name: kind.name(),
                    hard_kill: kind.capabilities().hard_kill,
                    prior: kind.latency_prior(),
                    cache,
                }
            })
            .collect();
        let auto = Self {
            subinterpreter: slots.iter().position(|s| s.name == SUBINTERPRETER),
            slots,
            state: Mutex::new(State::default()),
            best: [AtomicUsize::new(0), AtomicUsize::new(0)],
            away: [AtomicUsize::new(NONE), AtomicUsize::new(NONE)],
            has_routes: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            parked: AtomicUsize::new(0),
        };
        auto.rerank();
        Ok(auto)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether there is more than one type to choose from (else every call goes to slot 0).
    pub fn chooses(&self) -> bool {
        self.slots.len() > 1
    }

    /// The cache of slot `i`.
    pub fn cache(&self, i: usize) -> &WorkerCache {
        &self.slots[i].cache
    }

    /// The type name of slot `i`.
    pub fn name(&self, i: usize) -> &'static str {
        self.slots[i].name
    }

    /// Every type's cache.
    pub fn caches(&self) -> impl Iterator<Item = &WorkerCache> {
        self.slots.iter().map(|s| &s.cache)
    }

    /// The slot of the type called `name`, if it is here.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// Changes whenever the choice of any call may have changed (see the module docs).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether any route exists: without one, every call goes to [`Auto::best`].
    pub fn has_routes(&self) -> bool {
        self.has_routes.load(Ordering::Acquire)
    }

    /// The slot serving a call without a route.
    pub fn best(&self, kill_on_cancel: bool) -> usize {
        self.best[usize::from(kill_on_cancel)].load(Ordering::Acquire)
    }

    /// The fastest slot that is not a subinterpreter, if there is one.
    pub fn away(&self, kill_on_cancel: bool) -> Option<usize> {
        match self.away[usize::from(kill_on_cancel)].load(Ordering::Acquire) {
            NONE => None,
            i => Some(i),
        }
    }

    /// The slot serving this call: its route's, else the best.
    pub fn choose(&self, key: CallableKey<'_>, kill_on_cancel: bool) -> usize {
        if !self.has_routes() {
            return self.best(kill_on_cancel);
        }
        match lookup(&self.state().routes, key) {
            None => self.best(kill_on_cancel),
            Some(Route::To(i)) => i,
            Some(Route::Away) => self
                .away(kill_on_cancel)
                .unwrap_or_else(|| self.best(kill_on_cancel)),
        }
    }

    /// Whether a call to `key` is pinned to a type.
    pub fn pinned(&self, key: CallableKey<'_>) -> bool {
        self.has_routes() && matches!(lookup(&self.state().routes, key), Some(Route::To(_)))
    }

    /// Whether a call to `key` that runs on slot `i` may be re-run elsewhere ([`Auto::fallback`]):
    /// the caller keeps a copy of its job only then.
    pub fn may_fall_back(&self, i: usize, key: CallableKey<'_>) -> bool {
        Some(i) == self.subinterpreter && self.away(false).is_some() && !self.pinned(key)
    }

    /// The available types able to run a call, fastest first (`allow_subinterpreter`: false
    /// leaves subinterpreters out). A `kill_on_cancel` call on a host without a killable type gets
    /// the best effort, as it would asking for one explicitly.
    pub fn order(&self, kill_on_cancel: bool, allow_subinterpreter: bool) -> Vec<usize> {
        let candidates: Vec<Candidate> = self
            .slots
            .iter()
            .map(|s| Candidate {
                name: s.name.to_owned(),
                available: true,
                hard_kill: s.hard_kill,
                allowed: allow_subinterpreter || s.name != SUBINTERPRETER,
                estimate: s.cache.latency_estimate(),
                prior: s.prior,
            })
            .collect();
        let mut names = scheduler::rank(&candidates, kill_on_cancel);
        if names.is_empty() && kill_on_cancel {
            names = scheduler::rank(&candidates, false);
        }
        names.iter().filter_map(|name| self.index(name)).collect()
    }

    /// Recomputes the choices from the current estimates and bumps the generation.
    pub fn rerank(&self) {
        let state = self.state();
        self.rerank_locked(&state);
    }

    fn rerank_locked(&self, state: &State) {
        let subinterpreters_ok = state.init_refused.is_none();
        for kill in [false, true] {
            let best = self.order(kill, subinterpreters_ok).first().copied();
            let away = self.order(kill, false).first().copied().unwrap_or(NONE);
            // Only subinterpreters here and an init refused them: they are all there is.
            let best = best.unwrap_or_else(|| self.order(kill, true)[0]);
            self.best[usize::from(kill)].store(best, Ordering::Release);
            self.away[usize::from(kill)].store(away, Ordering::Release);
        }
        self.has_routes
            .store(!state.routes.is_empty(), Ordering::Release);
        self.parked.store(0, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A call parked (the slow path): reranks now and then, as estimates move. True if it did.
    pub fn note_parked(&self) -> bool {
        if self.parked.fetch_add(1, Ordering::Relaxed) + 1 < RERANK_EVERY {
            return false;
        }
        self.rerank();
        true
    }

    /// Pins calls of `key` (a module: its submodules too; or `module:qualname`) to the type
    /// `worker_type`, overriding the ranking and the fallback; `None` removes the pin (a module
    /// routed away stays routed away).
    ///
    /// # Errors
    /// [`Error::InvalidTarget`] for an empty key, [`Error::Unavailable`] for a type that is not
    /// here.
    pub fn pin(&self, key: &str, worker_type: Option<&str>) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidTarget {
                target: key.to_owned(),
                reason: "a pin names a module, or module:qualname, not nothing".into(),
            });
        }
        let to = worker_type
            .map(|name| {
                self.index(name).ok_or_else(|| Error::Unavailable {
                    worker_type: static_name(name),
                    reason: "nothing can be pinned to a type that cannot run here".into(),
                })
            })
            .transpose()?;
        let mut state = self.state();
        match to {
            None => {
                state.pins.retain(|(k, _)| k != key);
                if state.routed_away.iter().any(|(m, _)| m == key) {
                    state.routes.insert(key.to_owned(), Route::Away);
                } else {
                    state.routes.remove(key);
                }
            }
            Some(i) => {
                match state.pins.iter_mut().find(|(k, _)| k == key) {
                    Some(pin) => pin.1 = i,
                    None => state.pins.push((key.to_owned(), i)),
                }
                state.routes.insert(key.to_owned(), Route::To(i));
            }
        }
        self.rerank_locked(&state);
        Ok(())
    }

    /// A call to `key` that ran on slot `from` failed: the slot that re-runs it, or `None` (the
    /// failure is the call's). See the module docs for the rule.
    pub fn fallback(
        &self,
        from: usize,
        failure: Failure<'_>,
        key: CallableKey<'_>,
        kill_on_cancel: bool,
    ) -> Option<usize> {
        if !self.may_fall_back(from, key) {
            return None;
        }
        let mut state = self.state();
        match failure {
            Failure::Load(records) => {
                let refused = refusal(records);
                state.fallbacks += 1;
                if let (Some(refused), Some(module)) = (refused, key.module) {
                    learn(&mut state.routed_away, module, refused);
                    state.routes.entry(module.to_owned()).or_insert(Route::Away);
                }
            }
            Failure::Broken {
                stage: Stage::Setup | Stage::Init,
                records,
            } if !records.is_empty() => {
                state.init_refused = Some(refusal(records)?);
                state.fallbacks += 1;
            }
            Failure::Broken { .. } => return None,
        }
        self.rerank_locked(&state);
        self.away(kill_on_cancel)
    }

    /// A job of `key` that failed to load in a subinterpreter (`records`: that load error, for a
    /// reason other than a refusal) loaded on a process: its module goes away from
    /// subinterpreters, with the root error's type (`<AttributeError>`) in place of a refusing
    /// module.
    pub fn loaded_elsewhere(&self, key: CallableKey<'_>, records: &[u8]) {
        let Some(module) = key.module else {
            return;
        };
        let mut state = self.state();
        if state.routed_away.iter().any(|(m, _)| m == module) {
            return;
        }
        let root = root_error_type(records);
        learn(&mut state.routed_away, module, format!("<{root}>"));
        state.routes.entry(module.to_owned()).or_insert(Route::Away);
        self.rerank_locked(&state);
    }

    /// Per type, in slot order: its counts, estimate and what AUTO learnt. Reranks first.
    pub fn statistics(&self) -> Vec<TypeStatistics> {
        let state = self.state();
        self.rerank_locked(&state);
        self.slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let counts = slot.cache.statistics();
                let is_sub = Some(i) == self.subinterpreter;
                let mut routed_away = if is_sub {
                    state.routed_away.clone()
                } else {
                    Vec::new()
                };
                if let (true, Some(refused)) = (is_sub, &state.init_refused) {
                    routed_away.push(("<init>".into(), refused.clone()));
                }
                TypeStatistics {
                    worker_type: slot.name,
                    idle_workers: counts.idle_workers,
                    running_workers: counts.running_workers,
                    latency_estimate: slot.cache.latency_estimate(),
                    fallbacks: if is_sub { state.fallbacks } else { 0 },
                    routed_away,
                    pinned: state
                        .pins
                        .iter()
                        .filter(|(_, to)| *to == i)
                        .map(|(k, _)| k.clone())
                        .collect(),
                }
            })
            .collect()
    }
}

/// The `&'static` name of a type that is not here, for [`Error::Unavailable`]: one of the
/// registry's names, else `"unknown"`.
fn static_name(name: &str) -> &'static str {
    interpool_worker_types::worker_types()
        .iter()
        .map(|t| t.name())
        .find(|n| *n == name)
        .unwrap_or("unknown")
}

/// Inserts or updates `module` in an ordered map, keeping its first place.
fn learn(routed_away: &mut Vec<(String, String)>, module: &str, why: String) {
    match routed_away.iter_mut().find(|(m, _)| m == module) {
        Some(entry) => entry.1 = why,
        None => routed_away.push((module.to_owned(), why)),
    }
}

/// The route of `key`: its own pin, then its module's route, then its packages'.
fn lookup(routes: &HashMap<String, Route>, key: CallableKey<'_>) -> Option<Route> {
    let mut module = key.module?;
    if let Some(qualname) = key.qualname {
        if let Some(&route) = routes.get(&format!("{module}:{qualname}")) {
            return Some(route);
        }
    }
    loop {
        if let Some(&route) = routes.get(module) {
            return Some(route);
        }
        module = module.rsplit_once('.')?.0;
    }
}

/// The name of the module that refused to load in a subinterpreter, if the exception of
/// `records` or anything in its cause/context chain says one did (`"?"` when the message names
/// none and the `ImportError` has no `name`); else `None`. Only an `ImportError` (or subclass)
/// or PyO3's `PanicException` counts: a `ValueError` quoting the message is no refusal.
pub fn refusal(records: &[u8]) -> Option<String> {
    let records = wire::records(records)?;
    let mut seen = vec![false; records.len()];
    let mut stack = vec![0];
    while let Some(i) = stack.pop() {
        let Some(record) = records.get(i).filter(|_| !seen[i]) else {
            continue;
        };
        seen[i] = true;
        if let Some(module) = refused_by(record) {
            return Some(module);
        }
        // Depth first, the context before the cause (as the Python front end walked them).
        stack.extend(record.cause);
        stack.extend(record.context);
    }
    None
}

/// The refusing module, if this one record is a refusal.
fn refused_by(record: &Record) -> Option<String> {
    let panic = record.type_name.rsplit('.').next() == Some("PanicException");
    if record.import_name.is_none() && !panic {
        return None;
    }
    let message = &record.message;
    let (marker, at) = REFUSALS
        .iter()
        .find_map(|m| message.find(m).map(|at| (*m, at)))?;
    let head = message[..at].trim_end();
    // "... module numpy._core._multiarray_umath does not support loading in subinterpreters"
    if marker == REFUSALS[0] && !head.is_empty() {
        return head.rsplit(' ').next().map(str::to_owned);
    }
    Some(
        record
            .import_name
            .clone()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "?".into()),
    )
}

/// The class name of the root of a load error's `__cause__` chain (the main script's loader
/// wraps the real error); `"?"` for undecodable records.
fn root_error_type(records: &[u8]) -> String {
    let Some(records) = wire::records(records) else {
        return "?".into();
    };
    let mut i = 0;
    for _ in 0..records.len() {
        match records[i].cause {
            Some(cause) if cause < records.len() => i = cause,
            _ => break,
        }
    }
    let type_name = &records[i].type_name;
    type_name.rsplit('.').next().unwrap_or(type_name).to_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{atomic::AtomicU64, Arc};

    use interpool_worker_types::{
        Availability, Broken, Capabilities, Completion, Finished, Job, Rejected, Retire, Worker,
        WorkerConfig, WorkerType,
    };
    use serde_pickle::{SerOptions, Value};

    use super::*;
    use crate::Recycling;

    /// A worker type named like a real one, with its prior and killability, whose workers answer
    /// every job at once with its payload.
    #[derive(Debug)]
    struct Fake {
        name: &'static str,
        hard_kill: bool,
        prior_us: u64,
    }

    #[derive(Debug)]
    struct FakeWorker(u64);

    impl WorkerType for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn availability(&self) -> Availability {
            Availability::Available
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                hard_kill: self.hard_kill,
                crash_isolation: self.hard_kill,
            }
        }
        fn latency_prior(&self) -> Duration {
            Duration::from_micros(self.prior_us)
        }
        fn start(
            &self,
            _config: Arc<WorkerConfig>,
        ) -> interpool_worker_types::Result<Box<dyn Worker>> {
            static IDS: AtomicU64 = AtomicU64::new(1);
            Ok(Box::new(FakeWorker(IDS.fetch_add(1, Ordering::Relaxed))))
        }
    }

    impl Worker for FakeWorker {
        fn id(&self) -> u64 {
            self.0
        }
        fn submit(&self, job: Job) -> std::result::Result<Arc<Completion>, Rejected> {
            let completion = Arc::new(Completion::new());
            completion.complete(Finished {
                outcome: Outcome::Value(job.payload),
                retire: Retire::Keep,
            });
            Ok(completion)
        }
        fn interrupt(&self) {}
        fn abandon(&self) {}
        fn close(&self) {}
        fn is_accepting(&self) -> bool {
            true
        }
        fn wait_ended(&self, _timeout: Option<Duration>) -> bool {
            true
        }
    }

    pub(crate) fn fake(name: &'static str, hard_kill: bool, prior_us: u64) -> Arc<dyn WorkerType> {
        Arc::new(Fake {
            name,
            hard_kill,
            prior_us,
        })
    }

    /// AUTO over new caches of `types`.
    pub(crate) fn auto_over(types: Vec<Arc<dyn WorkerType>>) -> Auto {
        let caches = types
            .into_iter()
            .map(|t| WorkerCache::new(t, None, Recycling::default()).unwrap())
            .collect();
        Auto::new(caches).unwrap()
    }

    /// AUTO over fakes of the three real types, with their real priors' order.
    fn three() -> Auto {
        auto_over(vec![
            fake("subinterpreter", false, 15),
            fake("forkserver", true, 60),
            fake("spawn", true, 80),
        ])
    }

    fn names(auto: &Auto, slots: &[usize]) -> Vec<&'static str> {
        slots.iter().map(|&i| auto.name(i)).collect()
    }

    /// Feeds `latency` into slot `i`'s estimate, as enough quick calls would.
    pub(crate) fn measure(auto: &Auto, i: usize, latency: Duration) {
        for _ in 0..64 {
            auto.cache(i).observe(latency);
        }
    }

    /// One exception of a chain: `(type_name, message, import_name, cause, context)`.
    type Exception<'a> = (&'a str, &'a str, Option<&'a str>, Option<i64>, Option<i64>);

    /// Pickled exception records of one chain, the raised exception first.
    fn records(chain: &[Exception<'_>]) -> Vec<u8> {
        let string = |s: &str| Value::String(s.to_owned());
        let index = |i: Option<i64>| i.map_or(Value::None, Value::I64);
        let list = chain
            .iter()
            .map(|&(type_name, message, import_name, cause, context)| {
                Value::Tuple(vec![
                    Value::None,
                    Value::None,
                    string(type_name),
                    string(message),
                    string("Traceback ...\n"),
                    import_name.map_or(Value::None, string),
                    index(cause),
                    index(context),
                    Value::Bool(false),
                ])
            })
            .collect();
        serde_pickle::value_to_vec(&Value::List(list), SerOptions::new()).unwrap()
    }

    fn import_error(message: &str) -> Vec<u8> {
        records(&[("builtins.ImportError", message, Some(""), None, None)])
    }

    const NUMPY: &str = "module numpy._core._multiarray_umath does not support loading in \
                         subinterpreters";

    fn key(target: &str) -> CallableKey<'_> {
        CallableKey::parse(target)
    }

    #[test]
    fn ranking_starts_from_the_priors() {
        let auto = three();
        assert_eq!(
            names(&auto, &auto.order(false, true)),
            ["subinterpreter", "forkserver", "spawn"]
        );
        assert_eq!(auto.name(auto.best(false)), "subinterpreter");
        assert_eq!(auto.name(auto.best(true)), "forkserver", "needs hard_kill");
        assert_eq!(auto.away(false).map(|i| auto.name(i)), Some("forkserver"));
    }

    #[test]
    fn ranking_follows_the_measured_latency_once_reranked() {
        let auto = three();
        measure(&auto, 0, Duration::from_micros(12));
        measure(&auto, 1, Duration::from_micros(90));
        measure(&auto, 2, Duration::from_micros(40));
        let before = auto.generation();
        assert_eq!(auto.name(auto.best(true)), "forkserver", "not per call");
        auto.rerank();
        assert!(auto.generation() > before);
        assert_eq!(auto.name(auto.best(false)), "subinterpreter");
        assert_eq!(auto.name(auto.best(true)), "spawn");
        measure(&auto, 0, Duration::from_micros(200));
        auto.rerank();
        assert_eq!(
            names(&auto, &auto.order(false, true)),
            ["spawn", "forkserver", "subinterpreter"]
        );
    }

    #[test]
    fn ranking_is_recomputed_after_enough_parked_calls() {
        let auto = three();
        measure(&auto, 2, Duration::from_micros(10));
        for _ in 0..RERANK_EVERY - 1 {
            assert!(!auto.note_parked());
        }
        assert_eq!(auto.name(auto.best(true)), "forkserver");
        assert!(auto.note_parked());
        assert_eq!(auto.name(auto.best(true)), "spawn");
    }

    #[test]
    fn without_a_killable_type_kill_on_cancel_gets_the_best_effort() {
        let auto = auto_over(vec![fake("subinterpreter", false, 15)]);
        assert_eq!(auto.name(auto.best(true)), "subinterpreter");
        assert_eq!(auto.away(false), None);
        assert!(
            !auto.may_fall_back(0, key("m:f")),
            "nowhere to fall back to"
        );
    }

    #[test]
    fn refusals_are_read_from_the_records() {
        for (message, import_name, module) in [
            (
                "module _testsinglephase does not support loading in subinterpreters",
                "",
                "_testsinglephase",
            ),
            ("cannot load module more than once per process", "", "?"),
            (
                "PyO3 modules do not yet support subinterpreters, see ...",
                "pc",
                "pc",
            ),
            (
                "Interpreter change detected - this module can only be loaded",
                "",
                "?",
            ),
        ] {
            let pickled = records(&[(
                "builtins.ImportError",
                message,
                Some(import_name),
                None,
                None,
            )]);
            assert_eq!(refusal(&pickled).as_deref(), Some(module), "{message}");
        }
        let panic = records(&[(
            "pyo3_runtime.PanicException",
            "Interpreter change detected",
            None,
            None,
            None,
        )]);
        assert_eq!(refusal(&panic).as_deref(), Some("?"));
    }

    #[test]
    fn a_refusal_is_found_anywhere_in_the_chain_and_only_in_import_errors() {
        // RuntimeError, its context an ImportError caused by numpy's refusal.
        let chain = records(&[
            (
                "builtins.RuntimeError",
                "while loading",
                None,
                None,
                Some(1),
            ),
            (
                "builtins.ImportError",
                "Unable to import required dependency numpy",
                Some(""),
                Some(2),
                None,
            ),
            ("builtins.ImportError", NUMPY, Some(""), None, None),
        ]);
        assert_eq!(
            refusal(&chain).as_deref(),
            Some("numpy._core._multiarray_umath")
        );
        assert_eq!(refusal(&import_error("No module named 'nope'")), None);
        let lookalike = records(&[(
            "builtins.ValueError",
            "does not support loading in subinterpreters",
            None,
            None,
            None,
        )]);
        assert_eq!(refusal(&lookalike), None);
        assert_eq!(refusal(b"not records"), None);
        // A cycle (an exception its own context) ends.
        let cycle = records(&[("builtins.KeyError", "k", None, None, Some(0))]);
        assert_eq!(refusal(&cycle), None);
    }

    #[test]
    fn a_refusal_routes_the_module_away_at_once() {
        let auto = three();
        let sub = auto.best(false);
        let retry = auto.fallback(
            sub,
            Failure::Load(&import_error(NUMPY)),
            key("pkg.uses_numpy:total"),
            false,
        );
        assert_eq!(retry.map(|i| auto.name(i)), Some("forkserver"));
        assert!(auto.has_routes());
        assert_eq!(
            auto.name(auto.choose(key("pkg.uses_numpy:other"), false)),
            "forkserver"
        );
        assert_eq!(
            auto.name(auto.choose(key("pkg.uses_numpy.sub:f"), false)),
            "forkserver"
        );
        assert_eq!(
            auto.name(auto.choose(key("pkg:f"), false)),
            "subinterpreter"
        );
        let stats = &auto.statistics()[sub];
        assert_eq!(stats.fallbacks, 1);
        assert_eq!(
            stats.routed_away,
            [(
                "pkg.uses_numpy".to_owned(),
                "numpy._core._multiarray_umath".to_owned()
            )]
        );
    }

    #[test]
    fn another_load_error_falls_back_and_routes_away_once_a_process_loaded_it() {
        let auto = three();
        let failed = records(&[
            (
                "builtins.ImportError",
                "loading the parent's main script",
                Some("__mp_main__"),
                Some(1),
                None,
            ),
            (
                "builtins.AttributeError",
                "no attribute 'f'",
                None,
                None,
                None,
            ),
        ]);
        let retry = auto.fallback(0, Failure::Load(&failed), key("m:f"), false);
        assert!(retry.is_some());
        assert!(!auto.has_routes(), "not routed yet");
        assert_eq!(auto.statistics()[0].fallbacks, 1);
        auto.loaded_elsewhere(key("m:f"), &failed);
        assert_eq!(auto.name(auto.choose(key("m:g"), false)), "forkserver");
        assert_eq!(
            auto.statistics()[0].routed_away,
            [("m".to_owned(), "<AttributeError>".to_owned())]
        );
    }

    #[test]
    fn nothing_falls_back_from_a_process_a_raise_or_a_broken_job() {
        let auto = three();
        let numpy = import_error(NUMPY);
        assert_eq!(
            auto.fallback(1, Failure::Load(&numpy), key("m:f"), false),
            None
        );
        for stage in [Stage::Start, Stage::Job, Stage::Interrupted, Stage::Died] {
            let broken = Failure::Broken {
                stage,
                records: &numpy,
            };
            assert_eq!(
                auto.fallback(0, broken, key("m:f"), false),
                None,
                "{stage:?}"
            );
        }
        let init_failed = Failure::Broken {
            stage: Stage::Init,
            records: &import_error("No module named 'x'"),
        };
        assert_eq!(auto.fallback(0, init_failed, key("m:f"), false), None);
        assert_eq!(auto.statistics()[0].fallbacks, 0);
    }

    #[test]
    fn an_init_that_refuses_sends_the_whole_context_to_processes() {
        let auto = three();
        let refused = import_error(NUMPY);
        let broken = Failure::Broken {
            stage: Stage::Init,
            records: &refused,
        };
        assert_eq!(auto.fallback(0, broken, key("os:getpid"), false), Some(1));
        assert_eq!(auto.name(auto.best(false)), "forkserver");
        let stats = &auto.statistics()[0];
        assert_eq!(stats.fallbacks, 1);
        assert_eq!(
            stats.routed_away,
            [(
                "<init>".to_owned(),
                "numpy._core._multiarray_umath".to_owned()
            )]
        );
    }

    #[test]
    fn a_refusing_setup_falls_back_by_its_stage_whatever_its_reason_says() {
        // The reason is for people: reworded, or empty, the stage still decides.
        for (stage, reason) in [(Stage::Init, "reworded"), (Stage::Setup, "")] {
            let auto = three();
            let mut broken = Broken::new(stage, reason);
            broken.exception = Some(import_error(NUMPY));
            let outcome = Outcome::Broken(broken);
            let failure = Failure::of(&outcome).expect("a broken worker is a failure");
            assert_eq!(auto.fallback(0, failure, key("m:f"), false), Some(1));
        }
        // A job's own reason text, quoted as an init's, does not make it a setup failure.
        let auto = three();
        let mut broken = Broken::new(Stage::Job, "the worker's init raised an exception");
        broken.exception = Some(import_error(NUMPY));
        let outcome = Outcome::Broken(broken);
        let failure = Failure::of(&outcome).expect("a broken worker is a failure");
        assert_eq!(auto.fallback(0, failure, key("m:f"), false), None);
        assert!(Failure::of(&Outcome::Value(Vec::new())).is_none());
    }

    #[test]
    fn pins_route_a_callable_or_a_module_and_never_fall_back() {
        let auto = three();
        auto.pin("pkg", Some("spawn")).unwrap();
        auto.pin("other:f", Some("forkserver")).unwrap();
        assert_eq!(auto.name(auto.choose(key("pkg.sub:f"), false)), "spawn");
        assert_eq!(auto.name(auto.choose(key("other:f"), true)), "forkserver");
        assert_eq!(
            auto.name(auto.choose(key("other:g"), false)),
            "subinterpreter"
        );
        auto.pin("here:f", Some("subinterpreter")).unwrap();
        assert!(auto.pinned(key("here:f")));
        let numpy = import_error(NUMPY);
        assert_eq!(
            auto.fallback(0, Failure::Load(&numpy), key("here:f"), false),
            None
        );
        let stats = auto.statistics();
        assert_eq!(stats[2].pinned, ["pkg"]);
        assert_eq!(stats[1].pinned, ["other:f"]);
        assert_eq!(stats[0].fallbacks, 0);
        // Unpinning: back to the ranking.
        auto.pin("pkg", None).unwrap();
        assert_eq!(
            auto.name(auto.choose(key("pkg.sub:f"), false)),
            "subinterpreter"
        );
    }

    #[test]
    fn unpinning_a_module_routed_away_keeps_it_away() {
        let auto = three();
        auto.fallback(
            0,
            Failure::Load(&import_error(NUMPY)),
            key("np_user:f"),
            false,
        );
        auto.pin("np_user", Some("subinterpreter")).unwrap();
        assert_eq!(
            auto.name(auto.choose(key("np_user:f"), false)),
            "subinterpreter"
        );
        auto.pin("np_user", None).unwrap();
        assert_eq!(
            auto.name(auto.choose(key("np_user:f"), false)),
            "forkserver"
        );
    }

    #[test]
    fn bad_pins_are_refused_with_what_was_wrong() {
        let auto = auto_over(vec![
            fake("subinterpreter", false, 15),
            fake("spawn", true, 80),
        ]);
        assert!(matches!(
            auto.pin("", Some("spawn")),
            Err(Error::InvalidTarget { .. })
        ));
        match auto.pin("m", Some("forkserver")) {
            Err(Error::Unavailable { worker_type, .. }) => assert_eq!(worker_type, "forkserver"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(!auto.has_routes());
    }
}
