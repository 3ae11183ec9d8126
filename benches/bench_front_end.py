"""The Python front end's hot paths in one process, for before/after comparisons of a change.

Measured on warm SUBINTERPRETER workers of the default context (trivial jobs, so the figures are
the front end's and the hand-off's cost):

- warm sequential ``await run_sync(noop)`` under trio and under asyncio (µs per call, median);
- the parked path: a job that busy-waits 200 µs, well past the caller's spin, so the caller parks
  on the fd (µs per call minus the job's 200 µs, median);
- a burst: ``--burst`` calls started at once sharing a limiter of 2 tokens, under trio and asyncio
  (calls per second, median over 3 bursts);
- ``amap`` of ``abs`` over ``--items`` items in chunks of 100 under trio (items per second);
- the Executor: ``submit(int).result()`` (µs, median) and ``map(abs, ..., chunksize=100)``.

It prints one JSON object. To compare two builds, run it alternately under each one's Python,
several times (the machine's speed drifts); ``--compare`` prints each figure's medians and the
median of the per-pair ratios (after / before):

    for i in 1 2 3 4 5; do
        /path/to/before/.venv/bin/python benches/bench_front_end.py >> before.jsonl
        .venv/bin/python benches/bench_front_end.py >> after.jsonl
    done
    python benches/bench_front_end.py --compare before.jsonl after.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import trio

import interpool


def noop() -> None:
    return None


def busy(microseconds: float) -> None:
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


async def _sequential(calls: int) -> float:
    for _ in range(calls // 10):
        await interpool.run_sync(noop)
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        await interpool.run_sync(noop)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000


async def _parked(calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        await interpool.run_sync(busy, 200)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000 - 200


def compare(before_path: str, after_path: str) -> None:
    def runs(path: str) -> list[dict[str, float]]:
        with open(path) as lines:
            return [json.loads(line) for line in lines if line.strip()]

    before, after = runs(before_path), runs(after_path)
    for name in before[0]:
        ratios = [a[name] / b[name] for b, a in zip(before, after, strict=False)]
        print(
            f"{name:20} before {statistics.median(r[name] for r in before):10.1f}  "
            f"after {statistics.median(r[name] for r in after):10.1f}  "
            f"after/before {statistics.median(ratios):.3f} (pairs: {len(ratios)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--items", type=int, default=50000)
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return

    interpool.configure_default_context(worker_type="subinterpreter")
    out: dict[str, float] = {}

    async def under_trio() -> None:
        out["warm_trio_us"] = await _sequential(args.calls)
        out["parked_trio_us"] = await _parked(args.calls // 10)
        limiter = trio.CapacityLimiter(2)
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(args.burst):
                    nursery.start_soon(lambda: interpool.run_sync(noop, limiter=limiter))
            rates.append(args.burst / (time.perf_counter() - start))
        out["burst_trio_per_s"] = statistics.median(rates)
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            async with interpool.amap(abs, range(args.items), chunksize=100) as results:
                async for _ in results:
                    pass
            rates.append(args.items / (time.perf_counter() - start))
        out["amap_trio_per_s"] = statistics.median(rates)

    async def under_asyncio() -> None:
        out["warm_asyncio_us"] = await _sequential(args.calls)
        out["parked_asyncio_us"] = await _parked(args.calls // 10)
        limiter = interpool.AsyncioCapacityLimiter(2)
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            async with asyncio.TaskGroup() as group:
                for _ in range(args.burst):
                    group.create_task(interpool.run_sync(noop, limiter=limiter))
            rates.append(args.burst / (time.perf_counter() - start))
        out["burst_asyncio_per_s"] = statistics.median(rates)

    trio.run(under_trio)
    asyncio.run(under_asyncio())
    with interpool.Executor(2, worker_type="subinterpreter") as executor:
        for _ in range(args.calls // 10):
            executor.submit(int).result()
        times = []
        for _ in range(args.calls):
            start = time.perf_counter_ns()
            executor.submit(int).result()
            times.append(time.perf_counter_ns() - start)
        out["executor_us"] = statistics.median(times) / 1000
        start = time.perf_counter()
        list(executor.map(abs, range(args.items), chunksize=100))
        out["executor_map_per_s"] = args.items / (time.perf_counter() - start)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
