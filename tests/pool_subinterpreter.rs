//! The Rust API (`interpool::Pool`) on subinterpreter workers.
//!
//! Python fixtures: `tests/python/pool_fixtures.py` and the example plugins in
//! `examples/plugins/`, found through the pool's `python_path`. No test sleeps to synchronize or
//! asserts on timing: a job that must be running before it is cancelled says so through a socket.

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    io::Read,
    os::{fd::AsRawFd, unix::net::UnixStream},
    task::{Context, Poll, Waker},
    time::Duration,
};

use interpool::{Error, Pool, WorkerKind};

mod support;

/// Turns a hang into a failure: blocking reads from a job give up after this. No test
/// asserts a timing.
const HANG_GUARD: Option<Duration> = Some(Duration::from_secs(60));

const GRACE: Duration = Duration::from_secs(10);

fn fixtures() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python").to_owned()
}

fn plugins() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plugins").to_owned()
}

/// A subinterpreter pool with the fixtures on its path, or `None` (test skipped) where
/// subinterpreters are unavailable (CPython < 3.13).
fn pool(max_workers: usize) -> Option<Pool> {
    match Pool::builder()
        .worker_type(WorkerKind::Subinterpreter)
        .max_workers(max_workers)
        .python_path([fixtures(), plugins()])
        .build()
    {
        Ok(pool) => Some(pool),
        Err(Error::Unavailable { reason, .. }) => {
            eprintln!("skipped: {reason}");
            None
        }
        Err(e) => panic!("building the pool failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let Some(pool) = pool(1) else { return };
    assert_eq!(pool.worker_type(), "subinterpreter");
    let sum: i64 = pool.call("operator:add", (2, 40)).await.unwrap();
    assert_eq!(sum, 42);
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_cross_both_ways_read_in_place() {
    let Some(pool) = pool(1) else { return };
    support::buffers_cross_both_ways(&pool, "CallerBuffer").await;
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arguments_arrive_as_bytes() {
    let Some(pool) = pool(1) else { return };
    support::bytes_arguments_arrive_as_bytes(&pool).await;
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_cross_both_ways() {
    let Some(pool) = pool(2) else { return };
    let text: String = pool.call("builtins:str.upper", ("héllo",)).await.unwrap();
    assert_eq!(text, "HÉLLO");
    let none: Option<i64> = pool.call("builtins:print", ()).await.unwrap();
    assert_eq!(none, None);
    let echoed: (bool, f64, Vec<u8>, Option<String>) = pool
        .call(
            "pool_fixtures:echo",
            (true, 1.5, vec![1u8, 2], None::<String>),
        )
        .await
        .unwrap();
    assert_eq!(echoed, (true, 1.5, vec![1, 2], None));
    // What Python makes of serde-pickle's encoding (the job is one pickle stream: a hand-written
    // global followed by serde-pickle's opcodes).
    let repr: String = pool
        .call(
            "builtins:repr",
            ((
                -7,
                "q'uote",
                2.5,
                false,
                None::<i64>,
                vec![1, 2],
                BTreeMap::from([("k", (1, "v"))]),
            ),),
        )
        .await
        .unwrap();
    assert_eq!(
        repr,
        r#"(-7, "q'uote", 2.5, False, None, [1, 2], {'k': (1, 'v')})"#
    );
    let big: i64 = pool.call("builtins:pow", (2, 62)).await.unwrap();
    assert_eq!(big, 1 << 62);
    // Beyond serde's data model (here: a 101-bit int), read the pickle as a serde_pickle::Value.
    let args = serde_pickle::to_vec(&(2, 100), Default::default()).unwrap();
    let raw = pool.call_pickled("builtins:pow", args).await.unwrap();
    let huge = serde_pickle::value_from_slice(&raw, Default::default()).unwrap();
    assert_eq!(huge.to_string(), (1u128 << 100).to_string());

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
    let map: BTreeMap<String, i64> = pool
        .call("builtins:dict", (vec![("a", 1), ("b", 2)],))
        .await
        .unwrap();
    assert_eq!(map, BTreeMap::from([("a".into(), 1), ("b".into(), 2)]));
    // Class methods resolve through dotted qualnames.
    let joined: String = pool
        .call("os.path:join", ("a", "b"))
        .await
        .expect("os.path.join");
    assert_eq!(joined, "a/b");
    let keys: Vec<String> = pool
        .call("builtins:sorted", (BTreeMap::from([("z", 1), ("k", 2)]),))
        .await
        .unwrap();
    assert_eq!(keys, ["k", "z"]);
    let fromkeys: BTreeMap<String, Option<i64>> = pool
        .call("builtins:dict.fromkeys", (["p", "q"],))
        .await
        .unwrap();
    assert_eq!(fromkeys.len(), 2);
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pickled_arguments_and_results_pass_through_untouched() {
    let Some(pool) = pool(1) else { return };
    // pickle.dumps(("ab", 3), protocol=2) and protocol 5, with memo opcodes.
    let proto2: &[u8] = b"\x80\x02X\x02\x00\x00\x00abq\x00K\x03\x86q\x01.";
    let raw = pool.call_pickled("operator:mul", proto2).await.unwrap();
    let value: String = serde_pickle::from_slice(&raw, Default::default()).unwrap();
    assert_eq!(value, "ababab");
    let proto5 = serde_pickle::to_vec(&("x", 2), Default::default()).unwrap();
    let raw = pool.call_pickled("operator:mul", &proto5).await.unwrap();
    assert_eq!(
        &raw[..2],
        b"\x80\x05",
        "results are pickled with protocol 5"
    );
    // Arguments that are not a pickle fail to load in the worker.
    let err = pool
        .call_pickled("operator:mul", b"junk")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Load(_)), "{err:?}");
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raising_plugin_gives_its_exception_with_the_chained_traceback() {
    let Some(pool) = pool(1) else { return };
    let err = pool.call::<_, String>("faulty:run", ()).await.unwrap_err();
    let Error::Python(e) = &err else {
        panic!("expected a Python error, got {err:?}")
    };
    assert_eq!(e.type_name, "RuntimeError");
    assert_eq!(e.message, "the faulty plugin could not parse its input");
    assert_eq!(
        err.to_string(),
        "python raised RuntimeError: the faulty plugin could not parse its input"
    );
    for needle in [
        "ValueError: invalid literal for int() with base 10: 'forty-two'",
        "The above exception was the direct cause of the following exception:",
        "faulty.py",
        "in parse",
        "RuntimeError: the faulty plugin could not parse its input",
    ] {
        assert!(
            e.traceback.contains(needle),
            "{needle:?} in\n{}",
            e.traceback
        );
    }
    assert!(e.pickled.is_some());

    let Err(Error::Python(e)) = pool.call::<_, ()>("pool_fixtures:chained", ()).await else {
        panic!("chained() raises")
    };
    assert_eq!(
        (e.type_name.as_str(), e.message.as_str()),
        ("ValueError", "lookup failed")
    );
    assert!(e
        .traceback
        .contains("During handling of the above exception, another exception occurred:"));
    assert!(e.traceback.contains("KeyError: 'missing'"));

    // The worker survives a raising job.
    let sum: i64 = pool.call("operator:add", (1, 1)).await.unwrap();
    assert_eq!(sum, 2);
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_modules_and_bad_names_and_wrong_types_are_told_apart() {
    let Some(pool) = pool(1) else { return };
    let err = pool
        .call::<_, i64>("no_such_module:f", ())
        .await
        .unwrap_err();
    let Error::Load(e) = &err else {
        panic!("expected a load error, got {err:?}")
    };
    assert_eq!(e.type_name, "ModuleNotFoundError");
    assert!(err
        .to_string()
        .starts_with("loading the job in the worker failed"));

    let err = pool.call::<_, i64>("not a name", ()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTarget { .. }), "{err:?}");

    let err = pool.call::<_, i64>("builtins:str", (5,)).await.unwrap_err();
    let Error::Conversion { rust_type, .. } = &err else {
        panic!("expected a conversion error, got {err:?}")
    };
    assert_eq!(*rust_type, "i64");
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_path_and_init_reach_every_worker() {
    let Some(pool) = pool(1) else { return };
    let initialized: bool = pool.call("pool_fixtures:initialized", ()).await.unwrap();
    assert!(!initialized, "no init configured");
    pool.shutdown(GRACE).await.unwrap();

    let pool = Pool::builder()
        .worker_type(WorkerKind::Subinterpreter)
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

    // Without the python_path, the fixtures cannot be imported.
    let bare = Pool::builder()
        .worker_type(WorkerKind::Subinterpreter)
        .max_workers(1)
        .build()
        .unwrap();
    let err = bare
        .call::<_, bool>("pool_fixtures:initialized", ())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Load(_)), "{err:?}");
    bare.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_that_raises_breaks_the_worker_with_its_exception() {
    let Some(_) = pool(1) else { return };
    let pool = Pool::builder()
        .worker_type(WorkerKind::Subinterpreter)
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
        exit_code,
        exception,
    } = &err
    else {
        panic!("expected a broken worker, got {err:?}")
    };
    assert_eq!(*stage, interpool::Stage::Init);
    assert!(reason.contains("init"), "{reason}");
    assert_eq!(*exit_code, None);
    let exception = exception.as_ref().expect("the init's exception");
    assert_eq!(exception.type_name, "OSError");
    assert!(exception.traceback.contains("init_fails"));
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_interrupts_the_job_and_replaces_its_worker() {
    let Some(pool) = pool(1) else { return };
    let before: String = pool.call("pool_fixtures:worker_token", ()).await.unwrap();
    // The same worker serves the next call.
    let again: String = pool.call("pool_fixtures:worker_token", ()).await.unwrap();
    assert_eq!(before, again);

    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(HANG_GUARD).unwrap();
    let mut call = Box::pin(pool.call::<_, ()>(
        "pool_fixtures:spin_until_interrupted",
        (theirs.as_raw_fd(),),
    ));
    // Poll once: the job is submitted (and possibly spun on), not finished.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(call.as_mut().poll(&mut cx).is_pending());
    let mut byte = [0u8];
    let started = tokio::task::spawn_blocking(move || {
        ours.read_exact(&mut byte).unwrap();
        (ours, byte)
    });
    let (mut ours, byte) = started.await.unwrap();
    assert_eq!(&byte, b"s", "the job runs");
    assert_eq!(pool.statistics().running_workers, 1);

    drop(call); // cancels: KeyboardInterrupt in the worker
    let interrupted = tokio::task::spawn_blocking(move || {
        let mut byte = [0u8];
        ours.read_exact(&mut byte).unwrap();
        byte
    });
    assert_eq!(
        &interrupted.await.unwrap(),
        b"i",
        "the job saw the interrupt"
    );
    drop(theirs);
    assert_eq!(pool.statistics().running_workers, 0);

    // The pool keeps working, on a new worker.
    let after: String = pool.call("pool_fixtures:worker_token", ()).await.unwrap();
    assert_ne!(after, before, "the interrupted worker is not reused");
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_a_slot_can_be_dropped_and_shutdown_reports_a_stuck_job() {
    let Some(pool) = pool(1) else { return };
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(HANG_GUARD).unwrap();
    let mut running = Box::pin(pool.call::<_, ()>(
        "pool_fixtures:spin_until_interrupted",
        (theirs.as_raw_fd(),),
    ));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(running.as_mut().poll(&mut cx).is_pending());
    let (mut ours, _) = tokio::task::spawn_blocking(move || {
        let mut byte = [0u8];
        ours.read_exact(&mut byte).unwrap();
        (ours, byte)
    })
    .await
    .unwrap();

    // The only slot is taken: this call waits, and dropping it costs nothing.
    let mut waiting = Box::pin(pool.call::<_, i64>("operator:add", (1, 2)));
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    drop(waiting);
    assert_eq!(pool.statistics().running_workers, 1);

    // Shutting down with no grace finds the job still running.
    let err = pool.shutdown(Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(err, Error::ShutdownTimeout { not_ended } if not_ended >= 1),
        "{err:?}"
    );
    // Its caller can still cancel it; then everything ends.
    drop(running);
    let interrupted = tokio::task::spawn_blocking(move || {
        let mut byte = [0u8];
        ours.read_exact(&mut byte).unwrap();
        byte
    });
    assert_eq!(&interrupted.await.unwrap(), b"i");
    drop(theirs);
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_call_at_once_within_max_workers() {
    let Some(pool) = pool(3) else { return };
    let tasks: Vec<_> = (0..16i64)
        .map(|task| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut tokens = HashSet::new();
                for i in 0..25i64 {
                    let sum: i64 = pool.call("operator:add", (task, i)).await.unwrap();
                    assert_eq!(sum, task + i);
                    let token: String = pool.call("pool_fixtures:worker_token", ()).await.unwrap();
                    tokens.insert(token);
                }
                tokens
            })
        })
        .collect();
    let mut workers = HashSet::new();
    for task in tasks {
        workers.extend(task.await.unwrap());
    }
    assert!(
        (1..=3).contains(&workers.len()),
        "max_workers bounds the workers: {}",
        workers.len()
    );
    let stats = pool.statistics();
    assert_eq!(stats.running_workers, 0);
    assert!(stats.idle_workers <= 3);
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_bound_plugin_runs() {
    let Some(pool) = pool(1) else { return };
    let answer: String = pool.call("primes:run", ()).await.unwrap();
    assert_eq!(answer, "148933 primes below 2,000,000");
    let counted: i64 = pool.call("primes:count_primes", (100,)).await.unwrap();
    assert_eq!(counted, 25);
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_numpy_plugin_is_skipped_or_refused_but_never_crashes() {
    let Some(pool) = pool(1) else { return };
    match pool.call::<_, String>("numpy_stats:run", ()).await {
        Ok(text) => assert_eq!(text, "skipped: numpy is not installed"),
        // numpy refuses to load in a subinterpreter with its own GIL.
        Err(Error::Load(e)) => assert_eq!(e.type_name, "ImportError", "{e}"),
        Err(other) => panic!("unexpected {other:?}"),
    }
    pool.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_pool_refuses_calls() {
    let Some(pool) = pool(1) else { return };
    let clone = pool.clone();
    let _: i64 = pool.call("operator:add", (1, 2)).await.unwrap();
    pool.shutdown(GRACE).await.unwrap();
    let err = clone
        .call::<_, i64>("operator:add", (1, 2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
    assert_eq!(err.to_string(), "the worker pool is closed");
    assert_eq!(clone.statistics().idle_workers, 0);
}

#[test]
fn auto_picks_the_first_available_type() {
    match Pool::builder().worker_type(WorkerKind::Auto).build() {
        Ok(pool) => assert_eq!(pool.worker_type(), "subinterpreter"),
        Err(Error::Unavailable {
            worker_type,
            reason,
        }) => {
            assert_eq!(worker_type, "auto");
            assert!(reason.contains("subinterpreter: "), "{reason}");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn pools_and_calls_are_send_and_sync_where_it_matters() {
    fn send_sync<T: Send + Sync + Clone>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<Pool>();
    send::<interpool::Call<i64>>();
    send::<Poll<()>>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tasks_per_worker_replaces_a_worker_after_that_many_calls() {
    support::max_tasks_per_worker_replaces_a_worker_after_that_many_calls(
        WorkerKind::Subinterpreter,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_callable_woken_early_still_gets_each_value() {
    support::a_learned_callable_woken_early_still_gets_each_value(WorkerKind::Subinterpreter).await;
}
