"""The job of bench_overhead.py, in a module of its own: workers import it by name (they get the
parent's ``sys.path``, which holds this folder), without loading the benchmark script."""

import os
import threading
import time


def busy(seconds: float) -> tuple[int, int, int, int, int]:
    """Busy-waits ``seconds``; returns the ``perf_counter_ns`` at which it started and ended, the
    process and thread it ran on (whose CPU time the benchmark reads) and its own CPU time in
    ns (less than ``seconds`` where others' work preempted it)."""
    cpu, started = time.thread_time_ns(), time.perf_counter_ns()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    ended = time.perf_counter_ns()
    return started, ended, os.getpid(), threading.get_native_id(), time.thread_time_ns() - cpu
