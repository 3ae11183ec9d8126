//! Out-of-band buffers to and from Python objects of the **main** interpreter, for an extension
//! module built on PyO3 (feature `pyo3`; interpool's own is `interpool._interpool`).
//!
//! This is the one place the crate uses PyO3's safe API, and only in the main interpreter, where
//! the extension module runs: it is here, not in the extension module, because both directions
//! need unsafe code that no safe PyO3 API replaces, and this crate is where interpool's CPython
//! FFI lives (its root crate forbids `unsafe`):
//! - **In:** a job's buffers are the caller's `memoryview`s, read in place by the worker. A
//!   [`Buffer`] over a view's memory is sound only while the view lives ([`Buffer::from_raw`]), so
//!   [`pin`] makes the views its buffers' owner.
//! - **Out:** an outcome's buffers are host memory that the caller gets as a `memoryview` of a
//!   [`HostBuffer`], without another copy. Exporting memory through the buffer protocol needs
//!   PyO3's `unsafe fn __getbuffer__` (it fills a raw `Py_buffer`). Memory a worker lent is
//!   copied once into a `bytes` of the caller's ([`new_bytes`]), written in place: PyO3's safe
//!   `PyBytes::new_with` would zero it first.

#![allow(unsafe_code)]

use std::{
    ffi::c_int,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use pyo3::{
    buffer::PyBuffer,
    exceptions::{PyBufferError, PyValueError},
    ffi, intern,
    prelude::*,
    types::{PyBytes, PyList, PyMemoryView},
};

use crate::{Buffer, Owner};

/// The caller's `memoryview`s of one job, kept alive while any [`Buffer`] over them lives. The
/// last one may be dropped on a worker thread, attached to another interpreter or to none: so its
/// drop only queues the views, and [`release_pinned`] decrefs them in the main interpreter (this
/// build has no PyO3 reference pool: `.cargo/config.toml`).
struct Pinned(Vec<Py<PyAny>>);

/// Views whose [`Pinned`] was dropped, waiting for [`release_pinned`].
static RELEASED: Mutex<Vec<Py<PyAny>>> = Mutex::new(Vec::new());
/// Set once views are queued in [`RELEASED`], so that most calls skip its lock.
static ANY_RELEASED: AtomicBool = AtomicBool::new(false);
/// How many [`Pinned`] live: jobs whose caller buffers a worker may still read.
static PINNED_JOBS: AtomicUsize = AtomicUsize::new(0);

impl Pinned {
    fn new(views: Vec<Py<PyAny>>) -> Self {
        PINNED_JOBS.fetch_add(1, Ordering::AcqRel);
        Self(views)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        RELEASED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(&mut self.0);
        ANY_RELEASED.store(true, Ordering::Release);
        PINNED_JOBS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Drops the views of finished jobs (see [`Pinned`]); `py` proves this thread is attached to the
/// main interpreter, the views' own. Call it whenever convenient: when a call is submitted or
/// its outcome taken.
pub fn release_pinned(_py: Python<'_>) {
    if !ANY_RELEASED.load(Ordering::Acquire) || !ANY_RELEASED.swap(false, Ordering::AcqRel) {
        return; // the usual case: no job had buffers since the last time
    }
    let views = std::mem::take(&mut *RELEASED.lock().unwrap_or_else(PoisonError::into_inner));
    drop(views);
}

/// How many jobs' buffers are pinned: jobs whose caller memory a worker may still read.
pub fn pinned_jobs() -> usize {
    PINNED_JOBS.load(Ordering::Acquire)
}

/// [`Buffer`]s over the contiguous `"B"` memoryviews `views`, pinned (see [`Pinned`]).
pub fn pin(views: &Bound<'_, PyList>) -> PyResult<Vec<Buffer>> {
    let mut spans = Vec::with_capacity(views.len());
    let mut owners = Vec::with_capacity(views.len());
    for view in views.iter() {
        if !view.is_instance_of::<PyMemoryView>() {
            return Err(PyValueError::new_err(
                "a job's out-of-band buffers must be memoryviews",
            ));
        }
        let buffer = PyBuffer::<u8>::get(&view)?;
        if !buffer.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "a job's out-of-band buffers must be contiguous",
            ));
        }
        // A view of a whole `bytes` is rebuilt as one (`_outcome._OutOfBand`).
        let base = view.getattr(intern!(view.py(), "obj"))?;
        let as_bytes = base.is_exact_instance_of::<PyBytes>() && base.len()? == buffer.len_bytes();
        spans.push((buffer.buf_ptr() as *const u8, buffer.len_bytes(), as_bytes));
        owners.push(view.unbind());
    }
    let owner: Arc<dyn Owner> = Arc::new(Pinned::new(owners));
    Ok(spans
        .into_iter()
        .map(|(ptr, len, as_bytes)| {
            // SAFETY: each memoryview holds its own export of the memory (a bytearray cannot
            // resize, nothing is freed) for as long as it lives, and `owner` keeps every one of
            // them alive for as long as any of these buffers does.
            let buffer = unsafe { Buffer::from_raw(ptr, len, owner.clone()) };
            if as_bytes {
                buffer.rebuilt_as_bytes()
            } else {
                buffer
            }
        })
        .collect())
}

/// A new `bytes` holding a copy of `data`, written once (PyO3's `PyBytes::new_with` would zero it
/// first: a second pass over fresh memory).
pub fn new_bytes<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    // SAFETY: attached (`py`); a `bytes` made from NULL has `len` uninitialized bytes of its own,
    // all written here before anyone sees the object, whose new reference we then own.
    unsafe {
        let bytes = ffi::PyBytes_FromStringAndSize(std::ptr::null(), data.len() as ffi::Py_ssize_t);
        if bytes.is_null() {
            return Err(PyErr::fetch(py));
        }
        let start = ffi::PyBytes_AsString(bytes).cast::<u8>();
        crate::large_copy::copy_to_fresh(start, data);
        Ok(Bound::from_owned_ptr(py, bytes).cast_into_unchecked())
    }
}

/// The caller's `bytes` of a lent buffer (or of a process worker's whole `bytes`): the worker's
/// own object if its worker gave it up ([`Buffer::take_given_up`]: nothing is copied), else a copy
/// ([`new_bytes`]).
pub fn lent_bytes(py: Python<'_>, buffer: Buffer) -> PyResult<Bound<'_, PyBytes>> {
    match buffer.take_given_up() {
        // SAFETY: attached (`py`); a given-up token is the only reference left to a large exact
        // `bytes` that any interpreter may own (`Loans::mark_given_up`, ffi.rs rule 12), and it is
        // ours now: adopted here as a new reference of this interpreter.
        Ok(token) => Ok(unsafe {
            Bound::from_owned_ptr(py, token as *mut ffi::PyObject).cast_into_unchecked()
        }),
        Err(buffer) => buffer.read(|bytes| new_bytes(py, bytes)),
    }
}

/// An outcome buffer in host memory, exported to the caller without a copy: writable when the
/// caller holds it alone (always, for outcomes).
#[pyclass(module = "interpool._interpool", frozen)]
#[derive(Debug)]
pub struct HostBuffer {
    buffer: Buffer,
}

#[pymethods]
impl HostBuffer {
    /// # Safety
    /// Called by CPython with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let buffer = &slf.get().buffer;
        let readonly = !buffer.writable();
        if readonly && flags & ffi::PyBUF_WRITABLE != 0 {
            return Err(PyBufferError::new_err("this buffer is read-only"));
        }
        // SAFETY: `view` is valid per CPython; the memory lives as long as `slf`, which the view
        // keeps a reference to (PyBuffer_FillInfo increfs it). It is written only through a
        // writable export of a buffer that nobody else holds.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len() as ffi::Py_ssize_t,
                c_int::from(readonly),
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// # Safety
    /// Called by CPython with a view this object filled.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.buffer.len()
    }
}

/// A `memoryview` of `buffer` for the caller, through a [`HostBuffer`] that owns it.
pub fn host_view(py: Python<'_>, buffer: Buffer) -> PyResult<Bound<'_, PyMemoryView>> {
    let host = Bound::new(py, HostBuffer { buffer })?;
    PyMemoryView::from(&host.into_any())
}
