"""The loop inside every interpool worker interpreter.

Rust calls ``setup`` once, then ``run`` (or ``load`` and ``call``) once per job and, after the
job's outcome has been handed to the caller, ``after_job`` if ``run`` said the ``retire`` hook
must run (the caller never waits for it). Everything crosses as bytes: this module unpickles the
job, calls it, and pickles the outcome. It imports neither trio nor interpool (the
front end's extension module refuses to load in a subinterpreter); ``interpool/__init__.py`` sees
this module in ``sys.modules`` and stays import-safe for user scripts that ``import interpool``.

Large buffers travel out of band (pickle protocol 5, shared with ``interpool/_outcome.py``): a
job arrives as ``run(payload, buffers)``, ``buffers`` being memoryviews over the caller's memory
(subinterpreters: read-only, in place) or, in a process, ``bytes`` and memoryviews of private
mappings that the parent wrote (peer memory) or of shared memory,
and a value holding large buffers leaves as its pickle plus a list of its buffers
(``_dumps_value``).

The wire protocol's numbers (``VALUE``, ``KEEP``, ``MAX_BUFFERS``, ...) are not written here: the
host puts them in front of this source (``PYTHON_CONSTANTS`` in ``worker-types/src/protocol.rs``),
so that both kinds of worker and the host read one table.

Exception records (shared with ``interpool/_outcome.py``): a pickled list, the raised exception
first, each entry ``(pickled_exc | None, pickling_error | None, type_name, message,
formatted_traceback, import_name | None, cause_index | None, context_index | None,
suppress_context)``; ``import_name`` is an ``ImportError``'s ``name`` (``""`` when it has none),
None for other exceptions: with the type name and message, what AUTO's refusal classifier reads
(``src/auto.rs``).
"""

import sys
from _operator import methodcaller  # operator.py is this plus Python fallbacks


def _import_pickle():
    """The C pickler (``pickle.py`` imports re, struct, ...: ~4 ms per new worker), imported
    without ``functools`` where this interpreter has none yet. ``_pickle`` reads only
    ``functools.partial`` at import, which is ``_functools.partial``; the whole of functools would
    cost a new worker ``collections``, ``reprlib``, ``keyword``, ... (~2 ms). Only this thread runs
    here while the stand-in is in ``sys.modules``; should a CPython read more of it, the import
    fails and is done again with the real functools."""
    if "functools" in sys.modules:
        import _pickle

        return _pickle
    import _functools

    stand_in = type(sys)("functools")
    stand_in.partial = _functools.partial
    sys.modules["functools"] = stand_in
    try:
        import _pickle
    except Exception:
        del sys.modules["functools"]
        import _pickle
    finally:
        if sys.modules.get("functools") is stand_in:
            del sys.modules["functools"]
    return _pickle


pickle = _import_pickle()
HIGHEST_PROTOCOL = 5  # pickle.HIGHEST_PROTOCOL, which _pickle does not name
_MAX_CHAIN = 32
_SCANNED_ITEMS = 16
# array.array once this interpreter has imported ``array`` (``_know_array``): importing it costs a
# new worker ``collections`` (~2 ms; the module registers its type as a MutableSequence), and a
# value is an array only if something here imported the module.
array = None
_WRAPPABLE = frozenset((bytes, bytearray, memoryview))
_SCANNED = frozenset((tuple, list, dict))
# Values of these types hold no PickleBuffer (large bytes are _WRAPPABLE, checked by size).
_PLAIN = frozenset((int, float, str, bool, type(None), complex))
# What a module's import error says when it refuses to load in an isolated subinterpreter: the
# same list as worker-types' ``subinterpreter::REFUSALS`` (a Rust test keeps them equal).
REFUSALS = (
    "does not support loading in subinterpreters",
    "cannot load module more than once per process",
    "PyO3 modules do not yet support subinterpreters",
    "Interpreter change detected",
)

_retire = bool


class _OutOfBand:
    """Pickles a large ``bytes``, ``bytearray`` or ``array.array``, or a contiguous
    ``memoryview`` (which pickle refuses otherwise), as a protocol-5 buffer: pickle itself sends
    only ``PickleBuffer``s (numpy arrays, ...) out of band, and never asks a ``reducer_override``
    about ``bytes``. The loading side rebuilds the same type with builtins only."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __reduce_ex__(self, protocol):
        obj = self.obj
        kind = type(obj)
        if kind is array:
            return array, (obj.typecode,), pickle.PickleBuffer(obj), None, None, array.frombytes
        if kind is memoryview:
            if obj.ndim == 1 and obj.format == "B":
                return memoryview, (pickle.PickleBuffer(obj),)
            return methodcaller("cast", obj.format, obj.shape), (_OutOfBand(obj.cast("B")),)
        return kind, (pickle.PickleBuffer(obj),)


def _know_array():
    global array, _WRAPPABLE
    array = sys.modules["array"].array
    _WRAPPABLE = _WRAPPABLE | {array}


def _out_of_band(obj, wrapped):
    kind = type(obj)
    if kind is bytes or kind is bytearray or kind is array:
        size = len(obj) if kind is not array else len(obj) * obj.itemsize
    elif kind is memoryview and obj.c_contiguous and obj.ndim and len(obj.format) == 1:
        size = BUFFER_THRESHOLD  # always: pickle refuses memoryviews (small ones stay in band)
    else:
        return obj
    if size < BUFFER_THRESHOLD:
        return obj
    return wrapped.setdefault(id(obj), _OutOfBand(obj))


def _dumps_value(value):
    """``(pickle, buffers)``: ``value`` pickled with its large buffers out of band (``buffers``:
    contiguous ``"B"`` memoryviews, or None). Large ``bytes`` and friends are found as the value
    itself or the items of a short tuple, list or dict (deeper ones, and those of longer
    containers, stay in band: looking costs a call per item); ``PickleBuffer``s anywhere."""
    kind = type(value)
    if kind in _PLAIN or (kind is bytes and len(value) < BUFFER_THRESHOLD):
        # The hot path: no buffer_callback (it costs pickle ~0.6 µs), no call of _dumps.
        try:
            return pickle.dumps(value, 5), None
        except Exception:
            return _dumps(value), None  # pickle again, then cloudpickle
    if array is None and "array" in sys.modules:
        _know_array()
    if kind in _WRAPPABLE:
        value = _out_of_band(value, {})
        if type(value) is not _OutOfBand and kind is not memoryview:
            return _dumps(value), None  # a small bytes-like: no PickleBuffer in it
    elif kind in _SCANNED and len(value) <= _SCANNED_ITEMS:
        wrapped = {}
        wrappable = _WRAPPABLE
        if kind is dict:
            items = {
                key: _out_of_band(item, wrapped) if type(item) in wrappable else item
                for key, item in value.items()
            }
        else:
            items = kind(
                [_out_of_band(item, wrapped) if type(item) in wrappable else item for item in value]
            )
        if wrapped:
            value = items
    # Every PickleBuffer out of band first (a C callback: nothing more to pay on the hot path);
    # only if some were small is the value pickled again, keeping those in band.
    buffers = []
    data = _dumps5(value, buffers.append, buffers)
    if not buffers:
        return data, None
    views = [buffer.raw() for buffer in buffers]
    if len(views) <= MAX_BUFFERS and all(v.nbytes >= BUFFER_THRESHOLD for v in views):
        return data, _whole_bytes(views)
    views.clear()

    def large_only(buffer):
        raw = buffer.raw()
        if raw.nbytes < BUFFER_THRESHOLD or len(views) >= MAX_BUFFERS:
            return True
        views.append(raw)
        return False

    data = _dumps5(value, large_only, views)
    return data, _whole_bytes(views) if views else None


def _whole_bytes(views):
    """``views`` with each view of a whole ``bytes`` replaced by that ``bytes``: immutable, so a
    subinterpreter worker lends it to the caller instead of copying it out (ffi.rs, rule 10)."""
    return [
        view.obj if type(view.obj) is bytes and len(view.obj) == view.nbytes else view
        for view in views
    ]


def _dumps5(value, buffer_callback, collected):
    try:
        return pickle.dumps(value, 5, buffer_callback=buffer_callback)
    except Exception:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise  # pickle's own error: cloudpickle is optional
    collected.clear()  # what pickle collected before it failed
    return cloudpickle.dumps(value, 5, buffer_callback=buffer_callback)


def _loads_args(data, *buffers):
    """The arguments of the Rust ``Pool``'s ``call_pickled_with_buffers``: a protocol-5 pickle
    and the job's out-of-band buffers."""
    return pickle.loads(data, buffers=buffers)


def _dumps(obj):
    try:
        return pickle.dumps(obj, HIGHEST_PROTOCOL)
    except Exception:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise  # pickle's own error: cloudpickle is optional
        return cloudpickle.dumps(obj, HIGHEST_PROTOCOL)


def _cloudpickle():
    """cloudpickle if installed, else None (outside an ``except`` clause of the caller, so that
    a missing cloudpickle does not replace the pickling error the caller re-raises)."""
    try:
        import cloudpickle
    except ImportError:
        return None
    return cloudpickle


def _refused_import(exc):
    """Whether ``exc`` comes from a module that refused to load here while the job ran (a lazy
    ``import numpy`` in the function's body): an ImportError in its cause/context chain says so
    and was raised by an import itself (its innermost frame is at an import statement or in
    ``importlib``), not by a ``raise`` in user code that merely quotes the message."""
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(exc))
        if isinstance(exc, ImportError) and any(m in str(exc) for m in REFUSALS):
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None and _at_import(tb.tb_frame.f_code, tb.tb_lasti):
                return True
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return False


def _at_import(code, lasti):
    import opcode

    if code.co_filename.endswith(("importlib/__init__.py", "<frozen importlib._bootstrap>")):
        return True
    if not 0 <= lasti < len(code.co_code):
        return False
    return opcode.opname[code.co_code[lasti]] in ("IMPORT_NAME", "IMPORT_FROM")


def _format(exc, skip_frames):
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    try:
        import traceback  # on the first error only: ~3 ms of imports for a new worker

        return "".join(traceback.format_exception(type(exc), exc, tb, chain=False))
    except BaseException as error:  # the error path must not fail: no source lines then
        return f"{type(exc).__qualname__} (traceback unavailable: {type(error).__qualname__})\n"


def _exception_records(exc, skip_frames=0):
    records, seen = [], {}

    def visit(e, skip):
        if id(e) in seen:
            return seen[id(e)]
        if len(records) >= _MAX_CHAIN:
            return None
        index = seen[id(e)] = len(records)
        records.append(None)
        try:
            blob, pickling_error = _dumps(e), None
        except Exception as error:
            blob = None
            try:
                pickling_error = _dumps(error)
            except Exception:
                pickling_error = _dumps(TypeError(f"cannot pickle {type(e).__qualname__}"))
        try:
            message = str(e)
        except Exception:
            message = "<str() failed>"
        cause = visit(e.__cause__, 0) if e.__cause__ is not None else None
        context = visit(e.__context__, 0) if e.__context__ is not None else None
        records[index] = (
            blob,
            pickling_error,
            f"{type(e).__module__}.{type(e).__qualname__}",
            message,
            _format(e, skip),
            (e.name if isinstance(e.name, str) else "") if isinstance(e, ImportError) else None,
            cause,
            context,
            e.__suppress_context__,
        )
        return index

    visit(exc, skip_frames)
    return pickle.dumps(records, HIGHEST_PROTOCOL)


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


class _ParentMain:
    """Loads the parent's ``__main__`` script as ``__mp_main__`` on first use.

    Installed as ``__getattr__`` of this interpreter's own ``__main__``, so a job pickled as
    ``__main__.f`` finds ``f`` without loading the script for jobs that never need it.
    """

    def __init__(self, kind, ref):
        self.kind, self.ref, self.module = kind, ref, None

    def load(self):
        if self.module is None:
            import importlib.util
            import types

            module = types.ModuleType("__mp_main__")
            if self.kind == "path":
                module.__file__ = self.ref
                with open(self.ref, "rb") as f:
                    code = compile(f.read(), self.ref, "exec")
            else:
                spec = importlib.util.find_spec(self.ref)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot find the parent's main module {self.ref!r}")
                module.__spec__, module.__file__ = spec, spec.origin
                code = spec.loader.get_code(self.ref)
            module.__builtins__ = __builtins__
            sys.modules["__mp_main__"] = module
            try:
                exec(code, module.__dict__)
            except BaseException:
                del sys.modules["__mp_main__"]
                raise
            sys.modules["__main__"] = self.module = module
        return self.module

    def __call__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            module = self.load()
        except BaseException as exc:
            # Not an AttributeError, which pickle would turn into a misleading "Can't get
            # attribute": the script itself failed to load here.
            # name="__mp_main__" tells the parent that the worker cannot serve the script's
            # jobs at all: it raises BrokenWorkerError, as multiprocessing-based pools do.
            raise ImportError(
                f"loading the parent's main script {self.ref!r} in the worker failed: "
                f"{type(exc).__name__}: {exc} (workers run the script's module-level code: "
                "does it keep its entry point under `if __name__ == '__main__':`?)",
                name="__mp_main__",
            ) from exc
        return getattr(module, name)


def _take_authkey(authkey):
    """Makes ``authkey`` this process's ``multiprocessing`` authkey: now if ``multiprocessing``
    is loaded here, else as soon as it is (``_AuthkeyOnImport``); importing it up front would cost
    every new worker ~12 ms (threading, signal, ...) for jobs that may never use it."""
    process = sys.modules.get("multiprocessing.process")
    if process is not None:
        process.current_process().authkey = authkey
    else:
        sys.meta_path.insert(0, _AuthkeyOnImport(authkey))


class _AuthkeyOnImport:
    """A meta path finder that finds nothing itself: when ``multiprocessing.process`` is first
    imported here (a Manager proxy connects while its job unpickles, so not later), it leaves
    ``sys.meta_path``, finds the module's spec with the finders after it, and wraps the spec's
    loader so that the authkey is set once the module has run, before the import returns."""

    def __init__(self, authkey):
        self.authkey = authkey

    def find_spec(self, name, path=None, target=None):
        if name != "multiprocessing.process":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if find is None else find(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _SettingAuthkey(spec.loader, self.authkey)
                return spec
        return None


class _SettingAuthkey:
    """The real loader of ``multiprocessing.process``, and the authkey set after it ran; the
    module and its spec get the real loader back."""

    def __init__(self, loader, authkey):
        self.loader, self.authkey = loader, authkey

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        module.current_process().authkey = self.authkey

    def __getattr__(self, name):
        return getattr(self.loader, name)


def setup(config):
    """Prepares the interpreter; returns None, or ``(SETUP_FAILED | INIT_FAILED, reason,
    exception_records)`` if it cannot serve jobs. ``config`` is ``pickle((sys_path, argv,
    main_kind, main_ref, init, retire))``, optionally followed by ``path_prepend`` and
    ``authkey``: ``sys_path``/``argv`` replace the interpreter's (None: keep its own),
    ``main_kind`` is ``"path"``, ``"module"`` or None, ``init``/``retire`` are pickled callables,
    ``path_prepend`` (a list, from the Rust API's ``python_path``, or None) goes in front of
    ``sys.path`` afterwards, and ``authkey`` (bytes, or None) is the parent's
    ``multiprocessing`` authkey, which this worker takes as multiprocessing's children do, so
    that Manager proxies passed to jobs connect."""
    global _retire
    stage = SETUP_FAILED, "unpickling the worker configuration failed"
    try:
        sys_path, argv, main_kind, main_ref, init, retire, *extra = pickle.loads(config)
        path_prepend, authkey = (*extra, None, None)[:2]
        if sys_path is not None:
            sys.path[:] = sys_path
        if path_prepend:
            sys.path[:0] = path_prepend
        if argv is not None:
            sys.argv[:] = argv
        # A forkserver child inherits the script, already loaded by the server. Checked before
        # multiprocessing is imported: its __init__ aliases __mp_main__ to this bare __main__.
        if main_kind is not None and "__mp_main__" not in sys.modules:
            sys.modules["__main__"].__getattr__ = _ParentMain(main_kind, main_ref)
        if authkey is not None:
            _take_authkey(authkey)
        stage = SETUP_FAILED, "unpickling init or retire failed"
        init, _retire = pickle.loads(init), pickle.loads(retire)
        stage = INIT_FAILED, "the worker's init raised an exception"
        if init is not bool:
            init()
    except BaseException as exc:
        _flush()
        return *stage, _exception_records(exc)
    _flush()
    return None


def run(payload, buffers=None):
    """Runs one job; returns ``(kind, data, retire, buffers)``: ``retire`` is KEEP, or
    RETIRE_PENDING if ``after_job`` must run once the outcome is delivered; ``buffers`` are the
    value's out-of-band buffers (a list, with kind VALUE_BUFFERS; else None: memoryviews, to be
    copied out before anything else runs here, and whole ``bytes``, which a subinterpreter lends:
    ffi.rs, rule 10). Only a job pickled with protocol 5 (the Python front end's) gets any: the
    Rust ``Pool``'s protocol-4 jobs read values in band."""
    job = load(payload, buffers)
    return job if len(job) == 4 else call(*job)


def load(payload, buffers=None):
    """Unpickles a job (which may import modules): ``(fn, args, protocol_5)``, or the LOAD_ERROR
    outcome as ``run`` returns it. Subinterpreter workers call ``load`` and ``call`` apart, so
    that an interrupt never cuts an import short: it waits for the function to start."""
    try:
        # Without buffers, no keyword: passing one costs pickle ~0.5 µs.
        fn, args = (
            pickle.loads(payload) if buffers is None else pickle.loads(payload, buffers=buffers)
        )
    except BaseException as exc:
        return LOAD_ERROR, _exception_records(exc), KEEP, None
    return fn, args, payload[1] == 5


def call(fn, args, protocol_5):
    """Calls a loaded job; returns what ``run`` does."""
    try:
        result = fn(*args)
        if hasattr(result, "__await__") and hasattr(result, "close"):
            result.close()
            raise TypeError(
                f"interpool expected a sync function, but {fn!r} returned an awaitable; "
                "run coroutines in the event loop, not in a worker"
            )
        if protocol_5:  # a protocol-5 caller loads out-of-band buffers; others get none
            data, out = _dumps_value(result)
            kind = VALUE if out is None else VALUE_BUFFERS
        else:
            kind, data, out = VALUE, _dumps(result), None
    except BaseException as exc:
        # A refusal while the job ran is a load error too: the job may have started (see
        # docs/auto.md), but AUTO can still re-run it on a process.
        kind = LOAD_ERROR if _refused_import(exc) else RAISED
        data, out = _exception_records(exc, skip_frames=1), None
    result = fn = args = None
    _flush()
    return kind, data, (KEEP if _retire is bool else RETIRE_PENDING), out


def intact():
    """After an interrupted job: whether every import finished (none was cut short by the
    interrupt and left a module initializing), so that the interpreter is fit for reuse."""
    for module in list(sys.modules.values()):
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            return False
    return True


def after_job():
    """Runs the ``retire`` hook; returns ``(KEEP | RETIRE | RETIRE_FAILED, records | None)``."""
    if _retire is bool:
        return KEEP, None
    try:
        return (RETIRE if _retire() else KEEP), None
    except BaseException as exc:
        return RETIRE_FAILED, _exception_records(exc)
    finally:
        _flush()
