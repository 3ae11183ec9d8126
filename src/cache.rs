//! The worker cache: idle workers reused hottest-first, started on demand, ended on close.
//!
//! Reuse is LIFO: the worker that finished last is the one most likely still spinning for its next
//! job (no wake-up to pay) and with warm caches, and the least recently used ones are the ones
//! that reach their idle timeout and end. There is no size cap here: the caller's limiter decides
//! how many jobs run at once, and so how many workers exist (trio-parallel's model).
//!
//! Each submitted job holds its worker in a [`Lease`] until its outcome is taken; then the worker
//! goes back to the idle stack, or is let go if it is ending (retired, broken, killed). A worker
//! that has closed itself (idle timeout) hands the job back, and the cache gives it to the next
//! worker: no job is lost to that race. A worker still running its `retire` hook after a job
//! (the caller already has the outcome) hands the job back too: it stays on the idle stack and
//! the job goes to the next worker, or a new one.
//!
//! A worker the library interrupted (its job's interrupt claim won) is never reused if that cost
//! its process, and its exit is not reported at shutdown: the caller that cancelled knows.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use interpool_worker_types::{
    Completion, Finished, Job, Outcome, Rejected, Worker, WorkerConfig, WorkerType,
};

use crate::{scheduler::LatencyEstimate, Error, Result};

/// Counts of a cache's workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Statistics {
    /// Workers started and waiting for a job.
    pub idle_workers: usize,
    /// Jobs in progress (each holds one worker).
    pub running_workers: usize,
}

/// What closing a cache found.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Pickled exception records of every `retire` hook that raised (the worker was discarded).
    pub retire_failures: Vec<Vec<u8>>,
    /// Workers that had not ended when the grace period ran out, and could not be killed
    /// (types without `hard_kill`).
    pub not_ended: usize,
    /// Workers that had not ended when the grace period ran out and were killed.
    pub killed: usize,
    /// The non-zero exit codes (minus a signal number) of worker processes that ended without
    /// breaking a job: their own end went wrong, or they were killed while idle. Workers whose
    /// death broke a job are not here: that job's caller got the error.
    pub nonzero_exit_codes: Vec<i32>,
}

/// When a worker is replaced by a fresh one, besides its `retire` hook (loky's and
/// `ProcessPoolExecutor`'s worker recycling). Checked by the worker after each job, once the
/// caller has the outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recycling {
    /// A worker ends after this many jobs; `None`: never.
    pub max_tasks: Option<u64>,
    /// A worker ends after a job that leaves its memory above this many bytes (a process: its
    /// RSS, Linux only; a subinterpreter: the arenas of its own object allocator); `None`: no
    /// limit.
    pub max_memory: Option<u64>,
}

/// How long closing waits for a worker it killed after the grace period.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A worker told to end, and whether its exit code is still to be reported.
#[derive(Debug)]
struct Ending {
    worker: Box<dyn Worker>,
    report_exit: bool,
}

impl Ending {
    /// True (and any non-zero exit code and retire failure noted) once the worker has ended.
    fn ended(
        &self,
        timeout: Option<Duration>,
        codes: &mut Vec<i32>,
        retire_failures: &mut Vec<Vec<u8>>,
    ) -> bool {
        if !self.worker.wait_ended(timeout) {
            return false;
        }
        retire_failures.extend(self.worker.take_retire_failure());
        if let Some(code) = self
            .worker
            .exit_code()
            .filter(|&c| c != 0 && self.report_exit)
        {
            codes.push(code);
        }
        true
    }
}

#[derive(Debug)]
struct State {
    /// LIFO: the hottest worker is last.
    idle: Vec<Box<dyn Worker>>,
    running: usize,
    /// Workers told to end, kept so that closing can wait for them.
    ending: Vec<Ending>,
    retire_failures: Vec<Vec<u8>>,
    /// Non-zero exit codes of ended workers, for the shutdown report.
    nonzero_exit_codes: Vec<i32>,
    closed: bool,
}

#[derive(Debug)]
struct Inner {
    worker_type: Arc<dyn WorkerType>,
    idle_timeout: Option<Duration>,
    recycling: Recycling,
    state: Mutex<State>,
    /// This type's dispatch latency, fed by quick calls ([`Lease::observe_quick_return`]).
    latency: LatencyEstimate,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a worker's job slot back: the worker returns to the idle stack or is let go.
    /// `interrupted`: the job's interrupt claim won (the library stopped it).
    fn release(&self, worker: Box<dyn Worker>, finished: Option<&Finished>, interrupted: bool) {
        let ending = finished.is_none_or(Finished::worker_ends) || !worker.is_accepting();
        let mut state = self.state();
        state.running -= 1;
        if ending || state.closed {
            worker.close();
            // A job that broke told its caller why the worker died, and a worker the library
            // killed died of that; retired workers and ones that ended themselves report a bad
            // exit at shutdown.
            let broken = matches!(
                finished,
                Some(Finished {
                    outcome: Outcome::Broken(_),
                    ..
                })
            );
            let report_exit = !broken && !interrupted;
            prune_ending(&mut state);
            state.ending.push(Ending {
                worker,
                report_exit,
            });
        } else {
            state.idle.push(worker);
        }
    }
}

/// A cache of workers of one type, shared by every call of a worker context.
#[derive(Debug, Clone)]
pub struct WorkerCache {
    inner: Arc<Inner>,
}

impl WorkerCache {
    /// A cache of `worker_type` workers that end after `idle_timeout` without a job (`None`:
    /// never) and are recycled as `recycling` says. Fails if the type is unavailable here.
    pub fn new(
        worker_type: Arc<dyn WorkerType>,
        idle_timeout: Option<Duration>,
        recycling: Recycling,
    ) -> Result<Self> {
        if let interpool_worker_types::Availability::Unavailable(reason) =
            worker_type.availability()
        {
            return Err(Error::Unavailable {
                worker_type: worker_type.name(),
                reason,
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                worker_type,
                idle_timeout,
                recycling,
                state: Mutex::new(State {
                    idle: Vec::new(),
                    running: 0,
                    ending: Vec::new(),
                    retire_failures: Vec::new(),
                    nonzero_exit_codes: Vec::new(),
                    closed: false,
                }),
                latency: LatencyEstimate::default(),
            }),
        })
    }

    /// Runs `job` on the hottest idle worker, or on a new one. `setup` makes the new worker's
    /// setup payload (see [`WorkerConfig::setup`]); it is called only when a worker starts, and
    /// never while a lock of the cache is held.
    pub fn submit(&self, job: Job, setup: &dyn Fn() -> Result<Vec<u8>, String>) -> Result<Lease> {
        let mut job = job;
        // Workers still busy after their last job (retire hook): skipped now, kept for later.
        let mut not_ready = Vec::new();
        let result = loop {
            let cached = {
                let mut state = self.inner.state();
                if state.closed {
                    break Err(Error::Closed);
                }
                state.running += 1;
                state.idle.pop()
            };
            let worker = match cached {
                Some(worker) => worker,
                None => match self.start_worker(setup) {
                    Ok(worker) => worker,
                    Err(e) => {
                        self.inner.state().running -= 1;
                        break Err(e);
                    }
                },
            };
            // Measured from the hand-over: a worker's start is no dispatch latency.
            let submitted = Instant::now();
            match worker.submit(job) {
                Ok(completion) => {
                    break Ok(Lease {
                        cache: self.inner.clone(),
                        worker: Some(worker),
                        completion,
                        submitted,
                    })
                }
                // The job never started: it goes to the next worker.
                Err(Rejected(returned)) => {
                    job = returned;
                    if worker.is_accepting() {
                        self.inner.state().running -= 1;
                        not_ready.push(worker);
                    } else {
                        // It ended itself meanwhile (idle timeout, retired).
                        self.inner.release(worker, None, false);
                    }
                }
            }
        };
        if !not_ready.is_empty() {
            let mut state = self.inner.state();
            if state.closed {
                for worker in not_ready {
                    worker.close();
                    state.ending.push(Ending {
                        worker,
                        report_exit: true,
                    });
                }
            } else {
                // Back on top, hottest last, as they were: likely ready by the next call.
                state.idle.extend(not_ready.into_iter().rev());
            }
        }
        result
    }

    fn start_worker(&self, setup: &dyn Fn() -> Result<Vec<u8>, String>) -> Result<Box<dyn Worker>> {
        let config = WorkerConfig {
            setup: setup().map_err(Error::Setup)?,
            idle_timeout: self.inner.idle_timeout,
            max_tasks: self.inner.recycling.max_tasks,
            max_memory: self.inner.recycling.max_memory,
        };
        Ok(self.inner.worker_type.start(Arc::new(config))?)
    }

    /// The type of this cache's workers.
    pub fn worker_type(&self) -> &Arc<dyn WorkerType> {
        &self.inner.worker_type
    }

    /// The running estimate of this cache's dispatch latency (see [`crate::scheduler`]), or
    /// `None` before a quick call measured it.
    pub fn latency_estimate(&self) -> Option<Duration> {
        self.inner.latency.get()
    }

    /// Feeds `latency` into the estimate, as a quick call that took that long would.
    #[cfg(test)]
    pub(crate) fn observe(&self, latency: Duration) {
        self.inner.latency.observe(latency);
    }

    /// Current counts. Workers that ended themselves are pruned first.
    pub fn statistics(&self) -> Statistics {
        let mut state = self.inner.state();
        prune_idle(&mut state);
        Statistics {
            idle_workers: state.idle.len(),
            running_workers: state.running,
        }
    }

    /// Stops accepting jobs and tells idle workers to end. Jobs in progress finish; their workers
    /// end after them.
    pub fn close(&self) {
        let mut state = self.inner.state();
        state.closed = true;
        let idle = std::mem::take(&mut state.idle);
        for worker in &idle {
            worker.close();
        }
        state.ending.extend(idle.into_iter().map(|worker| Ending {
            worker,
            report_exit: true,
        }));
    }

    /// Waits up to `grace` (`None`: forever) for every closed worker to end, then kills those
    /// that have not (if their type can). Call [`WorkerCache::close`] first, and wait for running
    /// jobs before, or they count as not ended.
    pub fn wait_closed(&self, grace: Option<Duration>) -> ShutdownReport {
        let deadline = grace.map(|g| Instant::now() + g);
        let (ending, retire_failures, mut codes) = {
            let mut state = self.inner.state();
            (
                std::mem::take(&mut state.ending),
                std::mem::take(&mut state.retire_failures),
                std::mem::take(&mut state.nonzero_exit_codes),
            )
        };
        let mut retire_failures = retire_failures;
        let stragglers: Vec<_> = ending
            .into_iter()
            .filter(|e| {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                !e.ended(left, &mut codes, &mut retire_failures)
            })
            .collect();
        let (mut killed, mut not_ended) = (0, 0);
        for e in &stragglers {
            if e.worker.kill() && e.worker.wait_ended(Some(KILL_WAIT)) {
                killed += 1;
            } else {
                not_ended += 1;
            }
        }
        ShutdownReport {
            retire_failures,
            not_ended,
            killed,
            nonzero_exit_codes: codes,
        }
    }
}

/// Drops idle workers that closed themselves (idle timeout, or their process died), oldest
/// first; they end like any other.
fn prune_idle(state: &mut State) {
    let (idle, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut state.idle)
        .into_iter()
        .partition(|w| w.is_accepting());
    state.idle = idle;
    state.ending.extend(gone.into_iter().map(|worker| Ending {
        worker,
        report_exit: true,
    }));
}

/// Forgets ended workers, noting their non-zero exit codes and retire failures.
fn prune_ending(state: &mut State) {
    let State {
        ending,
        nonzero_exit_codes,
        retire_failures,
        ..
    } = state;
    ending.retain(|e| !e.ended(Some(Duration::ZERO), nonzero_exit_codes, retire_failures));
}

/// One job in progress and the worker it holds.
///
/// Dropping a lease whose job is still running abandons the worker: it is never reused.
#[derive(Debug)]
pub struct Lease {
    cache: Arc<Inner>,
    worker: Option<Box<dyn Worker>>,
    completion: Arc<Completion>,
    submitted: Instant,
}

impl Lease {
    /// The job's outcome slot: spin on it, park on its fd, or block on it.
    pub fn completion(&self) -> &Completion {
        &self.completion
    }

    /// The job's outcome slot, to hand to a thread that outlives this borrow (the prewake alarm).
    pub fn shared_completion(&self) -> &Arc<Completion> {
        &self.completion
    }

    /// When the job was submitted.
    pub fn submitted(&self) -> Instant {
        self.submitted
    }

    /// Feeds the time since the job was handed to its worker into the cache's latency
    /// estimate, if the call was quick: the caller calls this when the outcome came back while
    /// it spun, with its spin budget `spin`, so that job time does not count as dispatch latency.
    /// A sample longer than twice `spin` (room for the hand-over and the caller's own steps
    /// before it spun) is dropped: the outcome came back while the caller was descheduled (a
    /// loaded machine stretches a spin), or the job waited for a new worker to start; either
    /// would make the type look slow for no fault of its dispatch.
    pub fn observe_quick_return(&self, spin: Duration) {
        let elapsed = self.submitted.elapsed();
        if elapsed <= spin.saturating_mul(2) {
            self.cache.latency.observe(elapsed);
        }
    }

    /// The id of the worker running the job.
    pub fn worker_id(&self) -> Option<u64> {
        self.worker.as_ref().map(|w| w.id())
    }

    /// Takes the outcome if it is in, and hands the worker back to the cache (or lets it go if
    /// it ends). `None` while the job runs, or once taken.
    pub fn finish(&mut self) -> Option<Finished> {
        let finished = self.completion.take()?;
        if let Some(worker) = self.worker.take() {
            let interrupted = self.completion.interrupt_claimed();
            self.cache.release(worker, Some(&finished), interrupted);
        }
        Some(finished)
    }

    /// Asks the job to stop (asynchronously), unless it has completed: then nothing happens and
    /// the outcome stands. A worker that had to be killed for it is not reused.
    pub fn interrupt(&self) {
        if let Some(worker) = &self.worker {
            worker.interrupt();
        }
    }

    /// Gives up on the job and its worker: never reused, not counted any more, ends by itself.
    pub fn abandon(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.abandon();
            self.cache.state().running -= 1;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.finish().is_none() {
            self.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    use interpool_worker_types::{Availability, Capabilities, Retire};

    use super::*;

    /// A worker type whose workers complete each job at once, echoing the payload. Payloads
    /// `retire` and `retire-fails` drive the retire hook; `hold` leaves the job running (an
    /// interrupt then kills the worker, as a process's would); `busy-after` leaves the worker
    /// busy after its job (a slow retire hook) until `ready` is set.
    #[derive(Debug, Default)]
    struct Echo {
        started: AtomicUsize,
        unavailable: bool,
        /// Every worker's `ready` flag.
        ready_flags: Mutex<Vec<Arc<AtomicBool>>>,
    }

    #[derive(Debug)]
    struct EchoWorker {
        id: u64,
        accepting: Arc<AtomicBool>,
        abandoned: AtomicBool,
        /// False after a `stuck` job: closing does not end it, killing does.
        ends_on_close: AtomicBool,
        killed: AtomicBool,
        /// The exit code it reports once ended (`exit-3`, `broken` jobs set it).
        exit_code: Mutex<Option<i32>>,
        /// The current job's completion, for interrupts.
        current: Mutex<Option<Arc<Completion>>>,
        /// Cleared by a `busy-after` job: the worker refuses jobs but is not closed.
        ready: Arc<AtomicBool>,
        retire_failure: Mutex<Option<Vec<u8>>>,
        interrupts: AtomicUsize,
    }

    impl WorkerType for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn availability(&self) -> Availability {
            if self.unavailable {
                Availability::Unavailable("not here".into())
            } else {
                Availability::Available
            }
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                hard_kill: true,
                crash_isolation: true,
            }
        }
        fn latency_prior(&self) -> Duration {
            Duration::from_micros(1)
        }
        fn start(
            &self,
            _config: Arc<WorkerConfig>,
        ) -> interpool_worker_types::Result<Box<dyn Worker>> {
            static IDS: AtomicU64 = AtomicU64::new(1);
            self.started.fetch_add(1, Ordering::SeqCst);
            let ready = Arc::new(AtomicBool::new(true));
            self.ready_flags.lock().unwrap().push(ready.clone());
            Ok(Box::new(EchoWorker {
                id: IDS.fetch_add(1, Ordering::SeqCst),
                accepting: Arc::new(AtomicBool::new(true)),
                abandoned: AtomicBool::new(false),
                ends_on_close: AtomicBool::new(true),
                killed: AtomicBool::new(false),
                exit_code: Mutex::new(Some(0)),
                current: Mutex::new(None),
                ready,
                retire_failure: Mutex::new(None),
                interrupts: AtomicUsize::new(0),
            }))
        }
    }

    impl Worker for EchoWorker {
        fn id(&self) -> u64 {
            self.id
        }
        fn submit(&self, job: Job) -> std::result::Result<Arc<Completion>, Rejected> {
            if !self.accepting.load(Ordering::SeqCst) || !self.ready.load(Ordering::SeqCst) {
                return Err(Rejected(job));
            }
            let completion = Arc::new(Completion::new());
            *self.current.lock().unwrap() = Some(completion.clone());
            let retire = match job.payload.as_slice() {
                b"hold" => return Ok(completion),
                b"busy-after" => {
                    self.ready.store(false, Ordering::SeqCst);
                    Retire::Keep
                }
                b"stuck" => {
                    self.ends_on_close.store(false, Ordering::SeqCst);
                    Retire::Keep
                }
                b"exit-3" => {
                    *self.exit_code.lock().unwrap() = Some(3);
                    Retire::Keep
                }
                b"broken" => {
                    *self.exit_code.lock().unwrap() = Some(-11);
                    completion.complete(Finished {
                        outcome: Outcome::Broken(interpool_worker_types::Broken::new(
                            interpool_worker_types::Stage::Died,
                            "died",
                        )),
                        retire: Retire::Retire,
                    });
                    return Ok(completion);
                }
                b"retire" => Retire::Retire,
                b"retire-fails" => {
                    *self.retire_failure.lock().unwrap() = Some(b"records".to_vec());
                    self.accepting.store(false, Ordering::SeqCst);
                    Retire::Keep
                }
                _ => Retire::Keep,
            };
            completion.complete(Finished {
                outcome: Outcome::Value(job.payload),
                retire,
            });
            Ok(completion)
        }
        fn interrupt(&self) {
            let current = self.current.lock().unwrap().clone();
            let Some(completion) = current.filter(|c| c.claim_interrupt()) else {
                return;
            };
            self.interrupts.fetch_add(1, Ordering::SeqCst);
            self.accepting.store(false, Ordering::SeqCst);
            *self.exit_code.lock().unwrap() = Some(-9);
            if completion.settle() == interpool_worker_types::Verdict::Interrupted {
                completion.complete(Finished {
                    outcome: Outcome::Broken(interpool_worker_types::Broken::new(
                        interpool_worker_types::Stage::Interrupted,
                        "killed",
                    )),
                    retire: Retire::Retire,
                });
            }
        }
        fn abandon(&self) {
            self.abandoned.store(true, Ordering::SeqCst);
        }
        fn close(&self) {
            self.accepting.store(false, Ordering::SeqCst);
        }
        fn is_accepting(&self) -> bool {
            self.accepting.load(Ordering::SeqCst)
        }
        fn wait_ended(&self, _timeout: Option<Duration>) -> bool {
            self.killed.load(Ordering::SeqCst)
                || (!self.accepting.load(Ordering::SeqCst)
                    && self.ends_on_close.load(Ordering::SeqCst))
        }
        fn kill(&self) -> bool {
            self.killed.store(true, Ordering::SeqCst);
            *self.exit_code.lock().unwrap() = Some(-9);
            true
        }
        fn exit_code(&self) -> Option<i32> {
            *self.exit_code.lock().unwrap()
        }
        fn take_retire_failure(&self) -> Option<Vec<u8>> {
            self.retire_failure.lock().unwrap().take()
        }
    }

    fn no_setup() -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    fn cache() -> (Arc<Echo>, WorkerCache) {
        let kind = Arc::new(Echo::default());
        let cache = WorkerCache::new(kind.clone(), None, Recycling::default()).unwrap();
        (kind, cache)
    }

    fn run(cache: &WorkerCache, payload: &[u8]) -> (u64, Finished) {
        let mut lease = cache.submit(Job::new(payload.to_vec()), &no_setup).unwrap();
        let id = lease.worker_id().unwrap();
        (id, lease.finish().expect("echo completes at once"))
    }

    #[test]
    fn an_unavailable_type_is_refused_with_its_reason() {
        let kind = Arc::new(Echo {
            unavailable: true,
            ..Echo::default()
        });
        let err = WorkerCache::new(kind, None, Recycling::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "worker type \"echo\" is unavailable: not here"
        );
    }

    #[test]
    fn sequential_jobs_reuse_one_worker() {
        let (kind, cache) = cache();
        let (a, fa) = run(&cache, b"1");
        let (b, _) = run(&cache, b"2");
        assert_eq!(a, b);
        assert_eq!(fa.outcome, Outcome::Value(b"1".to_vec()));
        assert_eq!(kind.started.load(Ordering::SeqCst), 1);
        assert_eq!(
            cache.statistics(),
            Statistics {
                idle_workers: 1,
                running_workers: 0
            }
        );
    }

    #[test]
    fn reuse_is_last_in_first_out() {
        let (_, cache) = cache();
        let job = |p: &[u8]| Job::new(p.to_vec());
        let mut first = cache.submit(job(b"a"), &no_setup).unwrap();
        let mut second = cache.submit(job(b"b"), &no_setup).unwrap();
        let (id1, id2) = (first.worker_id().unwrap(), second.worker_id().unwrap());
        assert_ne!(id1, id2);
        first.finish().unwrap();
        second.finish().unwrap(); // second is now the hottest
        let (next, _) = run(&cache, b"c");
        assert_eq!(next, id2);
    }

    #[test]
    fn a_retiring_worker_is_not_reused() {
        let (kind, cache) = cache();
        let (a, _) = run(&cache, b"retire");
        let (b, _) = run(&cache, b"x");
        assert_ne!(a, b);
        assert_eq!(kind.started.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_worker_that_closed_itself_gets_no_job_and_the_job_is_not_lost() {
        let (kind, cache) = cache();
        let (a, _) = run(&cache, b"x");
        // Simulate the idle timeout racing with the next submit: the worker refuses.
        {
            let state = cache.inner.state();
            state.idle[0].close();
        }
        let (b, finished) = run(&cache, b"y");
        assert_ne!(a, b);
        assert_eq!(finished.outcome, Outcome::Value(b"y".to_vec()));
        assert_eq!(kind.started.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn statistics_count_running_jobs_and_prune_ended_idle_workers() {
        let (_, cache) = cache();
        let lease = cache.submit(Job::new(b"hold".to_vec()), &no_setup).unwrap();
        assert_eq!(cache.statistics().running_workers, 1);
        drop(lease); // abandons the held worker
        assert_eq!(cache.statistics(), Statistics::default());
        run(&cache, b"x");
        cache.inner.state().idle[0].close();
        assert_eq!(cache.statistics().idle_workers, 0);
    }

    #[test]
    fn a_failing_retire_is_reported_at_shutdown() {
        let (_, cache) = cache();
        let (_, finished) = run(&cache, b"retire-fails");
        assert_eq!(finished.outcome, Outcome::Value(b"retire-fails".to_vec()));
        cache.close();
        let report = cache.wait_closed(Some(Duration::ZERO));
        assert_eq!(report.retire_failures, vec![b"records".to_vec()]);
        assert_eq!(report.not_ended, 0);
    }

    fn echo_worker(cache: &WorkerCache, id: u64) -> bool {
        cache.inner.state().idle.iter().any(|w| w.id() == id)
    }

    #[test]
    fn an_interrupt_after_the_job_completed_is_a_no_op_and_the_worker_is_reused() {
        let (kind, cache) = cache();
        let mut lease = cache.submit(Job::new(b"x".to_vec()), &no_setup).unwrap();
        let id = lease.worker_id().unwrap();
        // The caller is cancelled after the job completed but before it read the outcome.
        lease.interrupt();
        assert_eq!(
            lease.finish().unwrap().outcome,
            Outcome::Value(b"x".to_vec())
        );
        assert!(echo_worker(&cache, id), "back on the idle stack");
        assert_eq!(run(&cache, b"y").0, id);
        assert_eq!(kind.started.load(Ordering::SeqCst), 1);
        cache.close();
        let report = cache.wait_closed(None);
        assert!(report.nonzero_exit_codes.is_empty());
    }

    #[test]
    fn a_worker_killed_by_an_interrupt_is_never_reused_nor_reported() {
        let (kind, cache) = cache();
        let mut lease = cache.submit(Job::new(b"hold".to_vec()), &no_setup).unwrap();
        let id = lease.worker_id().unwrap();
        lease.interrupt();
        lease.interrupt(); // decided once: the second is a no-op
        assert!(matches!(
            lease.finish().unwrap().outcome,
            Outcome::Broken(_)
        ));
        assert!(!echo_worker(&cache, id));
        assert_ne!(run(&cache, b"y").0, id);
        assert_eq!(kind.started.load(Ordering::SeqCst), 2);
        cache.close();
        let report = cache.wait_closed(None);
        assert!(report.nonzero_exit_codes.is_empty(), "{report:?}");
    }

    #[test]
    fn a_worker_busy_after_its_job_is_skipped_but_kept_until_it_is_ready() {
        let (kind, cache) = cache();
        let (slow, _) = run(&cache, b"busy-after");
        let (other, finished) = run(&cache, b"next");
        assert_ne!(slow, other, "the job went to a new worker");
        assert_eq!(finished.outcome, Outcome::Value(b"next".to_vec()));
        assert_eq!(kind.started.load(Ordering::SeqCst), 2);
        assert!(echo_worker(&cache, slow), "kept on the idle stack");
        assert_eq!(cache.statistics().idle_workers, 2);
        // Its retire hook returned: ready again.
        for ready in kind.ready_flags.lock().unwrap().iter() {
            ready.store(true, Ordering::SeqCst);
        }
        let mut held = cache.submit(Job::new(b"hold".to_vec()), &no_setup).unwrap();
        assert_eq!(held.worker_id(), Some(other), "the hottest first");
        assert_eq!(run(&cache, b"1").0, slow, "ready again: reused");
        held.interrupt();
        held.finish();
        assert_eq!(kind.started.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_worker_alive_after_the_grace_period_is_killed_and_counted() {
        let (_, cache) = cache();
        run(&cache, b"stuck");
        cache.close();
        let report = cache.wait_closed(Some(Duration::ZERO));
        assert_eq!((report.killed, report.not_ended), (1, 0));
        assert!(
            report.nonzero_exit_codes.is_empty(),
            "a kill is not a bad exit"
        );
    }

    #[test]
    fn a_nonzero_exit_is_reported_unless_a_broken_job_reported_it() {
        let (_, cache) = cache();
        let mut leases: Vec<_> = [&b"exit-3"[..], b"broken"]
            .iter()
            .map(|p| cache.submit(Job::new(p.to_vec()), &no_setup).unwrap())
            .collect();
        for lease in &mut leases {
            lease.finish().unwrap();
        }
        cache.close();
        let report = cache.wait_closed(None);
        assert_eq!(report.nonzero_exit_codes, vec![3]);
        assert_eq!((report.killed, report.not_ended), (0, 0));
    }

    #[test]
    fn a_closed_cache_refuses_jobs_and_closes_idle_workers() {
        let (_, cache) = cache();
        run(&cache, b"x");
        cache.close();
        assert!(matches!(
            cache.submit(Job::new(vec![]), &no_setup),
            Err(Error::Closed)
        ));
        assert_eq!(cache.statistics().idle_workers, 0);
        assert_eq!(cache.wait_closed(None).not_ended, 0);
    }

    #[test]
    fn a_setup_failure_is_reported_and_not_counted_as_running() {
        let (_, cache) = cache();
        let err = cache
            .submit(Job::new(vec![]), &|| Err("boom".to_owned()))
            .unwrap_err();
        assert_eq!(err.to_string(), "preparing the worker setup failed: boom");
        assert_eq!(cache.statistics(), Statistics::default());
    }
}
