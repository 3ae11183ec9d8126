"""Why one run's warm trivial call reads 7 µs and the next one's 13: the host's CPU speed drifts.

One SUBINTERPRETER context, warm; each round times 100 sequential ``await run_sync(int)`` calls
(their median) and then a fixed pure-Python control (200 ``pickle.dumps`` of a small job, ns
each), with a short sleep between rounds. Where the control reads slower, the warm call does
too: the figures move together with the machine's speed, not with anything interpool does
(docs/benchmarks.md, "Trio front end, fifth session"). Compare warm-call figures only against a
peer or a baseline measured in the same run, interleaved.

    python benches/bench_warm_drift.py [--rounds 40] [--sleep 0.02]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import trio

import interpool


def control() -> float:
    """ns per ``pickle.dumps`` of a small job: pure Python-and-C work in this thread."""
    dumps, job = pickle.dumps, (int, ())
    t0 = time.perf_counter_ns()
    for _ in range(200):
        dumps(job, 5)
    return (time.perf_counter_ns() - t0) / 200


async def main(args: argparse.Namespace) -> None:
    clock = time.perf_counter_ns
    async with interpool.open_worker_context(worker_type="subinterpreter") as ctx:
        for _ in range(300):
            await ctx.run_sync(int)
        calls, controls = [], []
        for _ in range(args.rounds):
            got = []
            for _ in range(100):
                t0 = clock()
                await ctx.run_sync(int)
                got.append(clock() - t0)
            calls.append(statistics.median(got) / 1e3)
            controls.append(control())
            await trio.sleep(args.sleep)
    print("round: warm call median µs / control ns")
    print(" ".join(f"{c:.1f}/{k:.0f}" for c, k in zip(calls, controls, strict=True)))
    print(
        f"warm call {min(calls):.1f}..{max(calls):.1f} µs, control {min(controls):.0f}.."
        f"{max(controls):.0f} ns, correlation {statistics.correlation(calls, controls):.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--sleep", type=float, default=0.02)
    trio.run(main, parser.parse_args())
