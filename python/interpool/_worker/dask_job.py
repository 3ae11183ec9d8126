"""The job that runs one Dask task in an interpool worker (see ``interpool.dask``).

Workers import this module by name (``interpool._worker.dask_job``), so it must import nothing
but the standard library: ``distributed`` does not load in a subinterpreter (psutil refuses),
while a task (a ``dask`` graph node) does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def run_task(
    task: Callable[[Mapping[object, object]], object], data: Mapping[object, object]
) -> tuple[object, float, float]:
    """``task(data)``, as Dask's worker calls it, with its wall-clock start and stop (the
    timings the scheduler's heuristics use)."""
    start = time.time()
    value = task(data)
    return value, start, time.time()
