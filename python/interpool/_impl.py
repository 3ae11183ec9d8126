"""The front end: worker contexts, the default context, and ``run_sync``, for trio and asyncio.

A call's path under trio, which decides interpool's latency (see docs/architecture.md):

1. a cancellation point, then the job is pickled here, in the caller's interpreter;
2. the limiter is taken (``acquire_nowait`` first: ``async with`` costs ~5 µs);
3. the Rust cache hands the job to the hottest idle worker, which is usually still spinning;
4. one schedule point (shielded, so it does not cancel a job that already started) overlaps
   the job, if no other call holds a token of the limiter; among other calls (a burst), the
   schedule point comes before step 2 instead, so no task yields while holding a token (for a
   ``trio.CapacityLimiter``; other limiters always overlap);
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
import contextvars
import datetime  # noqa: F401, 3.13.0: concurrent first imports of _datetime in subinterpreters crash
import math
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pickle import loads as pickle_loads
from typing import TYPE_CHECKING, Any, TypeVar

from . import _auto, _backends, _interpool, _outcome
from ._types import (
    BrokenWorkerError,
    WorkerContextStatistics,
    WorkerType,
    WorkerTypeInfo,
    WorkerTypeStatistics,
    WorkerTypeUnavailableError,
)

if TYPE_CHECKING:
    import trio
else:  # imported on first use: an asyncio program never imports trio
    trio = _backends.DeferredModule("trio", globals())

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

_default_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] | None = None  # made under trio


def current_default_worker_limiter() -> trio.CapacityLimiter | _backends.CapacityLimiter:
    """The limiter ``run_sync`` uses by default: one per ``trio.run`` (a ``trio.CapacityLimiter``)
    or per asyncio event loop (an :class:`interpool.AsyncioCapacityLimiter`), with
    ``os.cpu_count()`` tokens, shared by all worker contexts of that run or loop."""
    if _backends.current_library() != "trio":
        return _backends.asyncio_default_limiter()
    return _trio_default_limiter()


def _trio_default_limiter() -> trio.CapacityLimiter:
    global _default_limiter
    if _default_limiter is None:
        _default_limiter = trio.lowlevel.RunVar("interpool_default_limiter")
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


def _check_limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if not 1 <= value < 2**64:
        raise ValueError(f"{name} must be >= 1 (None for no limit), not {value!r}")
    return value


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
    if worker_type is WorkerType.AUTO:
        return worker_type
    for info in available_worker_types():
        if info.worker_type is worker_type and not info.available:
            raise WorkerTypeUnavailableError(info.reason)
    return worker_type


class WorkerContext:
    """A cache of workers with its own settings. Made by :func:`open_worker_context`; the default
    one serves :func:`run_sync`."""

    __slots__ = (
        "_auto",
        "_cache",
        "_closed",
        "_grace_period",
        "_idle_timeout",
        "_init",
        "_max_tasks_per_worker",
        "_max_worker_memory",
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
        worker_type: WorkerType | str = WorkerType.AUTO,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | None = None,
    ) -> WorkerContext:
        idle_timeout = _check_seconds("idle_timeout", idle_timeout)
        grace_period = _check_seconds("grace_period", grace_period)
        max_tasks_per_worker = _check_limit("max_tasks_per_worker", max_tasks_per_worker)
        max_worker_memory = _check_limit("max_worker_memory", max_worker_memory)
        for name, hook in (("init", init), ("retire", retire)):
            if not callable(hook):
                raise TypeError(f"{name} must be callable, not {type(hook).__name__}")
        worker_type = _check_worker_type(worker_type)
        self = object.__new__(cls)
        self._idle_timeout, self._grace_period = idle_timeout, grace_period
        self._init, self._retire, self._worker_type = init, retire, worker_type
        self._max_tasks_per_worker = max_tasks_per_worker
        self._max_worker_memory = max_worker_memory
        self._setup_hooks = (_outcome.dumps(init), _outcome.dumps(retire))
        if worker_type is WorkerType.AUTO:
            # One cache per available type; the AUTO decision picks one per call.
            self._auto = _auto.Auto(available_worker_types(), self._make_cache)
            self._cache = None
        else:
            self._auto = None
            self._cache = self._make_cache(worker_type)
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
    max_tasks_per_worker = property(
        lambda self: self._max_tasks_per_worker,
        doc="Jobs after which a worker is replaced by a fresh one (None: never).",
    )
    max_worker_memory = property(
        lambda self: self._max_worker_memory,
        doc="Bytes of memory above which a worker is replaced after a job (None: no limit).",
    )

    def __repr__(self) -> str:
        return (
            f"<WorkerContext {self._worker_type.value} idle_timeout={self._idle_timeout} "
            f"grace_period={self._grace_period}{' closed' if self._closed else ''}>"
        )

    def _make_cache(self, worker_type: WorkerType) -> Any:
        return _interpool.Cache(
            worker_type.value,
            self._idle_timeout,
            self._worker_setup,
            self._max_tasks_per_worker,
            self._max_worker_memory,
        )

    def _caches(self) -> list[Any]:
        return [self._cache] if self._auto is None else list(self._auto.caches.values())

    def _cache_for(self, sync_fn: object, kill_on_cancel: bool) -> Any:
        """The cache that serves this call: the context's own, or AUTO's choice."""
        auto = self._auto
        if auto is None:
            return self._cache
        if auto.routes:
            return auto.route(sync_fn, kill_on_cancel)
        return auto.best[kill_on_cancel]

    def pin(self, target: object, worker_type: WorkerType | str | None) -> None:
        """Sends every call of ``target`` (a callable, or a module name: its submodules too) to
        ``worker_type`` in this AUTO context, overriding AUTO's choice and its fallback
        (``None`` removes the pin). For packages that load in a subinterpreter but misbehave
        later there (polars, PyYAML's silent pure-Python mode): ``ctx.pin("polars",
        WorkerType.FORKSERVER)``.

        Raises:
            RuntimeError: this context is not AUTO (its type is already explicit).
            WorkerTypeUnavailableError: the type cannot run here.
        """
        if self._auto is None:
            raise RuntimeError(
                f"pinning needs a WorkerType.AUTO context; this one is {self._worker_type.value}"
            )
        if worker_type is not None:
            worker_type = _check_worker_type(worker_type)
            if worker_type is WorkerType.AUTO:
                worker_type = None
        self._auto.pin(target, worker_type)

    def _failed(
        self,
        cache: Any,
        kind: int,
        data: bytes,
        reason: tuple[int, str] | None,
        fn: object,
        kill: bool,
    ) -> Any:
        """A LOAD_ERROR or BROKEN outcome: the cache where AUTO re-runs the job; else raises it
        (with a hint, when a module refused to load in a subinterpreter)."""
        if self._auto is not None:
            retry = self._auto.fallback(cache, kind, data, reason, fn, kill)
            if retry is not None:
                return retry
        if kind == _outcome.LOAD_ERROR:
            exc = _outcome.load_error(data)
            if self._is_subinterpreter(cache) and _auto.refusal(exc) is not None:
                exc.add_note(_auto.HINT)
            raise exc
        return _outcome.unwrap(kind, data, reason)  # type: ignore[return-value]

    def _loaded_elsewhere(self, fn: object, kind: int, load_error: bytes) -> None:
        """The outcome (``kind``) of a job re-run after a subinterpreter's ``load_error``."""
        if kind != _outcome.LOAD_ERROR and kind != _outcome.BROKEN:
            self._auto.loaded_elsewhere(fn, load_error)  # type: ignore[union-attr]

    def _is_subinterpreter(self, cache: Any) -> bool:
        if self._auto is None:
            return self._worker_type is WorkerType.SUBINTERPRETER
        return cache is self._auto.caches.get(WorkerType.SUBINTERPRETER)

    def _worker_setup(self) -> bytes:
        """A new worker's setup: the parent's sys.path, argv and main script as of now, and its
        multiprocessing authkey once multiprocessing is in use (as its children inherit it)."""
        main_kind, main_ref = _outcome.main_reference()
        init, retire = self._setup_hooks
        process = sys.modules.get("multiprocessing.process")
        authkey = None if process is None else bytes(process.current_process().authkey)
        return _outcome.dumps(
            (list(sys.path), list(sys.argv), main_kind, main_ref, init, retire, None, authkey)
        )

    def statistics(self) -> WorkerContextStatistics:
        """How many workers are idle and how many calls are running, in all, and ``by_type``:
        per worker type, the same counts plus AUTO's latency estimate, fallbacks, modules routed
        away and pins."""
        if self._auto is None:
            idle, running = self._cache.statistics()
            one = WorkerTypeStatistics(
                self._worker_type, idle, running, self._cache.latency_estimate()
            )
            by_type = {self._worker_type: one}
        else:
            by_type = self._auto.statistics()
        return WorkerContextStatistics(
            idle_workers=sum(s.idle_workers for s in by_type.values()),
            running_workers=sum(s.running_workers for s in by_type.values()),
            by_type=by_type,
        )

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
        await trio.lowlevel.checkpoint_if_cancelled()
        payload = _outcome.dumps_job(sync_fn, args)
        kill_on_cancel = kill_on_cancel or cancellable
        # The AUTO decision, inlined: no route known, one list read (see _auto.py).
        auto = self._auto
        if auto is None:
            cache = self._cache
        elif auto.routes:
            cache = auto.route(sync_fn, kill_on_cancel)
        else:
            cache = auto.best[kill_on_cancel]
        if limiter is None:
            limiter = _trio_default_limiter()
        if type(limiter) is trio.CapacityLimiter:
            # The call's schedule point. Alone, it yields while its job runs (see _run). Among
            # other calls (a token is out), it yields before taking a token instead, and once
            # more before it parks on the limiter: yielding with a token held makes every call
            # that runs meanwhile park on the limiter, and trio wakes those one per pass of its
            # loop, several times what a trivial job costs, while the calls that merely yielded
            # all take a token in turn in the next pass.
            overlap = limiter.borrowed_tokens == 0
            if overlap:
                try:
                    limiter.acquire_nowait()
                except trio.WouldBlock:
                    await limiter.acquire()
                    overlap = False
            else:
                await trio.lowlevel.checkpoint()
                try:
                    limiter.acquire_nowait()
                except trio.WouldBlock:
                    await trio.lowlevel.checkpoint()
                    try:
                        limiter.acquire_nowait()
                    except trio.WouldBlock:
                        await limiter.acquire()
            try:
                return await self._run(cache, payload, kill_on_cancel, sync_fn, overlap)
            finally:
                limiter.release()
        async with limiter:
            return await self._run(cache, payload, kill_on_cancel, sync_fn, True)

    async def _run(
        self, cache: Any, payload: Any, kill_on_cancel: bool, fn: object, overlap: bool
    ) -> Any:
        """Submits the job and waits for its outcome. ``overlap``: yield to trio once right
        after submitting, while the job runs (the call has made its schedule point otherwise)."""
        if self._closed:
            raise trio.ClosedResourceError("this worker context is closed")
        running = self._running
        running.append(None)
        load_error = None  # the records of a subinterpreter's load error being retried
        try:
            while True:
                call = cache.submit(payload)
                if overlap:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                if not call.spin(_SPIN_MICROSECONDS):
                    if self._auto is not None:
                        self._auto.note_parked()
                    await _wait(call, kill_on_cancel)
                kind, data, reason = call.result()
                if load_error is not None:
                    self._loaded_elsewhere(fn, kind, load_error)
                    load_error = None
                if kind == _outcome.VALUE:
                    return pickle_loads(data)
                if kind == _outcome.VALUE_BUFFERS:
                    return pickle_loads(data[0], buffers=data[1])
                if kind == _outcome.RAISED:
                    break
                retry = self._failed(cache, kind, data, reason, fn, kill_on_cancel)
                if retry is None:
                    break
                # Re-run once on a process, still counted as running (a closing context waits
                # for it); a second load error there is the call's.
                load_error = data if kind == _outcome.LOAD_ERROR else None
                cache = retry
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
        payload = _outcome.dumps_job(sync_fn, args)
        cache = self._cache_for(sync_fn, kill_on_cancel)
        if limiter is None:
            limiter = _backends.asyncio_default_limiter()
        if type(limiter) is _backends.CapacityLimiter:
            if not limiter.try_acquire():
                await limiter.acquire()
            try:
                return await self._run_asyncio(cache, payload, kill_on_cancel, sync_fn)
            finally:
                limiter.release()
        async with limiter:
            return await self._run_asyncio(cache, payload, kill_on_cancel, sync_fn)

    async def _run_asyncio(self, cache: Any, payload: Any, kill_on_cancel: bool, fn: object) -> Any:
        if self._closed:
            raise trio.ClosedResourceError("this worker context is closed")
        running = self._running
        running.append(None)
        load_error = None  # the records of a subinterpreter's load error being retried
        try:
            while True:
                call = cache.submit(payload)
                if not call.spin(_SPIN_MICROSECONDS):
                    if self._auto is not None:
                        self._auto.note_parked()
                    await _wait_asyncio(call, kill_on_cancel)
                kind, data, reason = call.result()
                if load_error is not None:
                    self._loaded_elsewhere(fn, kind, load_error)
                    load_error = None
                if kind == _outcome.VALUE:
                    return pickle_loads(data)
                if kind == _outcome.VALUE_BUFFERS:
                    return pickle_loads(data[0], buffers=data[1])
                if kind == _outcome.RAISED:
                    break
                retry = self._failed(cache, kind, data, reason, fn, kill_on_cancel)
                if retry is None:
                    break
                load_error = data if kind == _outcome.LOAD_ERROR else None
                cache = retry
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
        for cache in self._caches():
            cache.close()
        return await backend.run_in_thread(self._wait_closed, self._grace_period)

    def _wait_closed(self, grace_period: float) -> tuple[list[bytes], int, int, list[int]]:
        """Every cache's shutdown report, summed; the caches share the grace period."""
        failures: list[bytes] = []
        not_ended = killed = 0
        codes: list[int] = []
        deadline = time.monotonic() + grace_period
        for cache in self._caches():
            left = max(0.0, deadline - time.monotonic()) if math.isfinite(grace_period) else None
            f, n, k, c = cache.wait_closed(left)
            failures += f
            not_ended += n
            killed += k
            codes += c
        return failures, not_ended, killed, codes

    def _close_blocking(self, grace_period: float) -> None:
        """Closes without trio (atexit). Running calls cannot exist then."""
        self._closed = True
        for cache in self._caches():
            cache.close()
        _raise_shutdown_failures(*self._wait_closed(grace_period))


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
            await trio.lowlevel.wait_readable(fd)
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    except BaseException:
        call.interrupt()
        with trio.move_on_after(ABANDON_AFTER, shield=True):
            await trio.lowlevel.wait_readable(fd)
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
    worker_type: WorkerType | str = WorkerType.AUTO,
    max_tasks_per_worker: int | None = None,
    max_worker_memory: int | None = None,
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
        max_tasks_per_worker: A worker is replaced by a fresh one after this many jobs
            (``ProcessPoolExecutor``'s ``max_tasks_per_child``; None: never).
        max_worker_memory: A worker whose memory is above this many bytes after a job is
            replaced by a fresh one (None: no limit): a process worker's RSS (Linux), a
            subinterpreter's arenas of its own object allocator. Like ``retire``, both are
            checked after the caller has its result.

    Raises:
        ValueError: a negative timeout, an unknown worker type (``"fork"`` included: see
            :class:`WorkerType`), or a recycling limit below 1.
        TypeError: a timeout that is not a number, an ``init``/``retire`` that is not callable,
            or a recycling limit that is not an int or None.
        WorkerTypeUnavailableError: the worker type cannot run here (the message says why).
        BrokenWorkerError: on exit, if workers failed to shut down cleanly.
    """
    ctx = WorkerContext._create(
        idle_timeout,
        init,
        retire,
        grace_period,
        worker_type,
        max_tasks_per_worker,
        max_worker_memory,
    )
    try:
        yield ctx
    finally:
        await ctx._aclose()


_default_context: WorkerContext | None = None
_default_context_lock = threading.Lock()
# Settings of the default context made on first use (configure_default_context changes them).
_default_settings: dict[str, Any] = {}
# Default contexts replaced by configure_default_context, closed at exit.
_replaced_contexts: list[WorkerContext] = []
# atexit_shutdown_grace_period (1.2 API): the default context's grace period at exit, if set.
_atexit_grace_period: float | None = None


def _get_default_context() -> WorkerContext:
    """The global default context (made on first use), ignoring cache scopes."""
    global _default_context
    if _default_context is None:
        with _default_context_lock:
            if _default_context is None:
                _default_context = WorkerContext._create(**_default_settings)
    return _default_context


# cache_scope's context: under trio a tricycle.TreeVar, as trio-parallel's, so a scope follows
# trio's task tree (a task sees the scope of the nursery it runs in, whoever started it), made on
# first use; under asyncio a contextvar (asyncio has no task tree: a task sees the scope of the
# task that created it). ``_trio_scopes`` holds one entry per trio scope open in the process:
# while there is none, looking the TreeVar up is skipped.
_scope_tree: Any = None
_trio_scopes: list[None] = []
_scope_var: contextvars.ContextVar[WorkerContext | None] = contextvars.ContextVar(
    "interpool_cache_scope", default=None
)


def _scoped_context() -> WorkerContext | None:
    """The innermost :func:`cache_scope`'s context here, or None."""
    if _trio_scopes:
        try:
            return _scope_tree.get()
        except RuntimeError:  # no trio here (asyncio in a trio worker thread): contextvars
            pass
    return _scope_var.get()


def _current_default_context() -> WorkerContext:
    """The context ``run_sync`` uses here: the innermost open :func:`cache_scope`, else the
    global default."""
    scoped = _scoped_context()
    return _get_default_context() if scoped is None else scoped


def _check_main_thread(name: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(f"{name} must be called from the main thread")


def configure_default_context(
    idle_timeout: float = 600.0,
    init: Callable[[], object] = bool,
    retire: Callable[[], object] = bool,
    grace_period: float = 30.0,
    worker_type: WorkerType | str = WorkerType.AUTO,
    max_tasks_per_worker: int | None = None,
    max_worker_memory: int | None = None,
) -> None:
    """Replaces the default context (of :func:`run_sync`, :func:`amap`, ...) with one of these
    settings; the arguments are :func:`open_worker_context`'s. Meant to be called once, before
    the first call. A previous default context that still has workers is left to finish (with a
    ``UserWarning``) and closed at exit.

    Raises:
        RuntimeError: called off the main thread.
        ValueError, TypeError, WorkerTypeUnavailableError: as :func:`open_worker_context`.
    """
    global _default_context, _default_settings
    _check_main_thread("configure_default_context")
    settings = {
        "idle_timeout": idle_timeout,
        "init": init,
        "retire": retire,
        "grace_period": grace_period,
        "worker_type": worker_type,
        "max_tasks_per_worker": max_tasks_per_worker,
        "max_worker_memory": max_worker_memory,
    }
    context = WorkerContext._create(**settings)  # validates
    with _default_context_lock:
        old, _default_context, _default_settings = _default_context, context, settings
    if old is not None:
        stats = old.statistics()
        if stats.idle_workers or stats.running_workers:
            import warnings

            warnings.warn(
                "Previous default context leaving zombie workers behind",
                UserWarning,
                stacklevel=2,
            )
        _replaced_contexts.append(old)


def atexit_shutdown_grace_period(grace_period: float = 30.0) -> None:
    """trio-parallel 1.2's API, kept: the seconds the default context's workers get to end at
    exit. Deprecated there in favour of ``configure_default_context(grace_period=...)``, which
    also sets the grace period of a context closed at exit.

    Raises:
        ValueError, TypeError: as a ``grace_period`` of :func:`open_worker_context`.
    """
    global _atexit_grace_period
    import warnings

    grace_period = _check_seconds("grace_period", grace_period)
    warnings.warn(
        "atexit_shutdown_grace_period() is trio-parallel 1.2's API; use "
        "configure_default_context(grace_period=...)",
        DeprecationWarning,
        stacklevel=2,
    )
    _atexit_grace_period = grace_period


@asynccontextmanager
async def cache_scope(
    idle_timeout: float = 600.0,
    init: Callable[[], object] = bool,
    retire: Callable[[], object] = bool,
    grace_period: float = 30.0,
    worker_type: WorkerType | str = WorkerType.AUTO,
    max_tasks_per_worker: int | None = None,
    max_worker_memory: int | None = None,
) -> AsyncIterator[None]:
    """Within this block, and in the tasks started in it, :func:`run_sync` (and ``amap``) use a
    new worker context of these settings (:func:`open_worker_context`'s) instead of the default
    one; it closes on exit as ``open_worker_context``'s does. Explicit ``ctx.run_sync`` calls are
    not affected. Yields None.

    Under trio the scope follows the task tree, as trio-parallel's (a ``tricycle.TreeVar``): a
    task uses the scope of the nursery it runs in, whoever started it, so a task started into a
    nursery opened inside the block uses the scope, and one started from inside the block into a
    nursery opened outside it does not (not even before its ``task_status.started()``). Under
    asyncio, which has no task tree, the scope follows contextvars: tasks created inside the
    block use it."""
    global _scope_tree
    async with open_worker_context(
        idle_timeout,
        init,
        retire,
        grace_period,
        worker_type,
        max_tasks_per_worker,
        max_worker_memory,
    ) as ctx:
        if _backends.current_library() != "trio":
            token = _scope_var.set(ctx)
            try:
                yield
            finally:
                _scope_var.reset(token)
            return
        if _scope_tree is None:
            import tricycle

            _scope_tree = tricycle.TreeVar("interpool_cache_scope", default=None)
        _trio_scopes.append(None)
        try:
            with _scope_tree.being(ctx):
                yield
        finally:
            _trio_scopes.pop()


def pin(target: object, worker_type: WorkerType | str | None) -> None:
    """:meth:`WorkerContext.pin` on the current default context (the innermost
    :func:`cache_scope`, else the global default)."""
    _current_default_context().pin(target, worker_type)


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
    scoped = _scope_var.get() if not _trio_scopes else _scoped_context()
    ctx = _get_default_context() if scoped is None else scoped
    return await ctx.run_sync(
        sync_fn, *args, kill_on_cancel=kill_on_cancel, cancellable=cancellable, limiter=limiter
    )


def default_context_statistics() -> WorkerContextStatistics:
    """Statistics of the current default context: the innermost :func:`cache_scope`, else the
    global default (eventually consistent across threads)."""
    scoped = _scoped_context()
    if scoped is not None:
        return scoped.statistics()
    if _default_context is None:
        return WorkerContextStatistics(idle_workers=0, running_workers=0)
    return _default_context.statistics()


def _warn_before_fork() -> None:
    """``os.register_at_fork`` hook: a fork while subinterpreters exist aborts the child."""
    live = _interpool.live_subinterpreters()
    if live:
        import warnings

        warnings.warn(
            f"fork() while {live} interpool subinterpreter worker(s) exist: CPython aborts the "
            "child process. Use the 'forkserver' or 'spawn' start method (multiprocessing."
            "set_start_method, or mp_context= for ProcessPoolExecutor), or end the workers "
            "first (leave their worker context; the default context's idle workers end after "
            "its idle_timeout). See docs/limits.md.",
            RuntimeWarning,
            stacklevel=2,
        )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_warn_before_fork)


@atexit.register
def _end_workers_at_exit() -> None:
    """Ends every subinterpreter worker before the interpreter finalizes: one still running at
    ``Py_FinalizeEx`` aborts the process.

    The default context closes within its grace period. What is left then (workers of contexts
    never closed, abandoned ones) is interrupted and gets ABANDON_AFTER to end; a worker still
    stuck in C code makes the process exit without finalizing (``os._exit(1)``) rather than
    abort."""
    for context in [*_replaced_contexts, _default_context]:
        if context is None or context._closed:
            continue
        grace = context.grace_period
        if context is _default_context and _atexit_grace_period is not None:
            grace = _atexit_grace_period
        try:
            context._close_blocking(grace)
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
