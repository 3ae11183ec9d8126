"""The loop inside every interpool worker interpreter.

Rust calls ``setup`` once, then ``run`` once per job. Everything crosses as bytes: this module
unpickles the job, calls it, and pickles the outcome. It imports neither trio nor interpool (the
front end's extension module refuses to load in a subinterpreter); ``interpool/__init__.py`` sees
this module in ``sys.modules`` and stays import-safe for user scripts that ``import interpool``.

Exception records (shared with ``interpool/_outcome.py``): a pickled list, the raised exception
first, each entry ``(pickled_exc | None, pickling_error | None, type_name, message,
formatted_traceback, cause_index | None, context_index | None, suppress_context)``.
"""

import _pickle as pickle  # the C pickler: pickle.py imports re, struct, ... (~4 ms per worker)
import sys

HIGHEST_PROTOCOL = 5  # pickle.HIGHEST_PROTOCOL, which _pickle does not name
VALUE, RAISED, LOAD_ERROR = 0, 1, 2
KEEP, RETIRE, RETIRE_FAILED = 0, 1, 2
_MAX_CHAIN = 32

_retire = bool


def _dumps(obj):
    try:
        return pickle.dumps(obj, HIGHEST_PROTOCOL)
    except Exception:
        try:
            import cloudpickle
        except ImportError:
            raise
        return cloudpickle.dumps(obj, HIGHEST_PROTOCOL)


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
            raise ImportError(
                f"loading the parent's main script {self.ref!r} in the worker failed: "
                f"{type(exc).__name__}: {exc} (workers run the script's module-level code: "
                "does it keep its entry point under `if __name__ == '__main__':`?)"
            ) from exc
        return getattr(module, name)


def setup(config):
    """Prepares the interpreter; returns None, or ``(reason, exception_records)`` if it cannot
    serve jobs. ``config`` is ``pickle((sys_path, argv, main_kind, main_ref, init, retire))``,
    optionally followed by ``path_prepend``: ``sys_path``/``argv`` replace the interpreter's
    (None: keep its own), ``main_kind`` is ``"path"``, ``"module"`` or None, ``init``/``retire``
    are pickled callables, and ``path_prepend`` (a list, from the Rust API's ``python_path``)
    goes in front of ``sys.path`` afterwards."""
    global _retire
    stage = "unpickling the worker configuration failed"
    try:
        sys_path, argv, main_kind, main_ref, init, retire, *path_prepend = pickle.loads(config)
        if sys_path is not None:
            sys.path[:] = sys_path
        if path_prepend:
            sys.path[:0] = path_prepend[0]
        if argv is not None:
            sys.argv[:] = argv
        # A forkserver child inherits the script, already loaded by the server.
        if main_kind is not None and "__mp_main__" not in sys.modules:
            sys.modules["__main__"].__getattr__ = _ParentMain(main_kind, main_ref)
        stage = "unpickling init or retire failed"
        init, _retire = pickle.loads(init), pickle.loads(retire)
        stage = "the worker's init raised an exception"
        if init is not bool:
            init()
    except BaseException as exc:
        _flush()
        return stage, _exception_records(exc)
    _flush()
    return None


def run(payload):
    """Runs one job; returns ``(kind, data, retire, retire_error)``."""
    try:
        fn, args = pickle.loads(payload)
    except BaseException as exc:
        return LOAD_ERROR, _exception_records(exc), KEEP, None
    try:
        result = fn(*args)
        if hasattr(result, "__await__") and hasattr(result, "close"):
            result.close()
            raise TypeError(
                f"interpool expected a sync function, but {fn!r} returned an awaitable; "
                "run coroutines in the event loop, not in a worker"
            )
        kind, data = VALUE, _dumps(result)
    except BaseException as exc:
        kind, data = RAISED, _exception_records(exc, skip_frames=1)
    result = fn = args = None
    _flush()
    if _retire is bool:
        return kind, data, KEEP, None
    try:
        return kind, data, (RETIRE if _retire() else KEEP), None
    except BaseException as exc:
        return kind, data, RETIRE_FAILED, _exception_records(exc)
