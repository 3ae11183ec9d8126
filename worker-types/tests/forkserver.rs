//! Tests for the forkserver worker type (workers forked from one preloaded server process), driven
//! from Rust with no Python front end. The cases are shared with tests/spawn.rs.

use interpool_worker_types::{process::Forkserver, WorkerType};

fn worker_type() -> Box<dyn WorkerType> {
    Box::new(Forkserver::default())
}

include!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/process_cases.rs"
));

#[test]
fn the_forkserver_is_started_once_and_serves_every_worker() {
    let first = start(SETUP_PLAIN, None);
    run(&*first, ABS_MINUS_3);
    assert!(process::forkserver_running());
    assert!(!process::set_forkserver_preload(vec!["json".into()]));
    let second = start(SETUP_PLAIN, None);
    assert_eq!(
        run(&*second, ABS_MINUS_3).outcome,
        Outcome::Value(THREE.to_vec())
    );
}
