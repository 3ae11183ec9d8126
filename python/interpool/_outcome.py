"""Pickling jobs in the caller, and turning a worker's outcome back into a value or an exception.

The worker side of this format is the worker loop
(``worker-types/src/subinterpreter/worker_loop.py``).

Large buffers travel out of band (pickle protocol 5): a job with any is ``(pickle, buffers)``
instead of ``pickle``, ``buffers`` being contiguous ``"B"`` memoryviews over the caller's objects
(the worker reads them in place or through shared memory; see docs/payloads.md), and a value with
any comes back as kind ``VALUE_BUFFERS`` with ``(pickle, buffers)``.

Exception records are a pickled list, the raised exception first, each entry
``(pickled_exc | None, pickling_error | None, type_name, message, formatted_traceback,
import_name | None, cause_index | None, context_index | None, suppress_context)``.
"""

from __future__ import annotations

import os
import pickle
import sys
from array import array
from operator import methodcaller
from typing import Any

from . import _interpool
from ._types import BrokenWorkerError

try:
    import cloudpickle
except ImportError:  # pragma: no cover, cloudpickle is optional and installed in the test venv
    cloudpickle = None  # type: ignore[assignment]

# The wire protocol's numbers (worker-types/src/protocol.rs), as the worker loop has them too.
VALUE, RAISED, LOAD_ERROR = _interpool.VALUE, _interpool.RAISED, _interpool.LOAD_ERROR
BROKEN, VALUE_BUFFERS = _interpool.BROKEN, _interpool.VALUE_BUFFERS
# When a worker broke: the second item of a BROKEN outcome's ``(stage, reason)``.
STAGE_START = _interpool.STAGE_START  # no interpreter or process could be started
STAGE_SETUP = _interpool.STAGE_SETUP  # preparing it failed (configuration, init or retire)
STAGE_INIT = _interpool.STAGE_INIT  # its init raised
STAGE_JOB = _interpool.STAGE_JOB  # the worker loop failed around a job
STAGE_INTERRUPTED = _interpool.STAGE_INTERRUPTED  # the job was interrupted
STAGE_DIED = _interpool.STAGE_DIED  # its process died
_PROTOCOL = pickle.HIGHEST_PROTOCOL
# Buffers of at least this many bytes travel out of band, at most _MAX_BUFFERS per job (the rest
# stay in band).
BUFFER_THRESHOLD = _interpool.BUFFER_THRESHOLD
_MAX_BUFFERS = _interpool.MAX_BUFFERS
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


class _OutOfBand:
    """Pickles a large ``bytes``, ``bytearray`` or ``array.array``, or a contiguous
    ``memoryview`` (which pickle refuses otherwise), as a protocol-5 buffer: pickle sends only
    ``PickleBuffer``s out of band by itself, and never asks a ``reducer_override`` about ``bytes``.
    The worker rebuilds the same type with builtins only. Kept in step with the worker loop's
    copy."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        obj: object = self.obj
        if type(obj) is array:
            return array, (obj.typecode,), pickle.PickleBuffer(obj), None, None, array.frombytes
        if type(obj) is memoryview:
            if obj.ndim == 1 and obj.format == "B":
                return memoryview, (pickle.PickleBuffer(obj),)
            return methodcaller("cast", obj.format, obj.shape), (_OutOfBand(obj.cast("B")),)
        return type(obj), (pickle.PickleBuffer(obj),)  # type: ignore[arg-type]


_WRAPPABLE = frozenset((bytes, bytearray, array, memoryview))
# Arguments of these types hold no PickleBuffer (small bytes and bytearrays stay in band anyway).
_PLAIN = frozenset((int, float, str, bool, type(None), bytes, bytearray, complex))


def _large_buffer(obj: object) -> bool:
    kind = type(obj)
    if kind is bytes or kind is bytearray:
        return len(obj) >= BUFFER_THRESHOLD  # type: ignore[arg-type]
    if kind is array:
        return len(obj) * obj.itemsize >= BUFFER_THRESHOLD  # type: ignore[arg-type, attr-defined, no-any-return]
    if kind is memoryview:  # always: pickle refuses memoryviews (small ones stay in band)
        return obj.c_contiguous and obj.ndim > 0 and len(obj.format) == 1  # type: ignore[attr-defined]
    return False


def dumps_job(
    fn: object, args: tuple[object, ...], callable_: object = None
) -> bytes | tuple[bytes, list[memoryview]]:
    """Pickles the job ``(fn, args)`` like :func:`dumps`: ``bytes``, or ``(bytes, buffers)`` when
    it has large buffers (positional arguments that are large ``bytes``, ``bytearray``,
    ``memoryview`` or ``array.array`` objects, and ``PickleBuffer``s anywhere, such as numpy
    arrays')."""
    wrapped: dict[int, _OutOfBand] | None = None
    plain = True
    for arg in args:
        kind = type(arg)
        if kind in _WRAPPABLE and _large_buffer(arg):
            if wrapped is None:
                wrapped = {}
            wrapped.setdefault(id(arg), _OutOfBand(arg))
        elif kind not in _PLAIN:
            plain = False
    if wrapped is not None:
        args = tuple(wrapped.get(id(arg), arg) for arg in args)
    job = (fn, args)
    use_cloudpickle = cloudpickle is not None and _needs_cloudpickle(
        fn if callable_ is None else callable_
    )
    if plain and wrapped is None and not use_cloudpickle:
        # No PickleBuffer can be in there: skip buffer_callback, which costs pickle ~0.6 µs.
        try:
            return pickle.dumps(job, _PROTOCOL)
        except Exception:
            if cloudpickle is None:
                raise
        return cloudpickle.dumps(job, _PROTOCOL)
    # Every PickleBuffer goes out of band first (a C callback: the hot path pays nothing more);
    # only if some were small is the job pickled again, keeping those in band.
    buffers: list[pickle.PickleBuffer] = []
    data = _dumps5(job, buffers.append, buffers, use_cloudpickle)
    if not buffers:
        return data
    views = [buffer.raw() for buffer in buffers]
    if len(views) <= _MAX_BUFFERS and all(v.nbytes >= BUFFER_THRESHOLD for v in views):
        return data, views
    views.clear()

    def large_only(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < BUFFER_THRESHOLD or len(views) >= _MAX_BUFFERS:
            return True
        views.append(raw)
        return False

    data = _dumps5(job, large_only, views, use_cloudpickle)
    return (data, views) if views else data


def _dumps5(
    job: object, buffer_callback: Any, collected: list[Any], use_cloudpickle: bool
) -> bytes:
    """Protocol 5 with ``buffer_callback`` filling ``collected``; cloudpickle as :func:`dumps`."""
    if use_cloudpickle:
        return cloudpickle.dumps(job, 5, buffer_callback=buffer_callback)
    try:
        return pickle.dumps(job, 5, buffer_callback=buffer_callback)
    except Exception:
        if cloudpickle is None:
            raise
    collected.clear()  # what pickle collected before it failed
    return cloudpickle.dumps(job, 5, buffer_callback=buffer_callback)


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


def unwrap(kind: int, data: bytes, broken: tuple[int, str] | None) -> object:
    """The job's value, or raise what the job (or its worker) raised (``broken``: the
    ``(stage, reason)`` of a BROKEN outcome)."""
    if kind == VALUE:
        return pickle.loads(data)
    if kind == VALUE_BUFFERS:
        return pickle.loads(data[0], buffers=data[1])  # type: ignore[arg-type]
    if kind == RAISED:
        raise rebuild_exception(data)
    if kind == LOAD_ERROR:
        raise load_error(data)
    cause = rebuild_exception(data) if data else None
    raise BrokenWorkerError(broken[1] if broken is not None else None) from cause
