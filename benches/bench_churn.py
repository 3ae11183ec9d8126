"""Cancellation churn, as a long-running service sees it: RSS, jobs/s, innocent failures.

Two phases per worker type, each in a fresh worker context:

- **churn**: ``--callers`` tasks call ``run_sync(echo, i)`` (a job of 0 to 2 ms of pure-Python
  work) for ``--seconds``; ``--cancel-rate`` of the calls are cancelled at a random moment while
  they run, ``--kill-fraction`` of those with ``kill_on_cancel=True``. Reported: jobs/s, calls
  cancelled, *innocent failures* (a call nobody cancelled that raised or returned something other
  than its own input), whether leaving the context raised (a false shutdown report), and the
  host's RSS before and after.
- **kills**: ``--kills`` calls of a job that runs until interrupted, each cancelled with
  ``kill_on_cancel=True`` once it runs; RSS growth over them (on SUBINTERPRETER, 3.13 leaks
  1.7 to 8.6 MiB per *ended* interpreter: interpool keeps an interrupted interpreter instead).

The limiter is ``--width`` wide (2 by default, as in docs/benchmarks.md's churn table). RSS is the
host's (``/proc/self/status``): for process workers it does not include the workers.

    python benches/bench_churn.py [--types subinterpreter,forkserver,spawn,auto]
                                  [--seconds 10] [--callers 32] [--width 2]
                                  [--cancel-rate 0.1] [--kill-fraction 0.1] [--kills 1000]
                                  [--seed 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time

import trio

import interpool


def echo(value: int, seconds: float) -> int:
    """Busy for ``seconds`` of Python bytecode (interruptible anywhere), then ``value``."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass
    return value


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def churn(worker_type: str, args: argparse.Namespace, rng: random.Random) -> dict:
    limiter = trio.CapacityLimiter(args.width)
    counts = {"ok": 0, "cancelled": 0, "killed": 0, "innocent_failures": 0}
    failures: list[str] = []
    shutdown_error = None
    rss_before = rss_mib()
    started = time.perf_counter()
    deadline = trio.current_time() + args.seconds
    next_value = iter(range(1 << 62))

    async def caller(ctx: interpool.WorkerContext) -> None:
        while trio.current_time() < deadline:
            value = next(next_value)
            seconds = rng.uniform(0, 0.002)
            if rng.random() >= args.cancel_rate:
                try:
                    got = await ctx.run_sync(echo, value, seconds, limiter=limiter)
                except Exception as exc:  # noqa: BLE001, any error here is an innocent failure
                    counts["innocent_failures"] += 1
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if got == value:
                    counts["ok"] += 1
                else:
                    counts["innocent_failures"] += 1
                    failures.append(f"call {value} got {got!r}")
                continue
            kill = rng.random() < args.kill_fraction
            scope = trio.CancelScope()
            # Cancelled by another task (as a service's request handler would be), not by a
            # deadline: trio processes I/O before deadlines, other tasks' steps after it.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancelled_call, ctx, scope, value, seconds, kill)
                await trio.sleep(rng.uniform(0, 0.002))
                scope.cancel()
            counts["killed" if kill else "cancelled"] += 1

    async def cancelled_call(ctx, scope, value, seconds, kill) -> None:
        with scope:
            await ctx.run_sync(echo, value, seconds, kill_on_cancel=kill, limiter=limiter)

    try:
        async with interpool.open_worker_context(worker_type=worker_type) as ctx:
            async with trio.open_nursery() as nursery:
                for _ in range(args.callers):
                    nursery.start_soon(caller, ctx)
    except interpool.BrokenWorkerError as exc:
        shutdown_error = str(exc)
    elapsed = time.perf_counter() - started
    calls = sum(counts.values())
    return {
        "phase": "churn",
        "worker_type": worker_type,
        **counts,
        "jobs_per_s": calls / elapsed,
        "shutdown_error": shutdown_error,
        "first_failures": failures[:3],
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_mib(),
    }


async def kills(worker_type: str, args: argparse.Namespace) -> dict:
    limiter = trio.CapacityLimiter(args.width)
    left = args.kills
    shutdown_error = None
    rss_before = rss_mib()
    started = time.perf_counter()

    async def killer(ctx: interpool.WorkerContext) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            with trio.move_on_after(0.005):
                await ctx.run_sync(echo, 0, 60.0, kill_on_cancel=True, limiter=limiter)

    try:
        async with interpool.open_worker_context(worker_type=worker_type) as ctx:
            async with trio.open_nursery() as nursery:
                for _ in range(args.width):
                    nursery.start_soon(killer, ctx)
    except interpool.BrokenWorkerError as exc:
        shutdown_error = str(exc)
    return {
        "phase": "kills",
        "worker_type": worker_type,
        "kills": args.kills,
        "seconds": time.perf_counter() - started,
        "shutdown_error": shutdown_error,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_mib(),
    }


async def main(args: argparse.Namespace) -> list[dict]:
    rng = random.Random(args.seed)
    available = {i.worker_type.value for i in interpool.available_worker_types() if i.available}
    rows = []
    for worker_type in args.types.split(","):
        if worker_type != "auto" and worker_type not in available:
            print(f"{worker_type}: unavailable here, skipped", file=sys.stderr)
            continue
        for row in (await churn(worker_type, args, rng), await kills(worker_type, args)):
            rows.append(row)
            growth = row["rss_after_mib"] - row["rss_before_mib"]
            detail = (
                f"{row['jobs_per_s']:.0f} jobs/s, {row['innocent_failures']} innocent failures, "
                f"{row['cancelled']}+{row['killed']} cancelled+killed"
                if row["phase"] == "churn"
                else f"{row['kills']} kills in {row['seconds']:.1f} s"
            )
            print(
                f"{worker_type:>14} {row['phase']:>5}: {detail}; RSS "
                f"{row['rss_before_mib']:.0f} -> {row['rss_after_mib']:.0f} MiB "
                f"({growth:+.0f}); shutdown: {row['shutdown_error'] or 'clean'}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="subinterpreter,forkserver,spawn,auto")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--cancel-rate", type=float, default=0.1)
    parser.add_argument("--kill-fraction", type=float, default=0.1)
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = trio.run(main, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": platform.python_version(), "args": vars(args), "rows": rows}, f)
