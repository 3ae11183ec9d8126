//! `pool.call` round trip on a warm worker, per worker type: subinterpreter, forkserver, spawn,
//! and auto (on subinterpreters, with its fallback's bookkeeping).
//!
//! Run with `tools/in-venv.sh .venv cargo bench --bench pool_call` (or `make bench-rust`); one
//! kind: `... --bench pool_call -- spawn`. The goal is a median of at most 10 µs for
//! subinterpreters and 35 µs for the process kinds; results go to docs/rust.md.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use interpool::{Pool, WorkerKind};

fn pool_call(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("pool_call");
    // Auto: subinterpreters plus the bookkeeping of its per-call fallback (the callable's module
    // looked up, a copy of the payload kept while the job runs).
    for kind in [
        WorkerKind::Subinterpreter,
        WorkerKind::Forkserver,
        WorkerKind::Spawn,
        WorkerKind::Auto,
    ] {
        let pool = match Pool::builder().worker_type(kind).max_workers(1).build() {
            Ok(pool) => pool,
            Err(e) => {
                eprintln!("skipping {}: {e}", kind.name());
                continue;
            }
        };
        // Warm the worker up (start, first import) outside the measurement.
        let warm: i64 = runtime
            .block_on(pool.call("operator:add", (1, 2)))
            .expect("warm-up call");
        assert_eq!(warm, 3);
        group.bench_function(format!("{}/operator.add", kind.name()), |b| {
            b.iter(|| -> i64 {
                runtime
                    .block_on(pool.call("operator:add", (1, 2)))
                    .expect("call")
            })
        });
        group.bench_function(format!("{}/pickled", kind.name()), |b| {
            // pickle.dumps((1, 2), 5)
            let args = b"\x80\x05\x95\x07\x00\x00\x00\x00\x00\x00\x00K\x01K\x02\x86\x94.";
            b.iter(|| {
                runtime
                    .block_on(pool.call_pickled("operator:add", args))
                    .expect("call")
            })
        });
        runtime
            .block_on(pool.shutdown(Duration::from_secs(5)))
            .expect("shutdown");
    }
    group.finish();
}

criterion_group!(benches, pool_call);
criterion_main!(benches);
