"""Burst throughput: N trivial jobs started at once on W workers, under trio and under asyncio.

Each round runs, in this order, interpool under trio (a nursery of N tasks sharing a
``trio.CapacityLimiter(W)``), interpool under asyncio (a ``TaskGroup`` of N tasks sharing an
``interpool.AsyncioCapacityLimiter(W)``) and trio-parallel (as interpool under trio), each in a
fresh ``trio.run``/``asyncio.run`` on workers kept warm across rounds (the default contexts). The
figures are medians over rounds of jobs per second; the ratios are taken round by round (then the
median of those), which is what docs/benchmarks.md quotes.

Each round also runs the same nursery / ``TaskGroup`` of N tasks with one schedule point instead
of a call ("bare trio", "bare asyncio"): what the event loop's own tasks cost; and once more with
each task holding a token of the same kind of limiter over that schedule point ("limited trio",
"limited asyncio"): what the loop and its limiter cost with no call at all. "limited trio /
interpool asyncio" is therefore the most interpool under trio could reach against interpool under
asyncio if its calls cost nothing. The last lines give the cost per job of each row beyond the
one below it: interpool's own cost beyond the bare loop, the limiter's beyond the bare loop, and
interpool's beyond the loop and its limiter, which is the part interpool can change.

    python benches/bench_burst.py [--jobs 10000] [--workers 2] [--rounds 9]
                                  [--type subinterpreter] [--no-peer]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import trio

import interpool

trio_parallel = None  # imported in main, in the parent only (it does not load in a worker)


def noop() -> None:
    return None


async def trio_burst(lib, jobs: int, workers: int) -> float:
    limiter = trio.CapacityLimiter(workers)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(jobs):
            nursery.start_soon(lambda: lib.run_sync(noop, limiter=limiter))
    return jobs / (time.perf_counter() - t0)


async def asyncio_burst(jobs: int, workers: int) -> float:
    limiter = interpool.AsyncioCapacityLimiter(workers)
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(jobs):
            group.create_task(interpool.run_sync(noop, limiter=limiter))
    return jobs / (time.perf_counter() - t0)


async def bare_trio_burst(jobs: int) -> float:
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(jobs):
            nursery.start_soon(trio.lowlevel.checkpoint)
    return jobs / (time.perf_counter() - t0)


async def limited_trio_burst(jobs: int, workers: int) -> float:
    """The bare trio burst, each task holding a token of a ``trio.CapacityLimiter(workers)``
    over its schedule point: what the loop and its limiter cost, with no call at all."""
    limiter = trio.CapacityLimiter(workers)

    async def one() -> None:
        async with limiter:
            await trio.lowlevel.checkpoint()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(jobs):
            nursery.start_soon(one)
    return jobs / (time.perf_counter() - t0)


async def limited_asyncio_burst(jobs: int, workers: int) -> float:
    """As ``limited_trio_burst``, under asyncio with ``interpool.AsyncioCapacityLimiter``."""
    limiter = interpool.AsyncioCapacityLimiter(workers)

    async def one() -> None:
        async with limiter:
            await asyncio.sleep(0)

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(jobs):
            group.create_task(one())
    return jobs / (time.perf_counter() - t0)


async def bare_asyncio_burst(jobs: int) -> float:
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(jobs):
            group.create_task(asyncio.sleep(0))
    return jobs / (time.perf_counter() - t0)


def main() -> None:
    global trio_parallel
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--type", default="subinterpreter", help="interpool's worker type")
    parser.add_argument("--no-peer", action="store_true", help="leave trio-parallel out")
    args = parser.parse_args()

    interpool.configure_default_context(worker_type=args.type)
    runs = {
        "interpool trio": lambda n: trio.run(trio_burst, interpool, n, args.workers),
        "interpool asyncio": lambda n: asyncio.run(asyncio_burst(n, args.workers)),
        "bare trio": lambda n: trio.run(bare_trio_burst, n),
        "bare asyncio": lambda n: asyncio.run(bare_asyncio_burst(n)),
        "limited trio": lambda n: trio.run(limited_trio_burst, n, args.workers),
        "limited asyncio": lambda n: asyncio.run(limited_asyncio_burst(n, args.workers)),
    }
    if not args.no_peer:
        import trio_parallel

        runs["trio-parallel"] = lambda n: trio.run(trio_burst, trio_parallel, n, args.workers)
    for run in runs.values():  # start the workers, warm the code paths
        run(args.workers * 50)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(run(args.jobs))

    print(f"{args.jobs} trivial jobs on {args.workers} {args.type} workers, {args.rounds} rounds")
    for name, got in rates.items():
        print(f"  {name:18} {statistics.median(got):9,.0f} jobs/s (median)")

    def ratio(a: str, b: str) -> None:
        if a in rates and b in rates:
            r = statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))
            print(f"  {a} / {b}: {r:.2f} (median of per-round ratios)")

    ratio("interpool trio", "interpool asyncio")
    ratio("interpool trio", "trio-parallel")
    ratio("bare trio", "bare asyncio")
    ratio("limited trio", "interpool asyncio")

    def own_cost(a: str, bare: str) -> None:
        cost = statistics.median(
            1e6 / x - 1e6 / y for x, y in zip(rates[a], rates[bare], strict=True)
        )
        print(f"  {a}: {cost:.1f} µs per job beyond {bare}'s (median of rounds)")

    own_cost("interpool trio", "bare trio")
    own_cost("interpool asyncio", "bare asyncio")
    own_cost("limited trio", "bare trio")
    own_cost("limited asyncio", "bare asyncio")
    own_cost("interpool trio", "limited trio")
    own_cost("interpool asyncio", "limited asyncio")


if __name__ == "__main__":
    main()
