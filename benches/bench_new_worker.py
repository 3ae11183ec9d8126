"""A new SUBINTERPRETER worker per call, against trio-parallel's new workers (issue 12, item 5).

Each call starts a worker (``retire=object``: always truthy, so every worker ends after its job)
with ``os.getpid`` as the job; the figure is the median over ``--calls`` calls, after one call
that compiled the worker loop (the first worker of a process compiles it, the others unmarshal
it). ``--multiprocessing`` imports multiprocessing in the parent first, as many programs do: a
worker then takes the parent's authkey. With ``--peers``, trio-parallel's forkserver and spawn
workers are timed the same way in the same process, and their ratio to interpool's is printed.

Run it several times, alternating with the build to compare against (the machine's noise moves
interpreter creation itself by several ms); docs/benchmarks.md quotes medians of such pairs.

    python benches/bench_new_worker.py [--calls 11] [--multiprocessing] [--peers] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import interpool

Run = Callable[..., Awaitable[Any]]


async def new_worker_ms(run: Run, calls: int) -> float:
    """The median milliseconds of ``calls`` calls, each on a new worker."""
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await run(os.getpid)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


async def main(args: argparse.Namespace) -> dict[str, float]:
    results = {}
    async with interpool.open_worker_context(worker_type="subinterpreter", retire=object) as ctx:
        await ctx.run_sync(os.getpid)
        results["interpool subinterpreter"] = await new_worker_ms(ctx.run_sync, args.calls)
    if args.peers:
        import trio_parallel

        for kind in ("forkserver", "spawn"):
            worker_type = trio_parallel.WorkerType[kind.upper()]
            async with trio_parallel.open_worker_context(
                worker_type=worker_type, retire=object
            ) as peer:
                await peer.run_sync(os.getpid)
                results[f"trio-parallel {kind}"] = await new_worker_ms(peer.run_sync, args.calls)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=11)
    parser.add_argument("--multiprocessing", action="store_true")
    parser.add_argument("--peers", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    args = parser.parse_args()
    if args.multiprocessing:
        import multiprocessing  # noqa: F401

    results = trio.run(main, args)
    if args.json:
        print(json.dumps(results))
        sys.exit()
    ours = results["interpool subinterpreter"]
    for name, ms in results.items():
        ratio = "" if name.startswith("interpool") else f"  ({ms / ours:.1f}x interpool's)"
        print(f"{name:26} {ms:7.2f} ms{ratio}")
