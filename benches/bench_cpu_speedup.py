"""CPU-bound speedup on subinterpreters: 4 pure-Python jobs one after another, then 2 at a time.

    python benches/bench_cpu_speedup.py [--iterations 3000000] [--repeats 3]

Prints the wall time of each leg and their ratio per repeat (2.0 is the ideal on 2 cores).
"""

import argparse
import functools
import time

import trio

import interpool
from interpool._bench import jobs


async def main(iterations: int, repeats: int) -> None:
    async with interpool.open_worker_context(worker_type="subinterpreter") as ctx:
        limiter = trio.CapacityLimiter(2)
        run = functools.partial(ctx.run_sync, limiter=limiter)
        async with trio.open_nursery() as nursery:  # start both workers first
            for _ in range(2):
                nursery.start_soon(run, jobs.spin, 10)
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(4):
                await run(jobs.spin, iterations)
            sequential = time.perf_counter() - t0
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(run, jobs.spin, iterations)
            parallel = time.perf_counter() - t0
            print(
                f"sequential {sequential:.3f} s, two at a time {parallel:.3f} s, "
                f"speedup {sequential / parallel:.2f}x"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.iterations, args.repeats)
