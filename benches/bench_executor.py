"""interpool.Executor against the standard library's executors and loky, interleaved.

    python benches/bench_executor.py [--rounds 15] [--calls 2000] [--items 100000]

Every executor gets ``--workers`` workers (default 2) and is warmed up first. Each round gives
every executor, in turn, one batch of each measure, so that a noisy neighbour hurts all alike:

* warm round trip: ``submit(int).result()``, one after another (µs per call, the round's median);
* map with chunks: ``list(map(abs, range(items), chunksize=100))`` (items per second).

Printed: the median over rounds of each figure, and interpool's ratio to each peer taken round
by round (then the median). Peers: ProcessPoolExecutor (forkserver), loky (if installed) and, on
CPython 3.14+, InterpreterPoolExecutor.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import sys
import time

import interpool


def make_executors(workers: int) -> dict[str, concurrent.futures.Executor]:
    executors: dict[str, concurrent.futures.Executor] = {
        "interpool.Executor": interpool.Executor(workers),
        "ProcessPoolExecutor": concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("forkserver")
        ),
    }
    try:
        import loky
    except ImportError:
        print("loky is not installed: skipped", file=sys.stderr)
    else:
        executors["loky"] = loky.get_reusable_executor(max_workers=workers)
    interpreter_pool = getattr(concurrent.futures, "InterpreterPoolExecutor", None)
    if interpreter_pool is not None:
        executors["InterpreterPoolExecutor"] = interpreter_pool(workers)
    return executors


def round_trip_us(executor: concurrent.futures.Executor, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        executor.submit(int).result()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return statistics.median(times)


def map_items_per_s(executor: concurrent.futures.Executor, items: int) -> float:
    t0 = time.perf_counter()
    count = sum(1 for _ in executor.map(abs, range(items), chunksize=100))
    assert count == items
    return items / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    executors = make_executors(args.workers)
    try:
        for executor in executors.values():  # start every worker
            list(executor.map(int, range(4 * args.workers)))
            round_trip_us(executor, 200)
        trips: dict[str, list[float]] = {name: [] for name in executors}
        maps: dict[str, list[float]] = {name: [] for name in executors}
        for _ in range(args.rounds):
            for name, executor in executors.items():
                trips[name].append(round_trip_us(executor, args.calls))
                maps[name].append(map_items_per_s(executor, args.items))
    finally:
        for executor in executors.values():
            executor.shutdown()
    print(f"Python {sys.version.split()[0]}, {args.workers} workers, {args.rounds} rounds")
    print(f"{'executor':<26}{'round trip (µs)':>18}{'map (items/s)':>16}")
    for name in executors:
        print(
            f"{name:<26}{statistics.median(trips[name]):>18.1f}"
            f"{statistics.median(maps[name]):>16,.0f}"
        )
    mine = "interpool.Executor"
    for name in executors:
        if name == mine:
            continue
        trip = statistics.median(t / m for m, t in zip(trips[mine], trips[name], strict=True))
        rate = statistics.median(m / t for m, t in zip(maps[mine], maps[name], strict=True))
        print(f"interpool.Executor vs {name}: round trip {trip:.1f}x faster, map {rate:.1f}x")


if __name__ == "__main__":
    main()
