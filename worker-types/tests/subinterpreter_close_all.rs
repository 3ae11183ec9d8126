//! `close_all` is process-wide: it closes the workers of every test running at the same time, so
//! it has this test binary (a process of its own) to itself.
//!
//! Payloads: see tests/subinterpreter.rs.

#![allow(unsafe_code)]
#![allow(dead_code)] // the shared payloads: this test needs three of them

use std::{
    sync::{Arc, Once},
    time::Duration,
};

use interpool_worker_types::{
    subinterpreter::{self, Subinterpreters},
    Availability, Job, Outcome, Worker, WorkerConfig, WorkerType,
};

include!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/payloads.rs"
));

const TEN_SECONDS: Option<Duration> = Some(Duration::from_secs(10));

fn start() -> Box<dyn Worker> {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: called once per process, before any other Python use; the main thread state is
        // released so that worker threads can take the main GIL while they create interpreters.
        unsafe {
            pyo3_ffi::Py_InitializeEx(0);
            pyo3_ffi::PyEval_SaveThread();
        }
    });
    Subinterpreters
        .start(Arc::new(WorkerConfig {
            setup: SETUP_PLAIN.to_vec(),
            idle_timeout: None,
            max_tasks: None,
            max_memory: None,
        }))
        .expect("worker starts")
}

fn run(worker: &dyn Worker, payload: &[u8]) -> Outcome {
    let completion = worker
        .submit(Job::new(payload.to_vec()))
        .expect("idle worker accepts a job");
    assert!(completion.wait(TEN_SECONDS), "job did not finish");
    completion.take().expect("outcome").outcome
}

#[test]
fn close_all_ends_every_idle_worker_of_the_process() {
    if let Availability::Unavailable(reason) = Subinterpreters.availability() {
        eprintln!("skipped: {reason}");
        return;
    }
    let workers: Vec<_> = (0..2).map(|_| start()).collect();
    for w in &workers {
        assert_eq!(run(&**w, ABS_MINUS_3), Outcome::Value(THREE.to_vec()));
    }
    subinterpreter::close_all();
    for w in &workers {
        assert!(w.wait_ended(TEN_SECONDS));
    }
}
