//! Every call into the CPython C API that interpool makes for subinterpreter workers.
//!
//! # Lifetime / threading requirements
//!
//! These are the rules the code below keeps; each `unsafe` block names the one it relies on.
//!
//! 1. **One OS thread per interpreter, for its whole life.** The worker thread creates the
//!    interpreter, attaches and detaches only its own thread state, and ends it with
//!    `Py_EndInterpreter` on that same thread state. [`Interpreter`] is `!Send` (raw pointers), so it
//!    cannot leave the thread.
//! 2. **Isolated configuration:** own GIL, own object allocator, `check_multi_interp_extensions`.
//!    Extension modules that are not per-interpreter-GIL safe refuse to import in it instead of
//!    corrupting shared state.
//! 3. **No Python object crosses interpreters.** Jobs enter as bytes copied into a fresh `bytes` of
//!    the worker's interpreter; outcomes leave as bytes copied out before detaching. The only
//!    object of another interpreter used here is `PyExc_KeyboardInterrupt`, a static immortal type.
//!    A job's out-of-band buffers are the exception to the copy, not to this rule: see rule 9.
//! 4. **No lock of ours is held across interpreter creation**, which takes the *main* GIL inside
//!    CPython (3.13 loads single-phase builtins through the main interpreter); a lock held there
//!    by a thread that also holds the main GIL deadlocks.
//! 5. **The main interpreter imports `datetime` before the first worker starts**
//!    (3.13.0: concurrent first imports of `_datetime` in several interpreters corrupt the heap).
//! 6. **Interrupting attaches a temporary thread state of the *target* interpreter** on a helper
//!    thread: `PyThreadState_SetAsyncExc` only searches the current interpreter's threads. The
//!    interrupter holds [`Shared::interpreter`]'s lock while attached; the worker clears that handle
//!    (while detached) before it ends the interpreter, so an interrupter never attaches to a dead
//!    one. The worker takes that lock only while detached, so the two never deadlock.
//! 7. **Every worker ends before the host finalizes**: a subinterpreter still running at
//!    `Py_FinalizeEx` aborts the process. Hosts call `close_all` / `wait_all_ended` first.
//! 8. PyO3's safe API is never used here: its statics and deferred-decref pool are process-global.
//! 9. **Out-of-band argument buffers are read in place, never copied by the transport.** Each
//!    [`Buffer`] of a job is raw memory of the caller plus an owner that keeps it valid (for the
//!    Python front end: the caller's `memoryview`s, objects of the *caller's* interpreter that
//!    nothing here touches). The job sees each one as a read-only `memoryview` of a
//!    `CallerBuffer`, a heap type created in each worker interpreter whose instances own a clone of
//!    the `Buffer`. Lifetime, exactly: the caller's memory stays valid while any clone lives,
//!    which is (a) the job's own, dropped by the worker thread, detached, after `run` returned and
//!    before the outcome is published, and (b) each `CallerBuffer`, deallocated in the worker's
//!    interpreter when its last view is gone: normally when `run` returns, later if the job kept
//!    a view (a global): then the caller's memory outlives the job, never the other way round.
//!    Dropping the last clone on this thread must not touch the caller's objects: owners only
//!    queue them for release by their own interpreter (`src/python/mod.rs`, `Pinned`).
//!    A job cannot write the caller's memory (read-only exports). A caller that writes it during
//!    the call races with the job, which may read old, new or mixed bytes.
//! 10. **Outcome buffers are copied once, into host memory**, before the worker detaches: the
//!     job's value may keep its objects (a global, a cache), so nothing of the worker's
//!     interpreter is referenced after the outcome is published. The host memory then goes to
//!     the caller as is (`HostBuffer`), without another copy.

#![allow(unsafe_code)]

use std::{
    ffi::{c_char, c_long, c_ulong, CStr, CString},
    ptr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock, PoisonError,
    },
};

use pyo3_ffi as ffi;

use super::{Shared, WORKER_LOOP_SOURCE};
use crate::{mailbox::Next, Broken, Buffer, Completion, Finished, Outcome, Retire, WorkerConfig};

/// `running_seq` when no job runs. `running_seq` is written by the worker and read by interrupters,
/// both only while holding that worker's GIL.
const NO_JOB: u64 = 0;

/// What an interrupter needs to reach a live interpreter.
#[derive(Debug)]
pub(crate) struct InterpreterHandle {
    interp: *mut ffi::PyInterpreterState,
    thread_ident: c_ulong,
    running_seq: Arc<AtomicU64>,
}

// SAFETY: the pointer is only dereferenced by CPython while the interpreter is alive, which rule 6
// guarantees: the handle is removed (under its lock) before the interpreter is ended.
unsafe impl Send for InterpreterHandle {}

/// Imports `datetime` in the main interpreter once (rule 5). Fails if Python is not initialized.
pub(crate) fn prepare_main_interpreter() -> Result<(), String> {
    // Not a OnceLock: a thread blocked in get_or_init while holding the GIL would deadlock with
    // the initializing thread waiting for the GIL. Importing twice is harmless.
    static READY: AtomicBool = AtomicBool::new(false);
    if READY.load(Ordering::Acquire) {
        return Ok(());
    }
    // SAFETY: Py_IsInitialized may be called at any time.
    if unsafe { ffi::Py_IsInitialized() } == 0 {
        return Err("the Python interpreter is not initialized".to_owned());
    }
    // SAFETY: the runtime is initialized; PyGILState_Ensure attaches this thread to the main
    // interpreter (or finds it attached) and PyGILState_Release undoes exactly that.
    let result = unsafe {
        let gil = ffi::PyGILState_Ensure();
        let module = ffi::PyImport_ImportModule(c"datetime".as_ptr());
        let result = if module.is_null() {
            Err(format!(
                "importing datetime in the main interpreter failed: {}",
                take_error()
            ))
        } else {
            ffi::Py_DECREF(module);
            Ok(())
        };
        ffi::PyGILState_Release(gil);
        result
    };
    if result.is_ok() {
        READY.store(true, Ordering::Release);
    }
    result
}

/// Takes the current exception of the attached interpreter and renders it as `Type: message`.
///
/// # Safety
/// A thread state must be attached on this thread.
unsafe fn take_error() -> String {
    // SAFETY: the caller guarantees an attached thread state; every object used here belongs to
    // the attached interpreter and is released before returning.
    unsafe {
        let exc = ffi::PyErr_GetRaisedException();
        if exc.is_null() {
            return "unknown error (no exception set)".to_owned();
        }
        let type_name = CStr::from_ptr((*ffi::Py_TYPE(exc)).tp_name)
            .to_string_lossy()
            .into_owned();
        let text = ffi::PyObject_Str(exc);
        let message = if text.is_null() {
            ffi::PyErr_Clear();
            String::new()
        } else {
            let utf8 = ffi::PyUnicode_AsUTF8AndSize(text, ptr::null_mut());
            let message = if utf8.is_null() {
                ffi::PyErr_Clear();
                String::new()
            } else {
                CStr::from_ptr(utf8).to_string_lossy().into_owned()
            };
            ffi::Py_DECREF(text);
            message
        };
        ffi::Py_DECREF(exc);
        format!("{type_name}: {message}")
    }
}

/// Copies a `bytes` object of the attached interpreter into Rust.
///
/// # Safety
/// A thread state must be attached, and `obj` must be a live object of its interpreter.
unsafe fn bytes_to_vec(obj: *mut ffi::PyObject) -> Option<Vec<u8>> {
    // SAFETY: per the caller; PyBytes_AsString checks the type and sets an error otherwise.
    unsafe {
        let data = ffi::PyBytes_AsString(obj);
        if data.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        let len = ffi::PyBytes_Size(obj) as usize;
        Some(std::slice::from_raw_parts(data as *const u8, len).to_vec())
    }
}

/// One live isolated interpreter, owned by the thread that created it (rule 1).
struct Interpreter {
    tstate: *mut ffi::PyThreadState,
    interp: *mut ffi::PyInterpreterState,
    module: *mut ffi::PyObject,
    setup: *mut ffi::PyObject,
    run: *mut ffi::PyObject,
    /// The `CallerBuffer` type of this interpreter (rule 9).
    caller_buffer: *mut ffi::PyObject,
}

impl Interpreter {
    /// Creates the interpreter and loads the worker loop. On success, this thread is attached to
    /// the new interpreter.
    ///
    /// # Safety
    /// Python must be initialized, and this thread must have no thread state of its own.
    unsafe fn create() -> Result<Self, String> {
        // SAFETY: per the caller. The main-interpreter thread state is made on and used by this
        // thread only, and deleted before returning (keeping it would make SetAsyncExc from the
        // main interpreter hit it instead of failing). No lock of ours is held (rule 4).
        unsafe {
            let main_tstate = ffi::PyThreadState_New(ffi::PyInterpreterState_Main());
            if main_tstate.is_null() {
                return Err("could not allocate a thread state".to_owned());
            }
            ffi::PyEval_RestoreThread(main_tstate);
            let config = ffi::PyInterpreterConfig {
                use_main_obmalloc: 0,
                allow_fork: 0,
                allow_exec: 0,
                allow_threads: 1,
                allow_daemon_threads: 0,
                check_multi_interp_extensions: 1,
                gil: ffi::PyInterpreterConfig_OWN_GIL,
            };
            let mut tstate: *mut ffi::PyThreadState = ptr::null_mut();
            let status = ffi::Py_NewInterpreterFromConfig(&mut tstate, &config);
            if ffi::PyStatus_Exception(status) != 0 {
                let reason = if status.err_msg.is_null() {
                    "unknown error".to_owned()
                } else {
                    CStr::from_ptr(status.err_msg)
                        .to_string_lossy()
                        .into_owned()
                };
                // On failure CPython re-attaches the calling thread state (main_tstate).
                ffi::PyThreadState_Clear(main_tstate);
                ffi::PyThreadState_DeleteCurrent();
                return Err(format!("Py_NewInterpreterFromConfig failed: {reason}"));
            }
            // Now `tstate` is attached and the main GIL was released. Drop the helper.
            let sub = ffi::PyEval_SaveThread();
            ffi::PyEval_RestoreThread(main_tstate);
            ffi::PyThreadState_Clear(main_tstate);
            ffi::PyThreadState_DeleteCurrent();
            ffi::PyEval_RestoreThread(sub);

            let interp = ffi::PyThreadState_GetInterpreter(tstate);
            let mut this = Self {
                tstate,
                interp,
                module: ptr::null_mut(),
                setup: ptr::null_mut(),
                run: ptr::null_mut(),
                caller_buffer: ptr::null_mut(),
            };
            if let Err(reason) = this.load_worker_loop() {
                this.end();
                return Err(reason);
            }
            Ok(this)
        }
    }

    /// # Safety
    /// This interpreter's thread state must be attached.
    unsafe fn load_worker_loop(&mut self) -> Result<(), String> {
        // SAFETY: attached per the caller; new references are owned by `self` until `end`.
        unsafe {
            let code = worker_loop_code()?;
            self.module = ffi::PyImport_ExecCodeModule(c"_interpool_worker".as_ptr(), code);
            ffi::Py_DECREF(code);
            if self.module.is_null() {
                return Err(format!("loading the worker loop failed: {}", take_error()));
            }
            self.setup = ffi::PyObject_GetAttrString(self.module, c"setup".as_ptr());
            self.run = ffi::PyObject_GetAttrString(self.module, c"run".as_ptr());
            if self.setup.is_null() || self.run.is_null() {
                return Err(format!("the worker loop is incomplete: {}", take_error()));
            }
            self.caller_buffer = new_caller_buffer_type();
            if self.caller_buffer.is_null() {
                return Err(format!(
                    "creating the CallerBuffer type failed: {}",
                    take_error()
                ));
            }
        }
        Ok(())
    }

    /// Runs the worker loop's `setup` (sys.path, argv, main script, `init`).
    ///
    /// # Safety
    /// This interpreter's thread state must be attached.
    unsafe fn setup(&self, config: &[u8]) -> Result<(), Broken> {
        // SAFETY: attached per the caller; every new reference is released here.
        unsafe {
            let arg = new_bytes(config);
            if arg.is_null() {
                return Err(broken(format!(
                    "could not pass the setup: {}",
                    take_error()
                )));
            }
            let result = ffi::PyObject_CallOneArg(self.setup, arg);
            ffi::Py_DECREF(arg);
            if result.is_null() {
                return Err(broken(format!("the worker setup failed: {}", take_error())));
            }
            // None, or (reason: str, exception records: bytes).
            let outcome = if result == ffi::Py_None() {
                Ok(())
            } else {
                let reason = ffi::PyTuple_GetItem(result, 0);
                let reason_utf8 = if reason.is_null() {
                    ptr::null()
                } else {
                    ffi::PyUnicode_AsUTF8AndSize(reason, ptr::null_mut())
                };
                let reason = if reason_utf8.is_null() {
                    ffi::PyErr_Clear();
                    "the worker setup failed".to_owned()
                } else {
                    CStr::from_ptr(reason_utf8).to_string_lossy().into_owned()
                };
                let records = ffi::PyTuple_GetItem(result, 1);
                let exception = if records.is_null() {
                    ffi::PyErr_Clear();
                    None
                } else {
                    bytes_to_vec(records)
                };
                Err(Broken {
                    reason,
                    exception,
                    exit_code: None,
                })
            };
            ffi::Py_DECREF(result);
            outcome
        }
    }

    /// Runs one job through the worker loop's `run`.
    ///
    /// # Safety
    /// This interpreter's thread state must be attached.
    unsafe fn run_job(&self, payload: &[u8], buffers: &[Buffer]) -> Finished {
        // SAFETY: attached per the caller; every new reference is released here, and the outcome
        // is copied out before returning (rules 3 and 10).
        unsafe {
            let arg = new_bytes(payload);
            if arg.is_null() {
                return broken_finished(format!(
                    "could not pass the job to the worker: {}",
                    take_error()
                ));
            }
            let result = if buffers.is_empty() {
                ffi::PyObject_CallOneArg(self.run, arg)
            } else {
                let views = self.caller_views(buffers);
                if views.is_null() {
                    ffi::Py_DECREF(arg);
                    return broken_finished(format!(
                        "could not pass the job's buffers to the worker: {}",
                        take_error()
                    ));
                }
                let result = ffi::PyObject_CallFunctionObjArgs(
                    self.run,
                    arg,
                    views,
                    ptr::null_mut::<ffi::PyObject>(),
                );
                ffi::Py_DECREF(views);
                result
            };
            ffi::Py_DECREF(arg);
            if result.is_null() {
                // Only an exception injected by an interrupt escapes `run`.
                return broken_finished(format!("the job was interrupted ({})", take_error()));
            }
            let finished = parse_run_result(result);
            ffi::Py_DECREF(result);
            finished.unwrap_or_else(|| {
                ffi::PyErr_Clear();
                broken_finished("the worker loop returned a malformed outcome".to_owned())
            })
        }
    }

    /// A list of read-only memoryviews over `buffers` (rule 9), or NULL with an error set.
    ///
    /// # Safety
    /// This interpreter's thread state must be attached.
    unsafe fn caller_views(&self, buffers: &[Buffer]) -> *mut ffi::PyObject {
        // SAFETY: attached per the caller; `caller_buffer` is this interpreter's CallerBuffer type,
        // whose instances are laid out as `CallerBufferObject`; each instance owns its clone of
        // the buffer from here until its dealloc.
        unsafe {
            let list = ffi::PyList_New(buffers.len() as ffi::Py_ssize_t);
            if list.is_null() {
                return list;
            }
            for (i, buffer) in buffers.iter().enumerate() {
                let exporter = ffi::PyType_GenericAlloc(self.caller_buffer.cast(), 0);
                if exporter.is_null() {
                    ffi::Py_DECREF(list);
                    return ptr::null_mut();
                }
                let this = exporter.cast::<CallerBufferObject>();
                (*this).buffer = Box::into_raw(Box::new(buffer.clone()));
                let view = ffi::PyMemoryView_FromObject(exporter);
                ffi::Py_DECREF(exporter);
                if view.is_null() {
                    ffi::Py_DECREF(list);
                    return ptr::null_mut();
                }
                ffi::PyList_SET_ITEM(list, i as ffi::Py_ssize_t, view);
            }
            list
        }
    }

    /// Releases everything and ends the interpreter; this thread is left with no thread state.
    ///
    /// # Safety
    /// This interpreter's thread state must be attached, on the thread that created it.
    unsafe fn end(self) {
        // SAFETY: attached per the caller; references are dropped before the interpreter that
        // owns them is ended (rule 1: same thread, own thread state).
        unsafe {
            for obj in [self.caller_buffer, self.run, self.setup, self.module] {
                if !obj.is_null() {
                    ffi::Py_DECREF(obj);
                }
            }
            ffi::Py_EndInterpreter(self.tstate);
        }
    }
}

/// The worker loop's marshalled code object, made by the first worker of the process: unmarshalling
/// it costs ~0.1 ms where compiling the source costs ~2.5 ms per worker. Plain bytes (rule 3).
static WORKER_LOOP_MARSHALLED: OnceLock<Vec<u8>> = OnceLock::new();

/// A new reference to the worker loop's code object, in the attached interpreter.
///
/// # Safety
/// A thread state must be attached.
unsafe fn worker_loop_code() -> Result<*mut ffi::PyObject, String> {
    // SAFETY: attached per the caller; the code object is a new reference of its interpreter,
    // and the marshal string is released before returning.
    unsafe {
        if let Some(marshalled) = WORKER_LOOP_MARSHALLED.get() {
            let code = ffi::PyMarshal_ReadObjectFromString(
                marshalled.as_ptr() as *const c_char,
                marshalled.len() as ffi::Py_ssize_t,
            );
            if code.is_null() {
                return Err(format!(
                    "unmarshalling the worker loop failed: {}",
                    take_error()
                ));
            }
            return Ok(code);
        }
        let source = CString::new(WORKER_LOOP_SOURCE).map_err(|e| e.to_string())?;
        let code = ffi::Py_CompileString(
            source.as_ptr(),
            c"<interpool worker loop>".as_ptr(),
            ffi::Py_file_input,
        );
        if code.is_null() {
            return Err(format!(
                "compiling the worker loop failed: {}",
                take_error()
            ));
        }
        // Not get_or_init: no thread waits on another here. Two first workers both compile, and
        // both marshal the same code.
        let marshalled = ffi::PyMarshal_WriteObjectToString(code, ffi::Py_MARSHAL_VERSION);
        if marshalled.is_null() {
            ffi::PyErr_Clear(); // the next worker compiles again
        } else {
            if let Some(bytes) = bytes_to_vec(marshalled) {
                let _ = WORKER_LOOP_MARSHALLED.set(bytes);
            }
            ffi::Py_DECREF(marshalled);
        }
        Ok(code)
    }
}

/// # Safety
/// A thread state must be attached.
unsafe fn new_bytes(data: &[u8]) -> *mut ffi::PyObject {
    // SAFETY: per the caller; CPython copies `data` into the attached interpreter's allocator.
    unsafe {
        ffi::PyBytes_FromStringAndSize(
            data.as_ptr() as *const c_char,
            data.len() as ffi::Py_ssize_t,
        )
    }
}

/// A `CallerBuffer` instance: a Python object of a worker interpreter exporting a job's buffer,
/// read-only (rule 9).
#[repr(C)]
struct CallerBufferObject {
    ob_base: ffi::PyObject,
    /// Owned: made in [`Interpreter::caller_views`], dropped in [`caller_buffer_dealloc`].
    buffer: *mut Buffer,
}

unsafe extern "C" fn caller_buffer_getbuffer(
    obj: *mut ffi::PyObject,
    view: *mut ffi::Py_buffer,
    flags: std::ffi::c_int,
) -> std::ffi::c_int {
    // SAFETY: CPython calls this with a live CallerBuffer (attached to its interpreter), whose
    // `buffer` is set before the object is exposed; PyBuffer_FillInfo refuses writable requests
    // for read-only memory and keeps a reference to `obj` in `view`.
    unsafe {
        let buffer = &*(*obj.cast::<CallerBufferObject>()).buffer;
        ffi::PyBuffer_FillInfo(
            view,
            obj,
            buffer.as_ptr().cast_mut().cast(),
            buffer.len() as ffi::Py_ssize_t,
            1,
            flags,
        )
    }
}

unsafe extern "C" fn caller_buffer_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls this once, attached, when the last reference (and so every export,
    // each holding one) is gone. The Buffer clone is dropped here; its owner does not touch
    // Python objects on this thread (rule 9). The object was allocated by PyType_GenericAlloc of
    // a heap type, so it is freed with the type's tp_free and the type's reference is dropped.
    unsafe {
        let this = obj.cast::<CallerBufferObject>();
        if !(*this).buffer.is_null() {
            drop(Box::from_raw((*this).buffer));
        }
        let tp = ffi::Py_TYPE(obj);
        let free = (*tp).tp_free.expect("heap types have tp_free");
        free(obj.cast());
        ffi::Py_DECREF(tp.cast());
    }
}

/// Creates the `CallerBuffer` type of the attached interpreter (a heap type: one per
/// interpreter), or NULL with an error set.
///
/// # Safety
/// A thread state must be attached.
unsafe fn new_caller_buffer_type() -> *mut ffi::PyObject {
    let mut slots = [
        ffi::PyType_Slot {
            slot: ffi::Py_bf_getbuffer,
            pfunc: caller_buffer_getbuffer as *mut std::ffi::c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_dealloc,
            pfunc: caller_buffer_dealloc as *mut std::ffi::c_void,
        },
        ffi::PyType_Slot {
            slot: 0,
            pfunc: ptr::null_mut(),
        },
    ];
    let mut spec = ffi::PyType_Spec {
        name: c"_interpool_worker.CallerBuffer".as_ptr(),
        basicsize: std::mem::size_of::<CallerBufferObject>() as std::ffi::c_int,
        itemsize: 0,
        flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION) as _,
        slots: slots.as_mut_ptr(),
    };
    // SAFETY: attached per the caller; CPython copies what it keeps of `spec` and `slots`.
    unsafe { ffi::PyType_FromSpec(&mut spec) }
}

/// Copies the contiguous buffer `obj` exports into host memory (rule 10).
///
/// # Safety
/// A thread state must be attached, and `obj` must be a live object of its interpreter.
unsafe fn copy_out_buffer(obj: *mut ffi::PyObject) -> Option<Buffer> {
    // SAFETY: per the caller; the view is released before returning, after the copy.
    unsafe {
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        if ffi::PyObject_GetBuffer(obj, view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
            return None;
        }
        let mut view = view.assume_init();
        let len = view.len as usize;
        let mut data = Vec::<u8>::with_capacity(len);
        ptr::copy_nonoverlapping(view.buf as *const u8, data.as_mut_ptr(), len);
        data.set_len(len);
        ffi::PyBuffer_Release(&mut view);
        Some(Buffer::from_vec(data))
    }
}

/// The outcome buffers of `run`'s result (a list of buffer objects, or None), copied out.
///
/// # Safety
/// A thread state must be attached and `list` must be a live object of its interpreter or NULL.
unsafe fn copy_out_buffers(list: *mut ffi::PyObject) -> Option<Vec<Buffer>> {
    // SAFETY: per the caller; PyList_GetItem returns borrowed references.
    unsafe {
        if list.is_null() || list == ffi::Py_None() {
            return Some(Vec::new());
        }
        let len = ffi::PyList_Size(list);
        if len < 0 {
            return None;
        }
        (0..len)
            .map(|i| copy_out_buffer(ffi::PyList_GetItem(list, i)))
            .collect()
    }
}

/// Reads `(kind: int, data: bytes, retire: int, retire_error: bytes | None[, buffers])`.
///
/// # Safety
/// A thread state must be attached and `result` must be a live object of its interpreter.
unsafe fn parse_run_result(result: *mut ffi::PyObject) -> Option<Finished> {
    // SAFETY: per the caller; PyTuple_GetItem returns borrowed references (or NULL with an error
    // set, which the caller clears).
    unsafe {
        let kind = ffi::PyLong_AsLong(ffi::PyTuple_GetItem(result, 0));
        let data = bytes_to_vec(ffi::PyTuple_GetItem(result, 1))?;
        let retire = ffi::PyLong_AsLong(ffi::PyTuple_GetItem(result, 2));
        let buffers = if ffi::PyTuple_Size(result) > 4 {
            copy_out_buffers(ffi::PyTuple_GetItem(result, 4))?
        } else {
            Vec::new()
        };
        let outcome = match kind {
            0 if buffers.is_empty() => Outcome::Value(data),
            0 => Outcome::ValueWithBuffers(data, buffers),
            1 => Outcome::Raised(data),
            2 => Outcome::LoadError(data),
            _ => return None,
        };
        let retire = match retire {
            0 => Retire::Keep,
            1 => Retire::Retire,
            2 => Retire::Failed(bytes_to_vec(ffi::PyTuple_GetItem(result, 3))?),
            _ => return None,
        };
        Some(Finished { outcome, retire })
    }
}

fn broken(reason: String) -> Broken {
    Broken::new(reason)
}

fn broken_finished(reason: String) -> Finished {
    Finished {
        outcome: Outcome::Broken(broken(reason)),
        retire: Retire::Retire,
    }
}

/// The body of a worker thread: create, serve jobs until closed or idle, end.
pub(crate) fn worker_thread(shared: Arc<Shared>, config: Arc<WorkerConfig>) {
    shared.mailbox.register_worker_thread();
    let running_seq = Arc::new(AtomicU64::new(NO_JOB));
    // SAFETY: Python is initialized (start() checked it via prepare_main_interpreter) and this
    // fresh thread has no thread state.
    let created = unsafe { Interpreter::create() };
    let (interpreter, startup_error) = match created {
        Ok(interpreter) => {
            // SAFETY: `create` left this thread attached to the new interpreter.
            match unsafe { interpreter.setup(&config.setup) } {
                Ok(()) => (Some(interpreter), None),
                Err(broken) => (Some(interpreter), Some(broken)),
            }
        }
        Err(reason) => (
            None,
            Some(broken(format!(
                "could not create the interpreter: {reason}"
            ))),
        ),
    };
    // SAFETY: attached to the new interpreter if it exists (see above); detaching hands its GIL
    // back while we wait for jobs.
    let mut saved = interpreter
        .as_ref()
        .map(|_| unsafe { ffi::PyEval_SaveThread() });
    if let (Some(interpreter), None) = (&interpreter, &startup_error) {
        *shared
            .interpreter
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(InterpreterHandle {
            interp: interpreter.interp,
            // SAFETY: callable from any thread.
            thread_ident: unsafe { ffi::PyThread_get_thread_ident() },
            running_seq: running_seq.clone(),
        });
    }

    loop {
        let (job, completion) = match shared.mailbox.next(config.idle_timeout) {
            Next::Run(job, completion) => (job, completion),
            Next::End => break,
        };
        let (Some(interpreter), None, Some(tstate)) = (&interpreter, &startup_error, saved) else {
            let error = startup_error
                .clone()
                .unwrap_or_else(|| broken("no interpreter".into()));
            shared.mailbox.job_done(true);
            completion.complete(Finished {
                outcome: Outcome::Broken(error),
                retire: Retire::Retire,
            });
            break;
        };
        let seq = shared.submitted_seq.load(Ordering::Acquire);
        // SAFETY: `tstate` is this thread's detached thread state of `interpreter` (rule 1).
        let finished = unsafe {
            ffi::PyEval_RestoreThread(tstate);
            // Checked and set under this GIL, which interrupters also hold while they look at
            // `running_seq`: an interrupt that came before (even while the interpreter was still
            // being created) is seen here; one that comes after finds the job running.
            let finished = if shared.interrupted_seq.load(Ordering::Acquire) == seq {
                broken_finished("the job was interrupted before it started".to_owned())
            } else {
                running_seq.store(seq, Ordering::Release);
                let finished = interpreter.run_job(&job.payload, &job.buffers);
                running_seq.store(NO_JOB, Ordering::Release);
                finished
            };
            // An interrupt that raced with the job's end is dropped here, under the GIL, so it
            // cannot hit a later job (cpython#139622: 3.13 may deliver it late).
            ffi::PyThreadState_SetAsyncExc(
                ffi::PyThread_get_thread_ident() as c_long,
                ptr::null_mut(),
            );
            saved = Some(ffi::PyEval_SaveThread());
            finished
        };
        drop(job);
        if !deliver(&shared, seq, finished, &completion) {
            break;
        }
    }

    *shared
        .interpreter
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    if let (Some(interpreter), Some(tstate)) = (interpreter, saved) {
        // SAFETY: the interpreter handle is gone, so no interrupter is or will be attached
        // (rule 6); `tstate` is this thread's own thread state of `interpreter`.
        unsafe {
            ffi::PyEval_RestoreThread(tstate);
            interpreter.end();
        }
    }
    shared.mark_ended();
}

/// Hands a job's outcome over; returns whether the worker goes on.
fn deliver(shared: &Shared, seq: u64, mut finished: Finished, completion: &Completion) -> bool {
    let interrupted = shared.interrupted_seq.load(Ordering::Acquire) == seq;
    let abandoned = shared.abandoned.load(Ordering::Acquire);
    let ending = finished.worker_ends() || interrupted || abandoned;
    if ending && finished.retire == Retire::Keep {
        finished.retire = Retire::Retire;
    }
    // Idle (or closed) before the outcome is visible, so a caller who sees it can reuse us.
    let go_on = shared.mailbox.job_done(ending);
    completion.complete(finished);
    go_on
}

/// Injects `KeyboardInterrupt` into the job `seq` of this worker, if it is still running it.
/// Runs on a helper thread; blocks until it gets the worker's GIL.
pub(crate) fn interrupt(shared: &Shared, seq: u64) {
    let handle = shared
        .interpreter
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(handle) = &*handle else {
        // Not created yet: the worker sees `interrupted_seq` before it runs the job. Or ending.
        return;
    };
    // SAFETY: the handle's interpreter is alive while we hold its lock (rule 6); the temporary
    // thread state is created, attached, cleared and deleted on this thread. KeyboardInterrupt
    // is a static immortal type shared by all interpreters (rule 3).
    unsafe {
        let tstate = ffi::PyThreadState_New(handle.interp);
        if tstate.is_null() {
            return;
        }
        ffi::PyEval_RestoreThread(tstate);
        if handle.running_seq.load(Ordering::Acquire) == seq {
            ffi::PyThreadState_SetAsyncExc(
                handle.thread_ident as c_long,
                ffi::PyExc_KeyboardInterrupt,
            );
        }
        ffi::PyThreadState_Clear(tstate);
        ffi::PyThreadState_DeleteCurrent();
    }
}
