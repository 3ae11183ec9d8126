//! The Rust API (`interpool::Pool`) with `WorkerKind::Auto`: subinterpreters first, and the
//! per-call fallback to a process worker for modules that refuse subinterpreters.
//!
//! The hostile module is CPython's `_testsinglephase` (a single-phase-init test extension that
//! refuses isolated subinterpreters), imported by `tests/python/single_phase_plugin.py`; each test
//! copies that plugin into a directory of its own, where it logs the pid of every process that
//! tries to import it. Tests skip (with a message) where subinterpreters or `_testsinglephase`
//! are missing.

mod support;

use std::path::Path;

use interpool::{Error, Pool, PoolBuilder, WorkerKind};
use support::{accept_guarded, fixtures, plugins, process_gone, TempDir, GRACE};

/// A builder with a private copy of the single-phase plugin (and its empty import log) in `dir`
/// first on its path, then the fixtures and the example plugins.
fn builder(dir: &TempDir, kind: WorkerKind, max_workers: usize) -> PoolBuilder {
    std::fs::copy(
        Path::new(&fixtures()).join("single_phase_plugin.py"),
        dir.path().join("single_phase_plugin.py"),
    )
    .unwrap();
    std::fs::write(dir.path().join("attempts.txt"), "").unwrap();
    Pool::builder()
        .worker_type(kind)
        .max_workers(max_workers)
        .python_path([
            dir.path().to_str().unwrap().to_owned(),
            fixtures(),
            plugins(),
        ])
}

/// An `Auto` pool made by [`builder`], or `None` (skipped) where it would not run on
/// subinterpreters.
fn auto_pool(dir: &TempDir, max_workers: usize) -> Option<Pool> {
    let pool = builder(dir, WorkerKind::Auto, max_workers).build().unwrap();
    if pool.worker_type() != "subinterpreter" {
        eprintln!("skipped: Auto runs on {} here", pool.worker_type());
        return None;
    }
    Some(pool)
}

/// The pids that tried to import the plugin copy in `dir`, in order.
fn attempts(dir: &TempDir) -> Vec<u32> {
    std::fs::read_to_string(dir.path().join("attempts.txt"))
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect()
}

/// Whether this Python has `_testsinglephase` (pyenv and python.org builds do; some
/// distributions leave the test modules out).
async fn has_single_phase_module(pool: &Pool) -> bool {
    let found: bool = pool
        .call("pool_fixtures:can_import", ("_testsinglephase",))
        .await
        .unwrap();
    if !found {
        eprintln!("skipped: no _testsinglephase in this Python");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let dir = TempDir::new("auto-smoke");
    let Some(pool) = auto_pool(&dir, 1) else {
        return;
    };
    assert_eq!(pool.fallback_worker_type(), Some("forkserver"));
    assert!(pool.python_executable().is_some_and(Path::is_file));
    let sum: i64 = pool.call("operator:add", (2, 40)).await.unwrap();
    assert_eq!(sum, 42);
    // Plain calls stay on subinterpreters, in this process.
    let pid: u32 = pool.call("os:getpid", ()).await.unwrap();
    assert_eq!(pid, std::process::id());
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_refusing_subinterpreters_falls_back_to_a_process_and_stays_there() {
    let dir = TempDir::new("auto-fallback");
    let Some(pool) = auto_pool(&dir, 2) else {
        return;
    };
    if !has_single_phase_module(&pool).await {
        return;
    }
    // On subinterpreters alone, the plugin cannot load.
    let only_subinterpreters = Pool::builder()
        .worker_type(WorkerKind::Subinterpreter)
        .max_workers(1)
        .python_path([fixtures()])
        .build()
        .unwrap();
    let err = only_subinterpreters
        .call::<_, String>("single_phase_plugin:run", ())
        .await
        .unwrap_err();
    let Error::Load(e) = &err else {
        panic!("expected a load error, got {err:?}")
    };
    assert!(
        e.traceback
            .contains("does not support loading in subinterpreters"),
        "{}",
        e.traceback
    );
    only_subinterpreters.shutdown(GRACE).await.unwrap();

    let host = std::process::id();
    let text: String = pool.call("single_phase_plugin:run", ()).await.unwrap();
    let tried = attempts(&dir);
    assert_eq!(
        tried.len(),
        2,
        "one subinterpreter, then one process: {tried:?}"
    );
    assert_eq!(tried[0], host, "first tried on a subinterpreter");
    let worker = tried[1];
    assert_ne!(worker, host);
    assert_eq!(text, format!("_testsinglephase loaded in process {worker}"));

    // Later calls to the module go to the process worker directly: no new attempt anywhere.
    let pids: Vec<u32> = futures_join(&pool).await;
    assert!(pids.iter().all(|&pid| pid != host), "{pids:?}");
    assert_eq!(attempts(&dir).iter().filter(|&&pid| pid == host).count(), 1);
    // Other modules still run on subinterpreters.
    let pid: u32 = pool.call("os:getpid", ()).await.unwrap();
    assert_eq!(pid, host);
    pool.shutdown(GRACE).await.unwrap();
    assert!(
        process_gone(worker),
        "the fallback's workers end with the pool"
    );
}

/// Two concurrent calls to the remembered module.
async fn futures_join(pool: &Pool) -> Vec<u32> {
    let (a, b) = tokio::join!(
        pool.call::<_, u32>("single_phase_plugin:pid", ()),
        pool.call::<_, u32>("single_phase_plugin:pid", ())
    );
    vec![a.unwrap(), b.unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_raised_by_the_function_is_never_retried() {
    let dir = TempDir::new("auto-raised");
    let Some(pool) = auto_pool(&dir, 1) else {
        return;
    };
    // The function itself raises the refusal's message: a user's error, seen as it is.
    let err = pool
        .call::<_, ()>("pool_fixtures:raise_refusal", ())
        .await
        .unwrap_err();
    let Error::Python(e) = &err else {
        panic!("expected the Python error, got {err:?}")
    };
    assert_eq!(e.type_name, "ImportError");
    assert!(
        e.message
            .ends_with(&format!("(pid {})", std::process::id())),
        "raised on the subinterpreter, not retried: {}",
        e.message
    );
    assert_eq!(
        pool.statistics().idle_workers,
        1,
        "one subinterpreter, no process"
    );
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_on_the_fallback_kills_its_process() {
    let dir = TempDir::new("auto-drop");
    let Some(pool) = auto_pool(&dir, 1) else {
        return;
    };
    if !has_single_phase_module(&pool).await {
        return;
    }
    let worker: u32 = pool.call("single_phase_plugin:pid", ()).await.unwrap();
    assert_ne!(worker, std::process::id());

    let path = dir.path().join("job.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let call = tokio::spawn(pool.call::<_, ()>(
        "single_phase_plugin:report_and_block",
        (path.to_str().unwrap().to_owned(),),
    ));
    let (mut connection, pid) = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let connection = accept_guarded(listener);
        let mut line = String::new();
        std::io::BufReader::new(&connection)
            .read_line(&mut line)
            .unwrap();
        (connection, line.trim().parse::<u32>().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(pid, worker, "routed straight to the warm process worker");
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut rest = Vec::new();
        connection.read_to_end(&mut rest).unwrap();
    })
    .await
    .unwrap();
    // The process died; the module still goes to (a new) process worker.
    let next: u32 = pool.call("single_phase_plugin:pid", ()).await.unwrap();
    assert!(next != worker && next != std::process::id());
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_while_the_function_runs_falls_back_on_every_call() {
    let dir = TempDir::new("auto-lazy");
    let Some(pool) = auto_pool(&dir, 1) else {
        return;
    };
    if !has_single_phase_module(&pool).await {
        return;
    }
    let host = std::process::id();
    for _ in 0..3 {
        let pid: u32 = pool
            .call("pool_fixtures:single_phase_lazily", ())
            .await
            .unwrap();
        assert_ne!(pid, host);
    }
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_importing_numpy_in_its_body_runs_on_a_process() {
    let dir = TempDir::new("auto-lazy-numpy");
    let Some(pool) = auto_pool(&dir, 1) else {
        return;
    };
    for _ in 0..3 {
        match pool
            .call::<_, (i64, u32)>("pool_fixtures:numpy_total_lazily", (5,))
            .await
        {
            Ok((total, pid)) => assert_eq!((total, pid == std::process::id()), (10, false)),
            Err(Error::Python(e)) if e.type_name.contains("ModuleNotFoundError") => {
                eprintln!("skipped: numpy is not installed for the workers' Python");
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_load_error_is_retried_once_on_a_process() {
    let dir = TempDir::new("auto-load-error");
    let Some(pool) = auto_pool(&dir, 1) else {
        return;
    };
    let host = std::process::id();
    let pid: u32 = pool.call("fails_in_subinterpreters:pid", ()).await.unwrap();
    assert_ne!(pid, host);
    let again: u32 = pool.call("fails_in_subinterpreters:pid", ()).await.unwrap();
    assert_eq!(again, pid, "routed to the process once it loaded there");
    // A job failing to load on the process too: the process's error is the call's.
    let err = pool
        .call::<_, u32>("no_such_module_anywhere:f", ())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Load(e) if e.type_name == "ModuleNotFoundError"),
        "{err:?}"
    );
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_python_executable_auto_has_no_fallback() {
    let dir = TempDir::new("auto-nopython");
    let pool = builder(&dir, WorkerKind::Auto, 1)
        .python_executable("/nonexistent/python3")
        .build()
        .unwrap();
    if pool.worker_type() != "subinterpreter" {
        return;
    }
    assert_eq!(pool.fallback_worker_type(), None);
    assert_eq!(pool.python_executable(), None);
    let err = pool
        .call::<_, String>("single_phase_plugin:run", ())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Load(_)), "{err:?}");
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_numpy_plugin_runs_or_is_skipped() {
    let dir = TempDir::new("auto-numpy");
    let Some(pool) = auto_pool(&dir, 1) else {
        return;
    };
    // Where numpy is installed for the workers' Python it loads in a process; otherwise the
    // plugin says it is skipped. Either way the call succeeds.
    let text: String = pool.call("numpy_stats:run", ()).await.unwrap();
    assert!(
        text == "skipped: numpy is not installed" || text.starts_with("numpy "),
        "{text}"
    );
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_sends_a_callable_or_a_module_to_its_kind() {
    let dir = TempDir::new("auto-pin");
    let pool = builder(&dir, WorkerKind::Auto, 2)
        .pin("posix:getpid", WorkerKind::Spawn)
        .pin("os", WorkerKind::Forkserver)
        .pin("os", WorkerKind::Spawn) // a later pin of the same target replaces it
        .pin("os", WorkerKind::Auto) // and Auto removes it
        .pin("os", WorkerKind::Forkserver)
        .build()
        .unwrap();
    if pool.worker_type() != "subinterpreter" {
        eprintln!("skipped: Auto runs on {} here", pool.worker_type());
        return;
    }
    let host = std::process::id();
    let forked: u32 = pool.call("os:getpid", ()).await.unwrap();
    let spawned: u32 = pool.call("posix:getpid", ()).await.unwrap();
    assert!(forked != host && spawned != host && forked != spawned);
    // Another callable of a module with a pinned callable stays on subinterpreters.
    let parent: u32 = pool.call("posix:getppid", ()).await.unwrap();
    assert_eq!(parent, std::os::unix::process::parent_id());
    let by_type = pool.statistics_by_type();
    let stats = |name: &str| by_type.iter().find(|s| s.worker_type == name).unwrap();
    assert_eq!(stats("forkserver").pinned, ["os"]);
    assert_eq!(stats("spawn").pinned, ["posix:getpid"]);
    for name in ["subinterpreter", "forkserver", "spawn"] {
        assert_eq!(stats(name).idle_workers, 1, "one call ran on {name}");
    }
    assert_eq!(stats("subinterpreter").fallbacks, 0);
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_callable_never_falls_back() {
    let dir = TempDir::new("auto-pin-no-fallback");
    let pool = builder(&dir, WorkerKind::Auto, 1)
        .pin("single_phase_plugin", WorkerKind::Subinterpreter)
        .build()
        .unwrap();
    if pool.worker_type() != "subinterpreter" || !has_single_phase_module(&pool).await {
        return;
    }
    let err = pool
        .call::<_, String>("single_phase_plugin:run", ())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Load(_)), "{err:?}");
    assert_eq!(attempts(&dir), [std::process::id()], "tried once, here");
    let by_type = pool.statistics_by_type();
    assert_eq!(by_type[0].worker_type, "subinterpreter");
    assert_eq!(by_type[0].fallbacks, 0);
    assert!(by_type[0].routed_away.is_empty());
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_statistics_count_the_fallback_and_the_module_routed_away() {
    let dir = TempDir::new("auto-stats");
    let Some(pool) = auto_pool(&dir, 1) else {
        return;
    };
    if !has_single_phase_module(&pool).await {
        return;
    }
    for _ in 0..3 {
        let _: u32 = pool.call("single_phase_plugin:pid", ()).await.unwrap();
    }
    let by_type = pool.statistics_by_type();
    let names: Vec<_> = by_type.iter().map(|s| s.worker_type).collect();
    assert_eq!(names[0], "subinterpreter");
    assert_eq!(by_type[0].fallbacks, 1, "once, then routed");
    assert_eq!(
        by_type[0].routed_away,
        [(
            "single_phase_plugin".to_owned(),
            "_testsinglephase".to_owned()
        )]
    );
    let fallback = pool.fallback_worker_type().unwrap();
    let process = by_type.iter().find(|s| s.worker_type == fallback).unwrap();
    assert_eq!((process.idle_workers, process.fallbacks), (1, 0));
    // The totals are the sum over the types.
    let total: usize = by_type.iter().map(|s| s.idle_workers).sum();
    assert_eq!(pool.statistics().idle_workers, total);
    pool.shutdown(GRACE).await.unwrap();
}

#[test]
fn pins_are_checked_when_the_pool_is_built() {
    let not_auto = Pool::builder()
        .worker_type(WorkerKind::Spawn)
        .pin("os", WorkerKind::Forkserver)
        .build();
    assert!(
        matches!(&not_auto, Err(Error::Setup(m)) if m.contains("WorkerKind::Auto")),
        "{not_auto:?}"
    );
    let empty = Pool::builder().pin("", WorkerKind::Forkserver).build();
    assert!(
        matches!(empty, Err(Error::InvalidTarget { .. })),
        "{empty:?}"
    );
    let nowhere = Pool::builder()
        .python_executable("/nonexistent/python3")
        .pin("os", WorkerKind::Spawn)
        .build();
    match nowhere {
        Err(Error::Unavailable { worker_type, .. }) => assert_eq!(worker_type, "spawn"),
        // Without subinterpreters, Auto itself has nothing to run on.
        other => assert!(
            matches!(
                other,
                Err(Error::Unavailable {
                    worker_type: "auto",
                    ..
                })
            ),
            "{other:?}"
        ),
    }
}
