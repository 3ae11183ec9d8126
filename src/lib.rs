//! interpool: run Python callables in parallel on subinterpreters with their own GIL.
//!
//! # From Rust
//!
//! [`Pool`] runs `"module:function"` callables of plugins written in Python from any async Rust
//! program (tokio or another runtime), in parallel, without unsafe code or PyO3 plumbing on the
//! host's side. Arguments and results cross as pickle bytes made and read in Rust (serde-pickle),
//! so the same path serves every worker type:
//!
//! ```no_run
//! # async fn plugins() -> Result<(), interpool::Error> {
//! let pool = interpool::Pool::builder()
//!     .worker_type(interpool::WorkerKind::Auto)
//!     .max_workers(4)
//!     .idle_timeout(std::time::Duration::from_secs(60))
//!     .python_path(["plugins"])
//!     .init("setup_module:init")
//!     .build()?;
//! let n: i64 = pool.call("wordcount:count", ("some text",)).await?;
//! pool.shutdown(std::time::Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! [`PoolBuilder::build`] initializes the embedded interpreter if the host has not (the library
//! this crate was built against, see `docs/rust.md`), releases its GIL at once and never finalizes
//! it: a subinterpreter still alive at `Py_FinalizeEx` would abort the process. Worker types:
//! [`WorkerKind`]: subinterpreters, forkserver and spawn processes (which run the Python
//! executable of the embedded interpreter's installation, see [`PoolBuilder::python_executable`]),
//! and `Auto`, which falls back per call to a process for modules that refuse subinterpreters.
//!
//! # The layers underneath
//!
//! The [`WorkerCache`] reuses workers hottest-first and ends them on close, on top of the worker
//! types of [`interpool_worker_types`] (subinterpreters with their own GIL; worker processes).
//! Jobs are pickle payloads; a job's outcome comes back through a [`Completion`] that can be spun
//! on, blocked on, polled from an async task, or watched through a file descriptor by an event
//! loop.
//!
//! With the `python` feature this crate is also the CPython extension module
//! `interpool._interpool`, the engine under the Python package `interpool` (built by maturin).
//! That module is the only code here that uses PyO3's safe API, and only ever in the main
//! interpreter.
//!
//! This crate has no unsafe code (`#![forbid(unsafe_code)]`). Every CPython FFI call interpool
//! makes (embedding the interpreter for [`Pool`], exporting out-of-band buffers to the caller,
//! driving worker interpreters through raw `pyo3-ffi`) lives in [`interpool_worker_types`] behind
//! safe functions, next to the rules those calls keep: see that crate's "Where the unsafe code
//! is".

#![forbid(unsafe_code)]

pub mod auto;
mod cache;
mod error;
mod pool;
#[cfg(feature = "python")]
mod python;
pub mod scheduler;
mod wire;

pub use auto::TypeStatistics;
pub use cache::{Lease, Recycling, ShutdownReport, Statistics, WorkerCache};
pub use error::{Error, PythonError, Result};
pub use interpool_worker_types::{
    self as worker_types, Availability, Broken, Buffer, Capabilities, Completion, Finished, Job,
    Outcome, Retire, Stage, WorkerType,
};
pub use pool::{Call, Pickled, Pool, PoolBuilder, WorkerKind};
