//! A worker thread's one-job mailbox.
//!
//! The caller puts a job in and unparks the worker; the worker spins briefly after each job before
//! it parks, because the next job of a busy caller usually arrives within microseconds and waking
//! a parked thread costs far more (measured here: a 1 µs round trip while spinning, 6 µs once parked).
//! The spin yields the core between checks: with more busy threads than cores (two workers and
//! the caller's event loop on two cores), a plain spin would keep the caller off the CPU for a
//! whole scheduler tick. Measured: two trio callers went from ~19k to ~37k jobs/s.
//!
//! **The wait past that spin.** A caller that comes back later than the spin (its own wake-up,
//! its event loop, its work between calls) would find the worker parked, and on a VM whose idle
//! vCPUs halt, waking it costs 50–300 µs. So the mailbox learns the gaps between its jobs (from
//! the start of each wait to the next submit, as [`prewake::Durations`] learns run times) and,
//! when they are steady and a core is free, keeps spinning through a job that is due soon, or
//! parks until a learned lead before one due later and spins from there ([`plan_wait`]; the
//! kind's [`Serve::expect_job`] hears of each such spin). With every core busy nothing spins past
//! the first [`SPIN_FOR_NEXT_JOB`]. Every spin also checks the close flag and the idle deadline,
//! so neither waits for it.
//!
//! Closing on idle timeout races with a submit that already picked this worker: both transitions
//! happen under the slot's lock, so exactly one wins. A losing submit gets its job back
//! ([`crate::Rejected`]) and the cache tries another worker, so no job is ever lost.
//!
//! After a job whose outcome is published the worker may still have work of its own (the
//! `retire` hook, the memory check): it is then *retiring*, still accepting in principle but not
//! ready, and a submit gets its job back as from a busy worker. The mailbox also remembers the
//! current job's completion, so that an interrupt can claim it ([`Mailbox::claim_interrupt`]).
//!
//! **The serve loop** is written here once, for every worker kind ([`Mailbox::serve`]): next job,
//! run it ([`Serve::run`]), settle its verdict, decide the worker's fate (`max_tasks`, an ending
//! outcome, a worker given up on), put the mailbox in the state the worker is in (idle, retiring
//! or closed) *and only then* publish the outcome, so that a caller who sees it can reuse the
//! worker at once; then the worker's own work after the job ([`Serve::after_job`]). A kind only
//! says how it runs a job and what an interrupt that won the race makes of it. The mailbox also
//! keeps what the worker's handle reads once its thread is gone: a `retire` hook's failure and
//! the worker's end.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, PoisonError,
    },
    thread::Thread,
    time::{Duration, Instant},
};

use crate::{
    prewake::{self, Durations, Spinning, Wait},
    protocol::AfterJob,
    Broken, Completion, Finished, Job, Outcome, Rejected, Retire, Verdict, WorkerConfig,
};

/// How long a worker spins for its next job before it parks, or looks at its learned gaps.
pub(crate) const SPIN_FOR_NEXT_JOB: Duration = Duration::from_micros(50);
/// The one key of a mailbox's [`Durations`]: the gaps between its jobs.
const GAP: u64 = 0;

/// A wait for a job: when it began, and when the job it got was submitted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gap {
    waited_from: Instant,
    submitted: Instant,
}

/// How a worker idle since `idle_since` waits at `now` for its next job, from the gaps it learned
/// (`gaps`, key [`GAP`]: from the start of each wait to the next submit): park unless the gaps
/// are steady (see [`Durations::plan`]) *and* a core is free; then spin through a job that is due
/// soon, or park until shortly before one that is due later and spin from there.
pub(crate) fn plan_wait(
    gaps: &Durations,
    idle_since: Instant,
    now: Instant,
    core_free: impl FnOnce() -> bool,
) -> Wait {
    gaps.plan(GAP, idle_since)
        .map_or(Wait::Park, |plan| plan.wait(now, core_free))
}

/// Whether a worker may spin for a job that is due: a core is free (`prewake`'s check) and no
/// other thread of this process spins. A caller spinning for its outcome means a job is about to
/// end, with its core still busy: a second spinner then shares a core with that job, and both it
/// and the caller see what they wait for a scheduler slice late (measured: the caller's wake-up
/// after a 10 ms job went from 160 to 220 µs when workers spun beside it).
fn core_free_for_a_worker() -> bool {
    prewake::spinning_threads() == 0 && prewake::core_free()
}

#[derive(Debug)]
enum Slot {
    /// Waiting for a job.
    Idle,
    /// A job is waiting for the worker, handed over at that instant.
    Job(Job, Arc<Completion>, Instant),
    /// The worker runs a job.
    Busy,
    /// The job's outcome is out; the worker finishes its own work before it takes another.
    Retiring,
    /// No more jobs: closed by the owner, or by the worker itself.
    Closed,
}

/// The mailbox shared by a worker's handle and its thread.
#[derive(Debug)]
pub(crate) struct Mailbox {
    slot: Mutex<Slot>,
    /// Set with the job, so that the spinning worker need not take the lock.
    has_job: AtomicBool,
    /// Set by `close`: a job already handed over still runs, and the worker ends after it.
    close_requested: AtomicBool,
    /// The worker thread, set once it runs.
    thread: Mutex<Option<Thread>>,
    /// The completion of the job handed over last.
    current: Mutex<Option<Arc<Completion>>>,
    /// The exception records of a `retire` hook that raised (the worker then ended).
    retire_failure: Mutex<Option<Vec<u8>>>,
    /// `Some(exit code)` once the worker has fully ended (the inner `None`: none, or unknown).
    ended: Mutex<Option<Option<i32>>>,
    ended_changed: Condvar,
    /// The gaps between jobs, and how late the worker woke from its timed parks ([`plan_wait`]).
    gaps: Durations,
    /// Whether a core is free for the worker to spin on (`prewake`'s check; tests inject theirs).
    core_free: fn() -> bool,
}

/// A job's end as its worker kind saw it.
#[derive(Debug)]
pub(crate) struct Ran {
    /// The outcome, and the worker's fate as known from the job alone.
    pub(crate) finished: Finished,
    /// The `retire` hook must run once the outcome is out.
    pub(crate) after_job: bool,
}

impl Ran {
    /// A job broken by its worker, which ends with it (it could not start, or its process died).
    pub(crate) fn ending(broken: Broken) -> Self {
        Ran {
            finished: Finished {
                outcome: Outcome::Broken(broken),
                retire: Retire::Retire,
            },
            after_job: false,
        }
    }
}

/// What a worker kind does in [`Mailbox::serve`].
pub(crate) trait Serve {
    /// Runs one job. A worker that cannot (it failed to start) breaks it with
    /// [`Retire::Retire`].
    fn run(&mut self, job: Job, completion: &Completion) -> Ran;
    /// The job's interrupt was claimed before its verdict settled, and it did not break: what
    /// the caller gets instead (the caller decided first: see [`Completion::claim_interrupt`]).
    fn interrupted(&mut self, ran: Ran) -> Ran;
    /// Whether the worker ends after this job whatever it returned (killed, abandoned).
    fn must_end(&self) -> bool;
    /// The worker's own work after a job's outcome is out, for a job that said `after_job` (run
    /// the `retire` hook) or under a memory limit (`max_memory`: check it). `ending`: the worker
    /// ends anyway, whatever this says.
    fn after_job(&mut self, hook: bool, ending: bool, max_memory: Option<u64>) -> AfterJob;
    /// The mailbox spins for a job due by `until` (see [`Mailbox::next`]): a worker whose job
    /// waits on more than this thread gets that ready too.
    fn expect_job(&mut self, _until: Instant) {}
}

/// What the worker thread is told to do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Run this job and complete this slot; the gap the worker waited for it, for
    /// [`Mailbox::learn_gap`] once the outcome is out.
    Run(Job, Arc<Completion>, Gap),
    /// End: closed, or idle for too long.
    End,
}

impl Mailbox {
    pub(crate) fn new() -> Self {
        Self::checking_cores_with(core_free_for_a_worker)
    }

    /// A mailbox whose worker asks `core_free` before it spins longer than [`SPIN_FOR_NEXT_JOB`].
    fn checking_cores_with(core_free: fn() -> bool) -> Self {
        Self {
            slot: Mutex::new(Slot::Idle),
            has_job: AtomicBool::new(false),
            close_requested: AtomicBool::new(false),
            thread: Mutex::new(None),
            current: Mutex::new(None),
            retire_failure: Mutex::new(None),
            ended: Mutex::new(None),
            ended_changed: Condvar::new(),
            gaps: Durations::planning_from(SPIN_FOR_NEXT_JOB),
            core_free,
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        if let Some(thread) = &*self.thread.lock().unwrap_or_else(PoisonError::into_inner) {
            thread.unpark();
        }
    }

    /// Called by the worker thread before its first [`Mailbox::next`].
    pub(crate) fn register_worker_thread(&self) {
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(std::thread::current());
    }

    /// Caller side: hands over a job if the worker is idle.
    pub(crate) fn submit(&self, job: Job) -> Result<Arc<Completion>, Rejected> {
        let completion = Arc::new(Completion::new());
        {
            let mut slot = self.slot();
            if !matches!(*slot, Slot::Idle) {
                return Err(Rejected(job));
            }
            *slot = Slot::Job(job, completion.clone(), Instant::now());
            *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(completion.clone());
            self.has_job.store(true, Ordering::Release);
        }
        // An unpark of a running thread only sets its token: no system call.
        self.wake();
        Ok(completion)
    }

    /// Caller side: no more jobs. A job already handed over still runs; the worker ends after it.
    pub(crate) fn close(&self) {
        let mut slot = self.slot();
        self.close_requested.store(true, Ordering::Release);
        if matches!(*slot, Slot::Idle | Slot::Busy | Slot::Retiring) {
            *slot = Slot::Closed;
        }
        drop(slot);
        self.wake();
    }

    /// Whether the worker has not closed: it takes jobs now (idle) or will once its own work
    /// after a job is done (retiring).
    pub(crate) fn is_accepting(&self) -> bool {
        matches!(*self.slot(), Slot::Idle | Slot::Retiring)
    }

    /// Whether the worker waits for a job right now.
    pub(crate) fn is_idle(&self) -> bool {
        matches!(*self.slot(), Slot::Idle)
    }

    /// Caller side: claims the current job as interrupted (see [`Completion::claim_interrupt`]).
    /// True if the worker must now stop it; false if it completed, or there is none.
    pub(crate) fn claim_interrupt(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|c| c.claim_interrupt())
    }

    /// Worker side: waits for the next job, up to `idle_timeout` (`None`: forever): spins
    /// [`SPIN_FOR_NEXT_JOB`], then as [`plan_wait`] says. `on_spin` is called with the end of
    /// every longer spin as it begins (a process worker wakes its child with it).
    pub(crate) fn next(
        &self,
        idle_timeout: Option<Duration>,
        on_spin: &mut dyn FnMut(Instant),
    ) -> Next {
        let start = Instant::now();
        let deadline = idle_timeout.map(|t| start + t);
        let mut wait = if self.spin_until(start + SPIN_FOR_NEXT_JOB, deadline) {
            Wait::Park
        } else {
            plan_wait(&self.gaps, start, Instant::now(), self.core_free)
        };
        loop {
            {
                let mut slot = self.slot();
                match std::mem::replace(&mut *slot, Slot::Busy) {
                    Slot::Job(job, completion, submitted) => {
                        self.has_job.store(false, Ordering::Relaxed);
                        let gap = Gap {
                            waited_from: start,
                            submitted,
                        };
                        return Next::Run(job, completion, gap);
                    }
                    Slot::Closed => {
                        *slot = Slot::Closed;
                        return Next::End;
                    }
                    Slot::Idle => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            *slot = Slot::Closed;
                            return Next::End;
                        }
                        *slot = Slot::Idle;
                    }
                    Slot::Busy | Slot::Retiring => {
                        unreachable!("only the worker thread sets Busy and Retiring")
                    }
                }
            }
            wait = match wait {
                Wait::Park => {
                    match deadline {
                        None => std::thread::park(),
                        Some(d) => {
                            std::thread::park_timeout(d.saturating_duration_since(Instant::now()))
                        }
                    }
                    Wait::Park
                }
                Wait::SpinUntil(until) => {
                    on_spin(until);
                    let _spinning = Spinning::start();
                    self.spin_until(until, deadline);
                    Wait::Park
                }
                Wait::ParkThenSpin(plan) => {
                    let until = deadline.map_or(plan.at, |d| d.min(plan.at));
                    prewake::park_precisely(until.saturating_duration_since(Instant::now()));
                    let woke = Instant::now();
                    if woke < plan.at {
                        Wait::ParkThenSpin(plan)
                    } else {
                        // How late the timer woke this worker is the lead it needs, whether or
                        // not a job came meanwhile (only the late wakes see one).
                        self.gaps.observe_wake(plan.at, woke);
                        if self.has_job.load(Ordering::Acquire) {
                            Wait::Park
                        } else {
                            plan.woken(woke, self.core_free)
                        }
                    }
                }
            };
        }
    }

    /// Worker side, off the hand-off's path (once the outcome is out): learns the gap the worker
    /// waited for its last job.
    fn learn_gap(&self, gap: Gap) {
        self.gaps.observe_run(GAP, gap.waited_from, gap.submitted);
    }

    /// Spins (yielding) until `until`, a job or a close; also stops at the idle `deadline`. True
    /// if a job or a close came.
    fn spin_until(&self, until: Instant, deadline: Option<Instant>) -> bool {
        let until = deadline.map_or(until, |d| d.min(until));
        loop {
            if self.has_job.load(Ordering::Acquire) || self.close_requested.load(Ordering::Acquire)
            {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// Worker side: the job returned. The worker goes back to idle unless it ends (`ending`) or
    /// was closed meanwhile. Returns whether it should go on. Call this *before* completing the
    /// job's slot, so that a caller who sees the outcome finds the worker idle.
    pub(crate) fn job_done(&self, ending: bool) -> bool {
        let mut slot = self.slot();
        let ending = ending || self.close_requested.load(Ordering::Acquire);
        match *slot {
            Slot::Busy | Slot::Retiring if !ending => {
                *slot = Slot::Idle;
                true
            }
            _ => {
                *slot = Slot::Closed;
                false
            }
        }
    }

    /// Worker side: the job's outcome is about to be published, and the worker still has work
    /// of its own before it can take another job; [`Mailbox::job_done`] ends that. Call it
    /// before completing the job's slot, so that a caller who sees the outcome finds the worker
    /// retiring, not busy.
    pub(crate) fn retiring(&self) {
        let mut slot = self.slot();
        if matches!(*slot, Slot::Busy) {
            *slot = Slot::Retiring;
        }
    }
}

impl Mailbox {
    /// Worker side: serves jobs until the worker is closed, idle for too long, or ends (see the
    /// module docs).
    pub(crate) fn serve(&self, config: &WorkerConfig, worker: &mut impl Serve) {
        let mut jobs: u64 = 0;
        while let Next::Run(job, completion, gap) =
            self.next(config.idle_timeout, &mut |until| worker.expect_job(until))
        {
            jobs += 1;
            let mut ran = worker.run(job, &completion);
            // Decided once, before anything else: whatever the job returned, an interrupt
            // claimed first wins (a job that broke on its own stays broken).
            if completion.settle() == Verdict::Interrupted
                && !matches!(ran.finished.outcome, Outcome::Broken(_))
            {
                ran = worker.interrupted(ran);
            }
            let Ran {
                mut finished,
                after_job,
            } = ran;
            let tasks_done = config.max_tasks.is_some_and(|max| jobs >= max);
            let ending = finished.worker_ends() || tasks_done || worker.must_end();
            if ending {
                finished.retire = Retire::Retire;
            }
            if !after_job && config.max_memory.is_none() {
                // Idle (or closed) before the outcome is visible, so that a caller who sees it
                // can reuse the worker.
                let go_on = self.job_done(ending);
                completion.complete(finished);
                self.learn_gap(gap);
                if !go_on {
                    break;
                }
                continue;
            }
            // The caller gets the outcome now; the retire hook and the memory check come after,
            // while the worker is retiring (or already closed, if it ends anyway).
            if ending {
                self.job_done(true);
            } else {
                self.retiring();
            }
            completion.complete(finished);
            self.learn_gap(gap);
            let end = match worker.after_job(after_job, ending, config.max_memory) {
                AfterJob::Keep => false,
                AfterJob::Retire => true,
                AfterJob::Failed(records) => {
                    *self
                        .retire_failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(records);
                    true
                }
            };
            if ending || !self.job_done(end) {
                break;
            }
        }
    }

    /// The records of a `retire` hook that raised, once.
    pub(crate) fn take_retire_failure(&self) -> Option<Vec<u8>> {
        self.retire_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Worker side, its last act: the worker has fully ended (`exit_code`: its process's).
    pub(crate) fn mark_ended(&self, exit_code: Option<i32>) {
        *self.ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(exit_code);
        self.ended_changed.notify_all();
    }

    /// The exit code given to [`Mailbox::mark_ended`], once the worker has ended.
    pub(crate) fn exit_code(&self) -> Option<i32> {
        self.ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flatten()
    }

    /// Waits until the worker has ended, up to `timeout` (`None`: forever); true if it has.
    pub(crate) fn wait_ended(&self, timeout: Option<Duration>) -> bool {
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        let running = |ended: &mut Option<Option<i32>>| ended.is_none();
        let ended = match timeout {
            None => self
                .ended_changed
                .wait_while(ended, running)
                .unwrap_or_else(PoisonError::into_inner),
            Some(timeout) => {
                self.ended_changed
                    .wait_timeout_while(ended, timeout, running)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
        ended.is_some()
    }
}

/// Ends a worker whose own work kept it (`Keep`) if its memory is above `max_memory`.
pub(crate) fn check_memory(
    after: AfterJob,
    max_memory: Option<u64>,
    bytes: impl FnOnce() -> Option<u64>,
) -> AfterJob {
    match (after, max_memory) {
        (AfterJob::Keep, Some(max)) if bytes().is_some_and(|b| b > max) => AfterJob::Retire,
        (after, _) => after,
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    fn job(b: &[u8]) -> Job {
        Job::new(b.to_vec())
    }

    /// Submits `payload` to `mb`, whose worker thread waits for it; returns what the worker got.
    fn delivered(mb: Mailbox, payload: &[u8]) -> Vec<u8> {
        let mb = Arc::new(mb);
        let worker = {
            let mb = mb.clone();
            thread::spawn(move || {
                mb.register_worker_thread();
                match mb.next(None, &mut |_| {}) {
                    Next::Run(job, _, _) => job.payload,
                    Next::End => panic!("ended"),
                }
            })
        };
        mb.submit(job(payload)).unwrap();
        worker.join().unwrap()
    }

    #[test]
    fn a_job_submitted_to_an_idle_worker_is_delivered() {
        assert_eq!(delivered(Mailbox::new(), b"a"), b"a");
    }

    #[test]
    fn a_busy_worker_rejects_a_second_job_untouched() {
        let mb = Mailbox::new();
        mb.submit(job(b"first")).unwrap();
        let Err(Rejected(back)) = mb.submit(job(b"second")) else {
            panic!("second submit must be rejected")
        };
        assert_eq!(back.payload, b"second");
    }

    #[test]
    fn idle_timeout_closes_the_mailbox_and_later_submits_get_their_job_back() {
        let mb = Mailbox::new();
        mb.register_worker_thread();
        assert!(matches!(
            mb.next(Some(Duration::from_millis(1)), &mut |_| {}),
            Next::End
        ));
        assert!(!mb.is_accepting());
        assert!(mb.submit(job(b"x")).is_err());
    }

    #[test]
    fn close_while_busy_ends_the_worker_after_its_job() {
        let mb = Mailbox::new();
        mb.submit(job(b"x")).unwrap();
        assert!(matches!(mb.next(None, &mut |_| {}), Next::Run(..)));
        mb.close();
        assert!(!mb.job_done(false));
        assert!(matches!(mb.next(None, &mut |_| {}), Next::End));
    }

    #[test]
    fn close_before_a_handed_over_job_starts_ends_the_worker_after_that_job() {
        let mb = Mailbox::new();
        mb.submit(job(b"x")).unwrap();
        mb.close(); // e.g. the worker is still creating its interpreter
        assert!(matches!(mb.next(None, &mut |_| {}), Next::Run(..)));
        assert!(!mb.job_done(false));
        assert!(matches!(mb.next(None, &mut |_| {}), Next::End));
    }

    #[test]
    fn a_worker_finishing_its_own_work_after_a_job_is_not_ready_but_still_accepting() {
        let mb = Mailbox::new();
        mb.submit(job(b"x")).unwrap();
        assert!(matches!(mb.next(None, &mut |_| {}), Next::Run(..)));
        mb.retiring();
        assert!(mb.is_accepting());
        assert!(!mb.is_idle());
        assert!(mb.submit(job(b"y")).is_err(), "not ready yet");
        assert!(mb.job_done(false));
        assert!(mb.is_idle());
        assert!(mb.submit(job(b"z")).is_ok());
    }

    #[test]
    fn an_interrupt_is_claimed_only_while_the_current_job_has_not_completed() {
        let mb = Mailbox::new();
        assert!(!mb.claim_interrupt(), "no job yet");
        let completion = mb.submit(job(b"x")).unwrap();
        let Next::Run(_, running, _) = mb.next(None, &mut |_| {}) else {
            panic!("a job was submitted")
        };
        mb.job_done(false);
        running.complete(crate::Finished {
            outcome: crate::Outcome::Value(vec![]),
            retire: crate::Retire::Keep,
        });
        assert!(completion.is_done());
        assert!(!mb.claim_interrupt(), "a completed job is not interrupted");
        mb.submit(job(b"y")).unwrap();
        assert!(mb.claim_interrupt());
    }

    #[test]
    fn a_retiring_worker_refuses_further_jobs() {
        let mb = Mailbox::new();
        mb.submit(job(b"x")).unwrap();
        assert!(matches!(mb.next(None, &mut |_| {}), Next::Run(..)));
        assert!(!mb.job_done(true));
        assert!(mb.submit(job(b"y")).is_err());
    }
    /// A worker kind for the serve loop's tests: every job returns its payload, or what
    /// `interrupted` and `after_job` say.
    struct Echo {
        after_job: bool,
        verdict: Option<AfterJob>,
        /// Claim the job's interrupt while it runs, as a caller would.
        claim: bool,
    }

    impl Serve for Echo {
        fn run(&mut self, job: Job, completion: &Completion) -> Ran {
            if self.claim {
                assert!(completion.claim_interrupt());
            }
            Ran {
                finished: Finished {
                    outcome: Outcome::Value(job.payload),
                    retire: Retire::Keep,
                },
                after_job: self.after_job,
            }
        }
        fn interrupted(&mut self, ran: Ran) -> Ran {
            Ran {
                finished: Finished {
                    outcome: Outcome::Broken(crate::Broken::new(crate::Stage::Interrupted, "x")),
                    retire: Retire::Keep,
                },
                after_job: ran.after_job,
            }
        }
        fn must_end(&self) -> bool {
            false
        }
        fn after_job(&mut self, _hook: bool, _ending: bool, _max: Option<u64>) -> AfterJob {
            self.verdict.take().unwrap_or(AfterJob::Keep)
        }
    }

    fn config(max_tasks: Option<u64>) -> WorkerConfig {
        WorkerConfig {
            setup: Vec::new(),
            idle_timeout: None,
            max_tasks,
            max_memory: None,
        }
    }

    fn serving(mut worker: Echo, config: WorkerConfig) -> (Arc<Mailbox>, thread::JoinHandle<()>) {
        let mb = Arc::new(Mailbox::new());
        let thread = {
            let mb = mb.clone();
            thread::spawn(move || {
                mb.register_worker_thread();
                mb.serve(&config, &mut worker);
            })
        };
        (mb, thread)
    }

    const WAIT: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn the_serve_loop_is_idle_before_a_caller_sees_the_outcome() {
        let echo = Echo {
            after_job: false,
            verdict: None,
            claim: false,
        };
        let (mb, thread) = serving(echo, config(None));
        for i in 0..100u8 {
            let completion = mb.submit(job(&[i])).unwrap();
            assert!(completion.wait(WAIT));
            // The outcome is visible, so the worker must take the next job at once.
            assert!(
                mb.is_idle(),
                "job {i}: not idle when its outcome was visible"
            );
            assert_eq!(completion.take().unwrap().outcome, Outcome::Value(vec![i]));
        }
        mb.close();
        thread.join().unwrap();
    }

    #[test]
    fn an_interrupt_claimed_while_the_job_runs_decides_its_outcome() {
        let echo = Echo {
            after_job: false,
            verdict: None,
            claim: true,
        };
        let (mb, thread) = serving(echo, config(None));
        let completion = mb.submit(job(b"x")).unwrap();
        assert!(completion.wait(WAIT));
        assert!(matches!(
            completion.take().unwrap().outcome,
            Outcome::Broken(_)
        ));
        mb.close();
        thread.join().unwrap();
    }

    #[test]
    fn a_failed_retire_hook_is_kept_and_ends_the_worker_after_the_outcome() {
        let echo = Echo {
            after_job: true,
            verdict: Some(AfterJob::Failed(b"records".to_vec())),
            claim: false,
        };
        let (mb, thread) = serving(echo, config(None));
        let completion = mb.submit(job(b"x")).unwrap();
        assert!(completion.wait(WAIT));
        let finished = completion.take().unwrap();
        assert_eq!(
            finished.retire,
            Retire::Keep,
            "known only after the outcome"
        );
        thread.join().unwrap();
        assert!(!mb.is_accepting());
        assert_eq!(mb.take_retire_failure(), Some(b"records".to_vec()));
        assert_eq!(mb.take_retire_failure(), None, "once");
    }

    #[test]
    fn max_tasks_retires_the_worker_with_its_last_outcome() {
        let echo = Echo {
            after_job: false,
            verdict: None,
            claim: false,
        };
        let (mb, thread) = serving(echo, config(Some(2)));
        let first = mb.submit(job(b"1")).unwrap();
        assert!(first.wait(WAIT));
        assert_eq!(first.take().unwrap().retire, Retire::Keep);
        let second = mb.submit(job(b"2")).unwrap();
        assert!(second.wait(WAIT));
        assert_eq!(second.take().unwrap().retire, Retire::Retire);
        thread.join().unwrap();
        assert!(mb.submit(job(b"3")).is_err());
    }

    const US: Duration = Duration::from_micros(1);

    /// Gaps learned from `samples` waits of `gap` each.
    fn learned(gap: Duration, samples: usize) -> Durations {
        let gaps = Durations::planning_from(SPIN_FOR_NEXT_JOB);
        let t0 = Instant::now();
        for _ in 0..samples {
            gaps.observe_run(GAP, t0, t0 + gap);
        }
        gaps
    }

    #[test]
    fn a_worker_with_nothing_learned_parks_without_asking_for_a_core() {
        let gaps = Durations::planning_from(SPIN_FOR_NEXT_JOB);
        let t0 = Instant::now();
        let wait = plan_wait(&gaps, t0, t0 + SPIN_FOR_NEXT_JOB, || {
            panic!("the core check is for longer spins only")
        });
        assert_eq!(wait, Wait::Park);
        // Gaps the first spin covers plan nothing either: a burst's jobs come within it.
        let short = learned(SPIN_FOR_NEXT_JOB / 2, 5);
        assert_eq!(
            plan_wait(&short, t0, t0 + SPIN_FOR_NEXT_JOB, || true),
            Wait::Park
        );
    }

    #[test]
    fn a_steady_short_gap_is_spun_through_when_a_core_is_free() {
        let gaps = learned(120 * US, 5);
        let t0 = Instant::now();
        let now = t0 + SPIN_FOR_NEXT_JOB;
        let Wait::SpinUntil(until) = plan_wait(&gaps, t0, now, || true) else {
            panic!("a job due within the lead is spun for")
        };
        assert!(until > t0 + 120 * US, "the spin covers the gap");
        assert!(until <= now + Duration::from_millis(2), "and is bounded");
    }

    #[test]
    fn a_steady_long_gap_parks_until_shortly_before_the_job_then_spins() {
        let gap = Duration::from_millis(5);
        let gaps = learned(gap, 5);
        let t0 = Instant::now();
        let Wait::ParkThenSpin(plan) = plan_wait(&gaps, t0, t0 + SPIN_FOR_NEXT_JOB, || {
            panic!("a core is asked for when the spin would start, not before")
        }) else {
            panic!("a job due later is waited for by a timed park")
        };
        assert!(plan.at < t0 + gap && plan.at + plan.spin > t0 + gap);
        assert_eq!(
            plan.woken(plan.at, || true),
            Wait::SpinUntil(plan.at + plan.spin)
        );
        assert_eq!(plan.woken(plan.at, || false), Wait::Park);
    }

    #[test]
    fn with_every_core_busy_nothing_spins_past_the_first_spin() {
        let t0 = Instant::now();
        let now = t0 + SPIN_FOR_NEXT_JOB;
        for gap in [120 * US, 400 * US, Duration::from_millis(5)] {
            let gaps = learned(gap, 5);
            match plan_wait(&gaps, t0, now, || false) {
                Wait::Park => {}
                Wait::ParkThenSpin(plan) => assert_eq!(plan.woken(plan.at, || false), Wait::Park),
                Wait::SpinUntil(_) => panic!("spun with no core free (gap {gap:?})"),
            }
        }
    }

    #[test]
    fn unsteady_gaps_and_spins_already_over_park() {
        let gaps = Durations::planning_from(SPIN_FOR_NEXT_JOB);
        let t0 = Instant::now();
        for gap in [1, 40, 2, 90, 1] {
            gaps.observe_run(GAP, t0, t0 + gap * Duration::from_millis(1));
        }
        assert_eq!(
            plan_wait(&gaps, t0, t0 + SPIN_FOR_NEXT_JOB, || true),
            Wait::Park
        );
        let gaps = learned(120 * US, 5);
        let late = t0 + Duration::from_millis(10);
        assert_eq!(plan_wait(&gaps, t0, late, || true), Wait::Park);
    }

    #[test]
    fn a_job_handed_over_teaches_the_gap_from_the_wait_to_its_submit() {
        let mb = Mailbox::checking_cores_with(|| true);
        let t0 = Instant::now();
        assert_eq!(mb.gaps.plan(GAP, t0), None);
        for _ in 0..3 {
            mb.submit(job(b"x")).unwrap();
            let Next::Run(_, _, gap) = mb.next(None, &mut |_| {}) else {
                panic!("the job is delivered")
            };
            assert!(mb.job_done(false));
            mb.learn_gap(gap);
        }
        // Submitted before each wait began: gaps of nothing, too short to plan for.
        assert_eq!(mb.gaps.plan(GAP, t0), None);
        mb.gaps.observe_run(GAP, t0, t0 + Duration::from_secs(1));
        assert!(
            mb.gaps.plan(GAP, t0).is_none(),
            "the handed-over jobs were learned: one long gap after them is not steady"
        );
    }

    /// A mailbox whose worker has learned steady gaps of `gap` and always finds a core free.
    fn trained(gap: Duration) -> Mailbox {
        let mb = Mailbox::checking_cores_with(|| true);
        let t0 = Instant::now();
        for _ in 0..5 {
            mb.gaps.observe_run(GAP, t0, t0 + gap);
        }
        mb
    }

    #[test]
    fn close_ends_a_worker_that_spins_for_a_due_job() {
        // A gap far longer than the first spin could overrun, however loaded the machine: the
        // worker parks until shortly before the job is due, then spins (a first spin that ran
        // past the whole spin window would park for good, as a worker then should).
        let mb = trained(Duration::from_millis(200));
        mb.register_worker_thread();
        let mut spun = false;
        let next = mb.next(None, &mut |_| {
            spun = true;
            mb.close();
        });
        assert!(spun, "the worker spun for its due job");
        assert!(matches!(next, Next::End));
        assert!(!mb.is_accepting());
    }

    #[test]
    fn the_idle_timeout_ends_a_worker_parked_until_a_far_job_or_spinning_for_one() {
        let mb = trained(Duration::from_secs(30));
        mb.register_worker_thread();
        let next = mb.next(Some(Duration::from_millis(1)), &mut |_| {
            panic!("the job is not due before the idle timeout")
        });
        assert!(matches!(next, Next::End));
        assert!(!mb.is_accepting());
        let mb = trained(Duration::from_millis(1));
        mb.register_worker_thread();
        assert!(matches!(
            mb.next(Some(Duration::from_millis(1)), &mut |_| {}),
            Next::End
        ));
        assert!(!mb.is_accepting());
    }

    #[test]
    fn a_job_submitted_while_the_worker_waits_for_a_far_one_is_delivered() {
        let mb = trained(Duration::from_secs(30));
        assert_eq!(delivered(mb, b"early"), b"early");
    }
}
