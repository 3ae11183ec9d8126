"""interpool on Dask: an :class:`interpool.Executor` on every Dask worker. See docs/scale-out.md.

``register(client)`` installs, through a ``distributed`` worker plugin, an executor named
``"interpool"`` on each worker of the cluster (workers that join later get it too). Tasks
annotated with ``dask.annotate(executor="interpool")``, or every task with ``default=True``, then
run on that machine's subinterpreters, falling back per call to processes under AUTO.

How a task gets there: a Dask worker runs a task in a non-thread executor as
``loop.run_in_executor(executor, _run_task_simple, task, data, delay)``. ``distributed`` itself
does not load in a subinterpreter (psutil refuses), so the executor installed here ships only
``(task, data)`` to its worker (``interpool._worker.dask_job.run_task``; a dask graph node loads
there), and builds ``distributed``'s result message in the Dask worker, with the task's own
timings. AUTO routes each task by its function (``task.func``), not by that wrapper.

Needs ``distributed`` (``pip install interpool[dask]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import sys
from typing import Any

try:
    import dask.config
    from distributed import WorkerPlugin
    from distributed.worker import _run_task_simple
except ImportError as exc:  # pragma: no cover, the extra is not installed
    raise ImportError("interpool.dask needs distributed: pip install 'interpool[dask]'") from exc

from ._executor import Executor
from ._types import WorkerType
from ._worker.dask_job import run_task

__all__ = ["InterpoolPlugin", "register", "unregister"]

_EXECUTOR_OPTIONS = frozenset(inspect.signature(Executor).parameters)


class _Returns:
    """Stands in for a task that already ran: ``_run_task_simple`` calls it to build its
    message."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __call__(self, data: object) -> object:
        return self.value


class _Raises(_Returns):
    def __call__(self, data: object) -> object:
        raise self.value  # type: ignore[misc]


class DaskExecutor(Executor):
    """An :class:`interpool.Executor` that runs Dask's task calls itself (see the module
    docstring); any other call is an ordinary ``submit``."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:  # type: ignore[override]
        if fn is not _run_task_simple or kwargs or len(args) != 3:
            return super().submit(fn, *args, **kwargs)
        task, data, delay = args
        route = getattr(task, "func", None)
        inner = self._submit_routed(route, run_task, task, data)
        outer: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def finished(inner: concurrent.futures.Future[Any]) -> None:
            if inner.cancelled():
                outer.cancel()
                return
            error = inner.exception()
            stub = _Raises(error) if error is not None else _Returns(inner.result()[0])
            try:
                message = _run_task_simple(stub, {}, delay)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001, SystemExit/KeyboardInterrupt pass on
                _settle(outer, error=exc)
                return
            if error is None:
                message["start"], message["stop"] = inner.result()[1:]
            _settle(outer, value=message)

        def cancelled(outer: concurrent.futures.Future[Any]) -> None:
            if outer.cancelled():
                inner.cancel()

        outer.add_done_callback(cancelled)
        inner.add_done_callback(finished)
        return outer


def _settle(
    future: concurrent.futures.Future[Any], value: object = None, error: BaseException | None = None
) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:  # cancelled meanwhile: nobody waits for it
        pass


def _check_profiler(worker_type: object) -> None:
    """Dask's worker profiler calls ``sys._current_frames()``, which on CPython 3.13 builds frame
    objects for the frames of running subinterpreters from the wrong interpreter and corrupts
    memory (the process aborts; 3.14 looks at the current interpreter only)."""
    if sys.version_info[:2] != (3, 13):
        return
    if WorkerType(worker_type) not in (WorkerType.SUBINTERPRETER, WorkerType.AUTO):
        return
    if dask.config.get("distributed.worker.profile.enabled"):
        raise RuntimeError(
            "interpool.dask: Dask's worker profiler (distributed.worker.profile.enabled) "
            "crashes a CPython 3.13 process that runs subinterpreters (sys._current_frames() "
            "reads their frames; fixed in 3.14). Turn it off before the workers start: "
            "dask.config.set({'distributed.worker.profile.enabled': False}) or "
            "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False in their environment; or use "
            "worker_type=WorkerType.FORKSERVER"
        )


class InterpoolPlugin(WorkerPlugin):
    """The worker plugin of :func:`register`: on setup, an executor under ``name`` (and as the
    worker's default executor, if ``default``); on teardown, the worker's previous default back
    and the executor shut down. ``max_workers`` defaults to the worker's thread count."""

    idempotent = False

    def __init__(self, name: str = "interpool", default: bool = False, **options: Any) -> None:
        if not isinstance(name, str) or not name or name == "default":
            raise ValueError(f"name must be a non-empty str other than 'default', not {name!r}")
        unknown = set(options) - _EXECUTOR_OPTIONS
        if unknown:
            raise TypeError(f"unknown interpool.Executor option(s): {', '.join(sorted(unknown))}")
        self.name = name
        self.executor_name = name
        self.default = bool(default)
        self.options = options
        self._previous_default: Any = None

    def setup(self, worker: Any) -> None:
        options = dict(self.options)
        _check_profiler(options.get("worker_type", WorkerType.AUTO))
        options.setdefault("max_workers", worker.state.nthreads)
        executor = DaskExecutor(**options)
        worker.executors[self.executor_name] = executor
        if self.default:
            self._previous_default = worker.executors.get("default")
            worker.executors["default"] = executor

    async def teardown(self, worker: Any) -> None:
        executor = worker.executors.pop(self.executor_name, None)
        if self.default and worker.executors.get("default") is executor:
            if self._previous_default is not None:
                worker.executors["default"] = self._previous_default
            else:
                worker.executors.pop("default", None)
        if executor is not None:
            # Not in the event loop: running tasks finish first.
            await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)


def _plugin_name(name: str) -> str:
    return f"interpool-executor-{name}"


def register(client: Any, name: str = "interpool", default: bool = False, **options: Any) -> Any:
    """Installs an :class:`interpool.Executor` named ``name`` on every worker of ``client``'s
    cluster, now and on workers that join later. ``default=True`` makes it the workers' default
    executor (every task runs there); otherwise tasks choose it with
    ``dask.annotate(executor=name)``. ``options`` are :class:`interpool.Executor`'s
    (``max_workers`` defaults to each worker's thread count). Returns what
    ``client.register_plugin`` returns (per worker: ``{"status": "OK"}``).

    Raises:
        TypeError: an option that ``interpool.Executor`` does not have.
        ValueError: a bad name.
    """
    plugin = InterpoolPlugin(name, default, **options)
    return client.register_plugin(plugin, name=_plugin_name(name))


def unregister(client: Any, name: str = "interpool") -> Any:
    """Removes the executor ``name`` from every worker: tasks still queued there are cancelled,
    running ones finish, then its workers end."""
    return client.unregister_worker_plugin(_plugin_name(name))
