"""One cold-start sample, in a fresh Python process: import the library, note the process tree's
memory, open a pool, run ``os.getpid`` on it, then ``n`` concurrent sleeps (on ``n`` workers),
note the memory again, and print one JSON line: ``first_s`` (seconds from ``T0`` to the first
result, not counting the first memory reading), ``rss0``, ``pss0``, ``rss``, ``pss`` (KiB).

``runner.run_cold_sample`` starts it as ``python -c runner.COLD_BOOTSTRAP``, which puts this
folder first on ``sys.path``, imports this module and calls ``main`` with ``T0``, so that neither
Python's own start-up nor this harness is counted. It runs from ``-c`` rather than as a script
so that spawned workers have no main module to load, as for any ``-c`` program. Standard library
only, no relative imports, and no ``import interpool`` except for interpool's own samples: see
the package's ``__init__``.
"""

from __future__ import annotations

import json
import os
import time

import sync_pools  # type: ignore[import-not-found, unused-ignore]
from tree_memory import tree_memory_kib  # type: ignore[import-not-found, unused-ignore]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The pool kinds of ``sync_pools`` whose library a sample imports before its first memory
# reading (the import is part of their cold start).
_LIBRARY = {"loky": "loky", "interpreters": "interpreter_baseline",
            "interpreter-pool": "interpreter_baseline", "interpool": "interpool"}  # fmt: skip


def sample_trio(t0: float, spec: dict[str, Any]) -> tuple[float, int, int | None, int, int | None]:
    """interpool's or trio-parallel's ``open_worker_context`` and ``run_sync`` under trio."""
    import functools

    import trio

    lib = __import__(spec["module"])
    t_import = time.perf_counter() - t0
    rss0, pss0 = tree_memory_kib()
    n, hold_s = spec["workers"], spec["hold_s"]

    async def main() -> tuple[float, int, int | None, int, int | None]:
        limiter = trio.CapacityLimiter(n)
        t1 = time.perf_counter()
        async with lib.open_worker_context(worker_type=lib.WorkerType(spec["worker_type"])) as ctx:
            await ctx.run_sync(os.getpid, limiter=limiter)
            t_first = t_import + time.perf_counter() - t1
            hold = functools.partial(ctx.run_sync, time.sleep, hold_s, limiter=limiter)
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(hold)
            await trio.sleep(0.2)  # let the workers settle into idleness
            rss, pss = tree_memory_kib()
        return t_first, rss0, pss0, rss, pss

    return trio.run(main)  # type: ignore[no-any-return, unused-ignore]


def sample_pool(t0: float, spec: dict[str, Any]) -> tuple[float, int, int | None, int, int | None]:
    """An executor-style pool of ``sync_pools``, driven synchronously."""
    import concurrent.futures  # noqa: F401 (part of every such pool's cold start)
    import multiprocessing  # noqa: F401

    kind, n, hold_s = spec["pool"], spec["workers"], spec["hold_s"]
    if kind in _LIBRARY:
        __import__(_LIBRARY[kind])
    t_import = time.perf_counter() - t0
    rss0, pss0 = tree_memory_kib()
    t1 = time.perf_counter()
    pool = sync_pools.make_pool(kind, n, worker_type=spec["worker_type"])
    sync_pools.submit(pool, os.getpid, ())()
    t_first = t_import + time.perf_counter() - t1
    for get in [sync_pools.submit(pool, time.sleep, (hold_s,)) for _ in range(n)]:
        get()
    time.sleep(0.2)  # let the workers settle into idleness
    rss, pss = tree_memory_kib()
    sync_pools.shutdown(pool)
    return t_first, rss0, pss0, rss, pss


def main(t0: float, spec: dict[str, Any]) -> None:
    sample = sample_trio if "module" in spec else sample_pool
    t_first, rss0, pss0, rss, pss = sample(t0, spec)
    print(json.dumps({"first_s": t_first, "rss0": rss0, "pss0": pss0, "rss": rss, "pss": pss}))
