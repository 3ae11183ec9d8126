"""``WorkerType.AUTO`` for a worker context: a thin adapter over the one AUTO, in Rust.

Everything AUTO decides (the ranking by capability and measured latency, routes and pins, the
package walk, which load errors fall back and what they teach, the statistics) is
``src/auto.rs``, shared with the Rust ``Pool``; docs/auto.md describes it. This module keeps what
the Python call path reads without crossing into Rust:

- ``best[kill_on_cancel]``, ``away[kill_on_cancel]`` and ``routes`` (whether any route exists),
  read again only when AUTO's generation moved (after a fallback, a pin, a statistics read, a
  rerank of parked calls), so that a warm call is one list read;
- ``caches``: the context's cache per available type (``WorkerType`` → ``_interpool.Cache``);
- a memo of the cache per routed callable, cleared with each new generation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _interpool
from ._types import WorkerType, WorkerTypeStatistics

HINT = (
    "this module refuses to load in a subinterpreter; run it with WorkerType.AUTO (the "
    "default), which falls back to a process, or with WorkerType.FORKSERVER or "
    "WorkerType.SPAWN"
)
_MEMO_MAX = 4096

# The module that refused to load in a subinterpreter, if a LOAD_ERROR's records say one did.
refusal = _interpool.refusal


class Auto:
    """The per-type caches of an AUTO context and the choices of the one AUTO over them."""

    __slots__ = ("away", "best", "caches", "core", "generation", "memo", "routes")

    def __init__(self, infos: list[Any], make_cache: Callable[[WorkerType], Any]) -> None:
        self.caches = {i.worker_type: make_cache(i.worker_type) for i in infos if i.available}
        self.core = _interpool.Auto(list(self.caches.values()))
        self.generation = -1
        self.best: list[Any] = [None, None]
        self.away: list[Any] = [None, None]
        self.routes = False
        self.memo: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})
        self._sync()

    def _sync(self) -> None:
        """Reads the choices again if AUTO's generation moved."""
        generation = self.core.generation
        if generation != self.generation:
            best, best_kill, away, away_kill, routes = self.core.choices()
            self.best[:] = best, best_kill
            self.away[:] = away, away_kill
            self.routes = routes
            self.memo = ({}, {})
            self.generation = generation

    def note_parked(self) -> None:
        """A call parked (the slow path): AUTO reranks now and then, as estimates move."""
        if self.core.note_parked():
            self._sync()

    def route(self, fn: object, kill_on_cancel: bool) -> Any:
        """The cache for ``fn`` once routes exist (memoized per callable)."""
        memo = self.memo[kill_on_cancel]
        try:
            return memo[fn]
        except (KeyError, TypeError):
            pass
        cache = self.core.route(fn, kill_on_cancel)
        try:
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[fn] = cache
        except TypeError:  # unhashable callable: no memo
            pass
        return cache

    def pin(self, target: object, worker_type: WorkerType | None) -> None:
        self.core.pin(target, None if worker_type is None else worker_type.value)
        self._sync()

    def fallback(
        self,
        cache: Any,
        kind: int,
        data: bytes,
        reason: tuple[int, str] | None,
        fn: object,
        kill: bool,
    ) -> Any:
        """The cache that re-runs this failed outcome, or None (raise it)."""
        retry = self.core.fallback(cache, kind, data, reason, fn, kill)
        self._sync()
        return retry

    def loaded_elsewhere(self, fn: object, data: bytes) -> None:
        """A job that failed to load in a subinterpreter (``data`` its records) loaded on a
        process."""
        self.core.loaded_elsewhere(fn, data)
        self._sync()

    def statistics(self) -> dict[WorkerType, WorkerTypeStatistics]:
        by_type = {}
        for name, idle, running, latency, fallbacks, routed, pinned in self.core.statistics():
            t = WorkerType(name)
            by_type[t] = WorkerTypeStatistics(
                worker_type=t,
                idle_workers=idle,
                running_workers=running,
                latency_estimate=latency,
                fallbacks=fallbacks,
                routed_away=dict(routed),
                pinned=tuple(pinned),
            )
        self._sync()
        return by_type
