//! Cases shared by the process worker types' test files (`pool_spawn.rs`, `pool_forkserver.rs`)
//! and helpers for `pool_auto.rs`.
//!
//! No case sleeps to synchronize or asserts on timing: a job that must be running before it is
//! cancelled says so through a Unix socket, and its death shows as end of file there.

// Each test file uses only some of these.
#![allow(dead_code)]

use std::{
    collections::HashSet,
    future::Future,
    io::{BufRead, BufReader, Read},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context, Waker},
    time::Duration,
};

use interpool::{Error, Pool, WorkerKind};

pub(crate) const GRACE: Duration = Duration::from_secs(10);
/// How long a blocking read or accept of a test may wait: it only turns a hang into a failure.
pub(crate) const HANG_GUARD: Duration = Duration::from_secs(60);

/// Accepts one connection on `listener`, with reads on it bounded by [`HANG_GUARD`]; panics if
/// none comes within [`HANG_GUARD`] (a listener has no accept timeout: a thread of its own
/// waits, and is left blocked if it hangs).
pub(crate) fn accept_guarded(listener: UnixListener) -> UnixStream {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(listener.accept().map(|(connection, _)| connection));
    });
    let connection = receiver
        .recv_timeout(HANG_GUARD)
        .unwrap_or_else(|e| panic!("no connection within {HANG_GUARD:?}: {e}"))
        .unwrap();
    connection.set_read_timeout(Some(HANG_GUARD)).unwrap();
    connection
}

pub(crate) fn fixtures() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python").to_owned()
}

pub(crate) fn plugins() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plugins").to_owned()
}

/// A fresh empty directory, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "interpool-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pool of `kind` with the fixtures and example plugins on its path.
pub(crate) fn pool(kind: WorkerKind, max_workers: usize) -> Pool {
    Pool::builder()
        .worker_type(kind)
        .max_workers(max_workers)
        .python_path([fixtures(), plugins()])
        .build()
        .unwrap_or_else(|e| panic!("building a {} pool failed: {e}", kind.name()))
}

/// Whether process `pid` is gone (reaped; a zombie still counts as there).
pub(crate) fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

pub(crate) async fn smoke(kind: WorkerKind) {
    let pool = pool(kind, 1);
    assert_eq!(pool.worker_type(), kind.name());
    assert_eq!(pool.fallback_worker_type(), None);
    let python = pool
        .python_executable()
        .expect("a process pool has a Python");
    assert!(python.is_file(), "{}", python.display());
    let sum: i64 = pool.call("operator:add", (2, 40)).await.unwrap();
    assert_eq!(sum, 42);
    let pid: u32 = pool.call("os:getpid", ()).await.unwrap();
    assert_ne!(pid, std::process::id(), "the job ran in another process");
    pool.shutdown(GRACE).await.unwrap();
    assert!(process_gone(pid), "shutdown ended and reaped the worker");
}

pub(crate) async fn values_cross_both_ways(kind: WorkerKind) {
    let pool = pool(kind, 2);
    let text: String = pool.call("builtins:str.upper", ("héllo",)).await.unwrap();
    assert_eq!(text, "HÉLLO");
    let echoed: (bool, f64, Vec<u8>, Option<String>) = pool
        .call(
            "pool_fixtures:echo",
            (true, 1.5, vec![1u8, 2], None::<String>),
        )
        .await
        .unwrap();
    assert_eq!(echoed, (true, 1.5, vec![1, 2], None));

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Record {
        name: String,
        count: i64,
        ratio: f64,
        tags: Vec<String>,
    }
    let record: Record = pool
        .call("pool_fixtures:record", ("ab", 21, 3.0, ["y", "x"]))
        .await
        .unwrap();
    assert_eq!(
        record,
        Record {
            name: "AB".into(),
            count: 42,
            ratio: 1.5,
            tags: vec!["x".into(), "y".into()],
        }
    );
    // Already pickled arguments (protocol 2, with memo opcodes) and the raw result.
    let proto2: &[u8] = b"\x80\x02X\x02\x00\x00\x00abq\x00K\x03\x86q\x01.";
    let raw = pool.call_pickled("operator:mul", proto2).await.unwrap();
    let value: String = serde_pickle::from_slice(&raw, Default::default()).unwrap();
    assert_eq!(value, "ababab");
    // A payload of a few MiB crosses the socket both ways.
    let big = "x".repeat(4 << 20);
    let length: usize = pool.call("builtins:len", (&big,)).await.unwrap();
    assert_eq!(length, big.len());
    let answer: String = pool.call("primes:run", ()).await.unwrap();
    assert_eq!(answer, "148933 primes below 2,000,000");
    pool.shutdown(GRACE).await.unwrap();
}

pub(crate) async fn errors_come_back_with_their_traceback(kind: WorkerKind) {
    let pool = pool(kind, 1);
    let err = pool.call::<_, String>("faulty:run", ()).await.unwrap_err();
    let Error::Python(e) = &err else {
        panic!("expected a Python error, got {err:?}")
    };
    assert_eq!(e.type_name, "RuntimeError");
    assert_eq!(e.message, "the faulty plugin could not parse its input");
    for needle in [
        "ValueError: invalid literal for int() with base 10: 'forty-two'",
        "The above exception was the direct cause of the following exception:",
        "faulty.py",
        "in parse",
    ] {
        assert!(
            e.traceback.contains(needle),
            "{needle:?} in\n{}",
            e.traceback
        );
    }
    assert!(e.pickled.is_some());

    let err = pool
        .call::<_, i64>("no_such_module:f", ())
        .await
        .unwrap_err();
    let Error::Load(e) = &err else {
        panic!("expected a load error, got {err:?}")
    };
    assert_eq!(e.type_name, "ModuleNotFoundError");

    let err = pool.call::<_, i64>("builtins:str", (5,)).await.unwrap_err();
    assert!(matches!(err, Error::Conversion { .. }), "{err:?}");

    // The worker survives all of that.
    let before: u32 = pool.call("os:getpid", ()).await.unwrap();
    let sum: i64 = pool.call("operator:add", (1, 1)).await.unwrap();
    assert_eq!(sum, 2);
    let after: u32 = pool.call("os:getpid", ()).await.unwrap();
    assert_eq!(before, after);
    pool.shutdown(GRACE).await.unwrap();
}

pub(crate) async fn init_runs_in_every_worker_and_its_failure_breaks_the_call(kind: WorkerKind) {
    let pool = Pool::builder()
        .worker_type(kind)
        .max_workers(2)
        .python_path([fixtures()])
        .init("pool_fixtures:init")
        .build()
        .unwrap();
    let (a, b) = tokio::join!(
        pool.call::<_, bool>("pool_fixtures:initialized", ()),
        pool.call::<_, bool>("pool_fixtures:initialized", ())
    );
    assert!(a.unwrap() && b.unwrap());
    pool.shutdown(GRACE).await.unwrap();

    let pool = Pool::builder()
        .worker_type(kind)
        .python_path([fixtures()])
        .init("pool_fixtures:init_fails")
        .build()
        .unwrap();
    let err = pool
        .call::<_, i64>("operator:add", (1, 2))
        .await
        .unwrap_err();
    let Error::Broken {
        stage,
        reason,
        exception,
        ..
    } = &err
    else {
        panic!("expected a broken worker, got {err:?}")
    };
    assert_eq!(*stage, interpool::Stage::Init);
    assert!(reason.contains("init"), "{reason}");
    let exception = exception.as_ref().expect("the init's exception");
    assert_eq!(exception.type_name, "OSError");
    pool.shutdown(GRACE).await.unwrap();
}

/// Starts `pool_fixtures:report_and_block` and returns the call (polled once, so submitted), the
/// connection on which the job reported, and the job's pid.
async fn start_blocking_job(
    pool: &Pool,
    dir: &TempDir,
) -> (std::pin::Pin<Box<interpool::Call<()>>>, UnixStream, u32) {
    let path = dir.path().join("job.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut call =
        Box::pin(pool.call::<_, ()>("pool_fixtures:report_and_block", (path.to_str().unwrap(),)));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(call.as_mut().poll(&mut cx).is_pending());
    let (connection, pid) = tokio::task::spawn_blocking(move || {
        let connection = accept_guarded(listener);
        let mut line = String::new();
        BufReader::new(&connection).read_line(&mut line).unwrap();
        (connection, line.trim().parse::<u32>().unwrap())
    })
    .await
    .unwrap();
    (call, connection, pid)
}

/// Reads `connection` to its end: returns once every holder of the other end is gone (within
/// the read timeout of [`accept_guarded`]).
async fn until_closed(mut connection: UnixStream) {
    tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        connection.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    })
    .await
    .unwrap();
}

pub(crate) async fn dropping_a_call_kills_its_process(kind: WorkerKind) {
    let pool = pool(kind, 1);
    let first: u32 = pool.call("os:getpid", ()).await.unwrap();
    let dir = TempDir::new("drop");
    let (call, connection, pid) = start_blocking_job(&pool, &dir).await;
    assert_eq!(pid, first, "the warm worker runs the job");
    assert_eq!(pool.statistics().running_workers, 1);

    drop(call); // cancels: SIGKILL, although the job is blocked in C (time.sleep)
    until_closed(connection).await; // the process died
    assert_eq!(pool.statistics().running_workers, 0);

    // The pool keeps working, on a new process.
    let after: u32 = pool.call("os:getpid", ()).await.unwrap();
    assert_ne!(after, pid, "the killed worker is not reused");
    pool.shutdown(GRACE).await.unwrap();
    assert!(process_gone(after));
}

pub(crate) async fn a_crashing_plugin_breaks_only_its_call(kind: WorkerKind) {
    let pool = pool(kind, 1);
    let first: u32 = pool.call("os:getpid", ()).await.unwrap();
    let err = pool
        .call::<_, ()>("pool_fixtures:exit_with", (42,))
        .await
        .unwrap_err();
    let Error::Broken {
        reason, exit_code, ..
    } = &err
    else {
        panic!("expected a broken worker, got {err:?}")
    };
    assert_eq!(*exit_code, Some(42));
    assert!(
        reason.contains("died unexpectedly during the job (exit code 42)"),
        "{reason}"
    );
    let second: u32 = pool.call("os:getpid", ()).await.unwrap();
    assert_ne!(second, first, "a fresh worker");

    let err = pool
        .call::<_, ()>("pool_fixtures:segfault", ())
        .await
        .unwrap_err();
    let Error::Broken {
        reason, exit_code, ..
    } = &err
    else {
        panic!("expected a broken worker, got {err:?}")
    };
    assert_eq!(*exit_code, Some(-11), "{reason}");
    assert!(reason.contains("SIGSEGV"), "{reason}");
    let sum: i64 = pool.call("operator:add", (2, 3)).await.unwrap();
    assert_eq!(sum, 5);
    pool.shutdown(GRACE).await.unwrap();
    assert!(process_gone(first) && process_gone(second));
}

pub(crate) async fn many_tasks_call_at_once_within_max_workers(kind: WorkerKind) {
    let pool = pool(kind, 3);
    let tasks: Vec<_> = (0..12i64)
        .map(|task| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut pids = HashSet::new();
                for i in 0..15i64 {
                    let sum: i64 = pool.call("operator:add", (task, i)).await.unwrap();
                    assert_eq!(sum, task + i);
                    pids.insert(pool.call::<_, u32>("os:getpid", ()).await.unwrap());
                }
                pids
            })
        })
        .collect();
    let mut pids = HashSet::new();
    for task in tasks {
        pids.extend(task.await.unwrap());
    }
    assert!(
        (1..=3).contains(&pids.len()),
        "max_workers bounds the workers: {pids:?}"
    );
    let stats = pool.statistics();
    assert_eq!(stats.running_workers, 0);
    assert!(stats.idle_workers <= 3);
    pool.shutdown(GRACE).await.unwrap();
    for pid in pids {
        assert!(process_gone(pid), "worker {pid} ended with the pool");
    }
}

pub(crate) async fn a_shut_down_pool_refuses_calls(kind: WorkerKind) {
    let pool = pool(kind, 1);
    let clone = pool.clone();
    let _: i64 = pool.call("operator:add", (1, 2)).await.unwrap();
    pool.shutdown(GRACE).await.unwrap();
    let err = clone
        .call::<_, i64>("operator:add", (1, 2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
    assert_eq!(clone.statistics().idle_workers, 0);
}

pub(crate) fn a_missing_executable_makes_the_kind_unavailable(kind: WorkerKind) {
    let err = Pool::builder()
        .worker_type(kind)
        .python_executable("/nonexistent/python3")
        .build()
        .unwrap_err();
    let Error::Unavailable {
        worker_type,
        reason,
    } = &err
    else {
        panic!("expected unavailable, got {err:?}")
    };
    assert_eq!(*worker_type, kind.name());
    assert!(reason.contains("/nonexistent/python3"), "{reason}");
}

/// The discovered executable is `python3.X` (or `python3`) in the embedded interpreter's BINDIR,
/// and runs the same Python version as the embedded interpreter.
pub(crate) async fn the_discovered_executable_is_the_embedded_pythons(kind: WorkerKind) {
    let pool = pool(kind, 1);
    let python = pool.python_executable().unwrap().to_owned();
    let name = python.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with("python3"), "{}", python.display());
    let (executable, version): (String, (i64, i64)) = pool
        .call("pool_fixtures:executable_and_version", ())
        .await
        .unwrap();
    assert_eq!(Path::new(&executable), python);
    let embedded = Pool::builder()
        .worker_type(WorkerKind::Subinterpreter)
        .max_workers(1)
        .python_path([fixtures()])
        .build();
    if let Ok(embedded) = embedded {
        let (_, same): (String, (i64, i64)) = embedded
            .call("pool_fixtures:executable_and_version", ())
            .await
            .unwrap();
        assert_eq!(version, same);
        embedded.shutdown(GRACE).await.unwrap();
    }
    pool.shutdown(GRACE).await.unwrap();
}

/// `call_pickled_with_buffers`: a 1 MiB argument buffer reaches the job out of band and its
/// reversed copy comes back as a buffer beside the pickle. `exporter` is how the job saw it.
pub(crate) async fn buffers_cross_both_ways(pool: &Pool, exporter: &str) {
    use interpool::Buffer;
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    // pickle protocol 5 of `(buffer,)`: PROTO 5, NEXT_BUFFER, TUPLE1, STOP.
    let args = b"\x80\x05\x97\x85.";
    let value = pool
        .call_pickled_with_buffers(
            "pool_fixtures:reverse",
            args,
            vec![Buffer::from_vec(data.clone())],
        )
        .await
        .unwrap();
    assert_eq!(
        &value.data[..2],
        b"\x80\x05",
        "a protocol-5 job gets a protocol-5 value"
    );
    assert_eq!(
        value.buffers.len(),
        1,
        "the large bytes came back out of band"
    );
    let reversed: Vec<u8> = data.iter().rev().copied().collect();
    assert!(value.buffers[0].as_slice() == reversed.as_slice());
    assert!(value.buffers[0].writable());
    // The exporter's name is in the pickle (in band, small), as a unicode string.
    let needle = exporter.as_bytes();
    assert!(
        value.data.windows(needle.len()).any(|w| w == needle),
        "the job did not see a {exporter}"
    );
}

/// `call` with `serde_bytes`-style arguments: a large one travels out of band (one copy into
/// the job's buffer, then the worker's own `bytes`), a small one in band; the job gets `bytes`.
pub(crate) async fn bytes_arguments_arrive_as_bytes(pool: &Pool) {
    struct Bytes<'a>(&'a [u8]);
    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    let large: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let small = [3u8; 10];
    let summary: Vec<(String, usize, u8)> = pool
        .call(
            "pool_fixtures:bytes_summary",
            (Bytes(&large), Bytes(&small), Bytes(&large)),
        )
        .await
        .unwrap();
    let large_one = ("bytes".to_owned(), large.len(), *large.last().unwrap());
    assert_eq!(
        summary,
        [large_one.clone(), ("bytes".to_owned(), 10, 3), large_one]
    );
}

/// `max_tasks_per_worker(2)`: each worker serves two calls, then a fresh one takes over.
pub(crate) async fn max_tasks_per_worker_replaces_a_worker_after_that_many_calls(kind: WorkerKind) {
    let pool = Pool::builder()
        .worker_type(kind)
        .max_workers(1)
        .max_tasks_per_worker(2)
        .build()
        .unwrap_or_else(|e| panic!("building a {} pool failed: {e}", kind.name()));
    let mut threads = Vec::new();
    for _ in 0..4 {
        let thread: u64 = pool.call("threading:get_native_id", ()).await.unwrap();
        threads.push(thread);
    }
    assert_eq!(threads[0], threads[1]);
    assert_ne!(threads[1], threads[2]);
    assert_eq!(threads[2], threads[3]);
    pool.shutdown(GRACE).await.unwrap();
}

/// A callable whose run time is learned gets woken before its job is due (`prewake`): every call
/// still gets its own value, also one much longer or much shorter than learned.
pub(crate) async fn a_learned_callable_woken_early_still_gets_each_value(kind: WorkerKind) {
    let pool = pool(kind, 1);
    let call = |seconds: f64, value: u32| {
        pool.call::<_, u32>("pool_fixtures:sleep_then", (seconds, value))
    };
    for value in 0..6 {
        assert_eq!(call(0.002, value).await.unwrap(), value);
    }
    assert_eq!(call(0.05, 100).await.unwrap(), 100, "longer than learned");
    assert_eq!(call(0.0, 101).await.unwrap(), 101, "shorter than learned");
    assert_eq!(call(0.002, 102).await.unwrap(), 102);
    pool.shutdown(GRACE).await.unwrap();
}
