//! interpool: run Python callables in parallel on subinterpreters with their own GIL.
//!
//! This crate is the host side: the [`WorkerCache`] that reuses workers hottest-first and ends
//! them on close, on top of the worker types of [`interpool_worker_types`] (subinterpreters with
//! their own GIL; processes come next). Jobs are pickle payloads made in the caller's
//! interpreter; a job's outcome comes back through a [`Completion`] that can be spun on, blocked
//! on, or watched through a file descriptor by an event loop.
//!
//! With the `python` feature this crate is also the CPython extension module
//! `interpool._interpool`, the engine under the Python package `interpool` (built by maturin).
//! That module is the only code here that uses PyO3's safe API, and only ever in the main
//! interpreter; worker interpreters are driven through raw `pyo3-ffi` in the worker-types crate.

#![deny(unsafe_code)]

mod cache;
mod error;
#[cfg(feature = "python")]
mod python;
pub mod scheduler;

pub use cache::{Lease, ShutdownReport, Statistics, WorkerCache};
pub use error::{Error, Result};
pub use interpool_worker_types::{
    self as worker_types, Availability, Broken, Capabilities, Completion, Finished, Job, Outcome,
    Retire, WorkerType,
};
