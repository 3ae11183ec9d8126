//! [`Attached`]: proof that this thread has a Python thread state attached, the guard every
//! C-API call of this crate goes through.
//!
//! Whether a thread state is attached, and to which interpreter, is what most C-API calls depend
//! on, so it is carried by a value rather than by comments: a guard proves it for as long as it
//! lives and detaches when dropped. It is `!Send` and `!Sync` (raw pointers): a thread state is
//! attached and detached on one OS thread. Functions that call into an interpreter take
//! `&Attached` (named `py`, as PyO3 names its token), so a call made detached does not compile.
//! Not PyO3's `Python<'py>` token: that one cannot say *which* interpreter is attached, and PyO3's
//! statics are process-global (`subinterpreter/ffi.rs`, rule 8).
//!
//! There are three ways to attach, one per situation, and the guard hands the thread state back
//! the same way: the main interpreter through `PyGILState_Ensure` (embedding it, preparing it for
//! workers: [`Attached::main`]); and, for subinterpreter workers only, a worker's own thread
//! state, kept between jobs, and a temporary thread state of a given interpreter, deleted on drop
//! (creating an interpreter, interrupting one). The rules those keep are in the header of
//! `subinterpreter/ffi.rs`.

#![allow(unsafe_code)]
// Only the subinterpreter worker (CPython >= 3.13) attaches its own or a temporary thread state.
#![cfg_attr(not(Py_3_13), allow(dead_code))]

use std::marker::PhantomData;

use pyo3_ffi as ffi;

/// Proof that this thread has a thread state attached (it holds that interpreter's GIL) for as
/// long as `'a`; dropping it detaches, the way it attached (see the module docs).
pub(crate) struct Attached<'a> {
    detach: Detach,
    _interpreter: PhantomData<&'a ()>,
}

/// How an [`Attached`] hands its thread state back.
enum Detach {
    /// Kept for the next attach (`PyEval_SaveThread`): a worker's own thread state.
    Save,
    /// Cleared and deleted: a temporary thread state of this guard's own.
    Delete(*mut ffi::PyThreadState),
    /// `PyGILState_Release` of what `PyGILState_Ensure` did.
    GilState(ffi::PyGILState_STATE),
}

impl Attached<'_> {
    /// Attaches `tstate` until the guard is dropped, which detaches it and keeps it.
    ///
    /// # Safety
    /// This thread has no thread state attached; `tstate` is a detached thread state made on this
    /// thread, and its interpreter outlives the guard.
    pub(crate) unsafe fn restore(tstate: *mut ffi::PyThreadState) -> Self {
        // SAFETY: per the caller.
        unsafe { ffi::PyEval_RestoreThread(tstate) };
        Self {
            detach: Detach::Save,
            _interpreter: PhantomData,
        }
    }

    /// Attaches a new thread state of `interp` until the guard is dropped, which deletes it;
    /// `None` if none could be allocated.
    ///
    /// # Safety
    /// This thread has no thread state attached, and `interp` outlives the guard.
    pub(crate) unsafe fn temporary(interp: *mut ffi::PyInterpreterState) -> Option<Self> {
        // SAFETY: per the caller; the thread state is made for this thread and used on it only.
        unsafe {
            let tstate = ffi::PyThreadState_New(interp);
            if tstate.is_null() {
                return None;
            }
            ffi::PyEval_RestoreThread(tstate);
            Some(Self {
                detach: Detach::Delete(tstate),
                _interpreter: PhantomData,
            })
        }
    }

    /// The thread state a temporary guard deletes when dropped; `None` for the other kinds.
    pub(crate) fn temporary_thread_state(&self) -> Option<*mut ffi::PyThreadState> {
        match self.detach {
            Detach::Delete(tstate) => Some(tstate),
            Detach::Save | Detach::GilState(_) => None,
        }
    }
}

impl Attached<'static> {
    /// Attaches this thread to the main interpreter through `PyGILState_Ensure` (or finds it
    /// attached there), undone when the guard is dropped. interpool never finalizes the main
    /// interpreter, and a host that does must end every worker first
    /// (`subinterpreter/ffi.rs`, rule 7; [`crate::embed`], rule 3).
    ///
    /// # Safety
    /// Python is initialized, and this thread has no thread state of another interpreter attached.
    pub(crate) unsafe fn main() -> Self {
        // SAFETY: per the caller.
        let state = unsafe { ffi::PyGILState_Ensure() };
        Self {
            detach: Detach::GilState(state),
            _interpreter: PhantomData,
        }
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        // SAFETY: the guard's thread state is attached on this thread (the guard cannot leave it)
        // and is handed back the way it was taken.
        unsafe {
            match self.detach {
                Detach::Save => {
                    ffi::PyEval_SaveThread();
                }
                Detach::Delete(tstate) => {
                    ffi::PyThreadState_Clear(tstate);
                    ffi::PyThreadState_DeleteCurrent();
                }
                Detach::GilState(state) => ffi::PyGILState_Release(state),
            }
        }
    }
}
