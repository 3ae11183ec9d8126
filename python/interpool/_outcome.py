"""Pickling jobs in the caller, and turning a worker's outcome back into a value or an exception.

The worker side of this format is the worker loop
(``worker-types/src/subinterpreter/worker_loop.py``):
exception records are a pickled list, the raised exception first, each entry
``(pickled_exc | None, pickling_error | None, type_name, message, formatted_traceback,
cause_index | None, context_index | None, suppress_context)``.
"""

from __future__ import annotations

import os
import pickle
import sys

from ._types import BrokenWorkerError

try:
    import cloudpickle
except ImportError:  # pragma: no cover, cloudpickle is optional and installed in the test venv
    cloudpickle = None

VALUE, RAISED, LOAD_ERROR, BROKEN = 0, 1, 2, 3
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_main_importable: bool | None = None


def main_reference() -> tuple[str | None, str | None]:
    """How a worker can load this process's ``__main__``: ``("module", name)``, ``("path", file)``,
    or ``(None, None)`` for a REPL or ``-c``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return "module", spec.name
    path = getattr(main, "__file__", None)
    if path and os.path.exists(path):
        return "path", os.path.abspath(path)
    return None, None


def _needs_cloudpickle(fn: object) -> bool:
    """Functions of a ``__main__`` that workers cannot load must be pickled by value."""
    global _main_importable
    if getattr(fn, "__module__", None) != "__main__":
        return False
    if _main_importable is None:
        _main_importable = main_reference()[0] is not None
    return not _main_importable


def dumps(obj: object, callable_: object = None) -> bytes:
    """Pickles ``obj``; falls back to cloudpickle (if installed) for what pickle refuses.

    cloudpickle is used outright when ``callable_`` (default: ``obj``) lives in a ``__main__``
    that workers cannot load (a REPL, ``-c``)."""
    if cloudpickle is not None and _needs_cloudpickle(obj if callable_ is None else callable_):
        return cloudpickle.dumps(obj, _PROTOCOL)
    try:
        return pickle.dumps(obj, _PROTOCOL)
    except Exception:
        if cloudpickle is None:
            raise
    return cloudpickle.dumps(obj, _PROTOCOL)


def _worker_note(traceback_text: str) -> str:
    header = "Traceback (most recent call last):\n"
    if traceback_text.startswith(header):
        traceback_text = (
            "Worker traceback (most recent call last):\n" + traceback_text[len(header) :]
        )
    return "\n" + traceback_text.rstrip("\n")


def rebuild_exception(data: bytes) -> BaseException:
    """The exception a worker raised, with its cause/context chain, each exception carrying its
    worker-side traceback as a note."""
    records = pickle.loads(data)
    excs: list[BaseException] = []
    for blob, pickling_error, type_name, message, tb_text, *_ in records:
        if blob is not None:
            try:
                exc = pickle.loads(blob)
            except Exception as error:  # noqa: BLE001, reported in place of the exception
                exc = error
                exc.add_note(f"(while unpickling the worker's {type_name}: {message})")
        else:
            exc = pickle.loads(pickling_error)
            exc.add_note(f"(the worker raised {type_name}: {message}, which cannot be pickled)")
        exc.add_note(_worker_note(tb_text))
        excs.append(exc)
    for exc, (*_, cause, context, suppress_context) in zip(excs, records, strict=True):
        exc.__cause__ = excs[cause] if cause is not None else None
        exc.__context__ = excs[context] if context is not None else None
        exc.__suppress_context__ = suppress_context
    return excs[0]


def load_error(data: bytes) -> BaseException:
    """The exception of a LOAD_ERROR outcome. A worker that could not load the parent's main
    script cannot serve it at all (as a multiprocessing worker that cannot start): that is a
    :class:`BrokenWorkerError` with the worker's message, caused by the script's error."""
    exc = rebuild_exception(data)
    if not (isinstance(exc, ImportError) and exc.name == "__mp_main__"):
        return exc
    broken = BrokenWorkerError(str(exc))
    broken.__cause__ = exc.__cause__
    for note in getattr(exc, "__notes__", ()):
        broken.add_note(note)
    return broken


def unwrap(kind: int, data: bytes, reason: str | None) -> object:
    """The job's value, or raise what the job (or its worker) raised."""
    if kind == VALUE:
        return pickle.loads(data)
    if kind == RAISED:
        raise rebuild_exception(data)
    if kind == LOAD_ERROR:
        raise load_error(data)
    cause = rebuild_exception(data) if data else None
    raise BrokenWorkerError(reason) from cause
