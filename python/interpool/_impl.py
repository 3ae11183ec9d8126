"""The default context and the module-level API: ``run_sync``, ``open_worker_context``,
``cache_scope``, ``configure_default_context``, ``pin``, the default limiter and what happens at
exit and fork.

A context and its settings are ``_context.py``'s; the call path of ``run_sync`` is
``_call.py``'s, for trio and asyncio alike.
"""

from __future__ import annotations

import atexit
import contextvars
import datetime  # noqa: F401, 3.13.0: concurrent first imports of _datetime in subinterpreters crash
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from . import _backends, _call, _interpool
from ._context import (
    ContextOptions,
    WorkerContext,
    check_seconds,
    core_of,
    takes_options,
)
from ._types import BrokenWorkerError, WorkerContextStatistics, WorkerType

if TYPE_CHECKING:
    import trio

T = TypeVar("T")

# Results may name classes of the parent's main script as ``__mp_main__`` (workers load the
# script under that name), as multiprocessing arranges too.
sys.modules.setdefault("__mp_main__", sys.modules["__main__"])


def current_default_worker_limiter() -> trio.CapacityLimiter | _backends.CapacityLimiter:
    """The limiter ``run_sync`` uses by default: one per ``trio.run`` (a ``trio.CapacityLimiter``)
    or per asyncio event loop (an :class:`interpool.AsyncioCapacityLimiter`), with
    ``os.cpu_count()`` tokens, shared by all worker contexts of that run or loop."""
    return _backends.current().default_limiter()


@asynccontextmanager
async def _opened(make_options: Callable[[], ContextOptions]) -> AsyncIterator[WorkerContext]:
    ctx = WorkerContext._create(make_options())
    try:
        yield ctx
    finally:
        await core_of(ctx).aclose()


@takes_options(ContextOptions)
def open_worker_context(
    make_options: Callable[[], ContextOptions],
) -> AbstractAsyncContextManager[WorkerContext]:
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
    return _opened(make_options)


_default_context: WorkerContext | None = None
_default_context_lock = threading.Lock()
# Settings of the default context made on first use (configure_default_context changes them).
_default_options = ContextOptions()
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
                _default_context = WorkerContext._create(_default_options)
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
            scoped: WorkerContext | None = _scope_tree.get()
            return scoped
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


@takes_options(ContextOptions)
def configure_default_context(make_options: Callable[[], ContextOptions]) -> None:
    """Replaces the default context (of :func:`run_sync`, :func:`amap`, ...) with one of these
    settings; the arguments are :func:`open_worker_context`'s. Meant to be called once, before
    the first call. A previous default context that still has workers is left to finish (with a
    ``UserWarning``) and closed at exit.

    Raises:
        RuntimeError: called off the main thread.
        ValueError, TypeError, WorkerTypeUnavailableError: as :func:`open_worker_context`.
    """
    global _default_context, _default_options
    _check_main_thread("configure_default_context")
    options = make_options()
    context = WorkerContext._create(options)
    with _default_context_lock:
        old, _default_context, _default_options = _default_context, context, options
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

    grace_period = check_seconds("grace_period", grace_period)
    warnings.warn(
        "atexit_shutdown_grace_period() is trio-parallel 1.2's API; use "
        "configure_default_context(grace_period=...)",
        DeprecationWarning,
        stacklevel=2,
    )
    _atexit_grace_period = grace_period


@takes_options(ContextOptions)
@asynccontextmanager
async def cache_scope(make_options: Callable[[], ContextOptions]) -> AsyncIterator[None]:
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
    async with _opened(make_options) as ctx:
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
    return await _call.run_sync(
        ctx, sync_fn, *args, kill_on_cancel=kill_on_cancel, cancellable=cancellable, limiter=limiter
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
        if context is None or core_of(context).closed:
            continue
        grace = context.grace_period
        if context is _default_context and _atexit_grace_period is not None:
            grace = _atexit_grace_period
        try:
            core_of(context).close_blocking(grace)
        except BrokenWorkerError as error:
            print(f"interpool: default worker context: {error}", file=sys.stderr)
    stuck = _interpool.end_all_subinterpreters(_call.ABANDON_AFTER)
    if stuck:
        print(
            f"interpool: {stuck} subinterpreter worker(s) are stuck in C code at exit; "
            "exiting without finalization (os._exit(1)) to avoid an abort",
            file=sys.stderr,
        )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(1)
