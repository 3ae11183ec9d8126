"""What each in-process round measures on one backend: one function per figure, given the
run's ``Round`` (settings, where the samples go) and the backend."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import jobs
from .backends import Backend, ExecutorBackend, TrioBackend, Unsupported
from .results import Results
from .settings import ECHO, NOOP, NUMPY_PAYLOAD, Settings

clock = time.perf_counter_ns


@dataclass(frozen=True)
class Round:
    """What every scenario of a run shares."""

    cfg: Settings
    results: Results
    workers: int
    # ``jobs.spin`` iterations that take about ``cfg.cpu_job_ms`` here.
    cpu_iterations: int


def cpu_iterations(target_ms: float) -> int:
    """How many ``spin`` iterations take about ``target_ms`` here (measured in this thread)."""
    n = 10_000
    while True:
        t0 = time.perf_counter()
        jobs.spin(n)
        took = time.perf_counter() - t0
        if took > 0.01 or n > 10**8:
            return max(1000, int(n * target_ms / 1000 / took))
        n *= 4


async def warm_up(run: Round, b: Backend) -> None:
    # Start one worker per core and let each load the CPU job's module.
    await b.run_many(jobs.spin, [(10,)] * (2 * run.workers), parallel=True)
    for _ in range(run.cfg.warmup_calls):
        await b.call(NOOP)


async def latency(run: Round, b: Backend) -> None:
    got = []
    for _ in range(run.cfg.latency_calls):
        t0 = clock()
        await b.call(NOOP)
        got.append((clock() - t0) / 1e3)
    run.results.samples.setdefault(b.name, {}).setdefault("warm_call_us", []).extend(got)
    run.results.rounds.setdefault(b.name, {}).setdefault("warm_call_us", []).append(
        statistics.median(got)
    )


async def new_worker(run: Round, b: Backend) -> None:
    for _ in range(run.cfg.new_worker_calls):
        t0 = clock()
        try:
            await b.call_new_worker(NOOP)
        except Unsupported as e:
            run.results.skip(b.name, "new_worker_ms", str(e))
            return
        run.results.add(b.name, "new_worker_ms", (clock() - t0) / 1e6)


async def throughput(run: Round, b: Backend) -> None:
    trivial = [()] * run.cfg.throughput_jobs
    t0 = clock()
    await b.run_many(NOOP, trivial, parallel=True)
    run.results.add(b.name, "throughput_jobs_per_s", len(trivial) / ((clock() - t0) / 1e9))


async def cpu(run: Round, b: Backend) -> None:
    cpu_jobs = [(run.cpu_iterations,)] * (2 * run.workers)
    t0 = clock()
    await b.run_many(jobs.spin, cpu_jobs, parallel=False)
    t1 = clock()
    await b.run_many(jobs.spin, cpu_jobs, parallel=True)
    run.results.add(b.name, "cpu_speedup", (t1 - t0) / (clock() - t1))


async def payload(run: Round, b: Backend, *, key: str, data: bytes, calls: int) -> None:
    """``calls`` echoes of ``data``, each timed."""
    got = []
    for _ in range(calls):
        t0 = clock()
        back = await b.call(ECHO, data)
        took = (clock() - t0) / 1e9
        if len(back) != len(data):
            raise RuntimeError(f"echo returned {len(back)} of {len(data)} bytes")
        got.append(len(data) / 1e6 / took)
    run.results.samples.setdefault(b.name, {}).setdefault(key, []).extend(got)
    run.results.rounds.setdefault(b.name, {}).setdefault(key, []).append(statistics.median(got))


NUMPY_KEY = f"payload_{NUMPY_PAYLOAD[0]}_MBps"


async def numpy_payload(run: Round, b: Backend, *, data: Any) -> None:
    """Two echoes of the numpy array ``data`` (``NUMPY_PAYLOAD``), after an untimed one of an
    array of one item (the worker's import of numpy). Subinterpreters, interpool's
    and the standard library's alike, are not asked: numpy refuses to import in them."""
    import numpy

    if b.on_subinterpreters:
        run.results.skip(b.name, NUMPY_KEY, "numpy refuses subinterpreters")
        return
    got = []
    try:
        # Untimed: the worker's first numpy call imports numpy (tens of ms), which is not the
        # payload's cost; a one-item array stays in band.
        await b.call(numpy.asarray, data[:1])
    except Exception as e:  # noqa: BLE001, this figure only: a worker without numpy
        run.results.skip(b.name, NUMPY_KEY, f"failed: {e!r}"[:200])
        return
    for _ in range(2):
        t0 = clock()
        try:
            back = await b.call(numpy.asarray, data)
        except Exception as e:  # noqa: BLE001, this figure only: a worker without numpy
            run.results.skip(b.name, NUMPY_KEY, f"failed: {e!r}"[:200])
            return
        took = (clock() - t0) / 1e9
        if back.nbytes != data.nbytes:
            raise RuntimeError(f"echo returned {back.nbytes} of {data.nbytes} bytes")
        got.append(data.nbytes / 1e6 / took)
    run.results.samples.setdefault(b.name, {}).setdefault(NUMPY_KEY, []).extend(got)
    run.results.rounds.setdefault(b.name, {}).setdefault(NUMPY_KEY, []).append(
        statistics.median(got)
    )


async def amap(amap: Callable[..., Any], backend: TrioBackend, n: int) -> float:
    """Items per second of ``interpool.amap(abs, range(n), chunksize=100)`` on the backend's
    context, one chunk in flight per worker."""
    t0 = time.perf_counter()
    count = 0
    async with amap(
        abs, range(n), chunksize=100, max_in_flight=backend.workers, context=backend.context
    ) as results:
        async for _ in results:
            count += 1
    if count != n:
        raise ValueError(f"amap returned {count} results for {n} items")
    return n / (time.perf_counter() - t0)


def executor_map(run: Round, backend: ExecutorBackend) -> None:
    """Items per second of ``pool.map(abs, range(n), chunksize=100)``: the standard executors'
    map with chunks (``multiprocessing.Pool.map`` takes the same arguments)."""
    pool = backend.pool
    if not hasattr(pool, "map"):
        run.results.skip(backend.name, "map_jobs_per_s", "no map with chunks")
        return
    n = run.cfg.map_jobs
    for _ in range(run.cfg.throughput_repeats):
        t0 = time.perf_counter()
        try:
            count = sum(1 for _ in pool.map(abs, range(n), chunksize=100))
        except Exception as e:  # noqa: BLE001, reported in place of the figure
            run.results.skip(backend.name, "map_jobs_per_s", f"map failed: {e!r}")
            return
        if count != n:
            run.results.skip(backend.name, "map_jobs_per_s", f"map returned {count} of {n} results")
            return
        run.results.add(backend.name, "map_jobs_per_s", n / (time.perf_counter() - t0))
