"""Per-call overhead on jobs that take time: round trip minus job time, and where it goes.

The job busy-waits ``D`` (100 µs, 1 ms, 10 ms by default) and returns the ``perf_counter_ns``
at which it started and ended (``CLOCK_MONOTONIC``: one clock for every interpreter and process
of the machine). For every call the caller records the round trip, so **overhead = round trip -
D**, split into **start = the job starting - the call starting** (pickling, the hand-off, the
worker's wake-up) and **wake = the caller resuming - the job ending** (the outcome's return, the
caller's wake-up and trio's scheduling). It also records the caller thread's CPU time per call
(what spinning costs), and the **worker CPU beyond the job**: what the threads that serve each
context burned over the whole series (the thread or process that ran the job, read from
``/proc/.../schedstat``, plus, for interpool's process types, their host threads in this
process), per call, less the job's own CPU time (``D`` on a quiet machine): the worker's spin
after each job, its wake-ups before the next and its share of the hand-off. interpool's worker
types and trio-parallel's run interleaved, call by call, in one ``trio.run``; figures are
medians, and each interpool type's overhead is also given as trio-parallel's (its forkserver, the
faster of its two) divided by it, call by call.

The row "not learned" runs the first type, in a context of its own, through a fresh
``functools.partial`` per call (each a callable interpool has never seen), so the caller is
never woken before the job is due (``worker_types::prewake``): the caller's side of the parked
path as it was before that, for comparison. (Its worker still learns the gaps between its jobs:
that is per worker, not per callable.)

    python benches/bench_overhead.py [--calls 200] [--durations-us 100,1000,10000]
                                     [--types subinterpreter,forkserver,spawn] [--no-peer]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import time

import trio
from _overhead_jobs import busy

import interpool

trio_parallel = None  # imported in main, in the parent only (it does not load in a worker)


def cpu_ns(threads: set[tuple[int, int]]) -> int:
    """The CPU time the threads ``(pid, tid)`` have run, in ns (0 for one that is gone)."""
    total = 0
    for pid, tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def host_threads(kind: str) -> set[tuple[int, int]]:
    """This process's threads that interpool named for worker type ``kind`` (a name in
    ``/proc`` is cut at 15 characters)."""
    me, prefix = os.getpid(), f"interpool-{kind}"[:15]
    found = set()
    for tid in os.listdir(f"/proc/{me}/task"):
        try:
            with open(f"/proc/{me}/task/{tid}/comm") as f:
                if f.read().strip().startswith(prefix):
                    found.add((me, int(tid)))
        except OSError:
            pass
    return found


async def main() -> None:
    global trio_parallel
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--durations-us", default="100,1000,10000")
    parser.add_argument("--types", default="subinterpreter,forkserver,spawn")
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    durations = [int(d) for d in args.durations_us.split(",")]

    runs = {}
    unlearned = None
    async with contextlib.AsyncExitStack() as stack:
        for kind in args.types.split(","):
            ctx = interpool.open_worker_context(worker_type=kind)
            runs[f"interpool {kind}"] = await stack.enter_async_context(ctx)
            if unlearned is None:  # a context of its own: its workers idle as long as the others
                unlearned = f"interpool {kind}, not learned"
                ctx = interpool.open_worker_context(worker_type=kind)
                runs[unlearned] = await stack.enter_async_context(ctx)
        if not args.no_peer:
            import trio_parallel

            for kind in ("SPAWN", "FORKSERVER"):
                ctx = trio_parallel.open_worker_context(
                    worker_type=getattr(trio_parallel.WorkerType, kind)
                )
                runs[f"trio-parallel {kind.lower()}"] = await stack.enter_async_context(ctx)
        limiter = trio.CapacityLimiter(1)
        servers = {}  # the threads that serve each run (see the module docs)
        for name, ctx in runs.items():  # start the workers
            _, _, pid, tid, _ = await ctx.run_sync(busy, 0.0, limiter=limiter)
            servers[name] = {(pid, tid)}
            if name.startswith("interpool") and pid != os.getpid():
                servers[name] |= host_threads(name.split()[1].rstrip(","))
        for d in durations:
            seconds = d / 1e6
            got = {name: ([], [], [], []) for name in runs}
            job_cpu = dict.fromkeys(runs, 0)  # ns, summed over the series
            fresh = []  # kept alive, so that no two calls share a callable's id
            served0 = {name: cpu_ns(threads) for name, threads in servers.items()}
            for _ in range(args.calls):
                for name, ctx in runs.items():
                    job = busy
                    if name == unlearned:
                        job = functools.partial(busy)
                        fresh.append(job)
                    cpu0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                    started, ended, _, _, cpu_of_job = await ctx.run_sync(
                        job, seconds, limiter=limiter
                    )
                    t1, cpu1 = time.perf_counter_ns(), time.thread_time_ns()
                    overhead, start, wake, cpu = got[name]
                    overhead.append((t1 - t0) / 1e3 - d)
                    start.append((started - t0) / 1e3)
                    wake.append((t1 - ended) / 1e3)
                    cpu.append((cpu1 - cpu0) / 1e3)
                    job_cpu[name] += cpu_of_job
            served = {
                name: (cpu_ns(threads) - served0[name] - job_cpu[name]) / 1e3 / args.calls
                for name, threads in servers.items()
            }
            print(f"job {d} µs, {args.calls} calls each, interleaved (medians)")
            peer = got.get("trio-parallel forkserver")
            for name, (overhead, start, wake, cpu) in got.items():
                line = (
                    f"  {name:26} overhead {statistics.median(overhead):8.1f} µs"
                    f"   start {statistics.median(start):7.1f}"
                    f"   wake {statistics.median(wake):7.1f}"
                    f"   caller CPU {statistics.median(cpu):7.1f} µs"
                    f"   worker CPU beyond the job {served[name]:7.1f} µs (mean)"
                )
                if peer is not None and name.startswith("interpool"):
                    ratios = [p / max(o, 1.0) for p, o in zip(peer[0], overhead, strict=True)]
                    line += f"   trio-parallel/this {statistics.median(ratios):5.1f}x"
                print(line)


if __name__ == "__main__":
    trio.run(main)
