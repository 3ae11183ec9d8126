"""Backends: interpool's worker types and the peers, behind one small async interface."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from .settings import RETIRE_ALWAYS
from .sync_pools import make_pool, shutdown, submit


class Unsupported(Exception):
    """This backend cannot measure that figure (the message says why)."""


class Backend:
    """One worker type of interpool or of a peer."""

    name: str
    group: str  # "interpool", "trio-parallel" or "peer"
    # Why this backend is measured in fresh processes only (cold start, memory), if it is.
    cold_only: str | None = None
    # Its workers are subinterpreters, which numpy refuses to import in.
    on_subinterpreters: bool = False

    async def open(self, stack: contextlib.AsyncExitStack, workers: int) -> None:
        raise NotImplementedError

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def call_new_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def run_many(
        self, fn: Callable[..., Any], arg_lists: list[tuple[Any, ...]], parallel: bool
    ) -> list[Any]:
        """Runs every job, one worker per core if ``parallel``, else one at a time."""
        raise NotImplementedError

    def cold_spec(self) -> dict[str, Any]:
        """What ``cold_start`` needs to know to take a sample of this backend (JSON)."""
        raise NotImplementedError


class TrioBackend(Backend):
    """interpool and trio-parallel: ``open_worker_context`` and ``run_sync`` under trio."""

    def __init__(self, name: str, group: str, module: str, worker_type: str) -> None:
        self.name, self.group = name, group
        self._module, self._worker_type = module, worker_type
        self.on_subinterpreters = worker_type == "subinterpreter"

    async def open(self, stack: contextlib.AsyncExitStack, workers: int) -> None:
        import importlib

        import trio

        lib = importlib.import_module(self._module)
        worker_type = lib.WorkerType(self._worker_type)
        self.context = await stack.enter_async_context(
            lib.open_worker_context(worker_type=worker_type)
        )
        self._fresh = await stack.enter_async_context(
            lib.open_worker_context(worker_type=worker_type, retire=RETIRE_ALWAYS)
        )
        self.workers = workers
        self._limiter = trio.CapacityLimiter(workers)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.context.run_sync(fn, *args, limiter=self._limiter)

    async def call_new_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._fresh.run_sync(fn, *args, limiter=self._limiter)

    async def run_many(
        self, fn: Callable[..., Any], arg_lists: list[tuple[Any, ...]], parallel: bool
    ) -> list[Any]:
        import trio

        limiter = trio.CapacityLimiter(self.workers if parallel else 1)
        results: list[Any] = [None] * len(arg_lists)

        async def one(i: int, args: tuple[Any, ...]) -> None:
            results[i] = await self.context.run_sync(fn, *args, limiter=limiter)

        async with trio.open_nursery() as nursery:
            for i, args in enumerate(arg_lists):
                nursery.start_soon(one, i, args)
        return results

    def cold_spec(self) -> dict[str, Any]:
        return {"module": self._module, "worker_type": self._worker_type}


class ExecutorBackend(Backend):
    """A ``concurrent.futures``-style pool of ``sync_pools``, driven synchronously from the trio
    task (a blocking ``result()`` is what its users do, and nothing else runs meanwhile)."""

    def __init__(
        self,
        name: str,
        group: str,
        pool: str,
        *,
        worker_type: str = "auto",
        why_not_fresh: str | None = None,
        on_subinterpreters: bool = False,
    ) -> None:
        self.name, self.group = name, group
        self._kind, self._worker_type, self._why_not_fresh = pool, worker_type, why_not_fresh
        self.on_subinterpreters = on_subinterpreters

    async def open(self, stack: contextlib.AsyncExitStack, workers: int) -> None:
        self.pool = make_pool(self._kind, workers, worker_type=self._worker_type)
        stack.callback(shutdown, self.pool)
        self._fresh = None
        if self._why_not_fresh is None:
            self._fresh = make_pool(self._kind, workers, fresh=True, worker_type=self._worker_type)
            stack.callback(shutdown, self._fresh)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return submit(self.pool, fn, args)()

    async def call_new_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._fresh is None:
            raise Unsupported(self._why_not_fresh)
        return submit(self._fresh, fn, args)()

    async def run_many(
        self, fn: Callable[..., Any], arg_lists: list[tuple[Any, ...]], parallel: bool
    ) -> list[Any]:
        if not parallel:
            return [submit(self.pool, fn, args)() for args in arg_lists]
        pending = [submit(self.pool, fn, args) for args in arg_lists]
        return [get() for get in pending]

    def cold_spec(self) -> dict[str, Any]:
        return {"pool": self._kind, "worker_type": self._worker_type}
