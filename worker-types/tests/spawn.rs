//! Tests for the spawn worker type (a fresh Python process per worker), driven from Rust with no
//! Python front end. The cases are shared with tests/forkserver.rs.

use interpool_worker_types::{process::Spawn, WorkerType};

fn worker_type() -> Box<dyn WorkerType> {
    Box::new(Spawn::default())
}

include!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/process_cases.rs"
));

#[test]
fn a_python_that_exits_at_once_breaks_the_first_job_with_its_exit_code() {
    let worker = Spawn::with_python("/bin/false")
        .start(Arc::new(WorkerConfig {
            setup: SETUP_PLAIN.to_vec(),
            idle_timeout: None,
            max_tasks: None,
            max_memory: None,
        }))
        .unwrap();
    let broken = broken(run(&*worker, ABS_MINUS_3));
    assert_eq!(broken.exit_code, Some(1));
    assert_eq!(broken.stage, interpool_worker_types::Stage::Died);
    assert!(
        broken.reason.contains("while starting"),
        "{}",
        broken.reason
    );
    assert!(worker.wait_ended(TEN_SECONDS));
}

#[test]
fn a_missing_python_makes_the_type_unavailable_with_the_reason() {
    let kind = Spawn::with_python("/nonexistent/python3");
    let Availability::Unavailable(reason) = kind.availability() else {
        panic!("available without a Python")
    };
    assert!(reason.contains("/nonexistent/python3"), "{reason}");
    assert!(kind
        .start(Arc::new(WorkerConfig {
            setup: vec![],
            idle_timeout: None,
            max_tasks: None,
            max_memory: None,
        }))
        .is_err());
}
