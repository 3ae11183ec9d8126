"""The job of bench_overhead.py, in a module of its own: workers import it by name (they get the
parent's ``sys.path``, which holds this folder), without loading the benchmark script."""

import time


def busy(seconds: float) -> tuple[int, int]:
    """Busy-waits ``seconds``; returns the ``perf_counter_ns`` at which it started and ended."""
    started = time.perf_counter_ns()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return started, time.perf_counter_ns()
