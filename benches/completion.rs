//! The Rust side of a call, without Python: the `Completion` hand-off between a worker thread and
//! the caller, and the `WorkerCache` bookkeeping around each job.
//!
//! A warm interpool call is about 10 µs end to end; these paths must stay a small part of it.
//! Run with `make bench-rust` (or `tools/in-venv.sh .venv cargo bench --bench completion`);
//! `python -m interpool bench` measures the whole call (docs/bench-cli.md).
//!
//! * `completion/complete_take`: publish an outcome and take it, one thread (the floor);
//! * `completion/spin_handoff`: a worker thread completes, the caller spins (the fast path);
//! * `completion/park_handoff`: the caller parks first (`wait`) and is unparked (the slow path);
//! * `worker_cache/reuse`: submit and finish on a warm cache of in-process mock workers that
//!   complete at once (the LIFO reuse path);
//! * `worker_cache/new_worker`: the same, with every job retiring its worker (the start path).

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::{
    hint::black_box,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::Duration,
};

use criterion::{criterion_group, criterion_main, Criterion};
use interpool::{
    worker_types::{Rejected, Worker, WorkerConfig},
    Availability, Capabilities, Completion, Finished, Job, Outcome, Retire, WorkerCache,
    WorkerType,
};

fn value(payload: Vec<u8>, retire: Retire) -> Finished {
    Finished {
        outcome: Outcome::Value(payload),
        retire,
    }
}

/// A thread that completes every completion it is handed, as a worker would.
struct Completer {
    slot: Arc<Mutex<Option<Arc<Completion>>>>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Completer {
    fn start() -> Self {
        let slot = Arc::new(Mutex::new(None::<Arc<Completion>>));
        let ready = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (slot, ready, stop) = (slot.clone(), ready.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if !ready.swap(false, Ordering::AcqRel) {
                        // Yield like the worker's mailbox does, so that two cores suffice.
                        thread::yield_now();
                        continue;
                    }
                    let completion = slot.lock().unwrap().take().expect("handed a completion");
                    completion.complete(value(Vec::new(), Retire::Keep));
                }
            })
        };
        Self {
            slot,
            ready,
            stop,
            thread: Some(thread),
        }
    }

    fn hand(&self, completion: Arc<Completion>) {
        *self.slot.lock().unwrap() = Some(completion);
        self.ready.store(true, Ordering::Release);
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn completion(c: &mut Criterion) {
    let mut group = c.benchmark_group("completion");
    group.bench_function("complete_take", |b| {
        b.iter(|| {
            let completion = Completion::new();
            completion.complete(value(Vec::new(), Retire::Keep));
            assert!(completion.spin(Duration::ZERO));
            black_box(completion.take())
        })
    });

    let completer = Completer::start();
    group.bench_function("spin_handoff", |b| {
        b.iter(|| {
            let completion = Arc::new(Completion::new());
            completer.hand(completion.clone());
            while !completion.spin(Duration::from_millis(10)) {}
            black_box(completion.take())
        })
    });
    group.bench_function("park_handoff", |b| {
        b.iter(|| {
            let completion = Arc::new(Completion::new());
            completer.hand(completion.clone());
            assert!(completion.wait(None));
            black_box(completion.take())
        })
    });
    drop(completer);
    group.finish();
}

/// Mock worker type: each worker completes its job at once, echoing the payload; the payload
/// `retire` ends the worker after the job. The same shape as the mock in `src/cache.rs`'s tests.
#[derive(Debug)]
struct Echo;

#[derive(Debug)]
struct EchoWorker {
    id: u64,
    accepting: AtomicBool,
}

impl WorkerType for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn availability(&self) -> Availability {
        Availability::Available
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
    ) -> interpool::worker_types::Result<Box<dyn Worker>> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Ok(Box::new(EchoWorker {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            accepting: AtomicBool::new(true),
        }))
    }
}

impl Worker for EchoWorker {
    fn id(&self) -> u64 {
        self.id
    }
    fn submit(&self, job: Job) -> Result<Arc<Completion>, Rejected> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(Rejected(job));
        }
        let retire = if job.payload == b"retire" {
            Retire::Retire
        } else {
            Retire::Keep
        };
        let completion = Arc::new(Completion::new());
        completion.complete(value(job.payload, retire));
        Ok(completion)
    }
    fn interrupt(&self) {}
    fn abandon(&self) {}
    fn close(&self) {
        self.accepting.store(false, Ordering::Release);
    }
    fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }
    fn wait_ended(&self, _timeout: Option<Duration>) -> bool {
        !self.is_accepting()
    }
}

fn no_setup() -> Result<Vec<u8>, String> {
    Ok(Vec::new())
}

fn run(cache: &WorkerCache, payload: &[u8]) -> Finished {
    let job = Job::new(payload.to_vec());
    let mut lease = cache.submit(job, &no_setup).expect("submit");
    lease.finish().expect("echo completes at once")
}

fn worker_cache(c: &mut Criterion) {
    let mut group = c.benchmark_group("worker_cache");
    let cache =
        WorkerCache::new(Arc::new(Echo), None, Default::default()).expect("echo is available");
    run(&cache, b"warm");
    group.bench_function("reuse", |b| b.iter(|| black_box(run(&cache, b"noop"))));
    group.bench_function("new_worker", |b| {
        b.iter(|| black_box(run(&cache, b"retire")))
    });
    cache.close();
    cache.wait_closed(Some(Duration::from_secs(1)));
    group.finish();

    // Several callers at once: the cache's one lock is what they share.
    let mut group = c.benchmark_group("worker_cache_contended");
    let cache =
        WorkerCache::new(Arc::new(Echo), None, Default::default()).expect("echo is available");
    group.bench_function("reuse_2_threads", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = mpsc::channel();
            let other = {
                let cache = cache.clone();
                thread::spawn(move || {
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        black_box(run(&cache, b"noop"));
                    }
                    tx.send(start.elapsed()).unwrap();
                })
            };
            let start = std::time::Instant::now();
            for _ in 0..iters {
                black_box(run(&cache, b"noop"));
            }
            let mine = start.elapsed();
            other.join().unwrap();
            mine.max(rx.recv().unwrap())
        })
    });
    cache.close();
    cache.wait_closed(Some(Duration::from_secs(1)));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = completion, worker_cache
}
criterion_main!(benches);
