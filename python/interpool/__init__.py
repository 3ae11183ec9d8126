"""interpool: run Python callables in parallel on subinterpreters with their own GIL, or on
processes, from trio, asyncio or anyio.

The API is a superset of trio-parallel 1.3's: ``import interpool as trio_parallel`` works.
"""

import sys

from ._types import (
    BrokenWorkerError,
    WorkerContextStatistics,
    WorkerType,
    WorkerTypeInfo,
    WorkerTypeStatistics,
    WorkerTypeUnavailableError,
)

# The type checker reads the parent's names (the second branch). typing's TYPE_CHECKING, without
# importing typing in every worker.
TYPE_CHECKING = False
if not TYPE_CHECKING and "_interpool_worker" in sys.modules:
    # Inside a worker, a user script that does ``import interpool`` at the top is being loaded as
    # ``__mp_main__``. The extension module refuses to load in a subinterpreter, and trio is not
    # needed there: offer the same names, usable only in the parent.
    from ._worker.api import (
        AsyncioCapacityLimiter,
        Executor,
        MapResults,
        WorkerContext,
        amap,
        astarmap,
        atexit_shutdown_grace_period,
        available_worker_types,
        cache_scope,
        configure_default_context,
        configure_forkserver,
        current_default_worker_limiter,
        default_context_statistics,
        get_reusable_executor,
        open_worker_context,
        pin,
        run_sync,
    )
else:
    from ._backends import CapacityLimiter as AsyncioCapacityLimiter
    from ._context import WorkerContext, available_worker_types
    from ._executor import Executor, get_reusable_executor
    from ._forkserver import configure_forkserver
    from ._impl import (
        atexit_shutdown_grace_period,
        cache_scope,
        configure_default_context,
        current_default_worker_limiter,
        default_context_statistics,
        open_worker_context,
        pin,
        run_sync,
    )
    from ._map import MapResults, amap, astarmap
del TYPE_CHECKING

__all__ = [
    "AsyncioCapacityLimiter",
    "BrokenWorkerError",
    "Executor",
    "MapResults",
    "WorkerContext",
    "WorkerContextStatistics",
    "WorkerType",
    "WorkerTypeInfo",
    "WorkerTypeStatistics",
    "WorkerTypeUnavailableError",
    "amap",
    "astarmap",
    "atexit_shutdown_grace_period",
    "available_worker_types",
    "cache_scope",
    "configure_default_context",
    "configure_forkserver",
    "current_default_worker_limiter",
    "default_context_statistics",
    "get_reusable_executor",
    "open_worker_context",
    "pin",
    "run_sync",
]

# Public objects name the public module, in reprs, tracebacks and pickles (``interpool.
# BrokenWorkerError``, not ``interpool._types.BrokenWorkerError``), as trio-parallel's do.
AsyncioCapacityLimiter.__name__ = AsyncioCapacityLimiter.__qualname__ = "AsyncioCapacityLimiter"
for _name in __all__:
    _public = globals()[_name]
    if getattr(_public, "__qualname__", None) == _name:
        _public.__module__ = __name__
del _name, _public
