//! The errors of the scheduler layer.

/// The result type of the `interpool` crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong before a job reaches a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The worker cache (or the pool around it) was closed.
    #[error("the worker cache is closed")]
    Closed,
    /// The worker type cannot run here.
    #[error("worker type {worker_type:?} is unavailable: {reason}")]
    Unavailable {
        /// The worker type's name.
        worker_type: &'static str,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// Making a new worker's setup payload failed.
    #[error("preparing the worker setup failed: {0}")]
    Setup(String),
    /// The worker layer failed (no thread or process could be started).
    #[error(transparent)]
    Worker(#[from] interpool_worker_types::Error),
}
