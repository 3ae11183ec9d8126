"""Map throughput against loky and ProcessPoolExecutor, and warm run_sync under asyncio vs trio.

1. ``--items`` trivial items (default 100,000) with ``--chunksize`` (default 100) through
   ``interpool.amap`` on SUBINTERPRETER workers (ordered and unordered, under trio and asyncio),
   loky's ``get_reusable_executor().map`` and ``ProcessPoolExecutor(forkserver).map``; every pool
   has ``os.cpu_count()`` workers and is warm; the runs interleave round by round.
2. Warm sequential ``await interpool.run_sync(noop)`` under ``trio.run`` and ``asyncio.run``,
   alternating phases in one process; medians over all calls, and the median of the per-round
   asyncio/trio ratios. Then the parked path: a job that busy-waits ``--park-us`` (default 200,
   well past the caller's 30 µs spin), so the caller parks on the fd and the event loop is woken;
   what is reported is the latency minus the job's duration.

    python benches/bench_map.py [--rounds 5] [--items 100000] [--chunksize 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time

import trio

import interpool


def noop(x: object = None) -> object:
    return x


def busy(microseconds: float) -> None:
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


# --- 1. map throughput ---------------------------------------------------------------------------


def interpool_map(library: str, ordered: bool, items: int, chunksize: int) -> float:
    async def run() -> None:
        async with interpool.amap(
            noop, range(items), chunksize=chunksize, ordered=ordered
        ) as results:
            async for _ in results:
                pass

    t0 = time.perf_counter()
    trio.run(run) if library == "trio" else asyncio.run(run())
    return items / (time.perf_counter() - t0)


def executor_map(executor: concurrent.futures.Executor, items: int, chunksize: int) -> float:
    t0 = time.perf_counter()
    for _ in executor.map(noop, range(items), chunksize=chunksize):
        pass
    return items / (time.perf_counter() - t0)


def bench_map(args: argparse.Namespace) -> dict:
    workers = os.cpu_count() or 1
    runners = {
        "interpool amap (trio)": lambda: interpool_map("trio", True, args.items, args.chunksize),
        "interpool amap (asyncio)": lambda: interpool_map(
            "asyncio", True, args.items, args.chunksize
        ),
        "interpool amap unordered (trio)": lambda: interpool_map(
            "trio", False, args.items, args.chunksize
        ),
    }
    executors = []
    try:
        import loky

        loky_executor = loky.get_reusable_executor(max_workers=workers)
        executors.append(loky_executor)
        runners["loky map"] = lambda: executor_map(loky_executor, args.items, args.chunksize)
    except ImportError:
        print("(loky is not installed: no loky figures)", file=sys.stderr)
    ppe = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("forkserver")
    )
    executors.append(ppe)
    runners["ProcessPoolExecutor(forkserver) map"] = lambda: executor_map(
        ppe, args.items, args.chunksize
    )
    try:
        for run in runners.values():  # start every pool's workers
            run()
        samples: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                samples[name].append(run())
    finally:
        for executor in executors:
            executor.shutdown(wait=True)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    ours = samples["interpool amap (trio)"]
    ratios = {
        name: statistics.median(o / t for o, t in zip(ours, s, strict=True))
        for name, s in samples.items()
        if not name.startswith("interpool")
    }
    return {"items_per_s": medians, "samples": samples, "interpool_trio_speedup": ratios}


# --- 2. run_sync: asyncio vs trio ----------------------------------------------------------------


async def calls(n: int, fn: object = noop, *args: object) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await interpool.run_sync(fn, *args)
        samples.append(clock() - t0)
    return samples


def bench_run_sync(args: argparse.Namespace, n: int, *job: object) -> dict:
    phases = {
        "trio": lambda n: trio.run(calls, n, *job),
        "asyncio": lambda n: asyncio.run(calls(n, *job)),
    }
    for phase in phases.values():
        phase(200)
    samples: dict[str, list[int]] = {name: [] for name in phases}
    round_medians: dict[str, list[float]] = {name: [] for name in phases}
    for _ in range(args.rounds * 3):
        for name, phase in phases.items():
            got = phase(n)
            samples[name] += got
            round_medians[name].append(statistics.median(got))
    return {
        "median_us": {name: statistics.median(s) / 1e3 for name, s in samples.items()},
        "asyncio_over_trio": statistics.median(
            a / t for a, t in zip(round_medians["asyncio"], round_medians["trio"], strict=True)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunksize", type=int, default=100)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--park-us", type=float, default=200.0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "map": bench_map(args),
        "run_sync": bench_run_sync(args, args.calls),
        "run_sync_parked": bench_run_sync(args, args.calls // 5, busy, args.park_us),
    }
    print(
        f"{args.items} trivial items, chunksize {args.chunksize}, {os.cpu_count()} workers, "
        f"median of {args.rounds} rounds; Python {result['machine']['python']}"
    )
    for name, rate in result["map"]["items_per_s"].items():
        print(f"  {name:40} {rate:12,.0f} items/s")
    for name, ratio in result["map"]["interpool_trio_speedup"].items():
        print(f"  interpool amap (trio) / {name}: {ratio:.1f}x (median of per-round ratios)")
    rs = result["run_sync"]
    print(
        f"warm run_sync(noop): trio {rs['median_us']['trio']:.1f} µs, asyncio "
        f"{rs['median_us']['asyncio']:.1f} µs; asyncio/trio {rs['asyncio_over_trio']:.2f} "
        "(median of per-round ratios)"
    )
    parked = result["run_sync_parked"]["median_us"]
    print(
        f"parked run_sync(busy {args.park_us:.0f} µs), latency beyond the job: "
        f"trio {parked['trio'] - args.park_us:.1f} µs, "
        f"asyncio {parked['asyncio'] - args.park_us:.1f} µs"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
