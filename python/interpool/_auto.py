"""``WorkerType.AUTO``: which worker type serves a call, and falling back when a job cannot load.

The ranking itself is in Rust (``src/scheduler.rs``: capabilities, then latency estimates fed by
quick calls, with priors subinterpreter < forkserver < spawn). This module keeps what needs Python:

- one worker cache per available type, and the chosen cache per requirement, recomputed only
  when something changes (a fallback, a pin, a statistics read, every ``_RERANK_EVERY`` calls
  that parked), never per call: a warm call reads ``best[kill_on_cancel]``;
- routes: pins (a callable or module sent to a type) and modules routed away from
  subinterpreters after a load error; looked up (and memoized per callable) only once a route
  exists;
- the fallback of load errors: a job whose callable, arguments or the parent's main script
  could not be *unpickled* in a subinterpreter, for any reason, or that hit a module refusing
  to load there *while it ran* (a lazy ``import numpy``; the worker loop tells such an import
  from a user's ``raise``), is re-run once on the fastest process type, and the process's
  outcome is the call's. A module that refused (research note §3.3: CPython's, PyO3's and
  Cython's messages, anywhere in the cause/context chain, numpy's "Original error was: ..."
  included) is routed away at once; one that failed to load otherwise, once a process loaded
  it. An ``init`` (or ``retire``) that refuses makes the whole context skip subinterpreters.
  Nothing else is retried: not an exception raised by the user's function.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from . import _interpool, _outcome
from ._types import WorkerType, WorkerTypeStatistics

# Substrings of the errors a module gives when it refuses to load in a subinterpreter (one list,
# kept in worker-types' subinterpreter module, shared with the Rust Pool).
REFUSALS = tuple(_interpool.SUBINTERPRETER_REFUSALS)
# The stages of a broken worker that failed in the worker loop's ``setup``, before any job ran.
SETUP_STAGES = (_outcome.STAGE_SETUP, _outcome.STAGE_INIT)
HINT = (
    "this module refuses to load in a subinterpreter; run it with WorkerType.AUTO (the "
    "default), which falls back to a process, or with WorkerType.FORKSERVER or "
    "WorkerType.SPAWN"
)
# Calls that parked (the slow path) between two rankings.
_RERANK_EVERY = 64
_MEMO_MAX = 4096
_MISSING = object()


def refusal(exc: BaseException | None) -> str | None:
    """The name of the module that refused to load in a subinterpreter, if ``exc`` or anything in
    its cause/context chain says one did (``"?"`` when the message names none); else None."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ImportError) or type(e).__name__ == "PanicException":
            message = str(e)
            for marker in REFUSALS:
                if marker in message:
                    return _refused_module(message, marker, getattr(e, "name", None))
        stack += (e.__cause__, e.__context__)
    return None


def _refused_module(message: str, marker: str, name: str | None) -> str:
    head = message[: message.index(marker)].rstrip()
    # "... module numpy._core._multiarray_umath does not support loading in subinterpreters"
    if marker == REFUSALS[0] and head:
        return head.rsplit(" ", 1)[-1]
    return name or "?"


def callable_key(fn: object) -> tuple[str | None, str | None]:
    """``(module, qualname)`` of a callable, looking through ``functools.partial``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    return (module if isinstance(module, str) else None), (
        qualname if isinstance(qualname, str) else None
    )


def pin_key(target: object) -> str:
    """A pin's key: a module name as given, or ``module:qualname`` of a callable."""
    if isinstance(target, str):
        if not target:
            raise ValueError("a module name must not be empty")
        return target
    if not callable(target):
        raise TypeError(f"pin a callable or a module name, not {type(target).__name__}")
    module, qualname = callable_key(target)
    if module is None or qualname is None:
        raise TypeError(f"cannot tell the module and name of {target!r}; pin its module instead")
    return f"{module}:{qualname}"


class Auto:
    """The per-type caches of an AUTO context and what AUTO has learnt."""

    __slots__ = (
        "away",
        "best",
        "caches",
        "fallbacks",
        "infos",
        "init_refused",
        "lock",
        "memo",
        "parked",
        "pins",
        "routed_away",
        "routes",
    )

    def __init__(self, infos: list[Any], make_cache: Callable[[WorkerType], Any]) -> None:
        self.infos = {i.worker_type: i for i in infos if i.available}
        self.caches = {t: make_cache(t) for t in self.infos}
        self.lock = threading.Lock()
        # Key (module, or module:qualname) -> a pinned WorkerType, or None: away from
        # subinterpreters. Empty on the fast path.
        self.routes: dict[str, WorkerType | None] = {}
        self.pins: dict[str, WorkerType] = {}
        self.routed_away: dict[str, str] = {}  # module -> the module that refused
        self.fallbacks = 0
        self.init_refused: str | None = None  # the module an init/retire refused with
        self.parked = 0
        self.memo: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})
        self.best: list[Any] = [None, None]
        self.away: list[Any] = [None, None]
        self.rerank()

    # --- ranking -------------------------------------------------------------------------

    def order(self, kill_on_cancel: bool, allow_subinterpreter: bool = True) -> list[WorkerType]:
        """The available types able to run a call, fastest first."""
        candidates = [
            (
                t.value,
                True,
                info.hard_kill,
                allow_subinterpreter or t is not WorkerType.SUBINTERPRETER,
                self.caches[t].latency_estimate(),
            )
            for t, info in self.infos.items()
        ]
        names = _interpool.rank(candidates, kill_on_cancel)
        if not names and kill_on_cancel:  # no killable type here: best effort, as explicitly
            names = _interpool.rank(candidates, False)
        if not names:
            raise RuntimeError("no worker type can run here")  # pragma: no cover
        return [WorkerType(n) for n in names]

    def rerank(self) -> None:
        sub_ok = self.init_refused is None
        with self.lock:
            for kill in (False, True):
                self.best[kill] = self.caches[self.order(kill, sub_ok)[0]]
                self.away[kill] = self.caches[self.order(kill, False)[0]]
            self.memo = ({}, {})
            self.parked = 0

    def note_parked(self) -> None:
        """A call parked (the slow path): rerank now and then, as estimates move."""
        self.parked += 1
        if self.parked >= _RERANK_EVERY:
            self.rerank()

    # --- routes --------------------------------------------------------------------------

    def route(self, fn: object, kill_on_cancel: bool) -> Any:
        """The cache for ``fn`` once routes exist (memoized per callable)."""
        memo = self.memo[kill_on_cancel]
        try:
            return memo[fn]
        except (KeyError, TypeError):
            pass
        found = self.lookup(fn)
        if found is _MISSING:
            cache = self.best[kill_on_cancel]
        elif found is None:
            cache = self.away[kill_on_cancel]
        else:
            cache = self.caches[found]
        try:
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[fn] = cache
        except TypeError:  # unhashable callable: no memo
            pass
        return cache

    def lookup(self, fn: object) -> Any:
        """The route of ``fn``: a pinned type, None (away from subinterpreters) or _MISSING. The
        callable's own pin first, then its module's route, then its packages'."""
        module, qualname = callable_key(fn)
        if module is None:
            return _MISSING
        routes = self.routes
        if qualname is not None:
            found = routes.get(f"{module}:{qualname}", _MISSING)
            if found is not _MISSING:
                return found
        while True:
            found = routes.get(module, _MISSING)
            if found is not _MISSING or "." not in module:
                return found
            module = module.rsplit(".", 1)[0]

    def pinned(self, fn: object) -> bool:
        found = self.lookup(fn)
        return found is not _MISSING and found is not None

    def pin(self, target: object, worker_type: WorkerType | None) -> None:
        key = pin_key(target)
        with self.lock:
            if worker_type is None:
                self.pins.pop(key, None)
                if key in self.routed_away:
                    self.routes[key] = None
                else:
                    self.routes.pop(key, None)
            else:
                if worker_type not in self.caches:
                    from ._types import WorkerTypeUnavailableError

                    raise WorkerTypeUnavailableError(f"{worker_type.value} is unavailable here")
                self.pins[key] = worker_type
                self.routes[key] = worker_type
        self.rerank()

    # --- fallback ------------------------------------------------------------------------

    def fallback(
        self,
        cache: Any,
        kind: int,
        data: bytes,
        broken: tuple[int, str] | None,
        fn: object,
        kill: bool,
    ) -> Any:
        """The cache that re-runs this failed subinterpreter outcome, or None (raise it).

        A LOAD_ERROR (the job, its arguments or the main script did not load, or a module
        refused to load while the job ran) is re-run once on the fastest process type; a module
        that refused is routed away now, any other load error once the process loaded it
        (:meth:`loaded_elsewhere`). A setup that a refusing ``init`` broke sends the whole
        context to processes."""
        if cache is not self.caches.get(WorkerType.SUBINTERPRETER) or self.pinned(fn):
            return None
        if kind == _outcome.LOAD_ERROR:
            refused = refusal(_outcome.rebuild_exception(data))
            module = callable_key(fn)[0]
            with self.lock:
                self.fallbacks += 1
                if refused is not None and module is not None:
                    self.routed_away[module] = refused
                    self.routes.setdefault(module, None)
        elif broken is not None and broken[0] in SETUP_STAGES and data:
            refused = refusal(_outcome.rebuild_exception(data))
            if refused is None:
                return None
            self.init_refused = refused
            with self.lock:
                self.fallbacks += 1
        else:
            return None
        self.rerank()
        return self.away[kill]

    def loaded_elsewhere(self, fn: object, data: bytes) -> None:
        """A job that failed to load in a subinterpreter (for a reason other than a refusal,
        ``data`` its records) loaded on a process: route its module away from subinterpreters,
        with the root error's type (``"<AttributeError>"``) in place of a refusing module."""
        module = callable_key(fn)[0]
        if module is None or module in self.routed_away:
            return
        exc = _outcome.rebuild_exception(data)
        while exc.__cause__ is not None:  # the main script's loader wraps the real error
            exc = exc.__cause__
        with self.lock:
            self.routed_away[module] = f"<{type(exc).__qualname__}>"
            self.routes.setdefault(module, None)
        self.rerank()

    # --- statistics ----------------------------------------------------------------------

    def statistics(self) -> dict[WorkerType, WorkerTypeStatistics]:
        self.rerank()
        by_type = {}
        for t, cache in self.caches.items():
            idle, running = cache.statistics()
            is_sub = t is WorkerType.SUBINTERPRETER
            routed = dict(self.routed_away) if is_sub else {}
            if is_sub and self.init_refused is not None:
                routed["<init>"] = self.init_refused
            by_type[t] = WorkerTypeStatistics(
                worker_type=t,
                idle_workers=idle,
                running_workers=running,
                latency_estimate=cache.latency_estimate(),
                fallbacks=self.fallbacks if is_sub else 0,
                routed_away=routed,
                pinned=tuple(k for k, v in self.pins.items() if v is t),
            )
        return by_type
