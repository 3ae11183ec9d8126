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
