"""The front end: worker contexts, the default context, and ``run_sync``, for trio and asyncio.

A call's path under trio, which decides interpool's latency (see docs/architecture.md):

1. a cancellation point, then the job is pickled here, in the caller's interpreter;
2. the limiter is taken (``acquire_nowait`` first: ``async with`` costs ~5 µs);
3. the Rust cache hands the job to the hottest idle worker, which is usually still spinning;
4. one schedule point (shielded, so it does not cancel a job that already started) overlaps
   the job;
5. the caller spins a few microseconds with the GIL released, and only then parks in trio on
   a file descriptor that the worker writes only if somebody parked.

Under asyncio (``sniffio`` tells which library runs; anyio runs on either) the path is the same
except for step 1, which is a pass through the event loop *before* the job is submitted: asyncio
delivers a cancellation only at a suspension, so this is where an already-requested one (such as
``asyncio.timeout(0)``'s) stops the job from ever running. Cancellation afterwards follows trio's
rules as far as asyncio allows (see ``_wait_asyncio`` and docs/asyncio.md). The library-specific
pieces (parking on an fd, shielding, the default limiter) live in ``_backends.py``.
"""

from __future__ import annotations

import atexit
import datetime  # noqa: F401, 3.13.0: concurrent first imports of _datetime in subinterpreters crash
import math
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
from trio.lowlevel import (
    RunVar,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
)

from . import _backends, _interpool, _outcome
from ._types import (
    BrokenWorkerError,
    WorkerContextStatistics,
    WorkerType,
    WorkerTypeInfo,
    WorkerTypeUnavailableError,
)

T = TypeVar("T")

_sniffio_local = _backends.sniffio_thread_local

# How long a caller spins for the outcome before parking in trio. Warm trivial jobs come back in
# a few microseconds, so this saves the two cross-thread wake-ups that parking costs; longer jobs
# pay at most this much CPU once.
_SPIN_MICROSECONDS = 30
# After interrupting a job on cancellation, how long to wait before abandoning its worker (the
# interrupt needs the worker's GIL, which takes up to a switch interval, 5 ms).
ABANDON_AFTER = 1.0

# Results may name classes of the parent's main script as ``__mp_main__`` (workers load the
# script under that name), as multiprocessing arranges too.
sys.modules.setdefault("__mp_main__", sys.modules["__main__"])

_default_limiter: RunVar[trio.CapacityLimiter] = RunVar("interpool_default_limiter")


def current_default_worker_limiter() -> trio.CapacityLimiter | _backends.CapacityLimiter:
    """The limiter ``run_sync`` uses by default: one per ``trio.run`` (a ``trio.CapacityLimiter``)
    or per asyncio event loop (an :class:`interpool.AsyncioCapacityLimiter`), with
    ``os.cpu_count()`` tokens, shared by all worker contexts of that run or loop."""
    if _backends.current_library() != "trio":
        return _backends.asyncio_default_limiter()
    return _trio_default_limiter()


def _trio_default_limiter() -> trio.CapacityLimiter:
    try:
        return _default_limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(os.cpu_count() or 1)
        _default_limiter.set(limiter)
        return limiter


def available_worker_types() -> list[WorkerTypeInfo]:
    """Every worker type with its availability here (and the reason if unavailable)."""
    return [
        WorkerTypeInfo(WorkerType(name), available, reason, hard_kill, crash_isolation)
        for name, available, reason, hard_kill, crash_isolation in _interpool.worker_type_info()
    ]


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 (math.inf for no limit), not {value!r}")
    return float(value)


def _check_worker_type(worker_type: object) -> WorkerType:
    if worker_type == "fork":
        raise ValueError(
            "there is no 'fork' worker type: forking a multi-threaded process (interpool's host "
            "always has threads) can deadlock or corrupt the child; use "
            "WorkerType.FORKSERVER (fast starts, preloaded modules) or WorkerType.SPAWN"
        )
    try:
        worker_type = WorkerType(worker_type)
    except ValueError:
        choices = ", ".join(repr(t.value) for t in WorkerType)
        raise ValueError(f"unknown worker type {worker_type!r}; choose one of {choices}") from None
    for info in available_worker_types():
        if info.worker_type is worker_type and not info.available:
            raise WorkerTypeUnavailableError(info.reason)
    return worker_type


class WorkerContext:
    """A cache of workers with its own settings. Made by :func:`open_worker_context`; the default
    one serves :func:`run_sync`."""

    __slots__ = (
        "_cache",
        "_closed",
        "_grace_period",
        "_idle_timeout",
        "_init",
        "_on_drained",
        "_retire",
        "_running",
        "_setup_hooks",
        "_worker_type",
    )

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            f"{type(self).__name__} has no public constructor; use interpool.open_worker_context()"
        )

    @classmethod
    def _create(
        cls,
        idle_timeout: float = 600.0,
        init: Callable[[], object] = bool,
        retire: Callable[[], object] = bool,
        grace_period: float = 30.0,
        worker_type: WorkerType | str = WorkerType.SUBINTERPRETER,
    ) -> WorkerContext:
        idle_timeout = _check_seconds("idle_timeout", idle_timeout)
        grace_period = _check_seconds("grace_period", grace_period)
        for name, hook in (("init", init), ("retire", retire)):
            if not callable(hook):
                raise TypeError(f"{name} must be callable, not {type(hook).__name__}")
        worker_type = _check_worker_type(worker_type)
        self = object.__new__(cls)
        self._idle_timeout, self._grace_period = idle_timeout, grace_period
        self._init, self._retire, self._worker_type = init, retire, worker_type
        self._setup_hooks = (_outcome.dumps(init), _outcome.dumps(retire))
        self._cache = _interpool.Cache(worker_type.value, idle_timeout, self._worker_setup)
        self._closed = False
        # One entry per call in progress. Event loops in several threads may share a context:
        # list.append/pop are atomic, ``+= 1`` on an attribute is not.
        self._running: list[None] = []
        # Set by _aclose while it waits for running calls; callable from any thread.
        self._on_drained: Callable[[], None] | None = None
        return self

    idle_timeout = property(
        lambda self: self._idle_timeout,
        doc="Seconds an idle worker waits for a job before it ends.",
    )
    init = property(lambda self: self._init, doc="Called once in each worker before its first job.")
    retire = property(
        lambda self: self._retire, doc="Called after each job; truthy ends the worker."
    )
    grace_period = property(
        lambda self: self._grace_period, doc="Seconds workers get to end when the context closes."
    )
    worker_type = property(
        lambda self: self._worker_type, doc="The :class:`WorkerType` of the workers."
    )

    def __repr__(self) -> str:
        return (
            f"<WorkerContext {self._worker_type.value} idle_timeout={self._idle_timeout} "
            f"grace_period={self._grace_period}{' closed' if self._closed else ''}>"
        )

    def _worker_setup(self) -> bytes:
        """A new worker's setup: the parent's sys.path, argv and main script as of now."""
        main_kind, main_ref = _outcome.main_reference()
        init, retire = self._setup_hooks
        return _outcome.dumps((list(sys.path), list(sys.argv), main_kind, main_ref, init, retire))

    def statistics(self) -> WorkerContextStatistics:
        """How many workers are idle and how many calls are running."""
        idle, running = self._cache.statistics()
        return WorkerContextStatistics(idle_workers=idle, running_workers=running)

    async def run_sync(
        self,
        sync_fn: Callable[..., T],
        *args: object,
        kill_on_cancel: bool = False,
        cancellable: bool = False,
        limiter: Any = None,
    ) -> T:
        """Runs ``sync_fn(*args)`` in one of this context's workers.

        The same contract as :func:`interpool.run_sync`, plus ``trio.ClosedResourceError`` once
        the context has closed."""
        if self._closed:
            raise trio.ClosedResourceError("this worker context is closed")
        if _sniffio_local.name != "trio" and _backends.current_library() != "trio":
            return await self._run_sync_asyncio(
                sync_fn, args, kill_on_cancel or cancellable, limiter
            )
        await checkpoint_if_cancelled()
        payload = _outcome.dumps((sync_fn, args), sync_fn)
        kill_on_cancel = kill_on_cancel or cancellable
        if limiter is None:
            limiter = _trio_default_limiter()
        if type(limiter) is trio.CapacityLimiter:
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                await limiter.acquire()
            try:
                return await self._run(payload, kill_on_cancel)
            finally:
                limiter.release()
        async with limiter:
            return await self._run(payload, kill_on_cancel)

    async def _run(self, payload: bytes, kill_on_cancel: bool) -> Any:
        if self._closed:
            raise trio.ClosedResourceError("this worker context is closed")
        running = self._running
        running.append(None)
        try:
            call = self._cache.submit(payload)
            await cancel_shielded_checkpoint()
            if not call.spin(_SPIN_MICROSECONDS):
                await _wait(call, kill_on_cancel)
            kind, data, reason = call.result()
        finally:
            running.pop()
            if self._on_drained is not None and not running:
                self._on_drained()
        return _outcome.unwrap(kind, data, reason)

    async def _run_sync_asyncio(
        self,
        sync_fn: Callable[..., T],
        args: tuple[object, ...],
        kill_on_cancel: bool,
        limiter: Any,
    ) -> T:
        aio = _backends.ASYNCIO
        await aio.checkpoint()  # before anything runs: see the module docstring
        payload = _outcome.dumps((sync_fn, args), sync_fn)
        if limiter is None:
            limiter = _backends.asyncio_default_limiter()
        if type(limiter) is _backends.CapacityLimiter:
            if not limiter.try_acquire():
                await limiter.acquire()
            try:
                return await self._run_asyncio(payload, kill_on_cancel)
            finally:
                limiter.release()
        async with limiter:
            return await self._run_asyncio(payload, kill_on_cancel)

    async def _run_asyncio(self, payload: bytes, kill_on_cancel: bool) -> Any:
        if self._closed:
            raise trio.ClosedResourceError("this worker context is closed")
        running = self._running
        running.append(None)
        try:
            call = self._cache.submit(payload)
            if not call.spin(_SPIN_MICROSECONDS):
                await _wait_asyncio(call, kill_on_cancel)
            kind, data, reason = call.result()
        finally:
            running.pop()
            if self._on_drained is not None and not running:
                self._on_drained()
        return _outcome.unwrap(kind, data, reason)

    def _call_started(self) -> None:
        self._running.append(None)

    def _call_ended(self) -> None:
        self._running.pop()
        if self._on_drained is not None and not self._running:
            self._on_drained()

    async def _aclose(self) -> None:
        """Waits for running calls, then ends the workers within the grace period; immune to
        cancellation (under asyncio a ``CancelledError`` that arrived meanwhile is raised after)."""
        self._closed = True
        backend = _backends.current()
        report = await backend.shielded(self._drain_and_close, backend)
        _raise_shutdown_failures(*report)

    async def _drain_and_close(self, backend: Any) -> tuple[list[bytes], int, int, list[int]]:
        if self._running:
            # The last call may end in another thread's event loop: the signal is thread-safe.
            wait, self._on_drained = backend.threadsafe_event()
            if not self._running:  # it ended before the signal was in place
                self._on_drained()
            await wait()
        self._cache.close()
        return await backend.run_in_thread(self._cache.wait_closed, self._grace_period)

    def _close_blocking(self, grace_period: float) -> None:
        """Closes without trio (atexit). Running calls cannot exist then."""
        self._closed = True
        self._cache.close()
        _raise_shutdown_failures(*self._cache.wait_closed(grace_period))


async def _wait(call: Any, kill_on_cancel: bool) -> None:
    """Parks until the outcome of ``call`` is in. Without ``kill_on_cancel`` the wait is shielded:
    the job finishes and its outcome is delivered, and the cancellation hits at the caller's next
    checkpoint. With it, a cancellation interrupts the job, waits up to ABANDON_AFTER for the
    worker to stop, abandons it otherwise, and re-raises."""
    fd = call.arm()
    if fd is None:
        return
    if not kill_on_cancel:
        with trio.CancelScope(shield=True):
            await wait_readable(fd)
        return
    try:
        await wait_readable(fd)
    except BaseException:
        call.interrupt()
        with trio.move_on_after(ABANDON_AFTER, shield=True):
            await wait_readable(fd)
        if call.done():
            call.result()  # hands the (retiring) worker back; the outcome is moot
        else:
            call.abandon()
        raise


async def _wait_asyncio(call: Any, kill_on_cancel: bool) -> None:
    """``_wait`` under asyncio. A cancellation arrives once (asyncio has no cancelled scopes
    that raise again at the next checkpoint), so without ``kill_on_cancel`` the job runs to
    completion, its outcome is discarded (the worker stays in the cache) and ``CancelledError``
    is raised then: the caller cannot both get the value and see the cancellation. With it, as
    under trio: interrupt, wait up to ABANDON_AFTER, abandon, re-raise."""
    fd = call.arm()
    if fd is None:
        return
    aio = _backends.ASYNCIO
    try:
        await aio.wait_readable(fd)
    except BaseException:
        if kill_on_cancel:
            call.interrupt()
            await aio.wait_readable_shielded(fd, ABANDON_AFTER)
        else:
            await aio.wait_readable_shielded(fd)
        if call.done():
            call.result()  # hands the worker back (retiring, if interrupted); the outcome is moot
        else:
            call.abandon()
        raise


def _raise_shutdown_failures(
    failures: list[bytes], not_ended: int, killed: int = 0, exit_codes: Sequence[int] = ()
) -> None:
    problems = []
    if failures:
        problems.append(f"{len(failures)} worker(s) had a retire hook that raised")
    if exit_codes:
        codes = ", ".join(map(str, exit_codes))
        problems.append(f"{len(exit_codes)} worker process(es) exited non-zero ({codes})")
    if killed:
        problems.append(f"{killed} worker(s) were killed after the grace period")
    if not_ended:
        problems.append(f"{not_ended} worker(s) did not end within the grace period")
    if problems:
        cause = _outcome.rebuild_exception(failures[0]) if failures else None
        raise BrokenWorkerError("graceful shutdown failed: " + "; ".join(problems)) from cause


@asynccontextmanager
async def open_worker_context(
    idle_timeout: float = 600.0,
    init: Callable[[], object] = bool,
    retire: Callable[[], object] = bool,
    grace_period: float = 30.0,
    worker_type: WorkerType | str = WorkerType.SUBINTERPRETER,
) -> AsyncIterator[WorkerContext]:
    """Opens a worker context with its own workers and settings.

    Args:
        idle_timeout: Seconds an idle worker waits for a job before it ends (``math.inf``: never).
        init: Called with no arguments once in each worker, before its first job. MUST be
            picklable. If it raises, calls on that worker raise :class:`BrokenWorkerError`.
        retire: Called with no arguments after each job; a truthy result ends the worker. MUST be
            picklable. If it raises, the job's result still counts, the worker ends, and closing
            the context raises :class:`BrokenWorkerError`.
        grace_period: Seconds the workers get to end when the context closes (``math.inf``: no
            limit).
        worker_type: A :class:`WorkerType`.

    Raises:
        ValueError: a negative timeout, or an unknown worker type (``"fork"`` included: see
            :class:`WorkerType`).
        TypeError: a timeout that is not a number, or an ``init``/``retire`` that is not callable.
        WorkerTypeUnavailableError: the worker type cannot run here (the message says why).
        BrokenWorkerError: on exit, if workers failed to shut down cleanly.
    """
    ctx = WorkerContext._create(idle_timeout, init, retire, grace_period, worker_type)
    try:
        yield ctx
    finally:
        await ctx._aclose()


_default_context: WorkerContext | None = None
_default_context_lock = threading.Lock()


def _get_default_context() -> WorkerContext:
    global _default_context
    if _default_context is None:
        with _default_context_lock:
            if _default_context is None:
                _default_context = WorkerContext._create()
    return _default_context


async def run_sync(
    sync_fn: Callable[..., T],
    *args: object,
    kill_on_cancel: bool = False,
    cancellable: bool = False,
    limiter: Any = None,
) -> T:
    """Runs ``sync_fn(*args)`` in a worker of the default context and returns its result.

    Args:
        sync_fn: A synchronous callable. It and ``args`` MUST be picklable (functions of the
            main script are fine; lambdas and closures need cloudpickle installed).
        args: Positional arguments; use ``functools.partial`` for keyword arguments.
        kill_on_cancel: If the call is cancelled, interrupt the job and raise ``Cancelled``. A
            worker that does not stop within a second (stuck in C code) is abandoned. Without
            it, a cancelled call waits for the job and returns its result; the cancellation hits
            at the caller's next checkpoint.
        cancellable: Alias of ``kill_on_cancel`` (trio-parallel's older name).
        limiter: An async context manager bounding concurrent calls; default:
            :func:`current_default_worker_limiter`.

    Returns:
        What ``sync_fn`` returned.

    Raises:
        Whatever ``sync_fn`` raised (BaseExceptions included), with its cause/context chain and
        the worker's traceback as a note; the pickling error if arguments or result cannot be
        pickled; ``TypeError`` for an async function; :class:`BrokenWorkerError` if the worker
        failed; :class:`WorkerTypeUnavailableError` if the default worker type cannot run here.
    """
    return await _get_default_context().run_sync(
        sync_fn, *args, kill_on_cancel=kill_on_cancel, cancellable=cancellable, limiter=limiter
    )


def default_context_statistics() -> WorkerContextStatistics:
    """Statistics of the default context (eventually consistent across threads)."""
    if _default_context is None:
        return WorkerContextStatistics(idle_workers=0, running_workers=0)
    return _default_context.statistics()


@atexit.register
def _end_workers_at_exit() -> None:
    """Ends every subinterpreter worker before the interpreter finalizes: one still running at
    ``Py_FinalizeEx`` aborts the process.

    The default context closes within its grace period. What is left then (workers of contexts
    never closed, abandoned ones) is interrupted and gets ABANDON_AFTER to end; a worker still
    stuck in C code makes the process exit without finalizing (``os._exit(1)``) rather than
    abort."""
    if _default_context is not None:
        try:
            _default_context._close_blocking(_default_context.grace_period)
        except BrokenWorkerError as error:
            print(f"interpool: default worker context: {error}", file=sys.stderr)
    stuck = _interpool.end_all_subinterpreters(ABANDON_AFTER)
    if stuck:
        print(
            f"interpool: {stuck} subinterpreter worker(s) are stuck in C code at exit; "
            "exiting without finalization (os._exit(1)) to avoid an abort",
            file=sys.stderr,
        )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(1)
