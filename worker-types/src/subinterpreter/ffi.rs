//! Every call into the CPython C API that interpool makes for subinterpreter workers.
//!
//! # Attached thread states are in the types
//!
//! Whether this thread has a thread state attached, and to which interpreter, is what most C-API
//! calls depend on, so it is carried by a value rather than by comments: an [`Attached`] guard
//! (`crate::attached`, shared with the embedding code, which runs on every CPython) proves that a
//! thread state is attached for as long as it lives, and detaches when dropped. It is `!Send`, so
//! it is dropped on the thread that attached. Every function here that calls into an interpreter
//! takes `&Attached` (named `py`) or is a method of [`AttachedWorker`]: a worker thread attached
//! to its own interpreter, made only by [`Interpreter::attach`], which borrows the interpreter
//! mutably so that it cannot be attached twice. The guard's three ways to attach serve these
//! rules: a worker's own thread state, kept between jobs (rule 1); a temporary thread state of a
//! given interpreter, deleted on drop (creating an interpreter, interrupting one: rules 4 and 6);
//! and the main interpreter through `PyGILState_Ensure` (rule 5). What a type cannot say stays a
//! `# Safety` contract: that a raw object pointer is a live object of the attached interpreter,
//! and the cross-thread rules below.
//!
//! # Lifetime / threading requirements
//!
//! These are the rules the code below keeps; each `unsafe` block names the one it relies on.
//!
//! 1. **One OS thread per interpreter, for its whole life.** The worker thread creates the
//!    interpreter, attaches and detaches only its own thread state, and ends it with
//!    `Py_EndInterpreter` on that same thread state. [`Interpreter`] and [`Attached`] are `!Send`
//!    (raw pointers), so neither can leave the thread; the thread attaches nothing else while its
//!    interpreter lives.
//! 2. **Isolated configuration:** own GIL, own object allocator, `check_multi_interp_extensions`.
//!    Extension modules that are not per-interpreter-GIL safe refuse to import in it instead of
//!    corrupting shared state.
//! 3. **No Python object crosses interpreters.** Jobs enter as bytes copied into a fresh `bytes` of
//!    the worker's interpreter; outcomes leave as bytes copied out before detaching. The only
//!    object of another interpreter used here is `PyExc_KeyboardInterrupt`, a static immortal type.
//!    Out-of-band buffers are the exception to the copy, not to this rule: see rules 9 and 10.
//!    A large `bytes` result that its worker no longer reaches is the one exception to the rule
//!    itself: it changes owner instead of being copied (rule 12).
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
//! 8. PyO3's safe API is never used here: its statics and deferred-decref pool are process-global,
//!    and its `Python<'py>` token cannot say which interpreter is attached; [`Attached`] plays that
//!    role.
//! 9. **Out-of-band argument buffers are read in place, never copied by the transport.** Each
//!    [`Buffer`] of a job is raw memory of the caller plus an owner that keeps it valid (for the
//!    Python front end: the caller's `memoryview`s, objects of the *caller's* interpreter that
//!    nothing here touches). The job sees each one as a read-only `memoryview` of a
//!    `CallerBuffer`, a heap type created in each worker interpreter whose instances own a clone of
//!    the `Buffer`. Lifetime, exactly: the caller's memory stays valid while any clone lives,
//!    which is (a) the job's own, dropped by the worker thread, detached, after the job returned and
//!    before the outcome is published, and (b) each `CallerBuffer`, deallocated in the worker's
//!    interpreter when its last view is gone: normally when the job returns, later if the job kept
//!    a view (a global): then the caller's memory outlives the job, never the other way round.
//!    Dropping the last clone on this thread must not touch the caller's objects: owners only
//!    queue them for release by their own interpreter (`crate::python_buffers`, `Pinned`).
//!    A job cannot write the caller's memory (read-only exports). A caller that writes it during
//!    the call races with the job, which may read old, new or mixed bytes.
//! 10. **An outcome's `bytes` buffers are lent, every other outcome buffer is copied once into
//!     host memory**, before the worker detaches. A `bytes` is immutable, so its memory can be
//!     read from the caller's thread while the worker goes on: the worker takes a new reference
//!     to it and lends its bytes (raw memory plus an owner, [`Loans`]; the `PyObject*` is an
//!     opaque token that only this thread dereferences). The caller copies them once, straight
//!     into its own `bytes` (`src/python/mod.rs`), and drops its buffer; the token then waits in
//!     the book. Lifetime, exactly: the object stays alive until *this* thread, attached to its
//!     own interpreter, decrefs it: at the start of the next job (`release_returned`), or when
//!     the worker ends for any reason (closed, idle timeout, abandoned after a kill or an
//!     interrupt: `AttachedWorker::end`). A buffer that is still alive when the worker ends (an
//!     outcome nobody took yet) gets its bytes copied into its loan first (`Loans::take_back`),
//!     so no buffer ever reads a dead interpreter's memory and no worker waits for a caller.
//!     A `memoryview` or numpy value may be written or kept by the job, so its bytes are copied
//!     out into host memory (`HostBuffer`), which the caller then uses as is.
//!
//!     Every large copy of rules 9 and 10 (the worker's `bytes` of an argument, a value copied
//!     out, the caller's copy of a lent `bytes`) goes through [`large_copy`], which may hand half
//!     of it to a helper thread. That changes no lifetime above: `copy_to_fresh` returns only
//!     once both halves are copied and the helper has let go of both ranges, so a copy still
//!     happens entirely within the step that makes it (under the loan's lock, before the
//!     worker detaches), and the helper never touches a Python object or an interpreter.
//! 11. **An interrupted interpreter is kept.** No interrupt is injected while a job is being
//!     loaded (unpickling imports modules and the main script, and an import cut short leaves
//!     half-initialized modules behind): `running_seq` names the job only once its function is
//!     called, and a job whose interrupt was claimed meanwhile is not called. After the job the
//!     worker clears a still-pending injected exception under its GIL
//!     (`PyThreadState_SetAsyncExc(NULL)`); no interrupter injects afterwards (it checks
//!     `running_seq` under the same GIL); and the worker loop's `intact` confirms that no import
//!     the function itself made was cut short. Only then is it reused; an exception that escaped
//!     the loop itself ends it. Ending an interpreter costs 1.7–8.6 MiB of arenas on 3.13
//!     (docs/limits.md).
//! 12. **A lent `bytes` that only its token still reaches is given to the caller, not copied.**
//!     After each job, once the job's own references are gone (its loaded tuple, its result, the
//!     worker loop's frames), the worker marks every lent `bytes` whose refcount is 1 (the token)
//!     and whose size is at least `BUFFER_THRESHOLD` as given up (`Loans::mark_given_up`). Nothing
//!     of its interpreter can reach such an object again: a `bytes` is found only through a
//!     reference (it is not tracked by the GC and takes no weak references). The caller, holding
//!     the only buffer over it, then takes the token out of the loan (`Buffer::take_given_up`,
//!     under the loan's lock, so neither the worker's release nor its `take_back` sees it again)
//!     and adopts the reference in its own interpreter (`python_buffers::lent_bytes`). That is
//!     sound because an exact `bytes` has no state of its interpreter: its type is the static,
//!     immortal `PyBytes_Type` that all interpreters share, it holds no other object, and from
//!     512 bytes on (pymalloc's largest block) it is one block of raw memory (`PyMem_RawMalloc`),
//!     which any interpreter's `PyObject_Free` hands back to `PyMem_RawFree`. Only the allocator's
//!     per-interpreter block counts (`sys.getallocatedblocks()`) see it move: one block more in the
//!     worker's, one less in the caller's. A result the caller does not take this way (a clone of
//!     its buffer lives, the worker ended first, a Rust caller reads it) is copied as in rule 10.

#![allow(unsafe_code)]

use std::{
    ffi::{c_char, c_long, c_ulong, CStr, CString},
    marker::PhantomData,
    mem::ManuallyDrop,
    ops::{Deref, DerefMut},
    ptr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock, PoisonError,
    },
    time::{Duration, Instant},
};

use pyo3_ffi as ffi;

use super::{Shared, WORKER_LOOP_SOURCE};
use crate::{
    attached::Attached,
    large_copy,
    mailbox::{check_memory, Ran, Serve},
    protocol::{self, AfterJob, RETIRE_FAILED},
    Broken, Buffer, Completion, Finished, Job, Loans, Outcome, Retire, Stage, WorkerConfig,
};

extern "C" {
    /// Prints the attached interpreter's object allocator statistics (`sys._debugmallocstats`);
    /// returns 0 if that allocator is not pymalloc. Exported by every CPython >= 3.3.
    fn _PyObject_DebugMallocStats(out: *mut libc::FILE) -> std::ffi::c_int;
}

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
    // SAFETY: the runtime is initialized, and the threads that start workers (hosts, the main
    // interpreter's) attach no subinterpreter.
    let py = unsafe { Attached::main() };
    // SAFETY: attached (`py`); the module is released before `py` is dropped.
    let result = unsafe {
        let module = ffi::PyImport_ImportModule(c"datetime".as_ptr());
        if module.is_null() {
            Err(format!(
                "importing datetime in the main interpreter failed: {}",
                take_error(&py)
            ))
        } else {
            ffi::Py_DECREF(module);
            Ok(())
        }
    };
    drop(py);
    if result.is_ok() {
        READY.store(true, Ordering::Release);
    }
    result
}

/// Takes the current exception of the attached interpreter and renders it as `Type: message`.
pub(crate) fn take_error(_py: &Attached<'_>) -> String {
    // SAFETY: attached (`_py`); every object used here belongs to the attached interpreter and is
    // released before returning.
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
/// `obj` must be a live object of the attached interpreter.
unsafe fn bytes_to_vec(_py: &Attached<'_>, obj: *mut ffi::PyObject) -> Option<Vec<u8>> {
    // SAFETY: attached (`_py`), `obj` per the caller; PyBytes_AsString checks the type and sets
    // an error otherwise.
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

/// One live isolated interpreter, owned by the thread that created it (rule 1), detached unless
/// an [`AttachedWorker`] of it lives.
struct Interpreter {
    tstate: *mut ffi::PyThreadState,
    interp: *mut ffi::PyInterpreterState,
    module: *mut ffi::PyObject,
    setup: *mut ffi::PyObject,
    load: *mut ffi::PyObject,
    call: *mut ffi::PyObject,
    after_job: *mut ffi::PyObject,
    intact: *mut ffi::PyObject,
    /// The `CallerBuffer` type of this interpreter (rule 9).
    caller_buffer: *mut ffi::PyObject,
    /// The `bytes` results lent to callers (rule 10); each token is a strong reference to one.
    loans: Arc<Loans>,
}

/// This thread attached to its worker's interpreter: the worker loop's functions are its methods.
/// Made only by [`Interpreter::attach`], which borrows the interpreter mutably, so a thread
/// cannot attach it twice; dropping it detaches.
struct AttachedWorker<'i> {
    interpreter: &'i mut Interpreter,
    py: Attached<'i>,
}

impl Deref for AttachedWorker<'_> {
    type Target = Interpreter;

    fn deref(&self) -> &Interpreter {
        self.interpreter
    }
}

impl DerefMut for AttachedWorker<'_> {
    fn deref_mut(&mut self) -> &mut Interpreter {
        self.interpreter
    }
}

/// What [`AttachedWorker::load_job`] made of a payload.
enum Loaded<'w> {
    /// The job, ready to call.
    Job(LoadedJob<'w>),
    /// It could not be loaded: the outcome.
    Done(Finished),
}

/// An owned reference to a loaded job's `(fn, args, protocol_5)` tuple, released when dropped
/// uncalled. It cannot outlive the [`AttachedWorker`] that loaded it, so its interpreter is
/// attached whenever it is released.
struct LoadedJob<'w> {
    tuple: *mut ffi::PyObject,
    _attached: PhantomData<&'w Attached<'w>>,
}

impl Drop for LoadedJob<'_> {
    fn drop(&mut self) {
        // SAFETY: an owned reference of the interpreter that is attached while `'w` lasts.
        unsafe { ffi::Py_DECREF(self.tuple) }
    }
}

impl Interpreter {
    /// Creates the interpreter and loads the worker loop; it is left detached.
    ///
    /// # Safety
    /// Python must be initialized, and this thread must have no thread state of its own.
    unsafe fn create() -> Result<Self, String> {
        // SAFETY: per the caller.
        let tstate = unsafe { new_isolated_interpreter()? };
        let mut this = Self {
            tstate,
            // SAFETY: a live thread state.
            interp: unsafe { ffi::PyThreadState_GetInterpreter(tstate) },
            module: ptr::null_mut(),
            setup: ptr::null_mut(),
            load: ptr::null_mut(),
            call: ptr::null_mut(),
            after_job: ptr::null_mut(),
            intact: ptr::null_mut(),
            caller_buffer: ptr::null_mut(),
            loans: Arc::new(Loans::new()),
        };
        let mut worker = this.attach();
        if let Err(reason) = worker.load_worker_loop() {
            worker.end();
            return Err(reason);
        }
        drop(worker);
        Ok(this)
    }

    /// Attaches this thread to the interpreter until the guard is dropped. Safe: an
    /// `Interpreter` is `!Send`, so this is the thread that created it (rule 1), which attaches
    /// no other thread state while it lives.
    fn attach(&mut self) -> AttachedWorker<'_> {
        // SAFETY: as above: the thread's own, detached thread state of a live interpreter, and
        // no other attached (the `&mut` borrow rules out attaching this one twice).
        let py = unsafe { Attached::restore(self.tstate) };
        AttachedWorker {
            interpreter: self,
            py,
        }
    }

    /// Releases everything and ends the interpreter; this thread is left with no thread state.
    ///
    /// # Safety
    /// No interrupter is or will be attached to it: its [`InterpreterHandle`] is gone (rule 6).
    unsafe fn end(mut self) {
        self.attach().end();
    }
}

/// Creates an isolated interpreter (rule 2) and returns its thread state, detached: this thread's
/// own from now on.
///
/// # Safety
/// Python must be initialized, and this thread must have no thread state attached.
unsafe fn new_isolated_interpreter() -> Result<*mut ffi::PyThreadState, String> {
    // Creating needs a main-interpreter thread state attached: a temporary one, deleted before
    // returning (kept, it would make SetAsyncExc from the main interpreter hit it instead of
    // failing). No lock of ours is held (rule 4).
    // SAFETY: per the caller; the main interpreter is never finalized while interpool runs.
    let main = unsafe { Attached::temporary(ffi::PyInterpreterState_Main()) }
        .ok_or("could not allocate a thread state")?;
    let main_tstate = main
        .temporary_thread_state()
        .expect("a temporary thread state");
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
    // SAFETY: attached (`main`). On failure CPython re-attaches `main`'s thread state; on success
    // it attaches the new one (and releases the main GIL), which is swapped for `main`'s again
    // below, so that dropping `main` deletes it as the current thread state.
    unsafe {
        let status = ffi::Py_NewInterpreterFromConfig(&mut tstate, &config);
        if ffi::PyStatus_Exception(status) != 0 {
            let reason = if status.err_msg.is_null() {
                "unknown error".to_owned()
            } else {
                CStr::from_ptr(status.err_msg)
                    .to_string_lossy()
                    .into_owned()
            };
            drop(main);
            return Err(format!("Py_NewInterpreterFromConfig failed: {reason}"));
        }
        ffi::PyEval_SaveThread();
        ffi::PyEval_RestoreThread(main_tstate);
    }
    drop(main);
    Ok(tstate)
}

impl AttachedWorker<'_> {
    /// Loads the worker loop into the interpreter's fields, which own the references until
    /// [`AttachedWorker::end`].
    fn load_worker_loop(&mut self) -> Result<(), String> {
        let code = worker_loop_code(&self.py)?;
        // SAFETY: attached (`self`); `code` is a new reference of this interpreter, released here.
        unsafe {
            self.module = ffi::PyImport_ExecCodeModule(c"_interpool_worker".as_ptr(), code);
            ffi::Py_DECREF(code);
            if self.module.is_null() {
                return Err(format!(
                    "loading the worker loop failed: {}",
                    take_error(&self.py)
                ));
            }
            let module = self.module;
            let get = |name: &CStr| ffi::PyObject_GetAttrString(module, name.as_ptr());
            self.setup = get(c"setup");
            self.load = get(c"load");
            self.call = get(c"call");
            self.after_job = get(c"after_job");
            self.intact = get(c"intact");
        }
        if [
            self.setup,
            self.load,
            self.call,
            self.after_job,
            self.intact,
        ]
        .iter()
        .any(|f| f.is_null())
        {
            return Err(format!(
                "the worker loop is incomplete: {}",
                take_error(&self.py)
            ));
        }
        self.caller_buffer = new_caller_buffer_type(&self.py);
        if self.caller_buffer.is_null() {
            return Err(format!(
                "creating the CallerBuffer type failed: {}",
                take_error(&self.py)
            ));
        }
        Ok(())
    }

    /// Runs the worker loop's `setup` (sys.path, argv, main script, `init`).
    fn setup(&self, config: &[u8]) -> Result<(), Broken> {
        let arg = new_bytes(&self.py, config);
        if arg.is_null() {
            let reason = format!("could not pass the setup: {}", take_error(&self.py));
            return Err(broken(Stage::Setup, reason));
        }
        // SAFETY: attached (`self`); every new reference is released here.
        unsafe {
            let result = ffi::PyObject_CallOneArg(self.setup, arg);
            ffi::Py_DECREF(arg);
            if result.is_null() {
                let reason = format!("the worker setup failed: {}", take_error(&self.py));
                return Err(broken(Stage::Setup, reason));
            }
            // None, or (SETUP_FAILED | INIT_FAILED, reason: str, exception records: bytes).
            let outcome = if result == ffi::Py_None() {
                Ok(())
            } else {
                let kind = ffi::PyLong_AsLong(ffi::PyTuple_GetItem(result, 0));
                let reason = ffi::PyTuple_GetItem(result, 1);
                let reason_utf8 = if reason.is_null() {
                    ptr::null()
                } else {
                    ffi::PyUnicode_AsUTF8AndSize(reason, ptr::null_mut())
                };
                let reason = if reason_utf8.is_null() {
                    &b"the worker setup failed"[..]
                } else {
                    CStr::from_ptr(reason_utf8).to_bytes()
                };
                let records = ffi::PyTuple_GetItem(result, 2);
                let records = if records.is_null() {
                    None
                } else {
                    bytes_to_vec(&self.py, records)
                };
                let reply = u8::try_from(kind).ok().and_then(|kind| {
                    protocol::setup_reply(kind, reason, records.unwrap_or_default())
                });
                ffi::PyErr_Clear();
                match reply {
                    Some(Err(broken)) => Err(broken),
                    Some(Ok(())) | None => Err(broken(
                        Stage::Setup,
                        "the worker loop's setup returned a malformed reply",
                    )),
                }
            };
            ffi::Py_DECREF(result);
            outcome
        }
    }

    /// Unpickles a job through the worker loop's `load` (imports included: no interrupt is
    /// injected meanwhile, rule 11).
    fn load_job(&self, payload: &[u8], buffers: &[Buffer]) -> Loaded<'_> {
        let arg = new_bytes(&self.py, payload);
        if arg.is_null() {
            let reason = format!(
                "could not pass the job to the worker: {}",
                take_error(&self.py)
            );
            return Loaded::Done(broken_finished(Stage::Job, reason));
        }
        // SAFETY: attached (`self`); every new reference is released here or handed over in
        // `Loaded::Job`.
        unsafe {
            let result = if buffers.is_empty() {
                ffi::PyObject_CallOneArg(self.load, arg)
            } else {
                let views = self.caller_views(buffers);
                if views.is_null() {
                    ffi::Py_DECREF(arg);
                    let reason = format!(
                        "could not pass the job's buffers to the worker: {}",
                        take_error(&self.py)
                    );
                    return Loaded::Done(broken_finished(Stage::Job, reason));
                }
                let result = ffi::PyObject_CallFunctionObjArgs(
                    self.load,
                    arg,
                    views,
                    ptr::null_mut::<ffi::PyObject>(),
                );
                ffi::Py_DECREF(views);
                result
            };
            ffi::Py_DECREF(arg);
            if result.is_null() {
                let reason = format!(
                    "the worker loop failed to load the job: {}",
                    take_error(&self.py)
                );
                return Loaded::Done(broken_finished(Stage::Job, reason));
            }
            // `(fn, args, protocol_5)`, or a 4-tuple outcome.
            if ffi::PyTuple_Size(result) == 3 {
                return Loaded::Job(LoadedJob {
                    tuple: result,
                    _attached: PhantomData,
                });
            }
            let finished = parse_run_result(&self.py, result, &self.loans);
            ffi::Py_DECREF(result);
            Loaded::Done(finished.map_or_else(
                || {
                    ffi::PyErr_Clear();
                    broken_finished(Stage::Job, "the worker loop returned a malformed outcome")
                },
                |(finished, _)| finished,
            ))
        }
    }

    /// Calls a loaded job through the worker loop's `call`; also says whether `after_job` must
    /// run.
    fn call_job(&self, job: LoadedJob<'_>) -> (Finished, bool) {
        let job = ManuallyDrop::new(job);
        // SAFETY: attached (`self`); the job's reference is consumed here, every new reference is
        // released here, and the outcome is copied out before returning (rule 3).
        unsafe {
            let result = ffi::PyObject_Call(self.call, job.tuple, ptr::null_mut());
            ffi::Py_DECREF(job.tuple);
            if result.is_null() {
                // Only an exception injected by an interrupt escapes `call`; the worker then
                // ends (rule 11).
                let reason = format!("the job was interrupted ({})", take_error(&self.py));
                return (broken_finished(Stage::Interrupted, reason), false);
            }
            let finished = parse_run_result(&self.py, result, &self.loans);
            ffi::Py_DECREF(result);
            finished.unwrap_or_else(|| {
                ffi::PyErr_Clear();
                let reason = "the worker loop returned a malformed outcome";
                (broken_finished(Stage::Job, reason), false)
            })
        }
    }

    /// Drops an interrupt that raced with the job's end, still pending on this thread (rule 11).
    fn clear_pending_interrupt(&self) {
        // SAFETY: attached (`self`): this thread's own thread state, in its own interpreter.
        unsafe {
            ffi::PyThreadState_SetAsyncExc(
                ffi::PyThread_get_thread_ident() as c_long,
                ptr::null_mut(),
            );
        }
    }

    /// Runs the worker loop's `after_job` (the `retire` hook): its verdict, as
    /// [`protocol::after_job_reply`] reads it.
    fn after_job(&self) -> AfterJob {
        // SAFETY: attached (`self`); the result and its items are read and released here.
        unsafe {
            let result = ffi::PyObject_CallNoArgs(self.after_job);
            if result.is_null() {
                // An exception escaped the hook's own handler (an interrupt of the earlier job
                // delivered late): the worker cannot vouch for its state.
                ffi::PyErr_Clear();
                return AfterJob::Retire;
            }
            let verdict = ffi::PyLong_AsLong(ffi::PyTuple_GetItem(result, 0));
            let records = if verdict == c_long::from(RETIRE_FAILED) {
                bytes_to_vec(&self.py, ffi::PyTuple_GetItem(result, 1))
            } else {
                None
            };
            let after = u8::try_from(verdict).ok().and_then(|verdict| {
                protocol::after_job_reply(verdict, records.unwrap_or_default())
            });
            ffi::PyErr_Clear();
            ffi::Py_DECREF(result);
            after.unwrap_or(AfterJob::Retire)
        }
    }

    /// Whether the worker loop's `intact` vouches for the interpreter after an interrupt.
    fn intact(&self) -> bool {
        // SAFETY: attached (`self`); the result is released here.
        unsafe {
            let result = ffi::PyObject_CallNoArgs(self.intact);
            if result.is_null() {
                ffi::PyErr_Clear();
                return false;
            }
            let intact = result == ffi::Py_True();
            ffi::Py_DECREF(result);
            intact
        }
    }

    /// The bytes in the arenas of this interpreter's own object allocator (what ending it would
    /// free, on 3.14; what 3.13 keeps), from `_PyObject_DebugMallocStats`. `None` if the
    /// allocator is not pymalloc or the figure cannot be read.
    fn allocator_bytes(&self) -> Option<u64> {
        let mut buffer: *mut c_char = ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: open_memstream owns `buffer` until fclose, which sets it (and `size`) to the
        // text written; the text is copied out and the buffer freed with free(3) as it requires.
        // The statistics are those of the attached interpreter (`self`).
        unsafe {
            let out = libc::open_memstream(&mut buffer, &mut size);
            if out.is_null() {
                return None;
            }
            let printed = _PyObject_DebugMallocStats(out);
            libc::fclose(out);
            if buffer.is_null() {
                return None;
            }
            let text = std::slice::from_raw_parts(buffer as *const u8, size);
            let bytes = (printed != 0).then(|| arena_bytes(text)).flatten();
            libc::free(buffer.cast());
            bytes
        }
    }

    /// A list of read-only memoryviews over `buffers` (rule 9), or NULL with an error set.
    fn caller_views(&self, buffers: &[Buffer]) -> *mut ffi::PyObject {
        // SAFETY: attached (`self`); `caller_buffer` is this interpreter's CallerBuffer type,
        // whose instances are laid out as `CallerBufferObject`; each instance owns its clone of
        // the buffer from here until its dealloc.
        unsafe {
            let list = ffi::PyList_New(buffers.len() as ffi::Py_ssize_t);
            if list.is_null() {
                return list;
            }
            for (i, buffer) in buffers.iter().enumerate() {
                if buffer.is_rebuilt_as_bytes() {
                    // Its one copy, which `bytes(buffer)` in the pickle would make anyway.
                    let bytes = new_bytes(&self.py, buffer.as_slice());
                    if bytes.is_null() {
                        ffi::Py_DECREF(list);
                        return ptr::null_mut();
                    }
                    ffi::PyList_SET_ITEM(list, i as ffi::Py_ssize_t, bytes);
                    continue;
                }
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

    /// Gives up the lent results that nothing of this interpreter reaches any more but their
    /// token, so that their callers take them instead of copying them (rule 12). Called once the
    /// job's own references are gone: its loaded tuple, its result, the worker loop's frames.
    fn give_up_sole_results(&self) {
        // SAFETY: attached (`self`); each token is a strong reference to an exact `bytes` of this
        // interpreter (`take_out_buffers`), whose refcount we may read. Accepted only when ours
        // is the last reference and it is large enough to be one block of raw memory (rule 12).
        unsafe {
            self.loans.mark_given_up(|token| {
                let bytes = token as *mut ffi::PyObject;
                ffi::Py_REFCNT(bytes) == 1
                    && ffi::PyBytes_Size(bytes) as usize >= protocol::BUFFER_THRESHOLD
            })
        }
    }

    /// Drops the results whose callers have copied them (rule 10).
    fn release_returned(&self) {
        // SAFETY: attached (`self`); each token is a strong reference of this interpreter, given
        // back once (`Loans`).
        self.loans
            .release_returned(|token| unsafe { ffi::Py_DECREF(token as *mut ffi::PyObject) });
    }

    /// Releases everything and ends the interpreter; this thread is left with no thread state,
    /// so the guard is consumed without detaching.
    fn end(self) {
        let Self { interpreter, py } = self;
        let objects = [
            interpreter.intact,
            interpreter.after_job,
            interpreter.call,
            interpreter.load,
            interpreter.setup,
            interpreter.module,
            interpreter.caller_buffer,
        ];
        // SAFETY: attached (`py`) to this thread's own thread state (rule 1); references are
        // dropped before the interpreter that owns them is ended, and Py_EndInterpreter leaves
        // no thread state to detach. A lent result still read is copied into its loan first
        // (rule 10).
        unsafe {
            interpreter
                .loans
                .take_back(|token| ffi::Py_DECREF(token as *mut ffi::PyObject));
            for obj in objects {
                if !obj.is_null() {
                    ffi::Py_DECREF(obj);
                }
            }
            ffi::Py_EndInterpreter(interpreter.tstate);
        }
        std::mem::forget(py);
    }
}

/// The worker loop's marshalled code object, made by the first worker of the process: unmarshalling
/// it costs ~0.1 ms where compiling the source costs ~2.5 ms per worker. Plain bytes (rule 3).
static WORKER_LOOP_MARSHALLED: OnceLock<Vec<u8>> = OnceLock::new();

/// A new reference to the worker loop's code object, in the attached interpreter.
fn worker_loop_code(py: &Attached<'_>) -> Result<*mut ffi::PyObject, String> {
    // SAFETY: attached (`py`); the code object is a new reference of its interpreter, and the
    // marshal string is released before returning.
    unsafe {
        if let Some(marshalled) = WORKER_LOOP_MARSHALLED.get() {
            let code = ffi::PyMarshal_ReadObjectFromString(
                marshalled.as_ptr() as *const c_char,
                marshalled.len() as ffi::Py_ssize_t,
            );
            if code.is_null() {
                return Err(format!(
                    "unmarshalling the worker loop failed: {}",
                    take_error(py)
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
                take_error(py)
            ));
        }
        // Not get_or_init: no thread waits on another here. Two first workers both compile, and
        // both marshal the same code.
        let marshalled = ffi::PyMarshal_WriteObjectToString(code, ffi::Py_MARSHAL_VERSION);
        if marshalled.is_null() {
            ffi::PyErr_Clear(); // the next worker compiles again
        } else {
            if let Some(bytes) = bytes_to_vec(py, marshalled) {
                let _ = WORKER_LOOP_MARSHALLED.set(bytes);
            }
            ffi::Py_DECREF(marshalled);
        }
        Ok(code)
    }
}

/// A new `bytes` of the attached interpreter holding a copy of `data`, or NULL with an error set.
fn new_bytes(_py: &Attached<'_>, data: &[u8]) -> *mut ffi::PyObject {
    // SAFETY: attached (`_py`); a `bytes` made from NULL has `len` uninitialized bytes of its
    // own, all written here before anyone sees the object.
    unsafe {
        let bytes = ffi::PyBytes_FromStringAndSize(ptr::null(), data.len() as ffi::Py_ssize_t);
        if !bytes.is_null() {
            let start = ffi::PyBytes_AsString(bytes).cast::<u8>();
            large_copy::copy_to_fresh(start, data);
        }
        bytes
    }
}

/// A `CallerBuffer` instance: a Python object of a worker interpreter exporting a job's buffer,
/// read-only (rule 9).
#[repr(C)]
struct CallerBufferObject {
    ob_base: ffi::PyObject,
    /// Owned: made in [`AttachedWorker::caller_views`], dropped in [`caller_buffer_dealloc`].
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
fn new_caller_buffer_type(_py: &Attached<'_>) -> *mut ffi::PyObject {
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
    // SAFETY: attached (`_py`); CPython copies what it keeps of `spec` and `slots`.
    unsafe { ffi::PyType_FromSpec(&mut spec) }
}

/// Copies the contiguous buffer `obj` exports into host memory (rule 10).
///
/// # Safety
/// `obj` must be a live object of the attached interpreter.
unsafe fn copy_out_buffer(_py: &Attached<'_>, obj: *mut ffi::PyObject) -> Option<Buffer> {
    // SAFETY: attached (`_py`), `obj` per the caller; the view is released before returning,
    // after the copy.
    unsafe {
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        if ffi::PyObject_GetBuffer(obj, view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
            return None;
        }
        let mut view = view.assume_init();
        let len = view.len as usize;
        let mut data = Vec::<u8>::with_capacity(len);
        large_copy::copy_to_fresh(
            data.as_mut_ptr(),
            std::slice::from_raw_parts(view.buf as *const u8, len),
        );
        data.set_len(len);
        ffi::PyBuffer_Release(&mut view);
        Some(Buffer::from_vec(data))
    }
}

/// The outcome buffers of `run`'s result (a list of buffer objects, or None): each `bytes` is
/// lent in place, anything else copied out (rule 10).
///
/// # Safety
/// `list` must be a live object of the attached interpreter, or NULL; `loans` is that
/// interpreter's book.
unsafe fn take_out_buffers(
    py: &Attached<'_>,
    list: *mut ffi::PyObject,
    loans: &Arc<Loans>,
) -> Option<Vec<Buffer>> {
    // SAFETY: attached (`py`), `list` per the caller; PyList_GetItem returns borrowed references.
    // A lent `bytes` is immutable and its new reference keeps it (and its bytes) alive until the
    // token comes back to this interpreter's thread (`AttachedWorker::release_returned`, `end`).
    unsafe {
        if list.is_null() || list == ffi::Py_None() {
            return Some(Vec::new());
        }
        let len = ffi::PyList_Size(list);
        if len < 0 {
            return None;
        }
        (0..len)
            .map(|i| {
                let item = ffi::PyList_GetItem(list, i);
                if ffi::PyBytes_CheckExact(item) == 0 {
                    return copy_out_buffer(py, item);
                }
                let data = ffi::PyBytes_AsString(item).cast::<u8>().cast_const();
                let size = ffi::PyBytes_Size(item) as usize;
                ffi::Py_INCREF(item);
                Some(loans.lend(data, size, item as usize))
            })
            .collect()
    }
}

/// `N arenas * 1048576 bytes/arena = 2,097,152` in `_PyObject_DebugMallocStats`'s text.
fn arena_bytes(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().find(|l| l.contains(" bytes/arena "))?;
    let total = line.rsplit('=').next()?;
    total.trim().replace(',', "").parse().ok()
}

/// Reads `(kind: int, data: bytes, verdict: int, buffers: list | None)`, the reply to a job
/// (its buffers lent or copied out, rule 10), as [`protocol::job_reply`] says: the outcome, and
/// whether `after_job` must run.
///
/// # Safety
/// `result` must be a live object of the attached interpreter.
unsafe fn parse_run_result(
    py: &Attached<'_>,
    result: *mut ffi::PyObject,
    loans: &Arc<Loans>,
) -> Option<(Finished, bool)> {
    // SAFETY: attached (`py`), `result` per the caller; PyTuple_GetItem returns borrowed
    // references (or NULL with an error set, which the caller clears).
    unsafe {
        let kind = ffi::PyLong_AsLong(ffi::PyTuple_GetItem(result, 0));
        let data = bytes_to_vec(py, ffi::PyTuple_GetItem(result, 1))?;
        let verdict = ffi::PyLong_AsLong(ffi::PyTuple_GetItem(result, 2));
        let buffers = take_out_buffers(py, ffi::PyTuple_GetItem(result, 3), loans)?;
        protocol::job_reply(
            u8::try_from(kind).ok()?,
            u8::try_from(verdict).ok()?,
            data,
            buffers,
        )
    }
}

fn broken(stage: Stage, reason: impl Into<String>) -> Broken {
    Broken::new(stage, reason)
}

fn broken_finished(stage: Stage, reason: impl Into<String>) -> Finished {
    Finished {
        outcome: Outcome::Broken(broken(stage, reason)),
        retire: Retire::Retire,
    }
}

/// The body of a worker thread: create the interpreter, serve jobs through the mailbox's serve
/// loop until closed, idle or ending, end the interpreter.
pub(crate) fn worker_thread(shared: Arc<Shared>, config: Arc<WorkerConfig>) {
    shared.mailbox.register_worker_thread();
    let running_seq = Arc::new(AtomicU64::new(NO_JOB));
    // SAFETY: Python is initialized (start() checked it via prepare_main_interpreter) and this
    // fresh thread has no thread state.
    let created = unsafe { Interpreter::create() };
    let (interpreter, startup_error) = match created {
        Ok(mut interpreter) => {
            let startup_error = interpreter.attach().setup(&config.setup).err();
            (Some(interpreter), startup_error)
        }
        Err(reason) => (
            None,
            Some(broken(
                Stage::Start,
                format!("could not create the interpreter: {reason}"),
            )),
        ),
    };
    // Detached from here on, but while a job or the retire hook runs.
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

    let mut worker = WorkerThread {
        shared: &shared,
        interpreter,
        startup_error,
        running_seq,
        intact: true,
    };
    shared.mailbox.serve(&config, &mut worker);
    let interpreter = worker.interpreter.take();

    *shared
        .interpreter
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    if let Some(interpreter) = interpreter {
        // SAFETY: the interpreter handle is gone, so no interrupter is or will be attached
        // (rule 6).
        unsafe { interpreter.end() };
    }
    shared.mark_ended();
}

/// A worker thread and its interpreter, as the serve loop drives them.
struct WorkerThread<'s> {
    shared: &'s Shared,
    /// `None` if it could not be created.
    interpreter: Option<Interpreter>,
    /// Why it cannot serve, if it did not start.
    startup_error: Option<Broken>,
    running_seq: Arc<AtomicU64>,
    /// No import of the last job was cut short (checked only after an interrupt).
    intact: bool,
}

impl Serve for WorkerThread<'_> {
    fn run(&mut self, job: Job, completion: &Completion) -> Ran {
        let (Some(interpreter), None) = (&mut self.interpreter, &self.startup_error) else {
            let error = self
                .startup_error
                .clone()
                .unwrap_or_else(|| broken(Stage::Start, "no interpreter"));
            return Ran::ending(error);
        };
        let seq = self.shared.submitted_seq.load(Ordering::Acquire);
        let worker = interpreter.attach();
        worker.release_returned();
        // Checked and set under this GIL, which interrupters also hold while they look at
        // `running_seq`: an interrupt claimed before (even while the interpreter was still being
        // created) is seen here; one claimed after finds the job running.
        let not_started = || {
            let reason = "the job was interrupted before it started";
            let finished = Finished {
                outcome: Outcome::Broken(broken(Stage::Interrupted, reason)),
                retire: Retire::Keep,
            };
            (finished, false)
        };
        let (finished, after_job) = if completion.interrupt_claimed() {
            not_started()
        } else {
            // Loaded while `running_seq` says no job runs: an interrupt claimed meanwhile waits
            // for the function to start, and so stops it before it does.
            match worker.load_job(&job.payload, &job.buffers) {
                Loaded::Done(finished) => (finished, false),
                Loaded::Job(loaded) if completion.interrupt_claimed() => {
                    drop(loaded);
                    not_started()
                }
                Loaded::Job(loaded) => {
                    self.running_seq.store(seq, Ordering::Release);
                    let ran = worker.call_job(loaded);
                    self.running_seq.store(NO_JOB, Ordering::Release);
                    ran
                }
            }
        };
        // An interrupt that raced with the job's end is dropped here, under the GIL, so it cannot
        // hit a later job (rule 11; cpython#139622: 3.13 may deliver it late).
        worker.clear_pending_interrupt();
        worker.give_up_sole_results();
        // An interrupt claimed from now on cannot inject any more: checked only if one was
        // claimed before (rule 11).
        self.intact = !completion.interrupt_claimed() || worker.intact();
        drop(worker);
        // The job's own clone of the caller's buffers goes now, detached, after the job returned
        // and before the outcome is published (rule 9).
        drop(job);
        Ran {
            finished,
            after_job,
        }
    }

    fn interrupted(&mut self, ran: Ran) -> Ran {
        // Whatever it returned, the caller decided first; rule 11 says which interpreter stays.
        let retire = if self.intact {
            Retire::Keep
        } else {
            Retire::Retire
        };
        let finished = Finished {
            outcome: Outcome::Broken(broken(Stage::Interrupted, "the job was interrupted")),
            retire,
        };
        Ran {
            finished,
            after_job: ran.after_job,
        }
    }

    fn must_end(&self) -> bool {
        self.shared.abandoned.load(Ordering::Acquire)
    }

    fn after_job(&mut self, hook: bool, ending: bool, max_memory: Option<u64>) -> AfterJob {
        // A worker that ends anyway runs no hook: nothing it says would change that.
        let (Some(interpreter), false) = (&mut self.interpreter, ending) else {
            return AfterJob::Retire;
        };
        let worker = interpreter.attach();
        let after = if hook {
            worker.after_job()
        } else {
            AfterJob::Keep
        };
        check_memory(after, max_memory, || worker.allocator_bytes())
    }
}

/// How often an interrupter injects `KeyboardInterrupt` again while the job still runs, and for
/// how long at most.
const REINJECT_EVERY: Duration = Duration::from_millis(10);
const REINJECT_FOR: Duration = Duration::from_secs(5);

/// Injects `KeyboardInterrupt` into the job `seq` of this worker while it is still running it:
/// again every [`REINJECT_EVERY`], since an exception that lands in a `__del__` or a weakref
/// callback is swallowed there ("Exception ignored in ..."), until the job ends, the worker is
/// abandoned, or [`REINJECT_FOR`] passes. Runs on a helper thread; blocks until it gets the
/// worker's GIL.
pub(crate) fn interrupt(shared: &Shared, seq: u64) {
    let start = Instant::now();
    while inject(shared, seq)
        && !shared.abandoned.load(Ordering::Acquire)
        && start.elapsed() < REINJECT_FOR
    {
        std::thread::sleep(REINJECT_EVERY);
    }
}

/// One injection; returns whether the job `seq` was still running.
fn inject(shared: &Shared, seq: u64) -> bool {
    let handle = shared
        .interpreter
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(handle) = &*handle else {
        // Not created yet: the worker sees the claim before it runs the job. Or ending.
        return false;
    };
    // SAFETY: the handle's interpreter is alive while we hold its lock (rule 6), and this helper
    // thread has no thread state of its own.
    let Some(py) = (unsafe { Attached::temporary(handle.interp) }) else {
        return false;
    };
    let running = handle.running_seq.load(Ordering::Acquire) == seq;
    if running {
        // SAFETY: attached (`py`) to the target interpreter, whose threads SetAsyncExc searches.
        // KeyboardInterrupt is a static immortal type shared by all interpreters (rule 3).
        unsafe {
            ffi::PyThreadState_SetAsyncExc(
                handle.thread_ident as c_long,
                ffi::PyExc_KeyboardInterrupt,
            );
        }
    }
    drop(py);
    running
}
