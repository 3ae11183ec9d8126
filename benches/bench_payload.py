"""Payload round trips (echo) per worker type against trio-parallel (and, on CPython 3.14+, the
stdlib's ``InterpreterPoolExecutor``), interleaved round by round.

    .venv/bin/python benches/bench_payload.py [--rounds 5] [--sizes 1KiB,1MiB,16MiB,64MiB]
                                              [--kinds bytes,numpy]

Each round runs every (peer, payload) pair in turn (one untimed warm-up call, then the best of
``--calls``), so a load spike hits every peer alike; each figure is the median over rounds. The
echo is ``bytes`` (identity on a ``bytes``) or ``numpy.asarray`` (identity on an array). ``numpy``
payloads (float64 arrays) run on process workers and trio-parallel only: numpy refuses
subinterpreters (and InterpreterPoolExecutor). The ratio columns divide trio-parallel's (and
InterpreterPoolExecutor's) time by each peer's. InterpreterPoolExecutor runs with one worker, its
future awaited through a done-callback that wakes the trio task (no thread hop).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import time

import trio

import interpool

try:
    import trio_parallel
except ImportError:  # pragma: no cover
    trio_parallel = None

try:
    import numpy
except ImportError:  # pragma: no cover
    numpy = None

UNITS = {"KiB": 1024, "MiB": 1024 * 1024}
IPE = "InterpreterPoolExecutor"


def awaiting(executor: concurrent.futures.Executor):
    """A ``run_sync`` for ``executor``: submit, then wait for the future's done-callback."""

    async def run_sync(fn, *args):
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = executor.submit(fn, *args)
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        await done.wait()
        return future.result()

    return run_sync


def parse_size(text: str) -> int:
    for unit, scale in UNITS.items():
        if text.endswith(unit):
            return int(text[: -len(unit)]) * scale
    return int(text)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per pair and round")
    parser.add_argument("--sizes", default="1KiB,1MiB,16MiB,64MiB")
    parser.add_argument("--kinds", default="bytes,numpy")
    parser.add_argument("--types", default="subinterpreter,forkserver,spawn")
    options = parser.parse_args()
    sizes = options.sizes.split(",")
    kinds = [k for k in options.kinds.split(",") if k != "numpy" or numpy is not None]
    available = {t.worker_type.value for t in interpool.available_worker_types() if t.available}
    peers = {}
    kind_of = interpool.WorkerType
    async with (
        interpool.open_worker_context(worker_type=kind_of.SUBINTERPRETER) as sub,
        interpool.open_worker_context(worker_type=kind_of.FORKSERVER) as fork,
        interpool.open_worker_context(worker_type=kind_of.SPAWN) as spawn,
    ):
        contexts = {"subinterpreter": sub, "forkserver": fork, "spawn": spawn}
        for name in options.types.split(","):
            if name in available:
                peers[f"interpool {name}"] = (contexts[name].run_sync, name)
        if trio_parallel is not None:
            tp_ctx = trio_parallel.open_worker_context()
            tp = await tp_ctx.__aenter__()
            peers["trio-parallel"] = (tp.run_sync, "process")
        ipe = None
        if hasattr(concurrent.futures, IPE) and "subinterpreter" in options.types.split(","):
            ipe = concurrent.futures.InterpreterPoolExecutor(max_workers=1)
            peers[IPE] = (awaiting(ipe), "subinterpreter")
        times: dict[tuple[str, str, str], list[float]] = {}
        payloads = {}
        for kind in kinds:
            for size in sizes:
                n = parse_size(size)
                if kind == "bytes":
                    payloads[kind, size] = bytes(range(256)) * (n // 256) + bytes(n % 256)
                else:
                    payloads[kind, size] = numpy.arange(n // 8, dtype=numpy.float64)
        for _ in range(options.rounds):
            for (kind, size), data in payloads.items():
                for peer, (run_sync, nature) in peers.items():
                    if kind == "numpy" and nature == "subinterpreter":
                        continue
                    echo = bytes if kind == "bytes" else numpy.asarray  # identity on its input
                    await run_sync(echo, data)  # warm-up: a worker exists, pages touched
                    samples = []
                    for _ in range(options.calls):
                        t0 = time.perf_counter()
                        back = await run_sync(echo, data)
                        samples.append(time.perf_counter() - t0)
                        if len(back) != len(data):
                            raise RuntimeError(f"{peer} echoed {len(back)} of {len(data)}")
                        del back
                    times.setdefault((kind, size, peer), []).append(min(samples))
        if trio_parallel is not None:
            await tp_ctx.__aexit__(None, None, None)
        if ipe is not None:
            ipe.shutdown()
    header = f"{'payload':<16}{'peer':<28}{'median ms':>10}{'MB/s':>9}{'vs trio-parallel':>18}"
    print(header + (f"{'vs ' + IPE:>30}" if ipe is not None else ""))

    def median_ms(kind: str, size: str, peer: str) -> float | None:
        values = times.get((kind, size, peer))
        return statistics.median(values) * 1e3 if values else None

    for kind, size in payloads:
        base_ms = median_ms(kind, size, "trio-parallel")
        ipe_ms = median_ms(kind, size, IPE)
        for peer in peers:
            values = times.get((kind, size, peer))
            if not values:
                continue
            ms = statistics.median(values) * 1e3
            nbytes = parse_size(size)
            rate = 2 * nbytes / (ms / 1e3) / 1e6
            ratio = f"{base_ms / ms:.2f}x" if base_ms else "-"
            line = f"{kind + ' ' + size:<16}{peer:<28}{ms:>10.3f}{rate:>9.0f}{ratio:>18}"
            if ipe is not None:
                line += f"{ipe_ms / ms:>29.2f}x" if ipe_ms else f"{'-':>30}"
            print(line)


if __name__ == "__main__":
    trio.run(main)
