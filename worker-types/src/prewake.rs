//! Waking a parked caller shortly *before* its job is due, so that the wake-up is paid while the
//! job still runs.
//!
//! A caller parked on a completion's fd sleeps in its event loop's `epoll_wait`; its vCPU goes
//! idle, and on a VM waking an idle vCPU takes 50–300 µs, more the longer it slept (measured in
//! docs/benchmarks.md). That wake-up came *after* the job, so it was all overhead. Jobs of one
//! callable usually take about as long as last time, so the front end learns each callable's run
//! time ([`Durations`]) and, when it parks, asks the alarm thread to nudge it
//! ([`Completion::prewake`]) a *lead* before the predicted end. The caller wakes while the job
//! still runs and spins for the last stretch with the GIL released ([`Completion::spin`]); if the
//! job runs longer than the spin it parks again, and the worker's own write wakes it as before.
//! The lead is learned too: how late the caller actually resumed after its alarm.
//!
//! Spinning costs a core, so the alarm does nothing unless one is free (the system's runnable
//! thread count, read when the alarm fires, leaves room for the spinner; this process's own
//! spinners, [`Spinning`], count as free, since yielding spinners share a core): on a machine
//! whose cores are all busy, or under a CPU-bound burst of interpool's own jobs, the caller stays
//! parked.
//!
//! The same learning and the same check serve the workers' side (`mailbox`): a worker learns the
//! gaps between its jobs in a [`Durations`] of its own and waits for the next one by its
//! [`Plan`] ([`Plan::wait`]), and a process worker's thread waits for an outcome by the plan the
//! caller recorded in the completion ([`Completion::expect`]).
//!
//! One alarm thread per process serves every caller; it holds only weak references, so a call
//! that ends or is dropped first is simply skipped.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, PoisonError, Weak,
    },
    thread::Thread,
    time::{Duration, Instant},
};

use crate::Completion;

/// How much of each new sample the running estimates take.
const WEIGHT: f64 = 0.25;
/// The lead before any wake-up was measured, and its bounds.
const FIRST_LEAD: Duration = Duration::from_micros(100);
const MIN_LEAD: Duration = Duration::from_micros(30);
const MAX_LEAD: Duration = Duration::from_millis(1);
/// Added to the measured wake-up latency: the lead also covers that latency's jitter.
const LEAD_MARGIN: Duration = Duration::from_micros(30);
/// The last-stretch spin covers the lead, the job's jitter and this much more, but never more
/// than `MAX_SPIN`: past that a late job costs a park, not a core.
const SPIN_MARGIN: Duration = Duration::from_micros(50);
const MAX_SPIN: Duration = Duration::from_millis(2);
/// Jobs predicted shorter than this are not worth an alarm: the caller's own spin covers them.
const MIN_JOB: Duration = Duration::from_micros(60);
/// A callable whose runs deviate from their mean by more than this share of it gets no alarm:
/// the last stretch could not be told, and spinning through the uncertainty would cost a core.
const MAX_DEVIATION: f64 = 0.25;
/// The per-callable table is cleared when it grows past this (callables made per call, such as
/// lambdas, would otherwise fill it).
const MAX_KEYS: usize = 4096;

/// A running estimate of one callable's run time (submit to published outcome).
#[derive(Debug, Clone, Copy)]
struct Estimate {
    mean: f64,
    /// Mean absolute deviation from `mean`.
    deviation: f64,
}

impl Estimate {
    fn observe(&mut self, sample: f64) {
        self.deviation += WEIGHT * ((sample - self.mean).abs() - self.deviation);
        self.mean += WEIGHT * (sample - self.mean);
    }
}

/// When to wake a parked caller, and how long it may then spin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// When the alarm fires (may be now or past: then the caller spins at once).
    pub at: Instant,
    /// The longest the woken caller spins before it parks again.
    pub spin: Duration,
}

/// How a thread that waits for something due by a [`Plan`] waits from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Park until it comes.
    Park,
    /// Spin (yielding) until then, then park.
    SpinUntil(Instant),
    /// Park until `plan.at`; then, if a core is free then, spin up to `plan.spin`, then park.
    ParkThenSpin(Plan),
}

impl Plan {
    /// How to wait at `now` for what this plan expects: park until its time if that is still
    /// ahead; spin through the rest of its spin if that is not over and a core is free (asked
    /// only then); else park.
    pub fn wait(self, now: Instant, core_free: impl FnOnce() -> bool) -> Wait {
        if self.at > now {
            return Wait::ParkThenSpin(self);
        }
        let until = self.at + self.spin;
        if until > now && core_free() {
            Wait::SpinUntil(until)
        } else {
            Wait::Park
        }
    }

    /// What a [`Wait::ParkThenSpin`] does once its park has reached `plan.at` (`now`): spin up to
    /// `plan.spin` if a core is free, else park.
    pub fn woken(self, now: Instant, core_free: impl FnOnce() -> bool) -> Wait {
        if core_free() {
            Wait::SpinUntil(now + self.spin)
        } else {
            Wait::Park
        }
    }
}

/// Learned run times per callable key, and the lead they are woken by. Shared by the calls of one
/// worker context's type (run times include that type's hand-off).
#[derive(Debug)]
pub struct Durations {
    inner: Mutex<Learned>,
    /// Predictions shorter than this get no plan.
    min_expected: Duration,
}

#[derive(Debug)]
struct Learned {
    by_key: HashMap<u64, Estimate>,
    /// Seconds: how late callers resumed after their alarm, as a running mean.
    wake_latency: Option<f64>,
}

impl Default for Durations {
    fn default() -> Self {
        Self::new()
    }
}

impl Durations {
    /// Nothing learned yet.
    pub fn new() -> Self {
        Self::planning_from(MIN_JOB)
    }

    /// Nothing learned yet; plans only for intervals predicted at `min_expected` or more (a
    /// worker's wait for its next job: see `mailbox`).
    pub(crate) fn planning_from(min_expected: Duration) -> Self {
        Self {
            inner: Mutex::new(Learned {
                by_key: HashMap::new(),
                wake_latency: None,
            }),
            min_expected,
        }
    }

    fn learned(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that a job of `key` submitted at `submitted` published its outcome at `completed`.
    pub fn observe_run(&self, key: u64, submitted: Instant, completed: Instant) {
        let sample = completed.saturating_duration_since(submitted).as_secs_f64();
        let mut learned = self.learned();
        if learned.by_key.len() >= MAX_KEYS && !learned.by_key.contains_key(&key) {
            learned.by_key.clear();
        }
        learned
            .by_key
            .entry(key)
            .and_modify(|e| e.observe(sample))
            .or_insert(Estimate {
                mean: sample,
                deviation: 0.0,
            });
    }

    /// Records how long after its alarm (`fired_for`) a caller started its last-stretch spin.
    pub fn observe_wake(&self, fired_for: Instant, resumed: Instant) {
        let sample = resumed.saturating_duration_since(fired_for).as_secs_f64();
        let mut learned = self.learned();
        learned.wake_latency = Some(match learned.wake_latency {
            None => sample,
            Some(mean) => mean + WEIGHT * (sample - mean),
        });
    }

    fn lead(learned: &Learned) -> Duration {
        learned
            .wake_latency
            .map_or(FIRST_LEAD, |s| Duration::from_secs_f64(s) + LEAD_MARGIN)
            .clamp(MIN_LEAD, MAX_LEAD)
    }

    /// The wake-up plan for a job of `key` submitted at `submitted`, or `None` if nothing is known
    /// of `key` yet or its jobs are too short to need one.
    pub fn plan(&self, key: u64, submitted: Instant) -> Option<Plan> {
        let learned = self.learned();
        let estimate = *learned.by_key.get(&key)?;
        if estimate.deviation > MAX_DEVIATION * estimate.mean {
            return None;
        }
        // Aim at the early side of the usual run time: a wake-up that comes too early costs
        // spinning, one that comes too late costs the whole wake-up again.
        let expected = Duration::from_secs_f64((estimate.mean - estimate.deviation).max(0.0));
        if expected < self.min_expected {
            return None;
        }
        let lead = Self::lead(&learned);
        let jitter = Duration::from_secs_f64(2.0 * estimate.deviation);
        Some(Plan {
            at: submitted + expected.saturating_sub(lead),
            spin: (lead + jitter + SPIN_MARGIN).min(MAX_SPIN),
        })
    }
}

/// The process's pending alarms, earliest first, and the thread that fires them, started with
/// the first alarm. A child forked after that has no such thread: it sets no alarms, and its
/// callers are woken by their workers only, as without alarms.
struct Alarms {
    pending: Mutex<BinaryHeap<Reverse<Alarm>>>,
    /// The alarm thread and the process it runs in.
    thread: OnceLock<(Thread, u32)>,
    /// Whether a core is free when an alarm is due ([`core_free`]; tests say always).
    core_free: fn() -> bool,
}

struct Alarm {
    at: Instant,
    completion: Weak<Completion>,
}

impl PartialEq for Alarm {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Alarm {}
impl PartialOrd for Alarm {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Alarm {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

static ALARMS: OnceLock<Alarms> = OnceLock::new();

/// [`Completion::prewake`]s `completion` at `at` if a core is free then: at once (on the calling
/// thread) if `at` has come, else from the alarm thread.
pub fn prewake_at(at: Instant, completion: &Arc<Completion>) {
    if at <= Instant::now() {
        if core_free() {
            completion.prewake();
        }
        return;
    }
    ALARMS
        .get_or_init(|| Alarms::new(core_free))
        .schedule(at, completion);
}

impl Alarms {
    fn new(core_free: fn() -> bool) -> Self {
        Self {
            pending: Mutex::new(BinaryHeap::new()),
            thread: OnceLock::new(),
            core_free,
        }
    }

    fn schedule(&'static self, at: Instant, completion: &Arc<Completion>) {
        let (thread, pid) = self.thread.get_or_init(|| {
            let thread = std::thread::Builder::new()
                .name("interpool-prewake".into())
                .spawn(move || fire_alarms(self))
                .expect("cannot start interpool's prewake thread");
            (thread.thread().clone(), std::process::id())
        });
        if *pid != std::process::id() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = pending.peek().is_none_or(|Reverse(first)| at < first.at);
        pending.push(Reverse(Alarm {
            at,
            completion: Arc::downgrade(completion),
        }));
        drop(pending);
        if earliest {
            thread.unpark();
        }
    }
}

fn fire_alarms(alarms: &'static Alarms) {
    // This thread only sleeps until its next alarm: its timers carry no slack (see
    // [`park_precisely`]), so it needs no restore.
    set_timer_slack(1);
    loop {
        let mut pending = alarms
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(Reverse(first)) = pending.peek() else {
            drop(pending);
            std::thread::park();
            continue;
        };
        let now = Instant::now();
        if first.at > now {
            let wait = first.at - now;
            drop(pending);
            std::thread::park_timeout(wait);
            continue;
        }
        let due = pending.pop().map(|Reverse(alarm)| alarm.completion);
        drop(pending);
        if let Some(completion) = due.and_then(|c| c.upgrade()) {
            if (alarms.core_free)() {
                completion.prewake();
            }
        }
    }
}

/// Sets the calling thread's timer slack to `ns` (nanoseconds); returns the one it had.
#[allow(unsafe_code)]
fn set_timer_slack(ns: u64) -> u64 {
    // SAFETY: PR_GET_TIMERSLACK and PR_SET_TIMERSLACK take no pointers and touch only the
    // calling thread's timer slack.
    unsafe {
        let old = libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0);
        u64::try_from(old).unwrap_or(0)
    }
}

/// Parks the calling thread up to `wait` (or until unparked), with no timer slack for this park.
///
/// Linux lets a thread's timers fire up to its *timer slack* late (50 µs by default), so that
/// wake-ups can be batched. A timed wait that exists to wake a lead before something is due
/// cannot afford that: measured on this project's VM (`examples/wake_floor.rs`), a 60 µs lead
/// with the default slack left the waiter 36–78 µs late, no better than parking until the
/// event itself; with a 1 ns slack it resumed in 0.3–12 µs. The slack is restored after the
/// park, so the thread's other timers (a job's own sleeps) keep theirs.
pub(crate) fn park_precisely(wait: Duration) {
    let old = set_timer_slack(1);
    std::thread::park_timeout(wait);
    if old != 0 {
        set_timer_slack(old);
    }
}

/// Threads of this process spinning right now for an outcome or a job that is due
/// ([`Spinning`]): [`core_free`] counts their cores as free, since each yields its core at every
/// check and shares it with the next spinner at the cost of a context switch.
static SPINNERS: AtomicUsize = AtomicUsize::new(0);

/// Counts the thread that holds it among this process's spinners ([`SPINNERS`]) while it spins
/// (yielding at every check) for an outcome or a job that is due.
#[derive(Debug)]
pub struct Spinning(());

impl Spinning {
    /// The calling thread spins from now until this is dropped.
    pub fn start() -> Self {
        SPINNERS.fetch_add(1, Ordering::Relaxed);
        Spinning(())
    }
}

impl Drop for Spinning {
    fn drop(&mut self) {
        SPINNERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many threads of this process spin right now ([`Spinning`]).
pub(crate) fn spinning_threads() -> usize {
    SPINNERS.load(Ordering::Relaxed)
}

/// Whether a core is free for one more spinner: the system's runnable threads (the asking one
/// included), less this process's spinners, do not fill every core ([`crate::cores`], which
/// reads the runnable count at most once a millisecond).
pub(crate) fn core_free() -> bool {
    crate::cores::fit(0)
}

#[cfg(test)]
mod tests {
    use std::{
        os::fd::RawFd,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_plan_before_a_run_was_observed_nor_for_short_jobs() {
        let durations = Durations::new();
        let t0 = Instant::now();
        assert_eq!(durations.plan(1, t0), None);
        durations.observe_run(1, t0, t0 + MIN_JOB / 2);
        assert_eq!(durations.plan(1, t0), None);
        assert_eq!(durations.plan(2, t0), None, "keys are learned apart");
    }

    #[test]
    fn the_plan_wakes_a_lead_before_the_learned_run_time_and_bounds_the_spin() {
        let durations = Durations::new();
        let t0 = Instant::now();
        durations.observe_run(7, t0, t0 + 10 * MS);
        let plan = durations.plan(7, t0).unwrap();
        assert_eq!(plan.at, t0 + 10 * MS - FIRST_LEAD);
        assert_eq!(plan.spin, FIRST_LEAD + SPIN_MARGIN);
        // Runs that vary a little move the wake-up earlier and lengthen the spin.
        durations.observe_run(7, t0, t0 + 9 * MS);
        let varied = durations.plan(7, t0).unwrap();
        assert!(varied.at < t0 + 10 * MS - FIRST_LEAD);
        assert!(varied.spin > plan.spin);
        assert!(varied.spin <= MAX_SPIN);
        // Runs that vary a lot get no wake-up at all.
        for run in [2, 30, 1, 50] {
            durations.observe_run(7, t0, t0 + run * MS);
        }
        assert_eq!(durations.plan(7, t0), None);
    }

    #[test]
    fn the_measured_wake_latency_becomes_the_lead() {
        let durations = Durations::new();
        let t0 = Instant::now();
        durations.observe_run(1, t0, t0 + 10 * MS);
        durations.observe_wake(t0, t0 + Duration::from_micros(200));
        let lead = Duration::from_micros(200) + LEAD_MARGIN;
        assert_eq!(durations.plan(1, t0).unwrap().at, t0 + 10 * MS - lead);
        // Bounded: a caller that resumed very late does not make every wake-up a long spin.
        for _ in 0..50 {
            durations.observe_wake(t0, t0 + 100 * MS);
        }
        assert_eq!(durations.plan(1, t0).unwrap().at, t0 + 10 * MS - MAX_LEAD);
    }

    fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        #[allow(unsafe_code)]
        let n = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
        n == 1
    }

    const GUARD_MS: i32 = 10_000;

    #[test]
    fn an_alarm_prewakes_a_parked_waiter_and_skips_finished_or_dropped_calls() {
        let alarms: &'static Alarms = Box::leak(Box::new(Alarms::new(|| true)));
        let finished = Arc::new(Completion::new());
        finished.complete(crate::Finished {
            outcome: crate::Outcome::Value(Vec::new()),
            retire: crate::Retire::Keep,
        });
        alarms.schedule(Instant::now(), &finished);
        alarms.schedule(Instant::now(), &Arc::new(Completion::new())); // dropped at once
        let parked = Arc::new(Completion::new());
        let fd = parked.arm_fd().unwrap().unwrap();
        alarms.schedule(Instant::now() + MS, &parked);
        assert!(readable(fd, GUARD_MS));
        assert!(parked.take_prewoken());
        assert!(!parked.is_done());
        parked.drain_fd();
        assert!(!readable(fd, 0));
        assert!(!finished.take_prewoken(), "a finished call is not woken");
    }

    static ASKED: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn an_alarm_does_nothing_when_no_core_is_free() {
        let alarms: &'static Alarms = Box::leak(Box::new(Alarms::new(|| {
            ASKED.fetch_add(1, Ordering::SeqCst);
            false
        })));
        let parked = Arc::new(Completion::new());
        let fd = parked.arm_fd().unwrap().unwrap();
        alarms.schedule(Instant::now(), &parked);
        let guard = Instant::now() + Duration::from_secs(10);
        while ASKED.load(Ordering::SeqCst) == 0 && Instant::now() < guard {
            std::thread::yield_now();
        }
        assert_eq!(ASKED.load(Ordering::SeqCst), 1);
        assert!(!readable(fd, 0));
        assert!(!parked.take_prewoken());
    }
}
