//! The slot through which a worker hands a job's outcome back to whoever waits for it.
//!
//! Latency is the point of interpool, and what costs on this path is not moving bytes but waking a
//! thread (measured here: a parked thread takes 5–60 µs to wake; an epoll wake-up of an event loop more).
//! So a waiter first *spins* for a few microseconds on the slot's state, and only if the job is
//! still running does it *park*: on a file descriptor that an event loop watches
//! ([`Completion::arm_fd`]), by blocking the thread ([`Completion::wait`]), or as an async task
//! whose [`Waker`] the worker calls ([`Completion::poll_done`]). The worker pays a
//! system call only when somebody actually parked: publishing the outcome is one atomic swap, and
//! the swap tells it whether a parked waiter must be woken.
//!
//! States: `PENDING` → (`PARKED` →) `DONE`. The outcome is written before the swap to `DONE`
//! (release) and read after observing `DONE` (acquire).
//!
//! **Completed or interrupted, decided once.** A job that is being cancelled races with its own
//! end. The slot settles that race with one compare-and-swap on its *verdict*: the caller's
//! [`Completion::claim_interrupt`] and the worker's [`Completion::settle`] both try to move it
//! from `UNDECIDED`, and whichever wins decides for both. A worker acts on an interrupt (kills its
//! process, injects an exception) only after the claim won, so a job that completed is never
//! interrupted; and a worker whose job was claimed treats it as interrupted whatever it
//! returned, so a caller and its worker never disagree about what happened.

use std::{
    io::{Read, Write},
    os::{
        fd::{AsRawFd, RawFd},
        unix::net::UnixStream,
    },
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Mutex, OnceLock, PoisonError,
    },
    task::{Context, Poll, Waker},
    thread::Thread,
    time::{Duration, Instant},
};

use crate::{prewake::Plan, Finished};

const PENDING: u8 = 0;
const PARKED: u8 = 1;
const DONE: u8 = 2;

const UNDECIDED: u8 = 0;
const COMPLETED: u8 = 1;
const INTERRUPTED: u8 = 2;

/// What became of a job, as far as cancellation goes: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The job ran to its end (or failed on its own) before anybody interrupted it.
    Completed,
    /// The caller claimed the interrupt first: the job counts as interrupted.
    Interrupted,
}

/// How a parked waiter wants to be woken.
#[derive(Debug)]
enum Waiter {
    /// Nobody parked yet.
    None,
    /// An event loop watches `read`; the worker writes one byte to `write`.
    Fd { read: UnixStream, write: UnixStream },
    /// A thread blocked in [`Completion::wait`].
    Thread(Thread),
    /// An async task that polled [`Completion::poll_done`] (its latest waker).
    Task(Waker),
}

/// The outcome slot of one job. Shared by the worker (which completes it) and the caller.
#[derive(Debug)]
pub struct Completion {
    state: AtomicU8,
    verdict: AtomicU8,
    finished: Mutex<Option<Finished>>,
    waiter: Mutex<Waiter>,
    /// When the worker published the outcome (what run times are learned from: see `prewake`).
    completed_at: OnceLock<Instant>,
    /// Set by [`Completion::prewake`] when it woke a parked waiter before the outcome was in.
    prewoken: AtomicBool,
    /// When the outcome is expected, as the parked caller's prewake planned it: a worker's own
    /// helper that waits for the outcome too (a process worker's thread) wakes by it as well.
    expected: OnceLock<Plan>,
}

impl Default for Completion {
    fn default() -> Self {
        Self::new()
    }
}

impl Completion {
    /// An empty slot.
    pub fn new() -> Self {
        Self {
            state: AtomicU8::new(PENDING),
            verdict: AtomicU8::new(UNDECIDED),
            finished: Mutex::new(None),
            waiter: Mutex::new(Waiter::None),
            completed_at: OnceLock::new(),
            prewoken: AtomicBool::new(false),
            expected: OnceLock::new(),
        }
    }

    /// Records when the outcome is expected (once; later plans are ignored).
    pub fn expect(&self, plan: Plan) {
        let _ = self.expected.set(plan);
    }

    /// When the outcome is expected, if a parked caller planned its prewake.
    pub fn expected(&self) -> Option<Plan> {
        self.expected.get().copied()
    }

    /// When the worker published the outcome; `None` while the job runs.
    pub fn completed_at(&self) -> Option<Instant> {
        if self.is_done() {
            self.completed_at.get().copied()
        } else {
            None
        }
    }

    /// Wakes a parked waiter *before* the outcome is in, as its fd's worker write would (see
    /// `prewake`); does nothing if nobody parked or the outcome is in. The woken waiter tells
    /// this wake from the real one by [`Completion::take_prewoken`].
    pub fn prewake(&self) {
        if self.state.load(Ordering::Acquire) != PARKED {
            return;
        }
        let waiter = self.waiter.lock().unwrap_or_else(PoisonError::into_inner);
        self.prewoken.store(true, Ordering::Release);
        match &*waiter {
            // As in `complete`: a full buffer or a gone reader both mean nobody needs the byte.
            Waiter::Fd { write, .. } => {
                let _ = (&*write).write(&[1]);
            }
            Waiter::Thread(thread) => thread.unpark(),
            Waiter::Task(waker) => waker.wake_by_ref(),
            Waiter::None => {}
        }
    }

    /// Whether a [`Completion::prewake`] woke the waiter since the last call (and clears it).
    pub fn take_prewoken(&self) -> bool {
        self.prewoken.swap(false, Ordering::AcqRel)
    }

    /// Empties the parked fd, so that it reads as readable only after the next wake. Call it
    /// before deciding, from [`Completion::is_done`], whether to wait on the fd again: a wake
    /// that comes after the drain finds the fd readable again.
    pub fn drain_fd(&self) {
        if let Waiter::Fd { read, .. } =
            &*self.waiter.lock().unwrap_or_else(PoisonError::into_inner)
        {
            let mut buf = [0u8; 16];
            while matches!((&*read).read(&mut buf), Ok(n) if n > 0) {}
        }
    }

    /// Whether the outcome is in.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == DONE
    }

    /// Spins for at most `budget` waiting for the outcome. True if it is in. Call it without
    /// holding any lock (and, from Python, with the GIL released). Each check yields the core
    /// first, so that the worker gets it if both share one (see `mailbox`).
    pub fn spin(&self, budget: Duration) -> bool {
        if self.is_done() {
            return true;
        }
        let start = Instant::now();
        loop {
            std::thread::yield_now();
            if self.is_done() {
                return true;
            }
            if start.elapsed() >= budget {
                return false;
            }
        }
    }

    /// Parks the caller on a file descriptor: returns `Some(fd)` to wait on for readability, or
    /// `None` if the outcome is already in. After the fd turns readable, call
    /// [`Completion::is_done`] (it is then true). The fd stays valid while `self` lives.
    pub fn arm_fd(&self) -> std::io::Result<Option<RawFd>> {
        let mut waiter = self.waiter.lock().unwrap_or_else(PoisonError::into_inner);
        let fd = match &*waiter {
            Waiter::Fd { read, .. } => read.as_raw_fd(),
            Waiter::None => {
                let (read, write) = UnixStream::pair()?;
                read.set_nonblocking(true)?;
                let fd = read.as_raw_fd();
                *waiter = Waiter::Fd { read, write };
                fd
            }
            Waiter::Thread(_) | Waiter::Task(_) => {
                unreachable!("a completion has one kind of waiter")
            }
        };
        // The worker reads `waiter` only after it swapped in DONE and saw PARKED, so publishing
        // PARKED while holding the waiter lock is race-free in both orders.
        match self
            .state
            .compare_exchange(PENDING, PARKED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(Some(fd)),
            Err(PARKED) => Ok(Some(fd)),
            Err(_) => Ok(None),
        }
    }

    /// Blocks the calling thread until the outcome is in or `timeout` passes (`None`: forever).
    /// True if it is in.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        {
            let mut waiter = self.waiter.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*waiter, Waiter::Fd { .. } | Waiter::Task(_)) {
                drop(waiter);
                return self.wait_polling(deadline);
            }
            *waiter = Waiter::Thread(std::thread::current());
            if self
                .state
                .compare_exchange(PENDING, PARKED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
                && self.is_done()
            {
                return true;
            }
        }
        loop {
            if self.is_done() {
                return true;
            }
            match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return self.is_done();
                    }
                    std::thread::park_timeout(d - now);
                }
            }
        }
    }

    /// Polls for the outcome from an async task: `Ready` once it is in (then [`Completion::take`]
    /// it), otherwise registers `cx`'s waker, which the worker wakes when it completes the slot.
    /// Re-polling replaces the waker. The fast path (already done) takes no lock.
    pub fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_done() {
            return Poll::Ready(());
        }
        let mut waiter = self.waiter.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *waiter {
            Waiter::Task(waker) => waker.clone_from(cx.waker()),
            Waiter::None => *waiter = Waiter::Task(cx.waker().clone()),
            Waiter::Fd { .. } | Waiter::Thread(_) => {
                unreachable!("a completion has one kind of waiter")
            }
        }
        // As in `arm_fd`: the worker reads `waiter` only after it swapped in DONE and saw PARKED,
        // and the waker is stored under the lock before PARKED is published.
        match self
            .state
            .compare_exchange(PENDING, PARKED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(PARKED) => Poll::Pending,
            Err(_) => Poll::Ready(()),
        }
    }

    /// `wait` for a slot whose waiter is an fd or a task (they gave up on it): poll the state.
    fn wait_polling(&self, deadline: Option<Instant>) -> bool {
        let mut pause = Duration::from_micros(50);
        while !self.is_done() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        true
    }

    /// Caller side: claims the job as interrupted. True if the claim won, and only then may the
    /// worker be told to stop it; false if the job had already completed (or was claimed
    /// before), and then interrupting must do nothing.
    pub fn claim_interrupt(&self) -> bool {
        self.verdict
            .compare_exchange(UNDECIDED, INTERRUPTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Worker side: fixes the verdict before the worker acts on its job's end (reuse or end
    /// itself, publish). Idempotent.
    pub fn settle(&self) -> Verdict {
        match self.verdict.compare_exchange(
            UNDECIDED,
            COMPLETED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) | Err(COMPLETED) => Verdict::Completed,
            Err(_) => Verdict::Interrupted,
        }
    }

    /// Whether an interrupt was claimed (the job, if it has not started, must not start).
    pub fn interrupt_claimed(&self) -> bool {
        self.verdict.load(Ordering::Acquire) == INTERRUPTED
    }

    /// Takes the outcome, once. `None` if it is not in yet or was already taken.
    pub fn take(&self) -> Option<Finished> {
        if !self.is_done() {
            return None;
        }
        self.finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Publishes the outcome and wakes a parked waiter. Called once, by the worker, after
    /// [`Completion::settle`] (it settles if the worker did not: a later claim must fail).
    pub fn complete(&self, finished: Finished) {
        self.settle();
        *self.finished.lock().unwrap_or_else(PoisonError::into_inner) = Some(finished);
        let _ = self.completed_at.set(Instant::now());
        if self.state.swap(DONE, Ordering::AcqRel) == PARKED {
            match &*self.waiter.lock().unwrap_or_else(PoisonError::into_inner) {
                Waiter::Fd { write, .. } => {
                    // The socket buffer holds far more than one byte per job; a failure here
                    // would mean the reader is gone, and then nobody is waiting.
                    let _ = (&*write).write(&[1]);
                }
                Waiter::Thread(thread) => thread.unpark(),
                Waiter::Task(waker) => waker.wake_by_ref(),
                Waiter::None => unreachable!("PARKED is only set after a waiter is registered"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read, sync::Arc, thread};

    use super::*;
    use crate::{Outcome, Retire};

    fn value(bytes: &[u8]) -> Finished {
        Finished {
            outcome: Outcome::Value(bytes.to_vec()),
            retire: Retire::Keep,
        }
    }

    #[test]
    fn outcome_completed_before_any_wait_is_seen_by_spin_and_taken_once() {
        let c = Completion::new();
        assert!(!c.spin(Duration::from_micros(1)));
        c.complete(value(b"x"));
        assert!(c.spin(Duration::ZERO));
        assert_eq!(c.take(), Some(value(b"x")));
        assert_eq!(c.take(), None);
    }

    #[test]
    fn arm_fd_after_completion_says_no_wait_is_needed() {
        let c = Completion::new();
        c.complete(value(b""));
        assert_eq!(c.arm_fd().unwrap(), None);
    }

    #[test]
    fn parked_fd_becomes_readable_when_the_worker_completes() {
        let c = Arc::new(Completion::new());
        let fd = c.arm_fd().unwrap().expect("still pending");
        let worker = {
            let c = c.clone();
            thread::spawn(move || c.complete(value(b"late")))
        };
        worker.join().unwrap();
        // Readable: one byte is waiting.
        let waiter = c.waiter.lock().unwrap();
        let Waiter::Fd { read, .. } = &*waiter else {
            panic!("fd waiter expected")
        };
        assert_eq!(read.as_raw_fd(), fd);
        let mut buf = [0u8; 4];
        assert_eq!((&*read).read(&mut buf).unwrap(), 1);
        drop(waiter);
        assert_eq!(c.take(), Some(value(b"late")));
    }

    #[test]
    fn blocking_wait_is_woken_by_completion_from_another_thread() {
        let c = Arc::new(Completion::new());
        let worker = {
            let c = c.clone();
            thread::spawn(move || {
                // Complete only once the waiter has parked, to exercise the PARKED path.
                while c.state.load(Ordering::Acquire) != PARKED {
                    std::hint::spin_loop();
                }
                c.complete(value(b"v"));
            })
        };
        assert!(c.wait(None));
        worker.join().unwrap();
        assert_eq!(c.take(), Some(value(b"v")));
    }

    /// A waker that counts its wake-ups.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(Default::default()));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn poll_after_completion_is_ready_without_registering_a_waker() {
        let c = Completion::new();
        c.complete(value(b"x"));
        let (counter, waker) = counting_waker();
        assert!(c.poll_done(&mut Context::from_waker(&waker)).is_ready());
        assert!(matches!(*c.waiter.lock().unwrap(), Waiter::None));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        assert_eq!(c.take(), Some(value(b"x")));
    }

    #[test]
    fn a_pending_poll_is_woken_once_by_completion_from_another_thread() {
        let c = Arc::new(Completion::new());
        let (first, first_waker) = counting_waker();
        let (second, second_waker) = counting_waker();
        assert!(c
            .poll_done(&mut Context::from_waker(&first_waker))
            .is_pending());
        // A re-poll replaces the waker: only the latest one is woken.
        assert!(c
            .poll_done(&mut Context::from_waker(&second_waker))
            .is_pending());
        let worker = {
            let c = c.clone();
            thread::spawn(move || c.complete(value(b"v")))
        };
        worker.join().unwrap();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(c
            .poll_done(&mut Context::from_waker(&second_waker))
            .is_ready());
        assert_eq!(c.take(), Some(value(b"v")));
    }

    #[test]
    fn blocking_wait_after_a_task_gave_up_still_sees_the_outcome() {
        let c = Arc::new(Completion::new());
        let (_, waker) = counting_waker();
        assert!(c.poll_done(&mut Context::from_waker(&waker)).is_pending());
        let worker = {
            let c = c.clone();
            thread::spawn(move || c.complete(value(b"w")))
        };
        assert!(c.wait(TEN_SECONDS_FOR_TESTS));
        worker.join().unwrap();
        assert_eq!(c.take(), Some(value(b"w")));
    }

    const TEN_SECONDS_FOR_TESTS: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn an_interrupt_claimed_after_completion_loses_and_the_job_stays_completed() {
        let c = Completion::new();
        c.complete(value(b"done"));
        assert!(!c.claim_interrupt());
        assert_eq!(c.settle(), Verdict::Completed);
        assert!(!c.interrupt_claimed());
    }

    #[test]
    fn an_interrupt_claimed_first_decides_for_the_worker_too() {
        let c = Completion::new();
        assert!(c.claim_interrupt());
        assert!(!c.claim_interrupt(), "decided once");
        assert_eq!(c.settle(), Verdict::Interrupted);
        c.complete(value(b"late"));
        assert!(c.interrupt_claimed());
    }

    #[test]
    fn a_settled_job_cannot_be_claimed_before_it_is_published() {
        let c = Completion::new();
        assert_eq!(c.settle(), Verdict::Completed);
        assert!(!c.claim_interrupt());
    }

    fn readable(fd: RawFd) -> bool {
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        #[allow(unsafe_code)]
        let n = unsafe { libc::poll(&mut pollfd, 1, 0) };
        n == 1
    }

    #[test]
    fn a_prewake_makes_the_parked_fd_readable_without_completing_the_job() {
        let c = Completion::new();
        let fd = c.arm_fd().unwrap().expect("still pending");
        c.prewake();
        assert!(readable(fd));
        assert!(c.take_prewoken());
        assert!(!c.take_prewoken(), "told once");
        assert!(!c.is_done());
        assert_eq!(c.completed_at(), None);
        c.drain_fd();
        assert!(!readable(fd));
        // The real wake still comes.
        c.complete(value(b"v"));
        assert!(readable(fd));
        assert!(c.completed_at().is_some());
        assert_eq!(c.take(), Some(value(b"v")));
    }

    #[test]
    fn a_prewake_before_parking_or_after_completion_does_nothing() {
        let c = Completion::new();
        c.prewake();
        assert!(!c.take_prewoken());
        c.complete(value(b""));
        c.prewake();
        assert!(!c.take_prewoken());
    }

    #[test]
    fn blocking_wait_times_out_while_pending() {
        let c = Completion::new();
        assert!(!c.wait(Some(Duration::from_millis(1))));
        assert!(!c.is_done());
    }
}
