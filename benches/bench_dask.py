"""Pure-Python Dask tasks on the worker's default thread pool against interpool's executor, on the
same LocalCluster, interleaved.

    python benches/bench_dask.py [--tasks 40] [--iterations 300000] [--rounds 7]

One Dask worker process with ``--threads`` threads (default: the CPU count), the usual layout of
one worker per machine. Each round runs the same batch of CPU-bound pure-Python tasks
(``interpool._bench.jobs.spin``) once on the default executor and once annotated with
``executor="interpool"`` (subinterpreters under AUTO). Printed: the median wall time of each,
and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import dask
import distributed

import interpool.dask
from interpool._bench import jobs


def run_batch(client: distributed.Client, tasks: int, iterations: int, annotate: bool) -> float:
    t0 = time.perf_counter()
    if annotate:
        with dask.annotate(executor="interpool"):
            futures = client.map(jobs.spin, [iterations] * tasks, pure=False)
    else:
        futures = client.map(jobs.spin, [iterations] * tasks, pure=False)
    client.gather(futures)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    # Dask's profiler crashes CPython 3.13 processes running subinterpreters (docs/scale-out.md).
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=args.threads,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
        )
    with cluster, distributed.Client(cluster) as client:
        interpool.dask.register(client)
        for annotate in (False, True):  # warm up: imports, workers started
            run_batch(client, args.threads * 2, 1000, annotate)
        threads, subinterpreters = [], []
        for _ in range(args.rounds):
            threads.append(run_batch(client, args.tasks, args.iterations, False))
            subinterpreters.append(run_batch(client, args.tasks, args.iterations, True))
        interpool.dask.unregister(client)
    print(
        f"{args.tasks} tasks of spin({args.iterations}), 1 worker x {args.threads} threads, "
        f"{args.rounds} rounds"
    )
    print(f"default thread executor: {statistics.median(threads) * 1e3:8.0f} ms")
    print(f"interpool executor:      {statistics.median(subinterpreters) * 1e3:8.0f} ms")
    ratio = statistics.median(t / s for t, s in zip(threads, subinterpreters, strict=True))
    print(f"interpool is {ratio:.2f}x faster")


if __name__ == "__main__":
    main()
