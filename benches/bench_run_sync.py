"""Warm sequential ``await run_sync(noop)``: interpool's SUBINTERPRETER against trio-parallel.

Both run in the same ``trio.run``, interleaved round by round, so that a noisy neighbour hurts
both alike; the figures are medians over all calls, and the ratio is taken per round (then the
median of those), which is what docs/benchmarks.md quotes.

    python benches/bench_run_sync.py [--rounds 15] [--calls 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import trio

import interpool

# Workers load this script as __mp_main__ to find `noop`; trio-parallel does not import in a
# subinterpreter (3.13.0: `_contextvars.Token.MISSING` is missing there), so it is imported in
# `main` only, in the parent.
trio_parallel = None


def noop() -> None:
    return None


def summarize(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "median_us": statistics.median(ordered) / 1e3,
        "p10_us": ordered[len(ordered) // 10] / 1e3,
        "p90_us": ordered[len(ordered) * 9 // 10] / 1e3,
        "p99_us": ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] / 1e3,
        "n": len(ordered),
    }


async def one_round(run, calls: int) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        t0 = clock()
        await run(noop)
        samples.append(clock() - t0)
    return samples


async def two_callers(run, calls: int) -> float:
    """Jobs per second with two concurrent callers (a nursery of two sequential loops)."""

    async def loop() -> None:
        for _ in range(calls):
            await run(noop)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop)
        nursery.start_soon(loop)
    return 2 * calls / (time.perf_counter() - t0)


async def main(args: argparse.Namespace) -> dict:
    global trio_parallel
    try:
        import trio_parallel
    except ImportError:
        pass
    backends = {"interpool subinterpreter": interpool.run_sync}
    if trio_parallel is not None:
        backends["trio-parallel spawn"] = trio_parallel.run_sync
    for run in backends.values():  # start the workers; warm the caches
        await one_round(run, 200)
    samples: dict[str, list[int]] = {name: [] for name in backends}
    round_medians: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, run in backends.items():
            got = await one_round(run, args.calls)
            samples[name] += got
            round_medians[name].append(statistics.median(got))
    throughput = {name: await two_callers(run, args.calls * 5) for name, run in backends.items()}
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "interpool": getattr(interpool, "__version__", "dev"),
            "trio_parallel": getattr(trio_parallel, "__version__", None),
        },
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "latency": {name: summarize(s) for name, s in samples.items()},
        "throughput_two_callers_per_s": throughput,
    }
    if trio_parallel is not None:
        ours, theirs = (
            round_medians["interpool subinterpreter"],
            round_medians["trio-parallel spawn"],
        )
        result["speedup_vs_trio_parallel"] = statistics.median(
            t / o for o, t in zip(ours, theirs, strict=True)
        )
    return result


def print_table(result: dict) -> None:
    print(
        f"warm sequential await run_sync(noop); Python {result['machine']['python']}, "
        f"{result['machine']['cpus']} CPUs, {result['rounds']} x {result['calls_per_round']} calls"
    )
    print(f"{'backend':28} {'median':>9} {'p10':>8} {'p90':>8} {'p99':>8} {'2 callers':>12}")
    for name, lat in result["latency"].items():
        jobs = result["throughput_two_callers_per_s"][name]
        print(
            f"{name:28} {lat['median_us']:7.1f}µs {lat['p10_us']:6.1f}µs {lat['p90_us']:6.1f}µs "
            f"{lat['p99_us']:6.1f}µs {jobs:9.0f}/s"
        )
    if "speedup_vs_trio_parallel" in result:
        print(
            f"interpool is {result['speedup_vs_trio_parallel']:.1f}x faster than trio-parallel "
            "(median of per-round ratios)"
        )
    else:
        print("(trio-parallel is not installed: no peer comparison)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    result = trio.run(main, args)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    sys.exit(0)
