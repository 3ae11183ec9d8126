//! Initializing the embedded CPython for the Rust API ([`crate::Pool`]): the root crate's only
//! unsafe code.
//!
//! # Invariants
//!
//! 1. **Initialize at most once, and only if nobody did.** If the interpreter is already running
//!    (the host initialized it with PyO3 or the C API, or this crate is loaded as the Python
//!    extension module) it is left alone: its owner keeps the main thread state, and must have
//!    released the GIL before workers start (subinterpreter creation takes the main GIL).
//! 2. **After initializing, release the GIL at once** (`PyEval_SaveThread`), from the thread that
//!    initialized, and never take the saved thread state back: from then on every thread reaches the
//!    main interpreter through `PyGILState_Ensure`/`Release` (the worker types do that), so nothing
//!    here holds the GIL across a return to the host.
//! 3. **Never finalize.** `Py_FinalizeEx` with a subinterpreter alive aborts the process; a Rust host
//!    has no natural point where it knows every pool is gone, so the embedded interpreter lives
//!    until the process exits. [`crate::Pool::shutdown`] ends a pool's workers; a host that
//!    finalizes Python itself must shut its pools down first.
//! 4. Signal handlers are not installed (`Py_InitializeEx(0)`): Ctrl-C stays the host's.
//! 5. PyO3's safe API is not used here (the root crate's `pyo3` is only for the extension module).

#![allow(unsafe_code)]

use std::sync::Mutex;

use pyo3_ffi as ffi;

/// Makes sure the embedded interpreter is running, initializing it if nobody has. Returns whether
/// this call initialized it.
pub(crate) fn ensure_initialized() -> bool {
    // A plain mutex: two pools built at once must not both initialize (rule 1). It is never held
    // while waiting for the GIL.
    static INIT: Mutex<()> = Mutex::new(());
    let _guard = INIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // SAFETY: Py_IsInitialized may be called at any time, from any thread.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        return false;
    }
    // SAFETY: the interpreter is not initialized and INIT serializes initializers (rule 1);
    // initializing takes the GIL on this thread, and PyEval_SaveThread releases it right away,
    // from the same thread (rule 2). The returned thread state is deliberately never restored.
    unsafe {
        ffi::Py_InitializeEx(0);
        ffi::PyEval_SaveThread();
    }
    true
}
