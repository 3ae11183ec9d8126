//! Tests for the subinterpreter worker type, driven from Rust with no Python front end.
//!
//! Payloads are pickles made by CPython 3.13 (`pickle.dumps(..., protocol=4)`) of builtins only,
//! so that the tests need no Python-object plumbing. Setup payloads are
//! `(None, None, None, None, pickle(init), pickle(retire))`: the interpreter keeps its own sys.path and argv.

#![allow(unsafe_code)]

use std::{
    io::Read,
    os::{fd::AsRawFd, unix::net::UnixStream},
    sync::{Arc, Once},
    time::Duration,
};

use interpool_worker_types::{
    lent_blocks, subinterpreter::Subinterpreters, Availability, Finished, Job, Outcome, Retire,
    Worker, WorkerConfig, WorkerType,
};

include!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/payloads.rs"
));

// pickle.dumps((operator.mul, (b"ab", 300000)), 5): a protocol-5 job whose value is 600000 bytes.
const REPEAT_AB_300000: &[u8] = b"\x80\x05\x95\x23\x00\x00\x00\x00\x00\x00\x00\x8c\x09\x5f\x6f\x70\x65\x72\x61\x74\x6f\x72\x94\x8c\x03\x6d\x75\x6c\x94\x93\x94\x43\x02\x61\x62\x94\x4a\xe0\x93\x04\x00\x86\x94\x86\x94\x2e";

const TEN_SECONDS: Option<Duration> = Some(Duration::from_secs(10));

fn init_python() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: called once per process, before any other Python use; the main thread state is
        // released so that worker threads can take the main GIL while they create interpreters.
        unsafe {
            pyo3_ffi::Py_InitializeEx(0);
            pyo3_ffi::PyEval_SaveThread();
        }
    });
}

fn start(setup: &[u8], idle_timeout: Option<Duration>) -> Box<dyn Worker> {
    init_python();
    Subinterpreters
        .start(Arc::new(WorkerConfig {
            setup: setup.to_vec(),
            idle_timeout,
            max_tasks: None,
            max_memory: None,
        }))
        .expect("worker starts")
}

fn run(worker: &dyn Worker, payload: &[u8]) -> Finished {
    let completion = worker
        .submit(Job::new(payload.to_vec()))
        .expect("idle worker accepts a job");
    assert!(completion.wait(TEN_SECONDS), "job did not finish");
    completion.take().expect("outcome")
}

fn skip_unless_available() -> bool {
    match Subinterpreters.availability() {
        Availability::Available => false,
        Availability::Unavailable(reason) => {
            eprintln!("skipped: {reason}");
            true
        }
    }
}

#[test]
fn smoke_a_job_returns_its_pickled_value_and_the_worker_is_reused() {
    if skip_unless_available() {
        return;
    }
    let worker = start(SETUP_PLAIN, None);
    for _ in 0..3 {
        let finished = run(&*worker, ABS_MINUS_3);
        assert_eq!(finished.outcome, Outcome::Value(THREE.to_vec()));
        assert_eq!(finished.retire, Retire::Keep);
    }
    worker.close();
    assert!(worker.wait_ended(TEN_SECONDS));
}

#[test]
fn an_exception_comes_back_as_raised_and_the_worker_survives() {
    if skip_unless_available() {
        return;
    }
    let worker = start(SETUP_PLAIN, None);
    assert!(matches!(
        run(&*worker, DIVIDE_BY_ZERO).outcome,
        Outcome::Raised(_)
    ));
    assert_eq!(
        run(&*worker, ABS_MINUS_3).outcome,
        Outcome::Value(THREE.to_vec())
    );
}

#[test]
fn a_job_that_cannot_be_unpickled_is_a_load_error() {
    if skip_unless_available() {
        return;
    }
    let worker = start(SETUP_PLAIN, None);
    assert!(matches!(
        run(&*worker, NO_SUCH_MODULE).outcome,
        Outcome::LoadError(_)
    ));
    assert!(
        worker.is_accepting(),
        "a load error leaves the worker usable"
    );
}

/// A pickled `exec(source)` job (protocol 4, no framing), for sources built at run time.
fn exec_job(source: &str) -> Vec<u8> {
    let mut pickle = b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94\x93\x94".to_vec();
    let len = u8::try_from(source.len()).expect("short source");
    pickle.push(0x8c);
    pickle.push(len);
    pickle.extend_from_slice(source.as_bytes());
    pickle.extend_from_slice(b"\x94\x85\x94\x86\x94.");
    pickle
}

#[test]
fn interrupt_stops_a_running_python_loop_and_the_worker_is_kept() {
    if skip_unless_available() {
        return;
    }
    let worker = start(SETUP_PLAIN, None);
    let (mut started, job_end) = UnixStream::pair().unwrap();
    started.set_read_timeout(TEN_SECONDS).unwrap(); // a hang becomes a failure
    let job = exec_job(&format!(
        "import os; os.write({}, b's')\nwhile True: pass",
        job_end.as_raw_fd()
    ));
    let completion = worker.submit(Job::new(job)).unwrap();
    let mut byte = [0u8];
    started.read_exact(&mut byte).unwrap(); // the loop is running now
    worker.interrupt();
    assert!(
        completion.wait(TEN_SECONDS),
        "interrupt did not stop the loop"
    );
    let finished = completion.take().unwrap();
    match finished.outcome {
        Outcome::Broken(broken) => {
            assert!(broken.reason.contains("interrupted"), "{broken:?}");
            assert_eq!(broken.stage, interpool_worker_types::Stage::Interrupted);
        }
        other => panic!("expected Broken, got {other:?}"),
    }
    // The interpreter survived the KeyboardInterrupt: it serves the next job (3.13 leaks an
    // ended interpreter's arenas).
    assert_eq!(finished.retire, Retire::Keep);
    for _ in 0..2 {
        assert_eq!(
            run(&*worker, ABS_MINUS_3).outcome,
            Outcome::Value(THREE.to_vec())
        );
    }
}

#[test]
fn an_interrupt_after_the_job_completed_is_a_no_op() {
    if skip_unless_available() {
        return;
    }
    let worker = start(SETUP_PLAIN, None);
    run(&*worker, ABS_MINUS_3);
    worker.interrupt();
    let (mut started, job_end) = UnixStream::pair().unwrap();
    started.set_read_timeout(TEN_SECONDS).unwrap();
    // A late interrupt would hit this job: it must not.
    let job = exec_job(&format!(
        "import os, time; os.write({}, b's'); time.sleep(0.05)",
        job_end.as_raw_fd()
    ));
    let completion = worker.submit(Job::new(job)).unwrap();
    let mut byte = [0u8];
    started.read_exact(&mut byte).unwrap();
    assert!(completion.wait(TEN_SECONDS));
    assert_eq!(
        completion.take().unwrap().outcome,
        Outcome::Value(b"\x80\x05N.".to_vec())
    );
}

#[test]
fn a_job_interrupted_while_its_worker_starts_never_runs_and_the_worker_is_kept() {
    if skip_unless_available() {
        return;
    }
    let worker = start(SETUP_PLAIN, None);
    let completion = worker.submit(Job::new(SPIN_FOREVER.to_vec())).unwrap();
    worker.interrupt(); // the interpreter is still being created (~10 ms)
    assert!(completion.wait(TEN_SECONDS));
    let finished = completion.take().unwrap();
    assert!(matches!(finished.outcome, Outcome::Broken(_)));
    assert!(!finished.worker_ends());
    assert_eq!(
        run(&*worker, ABS_MINUS_3).outcome,
        Outcome::Value(THREE.to_vec())
    );
}

#[test]
fn a_truthy_retire_ends_the_worker_after_its_job() {
    if skip_unless_available() {
        return;
    }
    let worker = start(SETUP_RETIRE_ALWAYS, None);
    let finished = run(&*worker, ABS_MINUS_3);
    // The outcome comes first; the hook's verdict after it ends the worker.
    assert_eq!(finished.outcome, Outcome::Value(THREE.to_vec()));
    assert!(worker.wait_ended(TEN_SECONDS));
    assert!(worker.submit(Job::new(vec![])).is_err());
}

#[test]
fn max_tasks_and_a_memory_limit_end_the_worker_after_its_job() {
    if skip_unless_available() {
        return;
    }
    init_python();
    for (max_tasks, max_memory, jobs) in [(Some(2), None, 2), (None, Some(1), 1)] {
        let worker = Subinterpreters
            .start(Arc::new(WorkerConfig {
                setup: SETUP_PLAIN.to_vec(),
                idle_timeout: None,
                max_tasks,
                max_memory,
            }))
            .expect("worker starts");
        for _ in 0..jobs {
            assert_eq!(
                run(&*worker, ABS_MINUS_3).outcome,
                Outcome::Value(THREE.to_vec())
            );
        }
        assert!(
            worker.wait_ended(TEN_SECONDS),
            "{max_tasks:?} {max_memory:?}"
        );
    }
}

#[test]
fn a_failing_init_breaks_the_first_job_with_the_reason() {
    if skip_unless_available() {
        return;
    }
    let worker = start(SETUP_INIT_FAILS, None);
    match run(&*worker, ABS_MINUS_3).outcome {
        Outcome::Broken(broken) => {
            assert_eq!(broken.reason, "the worker's init raised an exception");
            assert_eq!(broken.stage, interpool_worker_types::Stage::Init);
            assert!(broken.exception.is_some());
        }
        other => panic!("expected Broken, got {other:?}"),
    }
    assert!(worker.wait_ended(TEN_SECONDS));
}

#[test]
fn an_idle_worker_ends_itself_after_its_idle_timeout() {
    if skip_unless_available() {
        return;
    }
    let worker = start(SETUP_PLAIN, Some(Duration::from_millis(10)));
    assert!(worker.wait_ended(TEN_SECONDS));
    assert!(!worker.is_accepting());
}

/// A returned `bytes` is lent (ffi.rs, rule 10): the worker keeps the object alive, the caller
/// reads it in place, and the worker releases it at its next job after the caller dropped it, or
/// when it ends (closed, idle timeout, abandoned), copying still-held ones into their buffers
/// first. One test, in order: the lent-block counter is global to this process.
#[test]
fn a_lent_bytes_value_is_released_after_its_copy_and_when_its_worker_ends() {
    if skip_unless_available() {
        return;
    }
    let expected = b"ab".repeat(300_000);
    let lent_value = |finished: Finished| match finished.outcome {
        Outcome::ValueWithBuffers(_, mut buffers) => {
            assert_eq!(buffers.len(), 1);
            let buffer = buffers.pop().unwrap();
            assert!(buffer.is_lent(), "a returned bytes is lent, not copied out");
            buffer
        }
        other => panic!("expected a value with buffers, got {other:?}"),
    };
    assert_eq!(lent_blocks(), 0);

    // Read, dropped: released by the worker at its next job.
    let worker = start(SETUP_PLAIN, None);
    let buffer = lent_value(run(&*worker, REPEAT_AB_300000));
    assert!(buffer.read(|bytes| bytes == expected));
    drop(buffer);
    assert_eq!(lent_blocks(), 1, "kept until the worker's next job");
    assert_eq!(
        run(&*worker, ABS_MINUS_3).outcome,
        Outcome::Value(THREE.to_vec())
    );
    assert_eq!(lent_blocks(), 0);

    // Still held when the worker is closed: copied out, then released.
    let held = lent_value(run(&*worker, REPEAT_AB_300000));
    worker.close();
    assert!(worker.wait_ended(TEN_SECONDS));
    assert_eq!(lent_blocks(), 0);
    assert!(held.read(|bytes| bytes == expected));
    assert!(held.as_slice() == expected.as_slice());
    drop(held);

    // Held when an idle timeout ends the worker.
    let worker = start(SETUP_PLAIN, Some(Duration::from_millis(100)));
    let held = lent_value(run(&*worker, REPEAT_AB_300000));
    assert!(
        worker.wait_ended(TEN_SECONDS),
        "the idle timeout ends the worker"
    );
    assert_eq!(lent_blocks(), 0);
    assert!(held.read(|bytes| bytes == expected));
    drop(held);

    // Held when the worker is abandoned (a kill) after an interrupt.
    let worker = start(SETUP_PLAIN, None);
    let held = lent_value(run(&*worker, REPEAT_AB_300000));
    worker.interrupt();
    worker.abandon();
    assert!(worker.wait_ended(TEN_SECONDS));
    assert_eq!(lent_blocks(), 0);
    assert!(held.as_slice() == expected.as_slice());
}
