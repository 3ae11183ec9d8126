//! The one error type of the `interpool` crate: the worker cache and the Rust API ([`crate::Pool`]).

use std::fmt;

use interpool_worker_types::Stage;

/// The result type of the `interpool` crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong running a Python callable through interpool.
///
/// `Display` is short and lowercase; the Python details (traceback included) are in the fields.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The callable raised an exception (or its return value could not be pickled).
    #[error("python raised {0}")]
    Python(Box<PythonError>),
    /// The job could not be loaded in the worker: importing the callable's module or unpickling
    /// the arguments failed there (e.g. a module missing from the worker's `sys.path`, or an
    /// extension module that refuses to load in a subinterpreter). The callable never started.
    #[error("loading the job in the worker failed: {0}")]
    Load(Box<PythonError>),
    /// The worker failed around the job: it could not start, its `init` raised, the job was
    /// interrupted, or (process worker types) the process died.
    #[error("the worker broke: {reason}")]
    Broken {
        /// When it broke (its setup, its `init`, an interrupt, its process died, ...): what code
        /// acts on; the reason is for people.
        stage: Stage,
        /// A one-line description, lowercase, e.g. `the worker's init raised an exception`.
        reason: String,
        /// The process's exit code, or the negated signal number that killed it (process worker
        /// types only; `None` for subinterpreters).
        exit_code: Option<i32>,
        /// The Python exception behind it, if there is one (e.g. what `init` raised).
        exception: Option<Box<PythonError>>,
    },
    /// The worker type cannot run here.
    #[error("worker type {worker_type:?} is unavailable: {reason}")]
    Unavailable {
        /// The worker type's name.
        worker_type: &'static str,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// The callable's result could not be converted to the requested Rust type.
    #[error("the result is not a {rust_type}: {reason}")]
    Conversion {
        /// The requested Rust type.
        rust_type: &'static str,
        /// What serde-pickle said.
        reason: String,
    },
    /// The arguments could not be pickled.
    #[error("the arguments cannot be pickled: {0}")]
    Arguments(String),
    /// The callable is not of the form `"module:function"`.
    #[error("invalid callable {target:?}: {reason}")]
    InvalidTarget {
        /// What was given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The pool (or the worker cache under it) is closed.
    #[error("the worker pool is closed")]
    Closed,
    /// Some workers had not ended when [`crate::Pool::shutdown`]'s grace period ran out (a
    /// subinterpreter stuck in C code, or calls still running).
    #[error("{not_ended} workers had not ended after the grace period")]
    ShutdownTimeout {
        /// How many.
        not_ended: usize,
    },
    /// Making a new worker's setup payload failed.
    #[error("preparing the worker setup failed: {0}")]
    Setup(String),
    /// The worker layer failed (no thread or process could be started).
    #[error(transparent)]
    Worker(#[from] interpool_worker_types::Error),
}

/// A Python exception raised in a worker, as text (plus the pickled exception for hosts that
/// embed Python themselves and want the object back).
#[derive(Clone, PartialEq, Eq)]
pub struct PythonError {
    /// The exception's type, e.g. `ValueError`, or `package.module.CustomError` outside
    /// `builtins`.
    pub type_name: String,
    /// `str(exception)`.
    pub message: String,
    /// The formatted traceback, chained causes and contexts included, as Python prints it.
    pub traceback: String,
    /// `pickle.dumps(exception)`, when the exception could be pickled.
    pub pickled: Option<Vec<u8>>,
}

impl fmt::Display for PythonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(&self.type_name)
        } else {
            write!(f, "{}: {}", self.type_name, self.message)
        }
    }
}

impl fmt::Debug for PythonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PythonError")
            .field("type_name", &self.type_name)
            .field("message", &self.message)
            .field("traceback", &self.traceback)
            .field(
                "pickled",
                &self
                    .pickled
                    .as_ref()
                    .map(|p| format!("<{} bytes>", p.len())),
            )
            .finish()
    }
}

impl std::error::Error for PythonError {}
