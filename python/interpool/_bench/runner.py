"""The run: cold-start processes first, then everything measured in this process in one
``trio.run`` with every pool open at once, round by round: each round gives every backend one
batch, so that a noisy neighbour hurts all alike."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import scenarios
from .backends import Backend, ExecutorBackend, TrioBackend
from .peers import Candidate, why_missing
from .results import Results
from .settings import COLD_KEYS, MEMORY_WORKERS, METRICS, NUMPY_PAYLOAD, PAYLOADS, Settings

# The program of a cold-start process: it puts this folder first on sys.path, imports
# cold_start.py (argv: this folder, the backend's spec) and takes T0 after that, so that neither
# Python's own start-up nor the harness is counted.
COLD_BOOTSTRAP = """\
import json, sys, time
sys.path.insert(0, sys.argv[1])
import cold_start
cold_start.main(time.perf_counter(), json.loads(sys.argv[2]))
"""


class Progress:
    """tqdm's bar on a terminal; plain phase lines on stderr without a terminal or tqdm."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar: Any = None
        self._phase = ""
        if not enabled:
            self._quiet = True
            return
        self._quiet = False
        try:
            from tqdm import tqdm
        except ImportError:
            return
        if sys.stderr.isatty():
            self._bar = tqdm(total=total, unit="step", leave=False, file=sys.stderr)

    def phase(self, name: str) -> None:
        self._phase = name
        if self._bar is not None:
            self._bar.set_description(name)
        elif not self._quiet:
            print(f"interpool bench: {name}...", file=sys.stderr, flush=True)

    def step(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_cold_sample(backend: Backend, timeout: float = 120.0) -> dict[str, Any]:
    """One cold-start process: its first-call time, and its tree's memory growth."""
    spec = {**backend.cold_spec(), "workers": MEMORY_WORKERS, "hold_s": 0.3}
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.run(
        [sys.executable, "-c", COLD_BOOTSTRAP, here, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"cold-start process failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def measure_cold(
    backends: list[Backend], cfg: Settings, results: Results, progress: Progress
) -> None:
    """Cold start and memory per worker: fresh processes, round-robin over the backends."""
    progress.phase("cold start and memory")
    failed: set[str] = set()
    for round_ in range(cfg.cold_warmups + cfg.cold_samples):
        for b in backends:
            progress.step()
            if b.name in failed:
                continue
            try:
                got = run_cold_sample(b)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                failed.add(b.name)
                for key in COLD_KEYS:
                    results.skip(b.name, key, str(e))
                continue
            if round_ < cfg.cold_warmups:
                continue
            results.add(b.name, "cold_start_ms", got["first_s"] * 1e3)
            growth = (got["rss"] - got["rss0"]) / 1024
            results.add(b.name, "memory_per_worker_MiB", max(growth, 0.0) / MEMORY_WORKERS)
            if got["pss"] is not None and got["pss0"] is not None:
                pss = max((got["pss"] - got["pss0"]) / 1024, 0.0) / MEMORY_WORKERS
                results.extra.setdefault(b.name, {}).setdefault(
                    "memory_per_worker_pss_MiB", []
                ).append(pss)


def _skip_in_process(results: Results, name: str, why: str) -> None:
    for key in METRICS:
        if key not in COLD_KEYS:
            results.skip(name, key, why)


async def measure_in_process(
    backends: list[Backend], cfg: Settings, results: Results, progress: Progress, workers: int
) -> None:
    """Everything measured in this process, with every pool open at once."""
    import trio

    import interpool

    async with contextlib.AsyncExitStack() as stack:
        live: list[Backend] = []
        progress.phase("opening pools")
        for b in backends:
            if b.cold_only:
                _skip_in_process(results, b.name, b.cold_only)
                continue
            try:
                await b.open(stack, workers)
            except Exception as e:  # noqa: BLE001 (a peer that cannot start is reported)
                _skip_in_process(results, b.name, f"could not open a pool: {e!r}")
                continue
            live.append(b)

        run = scenarios.Round(cfg, results, workers, scenarios.cpu_iterations(cfg.cpu_job_ms))

        async def each(
            phase: str,
            batch: Callable[[scenarios.Round, Backend], Awaitable[None]],
            rounds: int = 1,
        ) -> None:
            """Runs ``batch`` for every live backend, round by round. A backend that fails is
            dropped from the rest of the run, its error noted against every figure left."""
            progress.phase(phase)
            for _ in range(rounds):
                for b in list(live):
                    try:
                        await batch(run, b)
                    except Exception as e:  # noqa: BLE001 (reported with the figures)
                        live.remove(b)
                        _skip_in_process(results, b.name, f"failed during {phase}: {e!r}"[:300])
                    progress.step()

        await each("warm-up", scenarios.warm_up)
        await each("warm round trips", scenarios.latency, cfg.latency_rounds)
        await each("new workers", scenarios.new_worker, cfg.new_worker_rounds)
        await each("throughput", scenarios.throughput, cfg.throughput_repeats)
        await each("CPU-bound speedup", scenarios.cpu, cfg.cpu_repeats)

        for label, size in PAYLOADS.items():
            key = f"payload_{label}_MBps"
            if label not in cfg.payload_repeats:
                for b in live:
                    results.skip(b.name, key, f"not measured in {cfg.mode} mode")
                continue
            echo = functools.partial(
                scenarios.payload, key=key, data=os.urandom(size), calls=cfg.payload_calls[label]
            )
            await each(f"payload {label}", echo, cfg.payload_repeats[label])
            del echo

        await _numpy_payload(live, each, results, cfg)

        progress.phase("map helper")
        amap = getattr(interpool, "amap", None)
        for b in live:
            if isinstance(b, ExecutorBackend):
                scenarios.executor_map(run, b)
                continue
            if amap is None or b.group != "interpool" or not isinstance(b, TrioBackend):
                why = (
                    "interpool.amap is not in this build"
                    if amap is None
                    else "a map helper with chunks is interpool's"
                )
                results.skip(b.name, "map_jobs_per_s", why)
                continue
            for _ in range(cfg.throughput_repeats):
                try:
                    rate = await scenarios.amap(amap, b, cfg.map_jobs)
                except Exception as e:  # noqa: BLE001, reported in place of the figure
                    results.skip(b.name, "map_jobs_per_s", f"interpool.amap failed: {e!r}")
                    break
                results.add(b.name, "map_jobs_per_s", rate)
        await trio.lowlevel.checkpoint()
        progress.phase("closing pools")


async def _numpy_payload(
    live: list[Backend], each: Callable[..., Awaitable[None]], results: Results, cfg: Settings
) -> None:
    """The numpy array echo (``NUMPY_PAYLOAD``), skipped where numpy cannot run."""
    label, size = NUMPY_PAYLOAD
    rounds = cfg.payload_repeats.get("64MiB")
    missing = why_missing("numpy")
    if missing or rounds is None:
        why = "numpy is not installed" if missing else f"not measured in {cfg.mode} mode"
        for b in live:
            results.skip(b.name, scenarios.NUMPY_KEY, why)
        return
    import numpy

    data = numpy.frombuffer(os.urandom(size), dtype=numpy.float64)
    await each(f"payload {label}", functools.partial(scenarios.numpy_payload, data=data), rounds)


def total_steps(n_backends: int, cfg: Settings) -> int:
    per_backend = (
        cfg.cold_warmups
        + cfg.cold_samples
        + 1
        + cfg.latency_rounds
        + cfg.new_worker_rounds
        + cfg.throughput_repeats
        + cfg.cpu_repeats
        + sum(cfg.payload_repeats.values())
        + cfg.payload_repeats.get("64MiB", 0)  # the numpy payload
    )
    return n_backends * per_backend


def run_benchmark(
    candidates: list[Candidate], cfg: Settings, workers: int, progress_enabled: bool = True
) -> Results:
    import trio

    backends = [c.backend for c in candidates if c.backend is not None]
    results = Results()
    progress = Progress(total_steps(len(backends), cfg), progress_enabled)
    try:
        measure_cold(backends, cfg, results, progress)
        trio.run(measure_in_process, backends, cfg, results, progress, workers)
    finally:
        progress.close()
    return results
