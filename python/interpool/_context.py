"""Worker contexts: their settings, described once, and the machinery behind them.

- :class:`ContextOptions` is the one description of a context's settings: its constructor's
  parameters are the names and defaults, and it validates them. :func:`takes_options` gives
  ``open_worker_context``, ``cache_scope`` and ``configure_default_context`` that signature, so
  none of them lists the settings again; the Executor builds one from its own arguments.
- :class:`ContextCore` is what a context is to the rest of the package: the Rust worker caches
  (one, or one per type under AUTO), AUTO's choice and fallbacks, the count of calls in
  progress, and closing. The call paths (``_call.py``, ``_map.py``, ``_executor.py``) use it
  through its methods; the Executor owns one without a :class:`WorkerContext` around it.
- :class:`WorkerContext` is the public object: the settings, ``run_sync`` (see ``_call.py``),
  ``pin`` and ``statistics``, over a core that :func:`core_of` hands to the package.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import _auto, _backends, _call, _interpool, _outcome
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

P = ParamSpec("P")
R = TypeVar("R")

# One cache's shutdown report: retire-hook failures (exception records), workers that did not
# end, workers killed after the grace period, non-zero exit codes.
ShutdownReport = tuple[list[bytes], int, int, list[int]]


def available_worker_types() -> list[WorkerTypeInfo]:
    """Every worker type with its availability here (and the reason if unavailable)."""
    return [
        WorkerTypeInfo(WorkerType(name), available, reason, hard_kill, crash_isolation)
        for name, available, reason, hard_kill, crash_isolation in _interpool.worker_type_info()
    ]


def check_seconds(name: str, value: object) -> float:
    """``value`` as a number of seconds >= 0 (``math.inf`` allowed); else TypeError/ValueError
    naming ``name``."""
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


def check_worker_type(worker_type: object) -> WorkerType:
    """``worker_type`` as a :class:`WorkerType` that can run here (AUTO always can)."""
    if worker_type == "fork":
        raise ValueError(
            "there is no 'fork' worker type: forking a multi-threaded process (interpool's host "
            "always has threads) can deadlock or corrupt the child; use "
            "WorkerType.FORKSERVER (fast starts, preloaded modules) or WorkerType.SPAWN"
        )
    try:
        checked = WorkerType(worker_type)
    except ValueError:
        choices = ", ".join(repr(t.value) for t in WorkerType)
        raise ValueError(f"unknown worker type {worker_type!r}; choose one of {choices}") from None
    if checked is WorkerType.AUTO:
        return checked
    for info in available_worker_types():
        if info.worker_type is checked and not info.available:
            raise WorkerTypeUnavailableError(info.reason)
    return checked


class ContextOptions:
    """A worker context's settings, validated (``open_worker_context`` documents each). The
    parameters of this constructor are the one list of them, with their defaults."""

    __slots__ = (
        "grace_period",
        "idle_timeout",
        "init",
        "max_tasks_per_worker",
        "max_worker_memory",
        "retire",
        "worker_type",
    )

    def __init__(
        self,
        idle_timeout: float = 600.0,
        init: Callable[[], object] = bool,
        retire: Callable[[], object] = bool,
        grace_period: float = 30.0,
        worker_type: WorkerType | str = WorkerType.AUTO,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | None = None,
    ) -> None:
        self.idle_timeout = check_seconds("idle_timeout", idle_timeout)
        self.grace_period = check_seconds("grace_period", grace_period)
        self.max_tasks_per_worker = _check_limit("max_tasks_per_worker", max_tasks_per_worker)
        self.max_worker_memory = _check_limit("max_worker_memory", max_worker_memory)
        for name, hook in (("init", init), ("retire", retire)):
            if not callable(hook):
                raise TypeError(f"{name} must be callable, not {type(hook).__name__}")
        self.init, self.retire = init, retire
        self.worker_type = check_worker_type(worker_type)


def takes_options(
    options: Callable[P, ContextOptions],
) -> Callable[[Callable[[Callable[[], ContextOptions]], R]], Callable[P, R]]:
    """Gives a function the settings' signature (that of ``options``, i.e. ``ContextOptions``)
    instead of listing them again: ``f(**settings)`` calls ``f(make_options)``, where
    ``make_options()`` validates the settings and returns them. The function calls it where it
    used to check its arguments (an ``asynccontextmanager`` on entry)."""

    def decorate(fn: Callable[[Callable[[], ContextOptions]], R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def with_settings(*args: P.args, **kwargs: P.kwargs) -> R:
            return fn(functools.partial(options, *args, **kwargs))

        returns = inspect.signature(fn).return_annotation
        with_settings.__signature__ = inspect.signature(options).replace(  # type: ignore[attr-defined]
            return_annotation=returns
        )
        return with_settings

    return decorate


def raise_shutdown_failures(
    failures: list[bytes], not_ended: int, killed: int = 0, exit_codes: Sequence[int] = ()
) -> None:
    """Raises :class:`BrokenWorkerError` summing up a shutdown report, if anything failed."""
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


class ContextCore:
    """A context's workers and calls, as the package's call paths see them.

    The call path of ``run_sync`` (``_call.py``) reads ``closed``, ``auto``, ``cache``,
    ``running`` and ``on_drained`` directly (it is the hot path); everything else goes through
    the methods."""

    __slots__ = ("auto", "cache", "closed", "on_drained", "options", "running", "setup_hooks")

    def __init__(self, options: ContextOptions) -> None:
        self.options = options
        self.setup_hooks = (_outcome.dumps(options.init), _outcome.dumps(options.retire))
        self.auto: _auto.Auto | None
        self.cache: Any
        if options.worker_type is WorkerType.AUTO:
            # One cache per available type; the AUTO decision picks one per call.
            self.auto = _auto.Auto(available_worker_types(), self._make_cache)
            self.cache = None
        else:
            self.auto = None
            self.cache = self._make_cache(options.worker_type)
        self.closed = False
        # One entry per call in progress. Event loops in several threads may share a context:
        # list.append/pop are atomic, ``+= 1`` on an attribute is not.
        self.running: list[None] = []
        # Set by aclose while it waits for running calls; callable from any thread.
        self.on_drained: Callable[[], None] | None = None

    def _make_cache(self, worker_type: WorkerType) -> Any:
        options = self.options
        return _interpool.Cache(
            worker_type.value,
            options.idle_timeout,
            self._worker_setup,
            options.max_tasks_per_worker,
            options.max_worker_memory,
        )

    def _worker_setup(self) -> bytes:
        """A new worker's setup: the parent's sys.path, argv and main script as of now, and its
        multiprocessing authkey once multiprocessing is in use (as its children inherit it)."""
        main_kind, main_ref = _outcome.main_reference()
        init, retire = self.setup_hooks
        process = sys.modules.get("multiprocessing.process")
        authkey = None if process is None else bytes(process.current_process().authkey)
        return _outcome.dumps(
            (list(sys.path), list(sys.argv), main_kind, main_ref, init, retire, None, authkey)
        )

    def caches(self) -> list[Any]:
        """Every Rust worker cache of the context."""
        return [self.cache] if self.auto is None else list(self.auto.caches.values())

    # --- calls -------------------------------------------------------------------------------

    def cache_for(self, fn: object, kill_on_cancel: bool) -> Any:
        """The cache that serves a call of ``fn``: the context's own, or AUTO's choice."""
        auto = self.auto
        if auto is None:
            return self.cache
        if auto.routes:
            return auto.route(fn, kill_on_cancel)
        return auto.best[kill_on_cancel]

    @property
    def may_fall_back(self) -> bool:
        """Whether a job that could not load may be re-run elsewhere (AUTO): a call path keeps
        the payload until the outcome is taken."""
        return self.auto is not None

    def fallback(
        self,
        cache: Any,
        kind: int,
        data: bytes,
        reason: tuple[int, str] | None,
        fn: object,
        kill: bool,
    ) -> Any:
        """For a LOAD_ERROR or BROKEN outcome of a job on ``cache``: the cache where AUTO
        re-runs it, or None."""
        if self.auto is None:
            return None
        return self.auto.fallback(cache, kind, data, reason, fn, kill)

    def failed(
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
        retry = self.fallback(cache, kind, data, reason, fn, kill)
        if retry is not None:
            return retry
        if kind == _outcome.LOAD_ERROR:
            exc = _outcome.load_error(data)
            if self._is_subinterpreter(cache) and _auto.refusal(data) is not None:
                exc.add_note(_auto.HINT)
            raise exc
        return _outcome.unwrap(kind, data, reason)

    def loaded_elsewhere(self, fn: object, kind: int, load_error: bytes) -> None:
        """The outcome (``kind``) of a job re-run after a subinterpreter's ``load_error``."""
        if kind != _outcome.LOAD_ERROR and kind != _outcome.BROKEN:
            self.auto.loaded_elsewhere(fn, load_error)  # type: ignore[union-attr]

    def _is_subinterpreter(self, cache: Any) -> bool:
        if self.auto is None:
            return self.options.worker_type is WorkerType.SUBINTERPRETER
        return cache is self.auto.caches.get(WorkerType.SUBINTERPRETER)

    def call_started(self) -> None:
        """Counts a call in progress: closing the context waits until it ends."""
        self.running.append(None)

    def call_ended(self) -> None:
        """The end of a call counted by :meth:`call_started`."""
        self.running.pop()
        if self.on_drained is not None and not self.running:
            self.on_drained()

    # --- the rest ----------------------------------------------------------------------------

    def pin(self, target: object, worker_type: WorkerType | str | None) -> None:
        """:meth:`WorkerContext.pin`."""
        if self.auto is None:
            raise RuntimeError(
                "pinning needs a WorkerType.AUTO context; this one is "
                f"{self.options.worker_type.value}"
            )
        pinned = None if worker_type is None else check_worker_type(worker_type)
        self.auto.pin(target, None if pinned is WorkerType.AUTO else pinned)

    def statistics(self) -> WorkerContextStatistics:
        """:meth:`WorkerContext.statistics`."""
        if self.auto is None:
            worker_type = self.options.worker_type
            idle, running = self.cache.statistics()
            one = WorkerTypeStatistics(worker_type, idle, running, self.cache.latency_estimate())
            by_type = {worker_type: one}
        else:
            by_type = self.auto.statistics()
        return WorkerContextStatistics(
            idle_workers=sum(s.idle_workers for s in by_type.values()),
            running_workers=sum(s.running_workers for s in by_type.values()),
            by_type=by_type,
        )

    async def aclose(self) -> None:
        """Waits for running calls, then ends the workers within the grace period; immune to
        cancellation (under asyncio a ``CancelledError`` that arrived meanwhile is raised after)."""
        self.closed = True
        backend = _backends.current()
        report = await backend.shielded(self._drain_and_close, backend)
        raise_shutdown_failures(*report)

    async def _drain_and_close(self, backend: Any) -> ShutdownReport:
        if self.running:
            # The last call may end in another thread's event loop: the signal is thread-safe.
            wait, self.on_drained = backend.threadsafe_event()
            if not self.running:  # it ended before the signal was in place
                self.on_drained()
            await wait()
        for cache in self.caches():
            cache.close()
        return await backend.run_in_thread(self._wait_closed, self.options.grace_period)  # type: ignore[no-any-return]

    def _wait_closed(self, grace_period: float) -> ShutdownReport:
        """Every cache's shutdown report, summed; the caches share the grace period."""
        failures: list[bytes] = []
        not_ended = killed = 0
        codes: list[int] = []
        deadline = time.monotonic() + grace_period
        for cache in self.caches():
            left = max(0.0, deadline - time.monotonic()) if math.isfinite(grace_period) else None
            f, n, k, c = cache.wait_closed(left)
            failures += f
            not_ended += n
            killed += k
            codes += c
        return failures, not_ended, killed, codes

    def close_blocking(self, grace_period: float) -> None:
        """Closes without an event loop (at exit, or in an Executor's watcher thread, once no
        call is running), giving the workers ``grace_period`` seconds to end."""
        self.closed = True
        for cache in self.caches():
            cache.close()
        raise_shutdown_failures(*self._wait_closed(grace_period))


def _setting(name: str, doc: str) -> Any:
    """A read-only property of a context: its setting ``name``."""
    return property(operator.attrgetter(f"_core.options.{name}"), doc=doc)


class WorkerContext:
    """A cache of workers with its own settings. Made by :func:`open_worker_context`; the default
    one serves :func:`run_sync`."""

    __slots__ = ("_core",)
    _core: ContextCore

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            f"{type(self).__name__} has no public constructor; use interpool.open_worker_context()"
        )

    @classmethod
    def _create(cls, options: ContextOptions) -> WorkerContext:
        self = object.__new__(cls)
        self._core = ContextCore(options)
        return self

    idle_timeout = _setting(
        "idle_timeout", "Seconds an idle worker waits for a job before it ends."
    )
    init = _setting("init", "Called once in each worker before its first job.")
    retire = _setting("retire", "Called after each job; truthy ends the worker.")
    grace_period = _setting("grace_period", "Seconds workers get to end when the context closes.")
    worker_type = _setting("worker_type", "The :class:`WorkerType` of the workers.")
    max_tasks_per_worker = _setting(
        "max_tasks_per_worker",
        "Jobs after which a worker is replaced by a fresh one (None: never).",
    )
    max_worker_memory = _setting(
        "max_worker_memory",
        "Bytes of memory above which a worker is replaced after a job (None: no limit).",
    )

    def __repr__(self) -> str:
        options = self._core.options
        return (
            f"<WorkerContext {options.worker_type.value} idle_timeout={options.idle_timeout} "
            f"grace_period={options.grace_period}{' closed' if self._core.closed else ''}>"
        )

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
        self._core.pin(target, worker_type)

    def statistics(self) -> WorkerContextStatistics:
        """How many workers are idle and how many calls are running, in all, and ``by_type``:
        per worker type, the same counts plus AUTO's latency estimate, fallbacks, modules routed
        away and pins."""
        return self._core.statistics()

    run_sync = _call.run_sync


def core_of(context: WorkerContext) -> ContextCore:
    """The core of a context: how ``_map.py``, ``_impl.py`` (and tests) reach its workers."""
    return context._core
