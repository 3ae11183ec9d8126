//! The floor of interpool's parked path on this machine, without Python: thread B runs a busy
//! job of `D` and then wakes thread A, which waits for it in one of several ways; and the other
//! half, B waiting for the next job while A idles a gap as long as the job (as the benchmark's
//! caller does while its other contexts run). docs/benchmarks.md ("Per-call overhead, fifth
//! session") has the figures:
//!
//! ```sh
//! tools/in-venv.sh .venv cargo run --release -p interpool-worker-types --example wake_floor -- [calls]
//! ```
//!
//! Ways to wait (the first four for A, the caller, waiting for the outcome; `park`, `spin` and
//! `prewake` for B, the worker, waiting for its next job):
//! - `park`: a futex (`std::thread::park`; the waker calls `unpark`);
//! - `socket`: `poll` on a socket pair the waker writes a byte to, as a caller's event loop
//!   waits on its completion's fd (`Completion::arm_fd`);
//! - `spin`: spin on an atomic, yielding the core at every check (`Completion::spin`);
//! - `prewake`: a timed futex park until a lead before the thing is due (learned from the
//!   previous call of the same pair: the job's end for A, the next submit for B), then spin;
//!   `prewake-tight` does the same with a 1 ns timer slack instead of the default 50 µs.
//!
//! Every pair of ways runs interleaved with the others, call by call. Printed per job length and
//! pair: the medians of `start` (B starts the job − A submitted it), `wake` (A resumes − B
//! ended the job), their sum (the overhead beyond the job itself), and the CPU each thread
//! burned per call (means): the caller from its submit to its resuming, the worker beyond the
//! job (its wait for the job, and its post).

#![allow(unsafe_code)]

use std::{
    os::{fd::AsRawFd, unix::net::UnixStream},
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    thread::Thread,
    time::{Duration, Instant},
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Park,
    Socket,
    Spin,
    Prewake,
    PrewakeTight,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Park => "park",
            Way::Socket => "socket",
            Way::Spin => "spin",
            Way::Prewake => "prewake",
            Way::PrewakeTight => "prewake-tight",
        }
    }
    fn code(self) -> u8 {
        self as u8
    }
    fn from_code(code: u8) -> Self {
        [
            Way::Park,
            Way::Socket,
            Way::Spin,
            Way::Prewake,
            Way::PrewakeTight,
        ][code as usize]
    }
}

/// The lead a prewake wakes by before the thing is due.
const LEAD: Duration = Duration::from_micros(60);

/// The caller's and the worker's ways to wait, per pair.
const PAIRS: &[(Way, Way)] = &[
    // The outcome's half (the worker spins for its next job, so its start is cheap).
    (Way::Park, Way::Spin),
    (Way::Socket, Way::Spin),
    (Way::Spin, Way::Spin),
    (Way::Prewake, Way::Spin),
    (Way::PrewakeTight, Way::Spin),
    // The job's half (the caller spins for the outcome, so its wake is cheap).
    (Way::Spin, Way::Park),
    (Way::Spin, Way::Prewake),
    (Way::Spin, Way::PrewakeTight),
    // Both: the plain parked path, and both sides prewoken.
    (Way::Socket, Way::Park),
    (Way::PrewakeTight, Way::PrewakeTight),
];

/// Nanoseconds since `base`.
fn ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn set_timer_slack(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}

/// One side's signal: a sequence number, plus the way its waiter is woken.
struct Signal {
    seq: AtomicU64,
    waiter: std::sync::Mutex<Option<Thread>>,
    socket: (UnixStream, UnixStream),
    /// The waiter's way for the current wait (set by the waiter before it waits).
    way: AtomicU8,
}

impl Signal {
    fn new() -> Self {
        let socket = UnixStream::pair().unwrap();
        socket.1.set_nonblocking(true).unwrap();
        Self {
            seq: AtomicU64::new(0),
            waiter: std::sync::Mutex::new(None),
            socket,
            way: AtomicU8::new(Way::Spin.code()),
        }
    }

    fn post(&self, seq: u64) {
        self.seq.store(seq, Ordering::Release);
        match Way::from_code(self.way.load(Ordering::Acquire)) {
            Way::Socket => {
                use std::io::Write;
                let _ = (&self.socket.0).write(&[1]);
            }
            Way::Spin => {}
            // An unpark of a thread that is not parked only sets its token.
            _ => {
                if let Some(t) = &*self.waiter.lock().unwrap() {
                    t.unpark();
                }
            }
        }
    }

    /// Waits until `seq` is posted, the `way` given; `due`: when it is expected (prewake).
    fn wait(&self, seq: u64, way: Way, due: Option<Instant>) {
        let done = || self.seq.load(Ordering::Acquire) >= seq;
        match way {
            Way::Park => {
                while !done() {
                    std::thread::park();
                }
            }
            Way::Socket => {
                use std::io::Read;
                while !done() {
                    let mut pollfd = libc::pollfd {
                        fd: self.socket.1.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut pollfd, 1, -1) };
                    let mut buf = [0u8; 16];
                    while matches!((&self.socket.1).read(&mut buf), Ok(n) if n > 0) {}
                }
            }
            Way::Spin => {
                while !done() {
                    std::thread::yield_now();
                }
            }
            Way::Prewake | Way::PrewakeTight => {
                set_timer_slack(if way == Way::PrewakeTight { 1 } else { 50_000 });
                if let Some(due) = due {
                    let at = due.checked_sub(LEAD).unwrap_or(due);
                    while !done() {
                        let now = Instant::now();
                        if now >= at {
                            break;
                        }
                        std::thread::park_timeout(at - now);
                    }
                }
                while !done() {
                    std::thread::yield_now();
                }
            }
        }
    }
}

struct Shared {
    base: Instant,
    job: Signal,
    outcome: Signal,
    /// The job's length (ns), and when the worker started and ended the current one.
    job_ns: AtomicU64,
    started: AtomicU64,
    ended: AtomicU64,
    /// The way the worker waits for the *next* job, and how long after this job's end that one
    /// is due (0: unknown), set with each job.
    next_way: AtomicU8,
    next_gap: AtomicU64,
    stop: AtomicU64,
}

fn busy(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// The worker: waits for each job the way the job before said, runs it, posts the outcome;
/// stores in `cpu` what it burned per call beyond the job itself (its wait and its post).
fn worker(s: Arc<Shared>, cpu: Arc<AtomicU64>) {
    *s.job.waiter.lock().unwrap() = Some(std::thread::current());
    let mut seq = 0;
    let (mut way, mut due) = (Way::Spin, None);
    loop {
        seq += 1;
        s.job.way.store(way.code(), Ordering::Release);
        let cpu0 = thread_cpu_ns();
        s.job.wait(seq, way, due);
        if s.stop.load(Ordering::Acquire) != 0 {
            return;
        }
        s.started.store(ns(s.base), Ordering::Release);
        way = Way::from_code(s.next_way.load(Ordering::Acquire));
        let gap = s.next_gap.load(Ordering::Acquire);
        busy(Duration::from_nanos(s.job_ns.load(Ordering::Acquire)));
        s.ended.store(ns(s.base), Ordering::Release);
        let ended = s.ended.load(Ordering::Relaxed);
        due = (gap != 0).then(|| s.base + Duration::from_nanos(ended + gap));
        s.outcome.post(seq);
        // The job's own CPU is not the worker's overhead.
        let job = ended - s.started.load(Ordering::Relaxed);
        cpu.store(
            (thread_cpu_ns() - cpu0).saturating_sub(job),
            Ordering::Release,
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .map_or(100, |a| a.parse().expect("calls: a number"));
    let s = Arc::new(Shared {
        base: Instant::now(),
        job: Signal::new(),
        outcome: Signal::new(),
        job_ns: AtomicU64::new(0),
        started: AtomicU64::new(0),
        ended: AtomicU64::new(0),
        next_way: AtomicU8::new(Way::Spin.code()),
        next_gap: AtomicU64::new(0),
        stop: AtomicU64::new(0),
    });
    *s.outcome.waiter.lock().unwrap() = Some(std::thread::current());
    let worker_cpu = Arc::new(AtomicU64::new(0));
    let thread = {
        let (s, cpu) = (s.clone(), worker_cpu.clone());
        std::thread::spawn(move || worker(s, cpu))
    };
    let mut seq = 0;
    for d_us in [100u64, 1000, 10_000] {
        let d = Duration::from_micros(d_us);
        s.job_ns.store(d.as_nanos() as u64, Ordering::Release);
        // Per pair: starts, wakes, caller CPU, worker CPU; and the last run (end - submit) and
        // gap (next submit - worker's wait start ~ previous end) seen, for the prewakes.
        let mut got: Vec<(Vec<f64>, Vec<f64>, u64, u64)> =
            PAIRS.iter().map(|_| (vec![], vec![], 0, 0)).collect();
        let mut last_run: Vec<Option<u64>> = vec![None; PAIRS.len()];
        let mut last_gap: Vec<Option<u64>> = vec![None; PAIRS.len()];
        let mut previous: Option<usize> = None;
        for _ in 0..calls {
            for (i, &(caller_way, _)) in PAIRS.iter().enumerate() {
                // The gap: the caller idles (parked, as on its other contexts' calls) a job's
                // length, while the worker waits for the next job as this pair says.
                let prev_end = s.ended.load(Ordering::Acquire);
                std::thread::sleep(d);
                // The worker stored its CPU for the previous call long ago.
                if let Some(p) = previous {
                    got[p].3 += worker_cpu.load(Ordering::Acquire);
                }
                let next = (i + 1) % PAIRS.len();
                s.next_way.store(PAIRS[next].1.code(), Ordering::Release);
                s.next_gap
                    .store(last_gap[next].unwrap_or(0), Ordering::Release);
                let cpu0 = thread_cpu_ns();
                seq += 1;
                s.outcome.way.store(caller_way.code(), Ordering::Release);
                let submitted = ns(s.base);
                s.job.post(seq);
                let due = last_run[i].map(|r| s.base + Duration::from_nanos(submitted + r));
                s.outcome.wait(seq, caller_way, due);
                let resumed = ns(s.base);
                let caller_cpu = thread_cpu_ns() - cpu0;
                let started = s.started.load(Ordering::Acquire);
                let ended = s.ended.load(Ordering::Acquire);
                last_run[i] = Some(ended - submitted);
                if prev_end != 0 {
                    last_gap[i] = Some(submitted.saturating_sub(prev_end));
                }
                let g = &mut got[i];
                g.0.push((started - submitted) as f64 / 1e3);
                g.1.push((resumed - ended) as f64 / 1e3);
                g.2 += caller_cpu;
                previous = Some(i);
            }
        }
        std::thread::sleep(d);
        if let Some(p) = previous {
            got[p].3 += worker_cpu.load(Ordering::Acquire);
        }
        println!("job {d_us} µs, {calls} calls per pair, interleaved (medians; CPU: means beyond the job)");
        for (i, &(caller_way, worker_way)) in PAIRS.iter().enumerate() {
            let (starts, wakes, ccpu, wcpu) = &got[i];
            let (start, wake) = (median(starts.clone()), median(wakes.clone()));
            println!(
                "  caller {:13} worker {:13} start {:7.1}  wake {:7.1}  sum {:7.1} µs   caller CPU {:7.1}  worker CPU {:7.1} µs",
                caller_way.name(),
                worker_way.name(),
                start,
                wake,
                start + wake,
                *ccpu as f64 / calls as f64 / 1e3,
                *wcpu as f64 / calls as f64 / 1e3,
            );
        }
    }
    s.stop.store(1, Ordering::Release);
    s.job.post(u64::MAX);
    thread.join().unwrap();
}
