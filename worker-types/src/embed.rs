//! Embedding CPython for a Rust host (`interpool::Pool`): initializing the interpreter once, and
//! asking it where its installation lives; and, for every host, which CPython is linked in.
//!
//! # Invariants
//!
//! 1. **Initialize at most once, and only if nobody did.** If the interpreter is already running
//!    (the host initialized it with PyO3 or the C API, or interpool is loaded as the Python
//!    extension module) it is left alone: its owner keeps the main thread state, and must have
//!    released the GIL before workers start (subinterpreter creation takes the main GIL).
//! 2. **After initializing, release the GIL at once** (`PyEval_SaveThread`), from the thread that
//!    initialized, and never take the saved thread state back: from then on every thread reaches the
//!    main interpreter through `PyGILState_Ensure`/`Release` (an [`Attached::main`] guard), so
//!    nothing here holds the GIL across a return to the host.
//! 3. **Never finalize.** `Py_FinalizeEx` with a subinterpreter alive aborts the process; a Rust host
//!    has no natural point where it knows every pool is gone, so the embedded interpreter lives
//!    until the process exits. `interpool::Pool::shutdown` ends a pool's workers; a host that
//!    finalizes Python itself must shut its pools down first.
//! 4. Signal handlers are not installed (`Py_InitializeEx(0)`): Ctrl-C stays the host's.
//! 5. PyO3's safe API is not used here (it is only for the extension module, see
//!    `crate::python_buffers`).
//! 6. **Ask the main interpreter only through an [`Attached::main`] guard**, on whatever thread
//!    builds a pool, leaving no exception set and no reference behind ([`python_executable`]).

#![allow(unsafe_code)]

use std::{
    ffi::CStr,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use pyo3_ffi as ffi;

use crate::attached::Attached;

/// Makes sure the embedded interpreter is running, initializing it if nobody has. Returns whether
/// this call initialized it.
pub fn ensure_initialized() -> bool {
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

/// The linked CPython's version text, as `sys.version` says it (`"3.13.0 (main, ...) [GCC ...]"`).
/// Needs no initialized interpreter.
pub(crate) fn version() -> String {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string; it may be called before
    // Py_Initialize, and from any thread.
    unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }
        .to_string_lossy()
        .into_owned()
}

/// The Python executable that process workers run when the host names none: `python{VERSION}`
/// (e.g. `python3.13`), else `python3`, in the embedded interpreter's
/// `sysconfig.get_config_var("BINDIR")`, i.e. the installation the crate was built and linked
/// against. Not `sys.executable` / `sys._base_executable`: in an embedded interpreter those are
/// derived from the host program. Found once per process (initializing the interpreter if
/// needed); the error says why there is none.
pub fn python_executable() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            ensure_initialized();
            let [bindir, version, exe] = config_vars([c"BINDIR", c"VERSION", c"EXE"]);
            let (Some(bindir), Some(version)) = (bindir, version) else {
                return Err("the embedded interpreter's sysconfig has no BINDIR or VERSION".into());
            };
            let exe = exe.unwrap_or_default();
            [format!("python{version}{exe}"), format!("python3{exe}")]
                .iter()
                .map(|name| Path::new(&bindir).join(name))
                .find(|path| is_executable(path))
                .ok_or_else(|| {
                    format!(
                        "neither python{version}{exe} nor python3{exe} is an executable in the \
                         embedded interpreter's BINDIR {bindir}; name one with \
                         PoolBuilder::python_executable"
                    )
                })
        })
        .clone()
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// `sysconfig.get_config_var(name)` for each name, from the main interpreter: `None` where it is
/// not a `str` (or anything failed). The interpreter must be initialized.
fn config_vars<const N: usize>(names: [&CStr; N]) -> [Option<String>; N] {
    // SAFETY: the interpreter is initialized (the caller made sure) and a thread that builds a
    // pool has no subinterpreter attached (rule 6).
    let py = unsafe { Attached::main() };
    // SAFETY: attached (`py`). Every object made here is released before `py` is dropped; a
    // failure clears its exception and yields None.
    let values = unsafe {
        let module = ffi::PyImport_ImportModule(c"sysconfig".as_ptr());
        let get = if module.is_null() {
            std::ptr::null_mut()
        } else {
            ffi::PyObject_GetAttrString(module, c"get_config_var".as_ptr())
        };
        let values = names.map(|name| {
            if get.is_null() {
                return None;
            }
            let key = ffi::PyUnicode_FromString(name.as_ptr());
            if key.is_null() {
                return None;
            }
            let value = ffi::PyObject_CallOneArg(get, key);
            ffi::Py_DECREF(key);
            if value.is_null() {
                return None;
            }
            let mut text = None;
            if ffi::PyUnicode_Check(value) != 0 {
                let mut len: ffi::Py_ssize_t = 0;
                let data = ffi::PyUnicode_AsUTF8AndSize(value, &mut len);
                if !data.is_null() {
                    let bytes = std::slice::from_raw_parts(
                        data.cast::<u8>(),
                        usize::try_from(len).unwrap_or(0),
                    );
                    text = std::str::from_utf8(bytes).ok().map(str::to_owned);
                }
            }
            ffi::Py_DECREF(value);
            text
        });
        ffi::Py_XDECREF(get);
        ffi::Py_XDECREF(module);
        ffi::PyErr_Clear();
        values
    };
    drop(py);
    values
}
