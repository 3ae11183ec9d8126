"""The hand-written baseline (a thread per isolated interpreter) and the stdlib's
``InterpreterPoolExecutor`` set up the same way.

Standard library only, no relative imports: the cold-start process imports it as a top-level
module (see ``cold_start``), so that the baseline's cold start does not include importing
interpool.

The API differs by version. 3.14 made it public (PEP 734, ``concurrent.interpreters``: ``call``
takes the callable and its arguments and pickles what is not shareable) and changed the private
modules' signatures: ``_interpqueues.create(maxsize, unboundop, fallback)`` and ``put(qid, obj,
unboundop, fallback)``, where 3.13 has ``create(maxsize, fmt, unboundop)`` and ``put(qid, obj,
fmt, unboundop)``. So 3.14+ uses the public module, and 3.13 the private ones with 3.13's
signatures.
"""

from __future__ import annotations

import concurrent.futures
import pickle
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor

# Annotations only: typing costs milliseconds to import, inside a cold-start sample's timing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

try:
    from concurrent import interpreters  # type: ignore[attr-defined, unused-ignore]  # 3.14+
except ImportError:  # 3.13
    interpreters = None
    import _interpqueues  # type: ignore[import-not-found, unused-ignore]
    import _interpreters  # type: ignore[import-not-found, unused-ignore]

# The source that each new interpreter runs first (before its sys.path lets it import anything,
# so it cannot be a module): it takes this process's sys.path, and lets the bench's own job
# module (interpool._bench.jobs) import there: interpool's __init__ skips its extension, which
# refuses subinterpreters, inside a worker.
_SETUP = """
import sys, types
sys.path[:] = PATH
sys.modules.setdefault("_interpool_worker", types.ModuleType("_interpool_worker"))
"""
# 3.13: jobs and results cross as pickles, results come back through a queue.
_SETUP_313 = (
    _SETUP
    + """
import pickle, _interpqueues
def _run(payload):
    fn, args = pickle.loads(payload)
    try:
        out = (True, fn(*args))
    except BaseException as e:
        out = (False, e)
    _interpqueues.put(QID, pickle.dumps(out), 0, 1)  # fmt 0, unboundop 1 (remove)
"""
)
_JOB_313 = compile("_run(PAYLOAD)", "<job>", "exec")


class _Interpreter:
    """One isolated (own GIL) interpreter, set up for jobs, through the public API (3.14+)."""

    def __init__(self) -> None:
        self._interp = interpreters.create()
        self._interp.prepare_main(PATH=tuple(sys.path))
        self._interp.exec(_SETUP)

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        return self._interp.call(fn, *args)

    def close(self) -> None:
        self._interp.close()


class _Interpreter313:
    """The same on 3.13, through the private modules."""

    def __init__(self) -> None:
        self._iid = _interpreters.create()
        self._qid = _interpqueues.create(0, 0, 1)  # maxsize 0 (unbounded), fmt 0, unboundop 1
        _interpreters.set___main___attrs(self._iid, {"QID": self._qid, "PATH": tuple(sys.path)})
        failed = _interpreters.exec(self._iid, _SETUP_313)
        if failed:
            raise RuntimeError(failed.formatted)

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        _interpreters.set___main___attrs(self._iid, {"PAYLOAD": pickle.dumps((fn, args))})
        failed = _interpreters.exec(self._iid, _JOB_313)
        if failed:
            raise RuntimeError(failed.formatted)
        ok, value = pickle.loads(_interpqueues.get(self._qid)[0])
        if not ok:
            raise value
        return value

    def close(self) -> None:
        _interpreters.destroy(self._iid)
        _interpqueues.destroy(self._qid)


class InterpreterPool:
    """What a user writes by hand on 3.13 (and 3.14 without the executor): a thread pool whose
    threads each own an isolated (own GIL) interpreter. ``fresh``: a new interpreter for every
    call (created and destroyed around it)."""

    def __init__(self, workers: int, fresh: bool = False) -> None:
        self._fresh = fresh
        self._local = threading.local()
        self._lock = threading.Lock()
        self._made: list[_Interpreter | _Interpreter313] = []
        self._threads = ThreadPoolExecutor(workers)
        self._new = _Interpreter313 if interpreters is None else _Interpreter

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._fresh:
            interp = self._new()
            try:
                return interp.run(fn, args)
            finally:
                interp.close()
        own = getattr(self._local, "own", None)
        if own is None:
            own = self._local.own = self._new()
            with self._lock:
                self._made.append(own)
        return own.run(fn, args)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._threads.submit(self._call, fn, args)

    def shutdown(self) -> None:
        self._threads.shutdown(wait=True)
        for interp in self._made:
            interp.close()
        self._made.clear()


def InterpreterPoolExecutor(workers: int) -> concurrent.futures.Executor:
    """The stdlib's pool (3.14+), each interpreter set up like the baseline's: ``exec`` of
    ``_SETUP``, a builtin, is an initializer every interpreter can unpickle without an import."""
    return concurrent.futures.InterpreterPoolExecutor(  # type: ignore[attr-defined, no-any-return, unused-ignore]
        workers, initializer=exec, initargs=(_SETUP, {"PATH": tuple(sys.path)})
    )
