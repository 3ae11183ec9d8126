"""interpool's worker types against trio-parallel: warm calls, new workers, big payloads.

Everything runs in the same ``trio.run``, interleaved round by round, so that a noisy neighbour
hurts all alike; the figures are medians, and ratios are taken per round (then the median of
those), which is what docs/benchmarks.md quotes. Measured:

- warm sequential ``await run_sync(noop)``: SUBINTERPRETER, SPAWN and FORKSERVER against
  trio-parallel's spawn and forkserver (and two concurrent callers' jobs per second);
- the cost of the AUTO decision: an AUTO context against the explicit type it picks, in the same
  run, batches alternating: plain calls (subinterpreter), calls while a route exists (a pin
  elsewhere: the memoized per-callable lookup) and ``kill_on_cancel=True`` calls (forkserver).
  Each trial opens fresh contexts: where the OS places a worker thread moves a warm call's
  latency far more than the decision costs (about 7 vs 13 us on 2 CPUs), for the thread's whole
  life, and on 2 CPUs the two contexts' workers mostly land apart (per-trial ratios near 0.55 or
  1.8, symmetrically). The figure is the geometric mean over trials of AUTO's median / the
  explicit type's median (symmetric placement noise cancels in log space); the median over the
  trials whose two workers landed alike (ratio within 0.8..1.25) is printed too;
- a new worker per call (``retire=object``: always truthy) while the forkserver is up, with
  ``os.getpid`` as the job (stdlib callables: no main script to load where it is lazy);
- a 64 MiB ``bytes`` round trip (``bytes(payload)``), in MB/s of payload.

    python benches/bench_run_sync.py [--rounds 15] [--calls 200] [--new-rounds 5]
                                     [--new-calls 10] [--big-reps 5] [--ab-trials 31]
                                     [--ab-rounds 6] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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


async def new_worker_round(run, calls: int) -> list[int]:
    """Each call starts a new worker (the contexts retire every worker after its job)."""
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        t0 = clock()
        await run(os.getpid)
        samples.append(clock() - t0)
    return samples


async def big_payload(run, payload: bytes) -> float:
    """Seconds for one round trip of ``payload`` (``bytes(payload)`` in the worker)."""
    t0 = time.perf_counter()
    result = await run(bytes, payload)
    elapsed = time.perf_counter() - t0
    assert len(result) == len(payload)
    return elapsed


def per_round_ratio(rounds: dict[str, list[float]], ours: str, theirs: str) -> float | None:
    if ours not in rounds or theirs not in rounds:
        return None
    return statistics.median(t / o for o, t in zip(rounds[ours], rounds[theirs], strict=True))


async def process_benchmarks(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> dict:
    """New workers while the forkserver is up, and 64 MiB round trips."""
    new: dict[str, object] = {}
    for kind in ("forkserver", "spawn"):
        ctx = await stack.enter_async_context(
            interpool.open_worker_context(worker_type=kind, retire=object)
        )
        new[f"interpool {kind}"] = ctx.run_sync
    if trio_parallel is not None:
        for kind in ("FORKSERVER", "SPAWN"):
            ctx = await stack.enter_async_context(
                trio_parallel.open_worker_context(
                    worker_type=trio_parallel.WorkerType[kind], retire=object
                )
            )
            new[f"trio-parallel {kind.lower()}"] = ctx.run_sync
    for run in new.values():  # start the forkservers
        await new_worker_round(run, 2)
    new_samples: dict[str, list[int]] = {name: [] for name in new}
    new_rounds: dict[str, list[float]] = {name: [] for name in new}
    for _ in range(args.new_rounds):
        for name, run in new.items():
            got = await new_worker_round(run, args.new_calls)
            new_samples[name] += got
            new_rounds[name].append(statistics.median(got))

    big: dict[str, object] = {}
    for kind in ("spawn", "forkserver", "subinterpreter"):
        ctx = await stack.enter_async_context(interpool.open_worker_context(worker_type=kind))
        big[f"interpool {kind}"] = ctx.run_sync
    if trio_parallel is not None:
        big["trio-parallel spawn"] = trio_parallel.run_sync
    payload = os.urandom(1 << 20) * 64
    big_seconds: dict[str, list[float]] = {name: [] for name in big}
    for run in big.values():
        await big_payload(run, payload[: 1 << 20])
    for _ in range(args.big_reps):
        for name, run in big.items():
            big_seconds[name].append(await big_payload(run, payload))
    mb = len(payload) / 1e6
    return {
        "new_worker_ms": {name: statistics.median(s) / 1e6 for name, s in new_samples.items() if s},
        "new_worker_speedup": {
            kind: per_round_ratio(new_rounds, f"interpool {kind}", f"trio-parallel {kind}")
            for kind in ("forkserver", "spawn")
        },
        "payload_64mib_mb_per_s": {
            name: mb / statistics.median(s) for name, s in big_seconds.items()
        },
    }


async def auto_vs_explicit(args: argparse.Namespace) -> dict:
    """AUTO against the explicit type it picks; see the module docstring."""
    cases = {
        "plain": ("subinterpreter", False, None),
        "routes": ("subinterpreter", False, "json"),
        "kill_on_cancel": ("forkserver", True, None),
    }
    result = {}
    for case, (explicit, kill, pin) in cases.items():
        ratios = []
        for trial in range(args.ab_trials):
            async with (
                interpool.open_worker_context(worker_type=explicit) as ectx,
                interpool.open_worker_context(worker_type="auto") as actx,
            ):
                if pin is not None:
                    actx.pin(pin, "forkserver")  # a route elsewhere: the memoized lookup
                runs = [functools.partial(c.run_sync, kill_on_cancel=kill) for c in (ectx, actx)]
                order = [0, 1] if trial % 2 == 0 else [1, 0]
                for i in order:
                    await one_round(runs[i], 200)
                medians: list[list[float]] = [[], []]
                for _ in range(args.ab_rounds):
                    for i in order:
                        medians[i].append(statistics.median(await one_round(runs[i], args.calls)))
                ratios.append(statistics.median(medians[1]) / statistics.median(medians[0]))
        # Trials where both workers landed alike (within 25 %): placement cancels out there.
        matched = [r for r in ratios if 0.8 <= r <= 1.25]
        result[case] = {
            "explicit": explicit,
            "median_ratio": statistics.median(ratios),
            "geometric_mean_ratio": statistics.geometric_mean(ratios),
            "matched_median_ratio": statistics.median(matched) if matched else None,
            "matched_trials": len(matched),
            "trial_ratios": ratios,
        }
    return result


async def main(args: argparse.Namespace) -> dict:
    global trio_parallel
    try:
        import trio_parallel
    except ImportError:
        pass
    async with contextlib.AsyncExitStack() as stack:
        return await measure(args, stack)


async def measure(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> dict:
    auto = await auto_vs_explicit(args)
    backends = {}
    for kind in ("subinterpreter", "spawn", "forkserver"):
        ctx = await stack.enter_async_context(interpool.open_worker_context(worker_type=kind))
        backends[f"interpool {kind}"] = ctx.run_sync
    if trio_parallel is not None:
        backends["trio-parallel spawn"] = trio_parallel.run_sync
        ctx = await stack.enter_async_context(
            trio_parallel.open_worker_context(worker_type=trio_parallel.WorkerType.FORKSERVER)
        )
        backends["trio-parallel forkserver"] = ctx.run_sync
    for run in backends.values():  # start the workers; warm the caches
        await one_round(run, 200)
    samples: dict[str, list[int]] = {name: [] for name in backends}
    round_medians: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, run in backends.items():
            got = await one_round(run, args.calls)
            samples[name] += got
            round_medians[name].append(statistics.median(got))
    for run in backends.values():  # start each backend's second worker before timing two callers
        await two_callers(run, 50)
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
        # AUTO's cost: AUTO's median / the explicit type's, median over trials (1.0: none).
        "auto_over_explicit": auto,
        "process_speedup_vs_trio_parallel": {
            kind: per_round_ratio(round_medians, f"interpool {kind}", f"trio-parallel {kind}")
            for kind in ("spawn", "forkserver")
        },
        **await process_benchmarks(args, stack),
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
    print("AUTO / the explicit type it picks (warm noop, fresh contexts per trial):")
    for case, ab in result["auto_over_explicit"].items():
        ratio = ab["geometric_mean_ratio"]
        spread = sorted(ab["trial_ratios"])
        matched = ab["matched_median_ratio"]
        matched = f"{matched:.3f}x" if matched else "n/a"
        print(
            f"  {case:15} vs {ab['explicit']:15} {ratio:.3f}x ({(ratio - 1) * 100:+.1f}%, "
            f"geometric mean of {len(spread)} trials, {spread[0]:.2f}..{spread[-1]:.2f}); "
            f"median of the {ab['matched_trials']} placement-matched trials {matched}"
        )
    if "speedup_vs_trio_parallel" in result:
        print(
            f"interpool is {result['speedup_vs_trio_parallel']:.1f}x faster than trio-parallel "
            "(median of per-round ratios)"
        )
        for kind, ratio in result["process_speedup_vs_trio_parallel"].items():
            print(f"interpool {kind} is {ratio:.1f}x faster than trio-parallel {kind} (warm)")
    else:
        print("(trio-parallel is not installed: no peer comparison)")
    print("\na new worker per call (retire=object), job os.getpid, forkservers up:")
    for name, ms in result["new_worker_ms"].items():
        print(f"  {name:28} {ms:8.1f} ms median")
    for kind, ratio in result["new_worker_speedup"].items():
        if ratio is not None:
            print(f"  interpool {kind} is {ratio:.1f}x faster than trio-parallel {kind}")
    print("\n64 MiB bytes round trip (payload MB / round-trip seconds, median):")
    for name, rate in result["payload_64mib_mb_per_s"].items():
        print(f"  {name:28} {rate:8.0f} MB/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--new-rounds", type=int, default=5)
    parser.add_argument("--new-calls", type=int, default=10)
    parser.add_argument("--big-reps", type=int, default=5)
    parser.add_argument("--ab-trials", type=int, default=31)
    parser.add_argument("--ab-rounds", type=int, default=6)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    result = trio.run(main, args)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    sys.exit(0)
