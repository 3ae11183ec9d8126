"""The executor-style pools (``concurrent.futures`` executors, ``multiprocessing.Pool``, the
interpreter baseline, ``interpool.Executor``): building them by name, submitting to them and
shutting them down across their two APIs.

Standard library only at import time, no relative imports: the cold-start process imports it as
a top-level module (see ``cold_start``). Each pool's library is imported when a pool of its kind
is made, so that a cold-start sample imports only its own.
"""

from __future__ import annotations

# Annotations only: typing costs milliseconds to import, inside a cold-start sample's timing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


# The kinds ``make_pool`` knows (``interpool`` is ``interpool.Executor``).
KINDS = ("loky", "process-pool", "mp-pool", "interpreters", "interpreter-pool", "interpool")


def _baseline() -> Any:
    """``interpreter_baseline``: by its full name in the bench's process, as a top-level module
    in a cold-start process (whose ``sys.path`` starts with this folder)."""
    name = f"{__package__}.interpreter_baseline" if __package__ else "interpreter_baseline"
    return __import__(name, fromlist=["InterpreterPool"])


def make_pool(kind: str, workers: int, *, fresh: bool = False, worker_type: str = "auto") -> Any:
    """A pool of ``workers`` workers of ``kind`` (one of ``KINDS``); ``fresh``: a new worker for
    every task. ``worker_type`` is ``interpool.Executor``'s."""
    if kind == "loky":
        if fresh:
            raise ValueError("loky has no per-task worker retirement")
        import loky

        return loky.get_reusable_executor(max_workers=workers)
    if kind == "process-pool":
        import concurrent.futures
        import multiprocessing

        spawn = multiprocessing.get_context("spawn")
        if fresh:
            return concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=spawn, max_tasks_per_child=1
            )
        return concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn)
    if kind == "mp-pool":
        import multiprocessing

        forkserver = multiprocessing.get_context("forkserver")
        if fresh:
            return forkserver.Pool(workers, maxtasksperchild=1)
        return forkserver.Pool(workers)
    if kind == "interpreters":
        return _baseline().InterpreterPool(workers, fresh=fresh)
    if kind == "interpreter-pool":
        if fresh:
            raise ValueError("InterpreterPoolExecutor has no per-task worker retirement")
        return _baseline().InterpreterPoolExecutor(workers)
    if kind == "interpool":
        import interpool

        if fresh:
            return interpool.Executor(workers, worker_type=worker_type, max_tasks_per_child=1)
        return interpool.Executor(workers, worker_type=worker_type)
    raise ValueError(f"unknown pool kind {kind!r} (known: {', '.join(KINDS)})")


def submit(pool: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> Callable[[], Any]:
    """Submits a job; returns a function that waits for its result."""
    if hasattr(pool, "apply_async"):  # multiprocessing.Pool
        return pool.apply_async(fn, args).get  # type: ignore[no-any-return]
    return pool.submit(fn, *args).result  # type: ignore[no-any-return]


def shutdown(pool: Any) -> None:
    if hasattr(pool, "apply_async"):
        pool.close()
        pool.join()
    else:
        pool.shutdown()
