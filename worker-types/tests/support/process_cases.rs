// The behaviours every process worker type shares, included by tests/spawn.rs and
// tests/forkserver.rs, which define `worker_type()`. The Python is `$PYO3_PYTHON` (tools/in-venv.sh
// sets it) or `python3`. Jobs synchronise with the test through a Unix socket path, since a worker
// process inherits none of the test's fds.

use std::{
    io::Read,
    os::unix::net::UnixListener,
    path::PathBuf,
    sync::{Arc, Once},
    time::Duration,
};

use interpool_worker_types::{
    process, Availability, Finished, Job, Outcome, Retire, Worker, WorkerConfig,
};

include!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/payloads.rs"
));

const TEN_SECONDS: Option<Duration> = Some(Duration::from_secs(10));

fn configure() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let python = std::env::var_os("PYO3_PYTHON")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|dir| dir.join("python3"))
                        .find(|p| p.is_file())
                })
            })
            .expect("a Python executable: set PYO3_PYTHON");
        process::set_python_executable(python);
    });
}

fn start(setup: &[u8], idle_timeout: Option<Duration>) -> Box<dyn Worker> {
    configure();
    worker_type()
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

/// A pickled `exec(source)` job (protocol 4, no framing).
fn exec_job(source: &str) -> Vec<u8> {
    let mut pickle = b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94\x93\x94".to_vec();
    pickle.push(0x8c);
    pickle.push(u8::try_from(source.len()).expect("short source"));
    pickle.extend_from_slice(source.as_bytes());
    pickle.extend_from_slice(b"\x94\x85\x94\x86\x94.");
    pickle
}

/// A pickled `bytes(data)` job (protocol 4, BINBYTES8).
fn bytes_job(data: &[u8]) -> Vec<u8> {
    let mut pickle = b"\x80\x04\x8c\x08builtins\x94\x8c\x05bytes\x94\x93\x94\x8e".to_vec();
    pickle.extend_from_slice(&(data.len() as u64).to_le_bytes());
    pickle.extend_from_slice(data);
    pickle.extend_from_slice(b"\x94\x85\x94\x86\x94.");
    pickle
}

/// A socket path the job connects to once it runs; `accept` on it waits for that.
fn started_signal(name: &str) -> (UnixListener, String, tempdir::Dir) {
    let dir = tempdir::Dir::new(name);
    let path = dir.0.join("started");
    let listener = UnixListener::bind(&path).unwrap();
    let connect = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?}); s.send(b's')\n",
        path.to_str().unwrap()
    );
    (listener, connect, dir)
}

/// Waits for a job's started signal, within [`TEN_SECONDS`] (a hang becomes a failure, as in
/// tests/subinterpreter.rs): a listener has no accept timeout, so a thread of its own accepts
/// (left blocked if it hangs), and the read has the same timeout.
fn wait_started(listener: &UnixListener) {
    let listener = listener.try_clone().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(listener.accept().map(|(conn, _)| conn));
    });
    let mut conn = receiver
        .recv_timeout(TEN_SECONDS.unwrap())
        .expect("the job did not connect")
        .unwrap();
    conn.set_read_timeout(TEN_SECONDS).unwrap();
    let mut byte = [0u8];
    conn.read_exact(&mut byte).unwrap();
}

mod tempdir {
    /// A fresh directory, removed on drop.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);

    impl Dir {
        pub(crate) fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "interpool-test-{}-{name}-{}",
                std::process::id(),
                super::worker_type().name()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn broken(finished: Finished) -> interpool_worker_types::Broken {
    match finished.outcome {
        Outcome::Broken(broken) => broken,
        other => panic!("expected Broken, got {other:?}"),
    }
}

#[test]
fn smoke_a_job_returns_its_pickled_value_and_the_worker_is_reused() {
    let worker = start(SETUP_PLAIN, None);
    for _ in 0..3 {
        let finished = run(&*worker, ABS_MINUS_3);
        assert_eq!(finished.outcome, Outcome::Value(THREE.to_vec()));
        assert_eq!(finished.retire, Retire::Keep);
    }
    worker.close();
    assert!(worker.wait_ended(TEN_SECONDS));
    assert_eq!(worker.exit_code(), Some(0));
}

#[test]
fn the_type_is_available_and_can_kill_and_survive_crashes() {
    configure();
    let kind = worker_type();
    assert_eq!(kind.availability(), Availability::Available);
    assert!(kind.capabilities().hard_kill);
    assert!(kind.capabilities().crash_isolation);
}

#[test]
fn an_exception_comes_back_as_raised_and_the_worker_survives() {
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
    let worker = start(SETUP_PLAIN, None);
    assert!(matches!(
        run(&*worker, NO_SUCH_MODULE).outcome,
        Outcome::LoadError(_)
    ));
    assert!(worker.is_accepting());
}

#[test]
fn interrupt_kills_a_running_loop_and_the_job_is_broken_with_sigkill() {
    let worker = start(SETUP_PLAIN, None);
    let (listener, connect, _dir) = started_signal("interrupt");
    let completion = worker
        .submit(Job::new(exec_job(&format!("{connect}while True: pass"))))
        .unwrap();
    wait_started(&listener);
    worker.interrupt();
    assert!(completion.wait(TEN_SECONDS), "kill did not end the job");
    let broken = broken(completion.take().unwrap());
    assert_eq!(broken.exit_code, Some(-9));
    assert!(broken.reason.contains("interrupted"), "{}", broken.reason);
    assert!(worker.wait_ended(TEN_SECONDS));
    assert_eq!(worker.exit_code(), Some(-9));
}

#[test]
fn a_job_interrupted_while_its_worker_starts_still_ends_it() {
    let worker = start(SETUP_PLAIN, None);
    let completion = worker
        .submit(Job::new(SPIN_FOREVER.to_vec()))
        .unwrap();
    worker.interrupt(); // the process is still starting
    assert!(completion.wait(TEN_SECONDS));
    assert!(completion.take().unwrap().worker_ends());
    assert!(worker.wait_ended(TEN_SECONDS));
}

#[test]
fn a_worker_that_exits_during_a_job_breaks_it_with_its_exit_code() {
    let worker = start(SETUP_PLAIN, None);
    let broken = broken(run(&*worker, &exec_job("import os; os._exit(42)")));
    assert_eq!(broken.exit_code, Some(42));
    assert!(broken.reason.contains("exit code 42"), "{}", broken.reason);
    assert!(worker.wait_ended(TEN_SECONDS));
}

#[test]
fn a_segfault_breaks_the_job_with_sigsegv() {
    let worker = start(SETUP_PLAIN, None);
    let broken = broken(run(&*worker, &exec_job("import ctypes; ctypes.string_at(0)")));
    assert_eq!(broken.exit_code, Some(-11));
    assert!(broken.reason.contains("SIGSEGV"), "{}", broken.reason);
}

#[test]
fn a_worker_killed_while_idle_hands_the_next_job_back() {
    let worker = start(SETUP_PLAIN, None);
    run(&*worker, ABS_MINUS_3);
    worker.kill();
    assert!(worker.wait_ended(TEN_SECONDS));
    assert!(worker.submit(Job::new(vec![])).is_err());
}

#[test]
fn a_truthy_retire_ends_the_worker_after_its_job() {
    let worker = start(SETUP_RETIRE_ALWAYS, None);
    let finished = run(&*worker, ABS_MINUS_3);
    // The outcome comes first; the hook's verdict after it ends the worker.
    assert_eq!(finished.outcome, Outcome::Value(THREE.to_vec()));
    assert!(worker.wait_ended(TEN_SECONDS));
    assert_eq!(worker.exit_code(), Some(0));
    assert_eq!(worker.take_retire_failure(), None);
}

#[test]
fn an_interrupt_after_the_job_completed_is_a_no_op_and_the_worker_serves_on() {
    let worker = start(SETUP_PLAIN, None);
    run(&*worker, ABS_MINUS_3);
    // A cancellation that lands after the job ended but before its outcome was read.
    worker.interrupt();
    let finished = run(&*worker, ABS_MINUS_3);
    assert_eq!(finished.outcome, Outcome::Value(THREE.to_vec()));
    assert_eq!(finished.retire, Retire::Keep);
    worker.close();
    assert!(worker.wait_ended(TEN_SECONDS));
    assert_eq!(worker.exit_code(), Some(0), "never killed");
}

#[test]
fn max_tasks_ends_the_worker_after_that_many_jobs() {
    configure();
    let worker = worker_type()
        .start(Arc::new(WorkerConfig {
            setup: SETUP_PLAIN.to_vec(),
            idle_timeout: None,
            max_tasks: Some(2),
            max_memory: None,
        }))
        .expect("worker starts");
    assert_eq!(run(&*worker, ABS_MINUS_3).retire, Retire::Keep);
    assert_eq!(run(&*worker, ABS_MINUS_3).retire, Retire::Retire);
    assert!(worker.wait_ended(TEN_SECONDS));
    assert_eq!(worker.exit_code(), Some(0));
}

#[test]
fn a_memory_limit_below_the_rss_ends_the_worker_after_its_job() {
    configure();
    let worker = worker_type()
        .start(Arc::new(WorkerConfig {
            setup: SETUP_PLAIN.to_vec(),
            idle_timeout: None,
            max_tasks: None,
            max_memory: Some(1),
        }))
        .expect("worker starts");
    assert_eq!(
        run(&*worker, ABS_MINUS_3).outcome,
        Outcome::Value(THREE.to_vec())
    );
    if cfg!(target_os = "linux") {
        assert!(worker.wait_ended(TEN_SECONDS));
        assert_eq!(worker.exit_code(), Some(0));
    }
}

#[test]
fn a_failing_init_breaks_the_first_job_with_the_reason() {
    let worker = start(SETUP_INIT_FAILS, None);
    let broken = broken(run(&*worker, ABS_MINUS_3));
    assert_eq!(broken.reason, "the worker's init raised an exception");
    assert!(broken.exception.is_some());
    assert!(worker.wait_ended(TEN_SECONDS));
}

#[test]
fn an_idle_worker_ends_itself_after_its_idle_timeout() {
    let worker = start(SETUP_PLAIN, Some(Duration::from_millis(10)));
    assert!(worker.wait_ended(TEN_SECONDS));
    assert!(!worker.is_accepting());
    assert_eq!(worker.exit_code(), Some(0));
}

#[test]
fn a_64_mib_payload_goes_through_intact() {
    let worker = start(SETUP_PLAIN, None);
    let data: Vec<u8> = (0..64 << 20).map(|i: u32| (i % 251) as u8).collect();
    let Outcome::Value(pickled) = run(&*worker, &bytes_job(&data)).outcome else {
        panic!("expected a value")
    };
    // bytes(data) pickled by the worker: the same bytes, with a short header and trailer.
    assert!(pickled.len() > data.len() && pickled.len() < data.len() + 32);
    let start = pickled.windows(64).position(|w| w == &data[..64]).unwrap();
    assert_eq!(&pickled[start..start + data.len()], &data[..]);
}
