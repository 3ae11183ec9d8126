"""The figures the bench measures, and how many samples of each its modes take.

Figures, per worker type and peer (the keys of ``METRICS``):

* cold start: a fresh Python process imports the library, opens a pool and gets its first
  result (one process per sample); the same process then measures memory per idle worker, the
  growth of its process tree's RSS with ``MEMORY_WORKERS`` idle workers, divided by their count;
* new worker: with the pool warm, a call that needs a new worker (``retire`` always truthy);
* warm call: sequential round trips of a trivial call (median and p99 over every call);
* throughput: N trivial jobs, one worker per core (trio: a nursery and a limiter);
* CPU speedup: K pure-Python CPU jobs one after another on one worker, against one per core;
* payload: ``bytes`` of 1 KiB, 1 MiB and 64 MiB there and back (MB/s of payload);
* map throughput: ``interpool.amap`` with chunks, where this build has it; the executors'
  ``map(fn, items, chunksize=100)`` (``interpool.Executor`` and the peers').
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The trivial job and the echo: builtins, so a worker of any peer runs them without importing
# anything (``int()`` is 0; ``bytes(b)`` is ``b`` itself). The CPU job is ``jobs.spin``.
NOOP: Callable[..., Any] = int
ECHO: Callable[..., Any] = bytes
# A truthy ``retire`` hook that every worker can unpickle without an import: ``object()``.
RETIRE_ALWAYS: Callable[[], object] = object
# Idle workers started in the cold-start process to measure memory per worker.
MEMORY_WORKERS = 4
# A figure whose p90/p10 exceeds this is flagged as noisy.
WIDE_SPREAD = 2.0
REFERENCE_PEER = "trio-parallel spawn"
KiB, MiB = 1024, 1024 * 1024
PAYLOADS = {"1KiB": KiB, "1MiB": MiB, "64MiB": 64 * MiB}
# A numpy array payload (float64, echoed by ``numpy.asarray``, the identity on an array): only
# where numpy imports, so not on subinterpreters (numpy refuses them; AUTO runs it on a process).
NUMPY_PAYLOAD = ("numpy16MiB", 16 * MiB)
PEERS = ("trio-parallel", "loky", "process-pool", "mp-pool", "interpreters", "interpreter-pool")
# The figures that the cold-start processes measure; every other one is measured in-process.
COLD_KEYS = ("cold_start_ms", "memory_per_worker_MiB")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


METRICS = {
    m.key: m
    for m in (
        Metric("cold_start_ms", "cold start to first result", "ms", False),
        Metric("new_worker_ms", "new worker, pool warm", "ms", False),
        Metric("warm_call_us", "warm round trip of a trivial call", "µs", False),
        Metric("throughput_jobs_per_s", "trivial jobs, one worker per core", "jobs/s", True),
        Metric("cpu_speedup", "CPU-bound jobs: 1 worker vs one per core", "x", True),
        *(
            Metric(f"payload_{name}_MBps", f"payload round trip, {name}", "MB/s", True)
            for name in PAYLOADS
        ),
        Metric(
            f"payload_{NUMPY_PAYLOAD[0]}_MBps",
            "numpy array round trip, 16 MiB (not on subinterpreters)",
            "MB/s",
            True,
        ),
        Metric("memory_per_worker_MiB", "process tree RSS growth per idle worker", "MiB", False),
        Metric("map_jobs_per_s", "map helper with chunks", "jobs/s", True),
    )
}


@dataclass(frozen=True)
class Settings:
    """How many samples of what; ``--quick``, the default and ``--smoke`` differ only here."""

    mode: str
    cold_samples: int
    warmup_calls: int
    latency_rounds: int
    latency_calls: int
    new_worker_rounds: int
    new_worker_calls: int
    throughput_repeats: int
    throughput_jobs: int
    cpu_repeats: int
    cpu_job_ms: float
    payload_repeats: dict[str, int]
    payload_calls: dict[str, int]
    map_jobs: int
    # Cold-start rounds run first and thrown away (they write .pyc files, fill the page cache).
    cold_warmups: int = 1


SETTINGS = {
    "default": Settings(
        "default", 5, 200, 15, 200, 5, 3, 5, 3000, 5, 100.0,
        {"1KiB": 5, "1MiB": 5, "64MiB": 3}, {"1KiB": 50, "1MiB": 10, "64MiB": 1}, 10000,
    ),
    "quick": Settings(
        "quick", 2, 100, 5, 100, 3, 2, 3, 500, 3, 20.0,
        {"1KiB": 3, "1MiB": 3, "64MiB": 1}, {"1KiB": 20, "1MiB": 3, "64MiB": 1}, 2000,
    ),
    "smoke": Settings(
        "smoke", 1, 5, 2, 10, 1, 1, 1, 20, 1, 1.0,
        {"1KiB": 1, "1MiB": 1}, {"1KiB": 3, "1MiB": 1}, 50, cold_warmups=0,
    ),
}  # fmt: skip
