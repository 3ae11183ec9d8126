"""``python -m interpool bench``: every available worker type, and the peers, on the same work.

Run ``python -m interpool bench --help``; docs/bench-cli.md says what each figure means. This
module is never imported by ``import interpool``; it imports trio, interpool and the peers only
when it runs. The jobs are builtins where they can be (``int`` is the trivial job, ``bytes`` the
echo), so that no peer's worker imports anything to run them, plus ``_bench_jobs.spin`` for
pure-Python CPU work.

Figures, per worker type and peer (the keys of ``METRICS``):

* cold start: a fresh Python process imports the library, opens a pool and gets its first
  result (one process per sample); the same process then measures memory per idle worker, the
  growth of its process tree's RSS with ``MEMORY_WORKERS`` idle workers, divided by their count;
* new worker: with the pool warm, a call that needs a new worker (``retire`` always truthy);
* warm call: sequential round trips of a trivial call (median and p99 over every call);
* throughput: N trivial jobs, one worker per core (trio: a nursery and a limiter);
* CPU speedup: K pure-Python CPU jobs one after another on one worker, against one per core;
* payload: ``bytes`` of 1 KiB, 1 MiB and 64 MiB there and back (MB/s of payload);
* map throughput: ``interpool.amap`` with chunks, where this build has it; the executors'
  ``map(fn, items, chunksize=100)`` (``interpool.Executor`` and the peers').

Everything measured in this process runs in one ``trio.run`` with every pool open at once, round
by round: each round gives every backend one batch, so that a noisy neighbour hurts all alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _bench_jobs

# The trivial job and the echo: builtins, so a worker of any peer runs them without importing
# anything (``int()`` is 0; ``bytes(b)`` is ``b`` itself).
NOOP: Callable[..., Any] = int
ECHO: Callable[..., Any] = bytes
# A truthy ``retire`` hook that every worker can unpickle without an import: ``object()``.
RETIRE_ALWAYS: Callable[[], object] = object
# Idle workers started in the cold-start process to measure memory per worker.
MEMORY_WORKERS = 4
# A figure whose p90/p10 exceeds this is flagged as noisy.
WIDE_SPREAD = 2.0
REFERENCE_PEER = "trio-parallel spawn"
KiB, MiB = 1024, 1024 * 1024
PAYLOADS = {"1KiB": KiB, "1MiB": MiB, "64MiB": 64 * MiB}
# A numpy array payload (float64, echoed by ``numpy.asarray``, the identity on an array): only
# where numpy imports, so not on subinterpreters (numpy refuses them; AUTO runs it on a process).
NUMPY_PAYLOAD = ("numpy16MiB", 16 * MiB)
PEERS = ("trio-parallel", "loky", "process-pool", "mp-pool", "interpreters", "interpreter-pool")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


METRICS = {
    m.key: m
    for m in (
        Metric("cold_start_ms", "cold start to first result", "ms", False),
        Metric("new_worker_ms", "new worker, pool warm", "ms", False),
        Metric("warm_call_us", "warm round trip of a trivial call", "µs", False),
        Metric("throughput_jobs_per_s", "trivial jobs, one worker per core", "jobs/s", True),
        Metric("cpu_speedup", "CPU-bound jobs: 1 worker vs one per core", "x", True),
        *(
            Metric(f"payload_{name}_MBps", f"payload round trip, {name}", "MB/s", True)
            for name in PAYLOADS
        ),
        Metric(
            f"payload_{NUMPY_PAYLOAD[0]}_MBps",
            "numpy array round trip, 16 MiB (not on subinterpreters)",
            "MB/s",
            True,
        ),
        Metric("memory_per_worker_MiB", "process tree RSS growth per idle worker", "MiB", False),
        Metric("map_jobs_per_s", "map helper with chunks", "jobs/s", True),
    )
}


@dataclass(frozen=True)
class Settings:
    """How many samples of what; ``--quick``, the default and ``--smoke`` differ only here."""

    mode: str
    cold_samples: int
    warmup_calls: int
    latency_rounds: int
    latency_calls: int
    new_worker_rounds: int
    new_worker_calls: int
    throughput_repeats: int
    throughput_jobs: int
    cpu_repeats: int
    cpu_job_ms: float
    payload_repeats: dict[str, int]
    payload_calls: dict[str, int]
    map_jobs: int
    # Cold-start rounds run first and thrown away (they write .pyc files, fill the page cache).
    cold_warmups: int = 1


SETTINGS = {
    "default": Settings(
        "default", 5, 200, 15, 200, 5, 3, 5, 3000, 5, 100.0,
        {"1KiB": 5, "1MiB": 5, "64MiB": 3}, {"1KiB": 50, "1MiB": 10, "64MiB": 1}, 10000,
    ),
    "quick": Settings(
        "quick", 2, 100, 5, 100, 3, 2, 3, 500, 3, 20.0,
        {"1KiB": 3, "1MiB": 3, "64MiB": 1}, {"1KiB": 20, "1MiB": 3, "64MiB": 1}, 2000,
    ),
    "smoke": Settings(
        "smoke", 1, 5, 2, 10, 1, 1, 1, 20, 1, 1.0,
        {"1KiB": 1, "1MiB": 1}, {"1KiB": 3, "1MiB": 1}, 50, cold_warmups=0,
    ),
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if len(ordered) == 1:
        return float(ordered[0])
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def summarize(samples: Sequence[float], unit: str) -> dict[str, Any]:
    """Median, p10, p90, p99, n and the spread p90/p10 of positive samples."""
    ordered = sorted(samples)
    p10, p90 = _quantile(ordered, 0.10), _quantile(ordered, 0.90)
    spread = p90 / p10 if p10 > 0 else 1.0
    return {
        "unit": unit,
        "median": float(statistics.median(ordered)),
        "p10": p10,
        "p90": p90,
        "p99": _quantile(ordered, 0.99),
        "n": len(ordered),
        "spread": spread,
        "wide_spread": spread > WIDE_SPREAD,
    }


# --------------------------------------------------------------------------------------------
# Memory: the RSS (and PSS) of this process and all its descendants, from /proc
# --------------------------------------------------------------------------------------------

# Source, because the cold-start processes run it before importing anything else.
_TREE_MEMORY_SRC = '''
def tree_memory_kib(root=None):
    """(RSS, PSS) in KiB of `root` (default: this process) and its descendants; PSS is None
    where /proc/PID/smaps_rollup cannot be read."""
    import os
    root = os.getpid() if root is None else root
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    pss_known = True
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/status") as f:
                rss += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss += next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
        except (OSError, StopIteration):
            pss_known = False
    return rss, (pss if pss_known else None)
'''
_namespace: dict[str, Any] = {}
exec(_TREE_MEMORY_SRC, _namespace)
tree_memory_kib: Callable[..., tuple[int, int | None]] = _namespace["tree_memory_kib"]


# --------------------------------------------------------------------------------------------
# The hand-written baseline (a thread per interpreter) and the stdlib's InterpreterPoolExecutor
# --------------------------------------------------------------------------------------------

# Source too, so that the cold-start process can build it without importing interpool (whose
# import is part of interpool's cold start, not the baseline's).
#
# The API differs by version. 3.14 made it public (PEP 734, `concurrent.interpreters`: `call`
# takes the callable and its arguments and pickles what is not shareable) and changed the private
# modules' signatures: `_interpqueues.create(maxsize, unboundop, fallback)` and `put(qid, obj,
# unboundop, fallback)`, where 3.13 has `create(maxsize, fmt, unboundop)` and `put(qid, obj, fmt,
# unboundop)`. So 3.14+ uses the public module, and 3.13 the private ones with 3.13's signatures.
_BASELINE_SRC = '''
import concurrent.futures, pickle, sys, threading
from concurrent.futures import ThreadPoolExecutor

try:
    from concurrent import interpreters  # 3.14+
except ImportError:  # 3.13
    interpreters = None
    import _interpreters, _interpqueues

# Each interpreter first takes this process's sys.path, and lets the bench's own job module
# (interpool._bench_jobs) import there: interpool's __init__ skips its extension, which refuses
# subinterpreters, inside a worker.
_SETUP = """
import sys, types
sys.path[:] = PATH
sys.modules.setdefault("_interpool_worker", types.ModuleType("_interpool_worker"))
"""
# 3.13: jobs and results cross as pickles, results come back through a queue.
_SETUP_313 = _SETUP + """
import pickle, _interpqueues
def _run(payload):
    fn, args = pickle.loads(payload)
    try:
        out = (True, fn(*args))
    except BaseException as e:
        out = (False, e)
    _interpqueues.put(QID, pickle.dumps(out), 0, 1)  # fmt 0, unboundop 1 (remove)
"""
_JOB_313 = compile("_run(PAYLOAD)", "<job>", "exec")


class _Interpreter:
    """One isolated (own GIL) interpreter, set up for jobs, through the public API (3.14+)."""

    def __init__(self):
        self._interp = interpreters.create()
        self._interp.prepare_main(PATH=tuple(sys.path))
        self._interp.exec(_SETUP)

    def run(self, fn, args):
        return self._interp.call(fn, *args)

    def close(self):
        self._interp.close()


class _Interpreter313:
    """The same on 3.13, through the private modules."""

    def __init__(self):
        self._iid = _interpreters.create()
        self._qid = _interpqueues.create(0, 0, 1)  # maxsize 0 (unbounded), fmt 0, unboundop 1
        _interpreters.set___main___attrs(self._iid, {"QID": self._qid, "PATH": tuple(sys.path)})
        failed = _interpreters.exec(self._iid, _SETUP_313)
        if failed:
            raise RuntimeError(failed.formatted)

    def run(self, fn, args):
        _interpreters.set___main___attrs(self._iid, {"PAYLOAD": pickle.dumps((fn, args))})
        failed = _interpreters.exec(self._iid, _JOB_313)
        if failed:
            raise RuntimeError(failed.formatted)
        ok, value = pickle.loads(_interpqueues.get(self._qid)[0])
        if not ok:
            raise value
        return value

    def close(self):
        _interpreters.destroy(self._iid)
        _interpqueues.destroy(self._qid)


class InterpreterPool:
    """What a user writes by hand on 3.13 (and 3.14 without the executor): a thread pool whose
    threads each own an isolated (own GIL) interpreter. `fresh`: a new interpreter for every call
    (created and destroyed around it)."""

    def __init__(self, workers, fresh=False):
        self._fresh = fresh
        self._local = threading.local()
        self._lock = threading.Lock()
        self._made = []
        self._threads = ThreadPoolExecutor(workers)
        self._new = _Interpreter313 if interpreters is None else _Interpreter

    def _call(self, fn, args):
        if self._fresh:
            interp = self._new()
            try:
                return interp.run(fn, args)
            finally:
                interp.close()
        own = getattr(self._local, "own", None)
        if own is None:
            own = self._local.own = self._new()
            with self._lock:
                self._made.append(own)
        return own.run(fn, args)

    def submit(self, fn, *args):
        return self._threads.submit(self._call, fn, args)

    def shutdown(self):
        self._threads.shutdown(wait=True)
        for interp in self._made:
            interp.close()
        self._made.clear()


def InterpreterPoolExecutor(workers):
    """The stdlib's pool (3.14+), each interpreter set up like the baseline's: `exec` of _SETUP,
    a builtin, is an initializer every interpreter can unpickle without an import."""
    return concurrent.futures.InterpreterPoolExecutor(
        workers, initializer=exec, initargs=(_SETUP, {"PATH": tuple(sys.path)})
    )
'''


def _baseline_namespace() -> dict[str, Any]:
    """``InterpreterPool`` and ``InterpreterPoolExecutor`` of ``_BASELINE_SRC``."""
    namespace: dict[str, Any] = {"__name__": "interpool._bench_baseline"}
    exec(_BASELINE_SRC, namespace)
    return {name: namespace[name] for name in ("InterpreterPool", "InterpreterPoolExecutor")}


# --------------------------------------------------------------------------------------------
# Backends: interpool's worker types and the peers, behind one small async interface
# --------------------------------------------------------------------------------------------


class Unsupported(Exception):
    """This backend cannot measure that figure (the message says why)."""


class Backend:
    """One worker type of interpool or of a peer."""

    name: str
    group: str  # "interpool", "trio-parallel" or "peer"
    # Why this backend is measured in fresh processes only (cold start, memory), if it is.
    cold_only: str | None = None

    async def open(self, stack: contextlib.AsyncExitStack, workers: int) -> None:
        raise NotImplementedError

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def call_new_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def run_many(self, fn: Callable[..., Any], arg_lists: list[tuple], parallel: bool):
        """Runs every job, one worker per core if ``parallel``, else one at a time."""
        raise NotImplementedError

    def cold_code(self) -> str:
        """Python source for a fresh process: it defines ``sample(n, hold_s)``, which imports the
        library, notes the process tree's memory, opens a pool, runs ``os.getpid`` on it, then
        ``n`` concurrent sleeps (on ``n`` workers), and returns ``(first-result seconds since
        T0, rss0, pss0, rss, pss)``. See ``cold_script``.
        """
        raise NotImplementedError


class TrioBackend(Backend):
    """interpool and trio-parallel: ``open_worker_context`` and ``run_sync`` under trio."""

    def __init__(self, name: str, group: str, module: str, type_expr: str) -> None:
        self.name, self.group = name, group
        self._module, self._type_expr = module, type_expr

    def _worker_type(self, lib: Any) -> Any:
        return eval(self._type_expr, {"lib": lib})

    async def open(self, stack: contextlib.AsyncExitStack, workers: int) -> None:
        import importlib

        import trio

        lib = importlib.import_module(self._module)
        worker_type = self._worker_type(lib)
        self._ctx = await stack.enter_async_context(
            lib.open_worker_context(worker_type=worker_type)
        )
        self._fresh = await stack.enter_async_context(
            lib.open_worker_context(worker_type=worker_type, retire=RETIRE_ALWAYS)
        )
        self._workers = workers
        self._limiter = trio.CapacityLimiter(workers)

    async def call(self, fn, *args):
        return await self._ctx.run_sync(fn, *args, limiter=self._limiter)

    async def call_new_worker(self, fn, *args):
        return await self._fresh.run_sync(fn, *args, limiter=self._limiter)

    async def run_many(self, fn, arg_lists, parallel):
        import trio

        limiter = trio.CapacityLimiter(self._workers if parallel else 1)
        results: list[Any] = [None] * len(arg_lists)

        async def one(i: int, args: tuple) -> None:
            results[i] = await self._ctx.run_sync(fn, *args, limiter=limiter)

        async with trio.open_nursery() as nursery:
            for i, args in enumerate(arg_lists):
                nursery.start_soon(one, i, args)
        return results

    def cold_code(self) -> str:
        return textwrap.dedent(f"""
            def sample(n, hold_s):
                import functools
                import trio
                import {self._module} as lib
                t_import = time.perf_counter() - T0
                rss0, pss0 = tree_memory_kib()

                async def main():
                    limiter = trio.CapacityLimiter(n)
                    t1 = time.perf_counter()
                    async with lib.open_worker_context(worker_type={self._type_expr}) as ctx:
                        await ctx.run_sync(os.getpid, limiter=limiter)
                        t_first = t_import + time.perf_counter() - t1
                        hold = functools.partial(ctx.run_sync, time.sleep, hold_s, limiter=limiter)
                        async with trio.open_nursery() as nursery:
                            for _ in range(n):
                                nursery.start_soon(hold)
                        await trio.sleep(0.2)  # let the workers settle into idleness
                        rss, pss = tree_memory_kib()
                    return t_first, rss0, pss0, rss, pss

                return trio.run(main)
        """)


class ExecutorBackend(Backend):
    """A ``concurrent.futures``-style pool, driven synchronously from the trio task (a blocking
    ``result()`` is what its users do, and nothing else runs meanwhile)."""

    def __init__(self, name: str, make: str, make_fresh: str | None, why_not_fresh: str = ""):
        self.name, self.group = name, "peer"
        # Python expressions of `workers`, evaluated here and in the cold-start process.
        self._make, self._make_fresh, self._why_not_fresh = make, make_fresh, why_not_fresh

    def _build(self, expr: str, workers: int) -> Any:
        import concurrent.futures
        import multiprocessing

        namespace = {
            "workers": workers,
            "concurrent": concurrent,
            "multiprocessing": multiprocessing,
        }
        if "loky" in expr:
            import loky

            namespace["loky"] = loky
        if "InterpreterPool" in expr:
            namespace.update(_baseline_namespace())
        if "interpool." in expr:
            import interpool

            namespace["interpool"] = interpool
        return eval(expr, namespace)

    async def open(self, stack: contextlib.AsyncExitStack, workers: int) -> None:
        self._pool = self._build(self._make, workers)
        stack.callback(_shutdown, self._pool)
        self._fresh = None
        if self._make_fresh is not None:
            self._fresh = self._build(self._make_fresh, workers)
            stack.callback(_shutdown, self._fresh)

    async def call(self, fn, *args):
        return _submit(self._pool, fn, args)()

    async def call_new_worker(self, fn, *args):
        if self._fresh is None:
            raise Unsupported(self._why_not_fresh)
        return _submit(self._fresh, fn, args)()

    async def run_many(self, fn, arg_lists, parallel):
        if not parallel:
            return [_submit(self._pool, fn, args)() for args in arg_lists]
        pending = [_submit(self._pool, fn, args) for args in arg_lists]
        return [get() for get in pending]

    def cold_code(self) -> str:
        needs = "import loky" if "loky" in self._make else ""
        if "InterpreterPool" in self._make:
            needs = "exec(BASELINE_SRC, globals())"
        if "interpool." in self._make:
            needs = "import interpool"
        return textwrap.dedent(f"""
            def sample(n, hold_s):
                import concurrent.futures, multiprocessing
                {needs}
                t_import = time.perf_counter() - T0
                rss0, pss0 = tree_memory_kib()
                t1 = time.perf_counter()
                workers = n
                pool = {self._make}
                submit(pool, os.getpid, ())()
                t_first = t_import + time.perf_counter() - t1
                for get in [submit(pool, time.sleep, (hold_s,)) for _ in range(n)]:
                    get()
                time.sleep(0.2)  # let the workers settle into idleness
                rss, pss = tree_memory_kib()
                shutdown(pool)
                return t_first, rss0, pss0, rss, pss
        """)


_SUBMIT_SRC = '''
def submit(pool, fn, args):
    """Submits a job; returns a function that waits for its result."""
    if hasattr(pool, "apply_async"):  # multiprocessing.Pool
        return pool.apply_async(fn, args).get
    return pool.submit(fn, *args).result

def shutdown(pool):
    if hasattr(pool, "apply_async"):
        pool.close()
        pool.join()
    else:
        pool.shutdown()
'''
exec(_SUBMIT_SRC, _namespace)
_submit: Callable[..., Callable[[], Any]] = _namespace["submit"]
_shutdown: Callable[[Any], None] = _namespace["shutdown"]


@dataclass
class Candidate:
    """A backend, or why it cannot run here."""

    name: str
    group: str
    backend: Backend | None = None
    reason: str | None = None


def _importable(module: str) -> str | None:
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"{module} is not installed (pip install -r requirements-bench.txt)"


def interpool_candidates(types: Sequence[str] | None) -> list[Candidate]:
    """Every interpool worker type (or those named), available or with the reason why not."""
    import interpool

    out = []
    for info in interpool.available_worker_types():
        value = info.worker_type.value
        if types and value not in types:
            continue
        name = f"interpool {value}"
        if not info.available:
            out.append(Candidate(name, "interpool", reason=info.reason))
            continue
        expr = f"lib.WorkerType({value!r})"
        out.append(Candidate(name, "interpool", TrioBackend(name, "interpool", "interpool", expr)))
    return out


def executor_candidates(types: Sequence[str] | None) -> list[Candidate]:
    """``interpool.Executor``, the synchronous front end, measured as the peers' executors are
    (a blocking ``submit(...).result()``, ``map`` with chunks): AUTO, its default, unless
    ``--types`` names others."""
    import interpool

    infos = {i.worker_type.value: i for i in interpool.available_worker_types()}
    out = []
    for value in types or ["auto"]:
        name = f"interpool.Executor {value}"
        info = infos.get(value)
        if info is not None and not info.available:
            out.append(Candidate(name, "interpool", reason=info.reason))
            continue
        make = f"interpool.Executor(workers, worker_type={value!r})"
        fresh = f"interpool.Executor(workers, worker_type={value!r}, max_tasks_per_child=1)"
        backend = ExecutorBackend(name, make, fresh)
        backend.group = "interpool"
        out.append(Candidate(name, "interpool", backend))
    return out


def peer_candidates(only: Sequence[str] | None) -> list[Candidate]:
    """The peers that are installed (and those that are not, with the reason)."""
    out: list[Candidate] = []

    def want(peer: str) -> bool:
        return not only or peer in only

    if want("trio-parallel"):
        missing = _importable("trio_parallel")
        if missing:
            out.append(Candidate("trio-parallel", "trio-parallel", reason=missing))
        else:
            import trio_parallel

            for wt in trio_parallel.WorkerType:
                name = f"trio-parallel {wt.value}"
                expr = f"lib.WorkerType({wt.value!r})"
                backend = TrioBackend(name, "trio-parallel", "trio_parallel", expr)
                if wt.value == "fork":
                    backend.cold_only = (
                        "fork() of this process, which runs subinterpreter workers, aborts the "
                        "child: measured in fresh processes only"
                    )
                out.append(Candidate(name, "trio-parallel", backend))
    if want("loky"):
        name = "loky"
        missing = _importable("loky")
        backend = ExecutorBackend(
            name,
            "loky.get_reusable_executor(max_workers=workers)",
            None,
            "loky has no per-task worker retirement",
        )
        out.append(Candidate(name, "peer", None if missing else backend, missing))
    if want("process-pool"):
        name = "ProcessPoolExecutor spawn"
        ctx = "multiprocessing.get_context('spawn')"
        backend = ExecutorBackend(
            name,
            f"concurrent.futures.ProcessPoolExecutor(workers, mp_context={ctx})",
            f"concurrent.futures.ProcessPoolExecutor(workers, mp_context={ctx}, "
            "max_tasks_per_child=1)",
        )
        out.append(Candidate(name, "peer", backend))
    if want("mp-pool"):
        name = "multiprocessing.Pool forkserver"
        ctx = "multiprocessing.get_context('forkserver')"
        backend = ExecutorBackend(
            name, f"{ctx}.Pool(workers)", f"{ctx}.Pool(workers, maxtasksperchild=1)"
        )
        out.append(Candidate(name, "peer", backend))
    out += _interpreter_peer_candidates(want)
    return out


def _interpreter_peer_candidates(want: Callable[[str], bool]) -> list[Candidate]:
    """The stdlib's subinterpreters: the hand-written baseline, and InterpreterPoolExecutor."""
    out: list[Candidate] = []
    if want("interpreters"):
        name = "_interpreters + threads"
        if sys.version_info < (3, 13) or _importable("_interpreters"):
            reason = "the hand-written baseline needs CPython >= 3.13 (_interpreters)"
            out.append(Candidate(name, "peer", reason=reason))
        else:
            backend = ExecutorBackend(
                name, "InterpreterPool(workers)", "InterpreterPool(workers, fresh=True)"
            )
            out.append(Candidate(name, "peer", backend))
    if want("interpreter-pool"):
        name = "InterpreterPoolExecutor"
        if sys.version_info < (3, 14):
            reason = "concurrent.futures.InterpreterPoolExecutor is new in CPython 3.14"
            out.append(Candidate(name, "peer", reason=reason))
        else:
            backend = ExecutorBackend(
                name,
                "InterpreterPoolExecutor(workers)",
                None,
                "InterpreterPoolExecutor has no per-task worker retirement",
            )
            out.append(Candidate(name, "peer", backend))
    return out


# --------------------------------------------------------------------------------------------
# Cold start and memory: one fresh process per sample
# --------------------------------------------------------------------------------------------


def cold_script(backend: Backend) -> str:
    """The whole program of one cold-start sample; it prints one JSON line."""
    return "\n".join(
        [
            "import json, os, sys, time",
            "T0 = time.perf_counter()",
            _TREE_MEMORY_SRC,
            _SUBMIT_SRC,
            f"BASELINE_SRC = {_BASELINE_SRC!r}",
            backend.cold_code(),
            "if __name__ == '__main__':",
            f"    t_first, rss0, pss0, rss, pss = sample({MEMORY_WORKERS}, 0.3)",
            "    print(json.dumps({'first_s': t_first, 'rss0': rss0, 'pss0': pss0,",
            "                      'rss': rss, 'pss': pss}))",
        ]
    )


def run_cold_sample(backend: Backend, timeout: float = 120.0) -> dict[str, Any]:
    """One cold-start process: its first-call time, and its tree's memory growth."""
    proc = subprocess.run(
        [sys.executable, "-c", cold_script(backend)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"cold-start process failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class Progress:
    """tqdm's bar on a terminal; plain phase lines on stderr without a terminal or tqdm."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar = None
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


@dataclass
class Results:
    """Raw samples per backend and figure, and why a figure is missing."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per-round medians of the per-call figures (warm call, payloads): their spread says how
    # steady the machine was, and the warm-call ratio is taken round by round.
    rounds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    extra: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, name: str, key: str, value: float) -> None:
        self.samples.setdefault(name, {}).setdefault(key, []).append(value)

    def skip(self, name: str, key: str, reason: str) -> None:
        self.skipped.setdefault(name, {}).setdefault(key, reason)


async def _numpy_payload(
    live: list[Backend], each: Callable[..., Any], results: Results, cfg: Settings, clock: Any
) -> None:
    """The numpy array echo (``NUMPY_PAYLOAD``), skipped where numpy cannot run."""
    label, size = NUMPY_PAYLOAD
    key = f"payload_{label}_MBps"
    rounds = cfg.payload_repeats.get("64MiB")
    try:
        import numpy
    except ImportError:
        numpy = None
    if numpy is None or rounds is None:
        why = "numpy is not installed" if numpy is None else f"not measured in {cfg.mode} mode"
        for b in live:
            results.skip(b.name, key, why)
        return
    data = numpy.frombuffer(os.urandom(size), dtype=numpy.float64)

    async def payload(b: Backend) -> None:
        if "subinterpreter" in b.name:
            results.skip(b.name, key, "numpy refuses subinterpreters")
            return
        got = []
        for _ in range(2):
            t0 = clock()
            try:
                back = await b.call(numpy.asarray, data)
            except Exception as e:  # noqa: BLE001, this figure only: a worker without numpy
                results.skip(b.name, key, f"failed: {e!r}"[:200])
                return
            took = (clock() - t0) / 1e9
            if back.nbytes != data.nbytes:
                raise RuntimeError(f"echo returned {back.nbytes} of {data.nbytes} bytes")
            got.append(data.nbytes / 1e6 / took)
        results.samples.setdefault(b.name, {}).setdefault(key, []).extend(got)
        results.rounds.setdefault(b.name, {}).setdefault(key, []).append(statistics.median(got))

    await each(f"payload {label}", payload, rounds)


def _copies_note() -> str | None:
    """Which payloads travel beside the pickle (out of band) in this build, for the notes."""
    from . import _outcome

    threshold = getattr(_outcome, "BUFFER_THRESHOLD", None)
    if threshold is None:
        return None
    out = [label for label, size in PAYLOADS.items() if size >= threshold]
    return (
        f"payloads of {threshold // KiB} KiB and more ({', '.join(out)}, {NUMPY_PAYLOAD[0]}) "
        "travel beside the pickle: interpool on subinterpreters copies a bytes echo twice "
        "(not 9: into the worker's bytes, then straight from it into yours), a numpy echo on "
        "processes twice (into each memfd), and never pickles their data (docs/payloads.md)."
    )


def _cpu_iterations(target_ms: float) -> int:
    """How many ``spin`` iterations take about ``target_ms`` here (measured in this thread)."""
    n = 10_000
    while True:
        t0 = time.perf_counter()
        _bench_jobs.spin(n)
        took = time.perf_counter() - t0
        if took > 0.01 or n > 10**8:
            return max(1000, int(n * target_ms / 1000 / took))
        n *= 4


def measure_cold(backends: list[Backend], cfg: Settings, results: Results, progress: Progress):
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
                for key in ("cold_start_ms", "memory_per_worker_MiB"):
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


async def measure_in_process(
    backends: list[Backend], cfg: Settings, results: Results, progress: Progress, workers: int
) -> None:
    """Everything measured in this process, with every pool open at once."""
    import trio

    import interpool

    clock = time.perf_counter_ns
    async with contextlib.AsyncExitStack() as stack:
        live: list[Backend] = []
        progress.phase("opening pools")
        for b in backends:
            if b.cold_only:
                for key in METRICS:
                    if key not in ("cold_start_ms", "memory_per_worker_MiB"):
                        results.skip(b.name, key, b.cold_only)
                continue
            try:
                await b.open(stack, workers)
            except Exception as e:  # noqa: BLE001 (a peer that cannot start is reported)
                for key in METRICS:
                    if key not in ("cold_start_ms", "memory_per_worker_MiB"):
                        results.skip(b.name, key, f"could not open a pool: {e!r}")
                continue
            live.append(b)

        async def each(phase: str, batch: Callable[[Backend], Any], rounds: int = 1) -> None:
            """Runs ``batch`` for every live backend, round by round. A backend that fails is
            dropped from the rest of the run, its error noted against every figure left."""
            progress.phase(phase)
            for _ in range(rounds):
                for b in list(live):
                    try:
                        await batch(b)
                    except Exception as e:  # noqa: BLE001 (reported with the figures)
                        live.remove(b)
                        why = f"failed during {phase}: {e!r}"[:300]
                        for key in METRICS:
                            if key not in ("cold_start_ms", "memory_per_worker_MiB"):
                                results.skip(b.name, key, why)
                    progress.step()

        iterations = _cpu_iterations(cfg.cpu_job_ms)

        async def warm_up(b: Backend) -> None:
            # Start one worker per core and let each load the CPU job's module.
            await b.run_many(_bench_jobs.spin, [(10,)] * (2 * workers), parallel=True)
            for _ in range(cfg.warmup_calls):
                await b.call(NOOP)

        async def latency(b: Backend) -> None:
            got = []
            for _ in range(cfg.latency_calls):
                t0 = clock()
                await b.call(NOOP)
                got.append((clock() - t0) / 1e3)
            results.samples.setdefault(b.name, {}).setdefault("warm_call_us", []).extend(got)
            results.rounds.setdefault(b.name, {}).setdefault("warm_call_us", []).append(
                statistics.median(got)
            )

        async def new_worker(b: Backend) -> None:
            for _ in range(cfg.new_worker_calls):
                t0 = clock()
                try:
                    await b.call_new_worker(NOOP)
                except Unsupported as e:
                    results.skip(b.name, "new_worker_ms", str(e))
                    return
                results.add(b.name, "new_worker_ms", (clock() - t0) / 1e6)

        jobs = [()] * cfg.throughput_jobs

        async def throughput(b: Backend) -> None:
            t0 = clock()
            await b.run_many(NOOP, jobs, parallel=True)
            results.add(b.name, "throughput_jobs_per_s", len(jobs) / ((clock() - t0) / 1e9))

        cpu_jobs = [(iterations,)] * (2 * workers)

        async def cpu(b: Backend) -> None:
            t0 = clock()
            await b.run_many(_bench_jobs.spin, cpu_jobs, parallel=False)
            t1 = clock()
            await b.run_many(_bench_jobs.spin, cpu_jobs, parallel=True)
            results.add(b.name, "cpu_speedup", (t1 - t0) / (clock() - t1))

        await each("warm-up", warm_up)
        await each("warm round trips", latency, cfg.latency_rounds)
        await each("new workers", new_worker, cfg.new_worker_rounds)
        await each("throughput", throughput, cfg.throughput_repeats)
        await each("CPU-bound speedup", cpu, cfg.cpu_repeats)

        for label, size in PAYLOADS.items():
            key = f"payload_{label}_MBps"
            if label not in cfg.payload_repeats:
                for b in live:
                    results.skip(b.name, key, f"not measured in {cfg.mode} mode")
                continue
            data = os.urandom(size)

            calls = cfg.payload_calls[label]

            async def payload(b: Backend, key: str = key, data: bytes = data, calls=calls) -> None:
                got = []
                for _ in range(calls):
                    t0 = clock()
                    back = await b.call(ECHO, data)
                    took = (clock() - t0) / 1e9
                    if len(back) != len(data):
                        raise RuntimeError(f"echo returned {len(back)} of {len(data)} bytes")
                    got.append(len(data) / 1e6 / took)
                results.samples.setdefault(b.name, {}).setdefault(key, []).extend(got)
                results.rounds.setdefault(b.name, {}).setdefault(key, []).append(
                    statistics.median(got)
                )

            await each(f"payload {label}", payload, cfg.payload_repeats[label])
            del data, payload

        await _numpy_payload(live, each, results, cfg, clock)

        progress.phase("map helper")
        amap = getattr(interpool, "amap", None)
        for b in live:
            if isinstance(b, ExecutorBackend):
                _measure_executor_map(b, cfg, results)
                continue
            if amap is None or b.group != "interpool":
                why = (
                    "interpool.amap is not in this build"
                    if amap is None
                    else "a map helper with chunks is interpool's"
                )
                results.skip(b.name, "map_jobs_per_s", why)
                continue
            for _ in range(cfg.throughput_repeats):
                try:
                    rate = await _measure_amap(amap, b, cfg.map_jobs)
                except Exception as e:  # noqa: BLE001, reported in place of the figure
                    results.skip(b.name, "map_jobs_per_s", f"interpool.amap failed: {e!r}")
                    break
                results.add(b.name, "map_jobs_per_s", rate)
        await trio.lowlevel.checkpoint()
        progress.phase("closing pools")


async def _measure_amap(amap: Callable[..., Any], backend: Backend, n: int) -> float:
    """Items per second of ``interpool.amap(abs, range(n), chunksize=100)`` on the backend's
    context, one chunk in flight per worker (issue 5's setting)."""
    t0 = time.perf_counter()
    count = 0
    async with amap(
        abs, range(n), chunksize=100, max_in_flight=backend._workers, context=backend._ctx
    ) as results:
        async for _ in results:
            count += 1
    if count != n:
        raise ValueError(f"amap returned {count} results for {n} items")
    return n / (time.perf_counter() - t0)


def _measure_executor_map(backend: ExecutorBackend, cfg: Settings, results: Results) -> None:
    """Items per second of ``pool.map(abs, range(n), chunksize=100)``: the standard executors'
    map with chunks (``multiprocessing.Pool.map`` takes the same arguments)."""
    pool = backend._pool
    if not hasattr(pool, "map"):
        results.skip(backend.name, "map_jobs_per_s", "no map with chunks")
        return
    n = cfg.map_jobs
    for _ in range(cfg.throughput_repeats):
        t0 = time.perf_counter()
        try:
            count = sum(1 for _ in pool.map(abs, range(n), chunksize=100))
        except Exception as e:  # noqa: BLE001, reported in place of the figure
            results.skip(backend.name, "map_jobs_per_s", f"map failed: {e!r}")
            return
        if count != n:
            results.skip(backend.name, "map_jobs_per_s", f"map returned {count} of {n} results")
            return
        results.add(backend.name, "map_jobs_per_s", n / (time.perf_counter() - t0))


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


# --------------------------------------------------------------------------------------------
# Report: JSON document, terminal table, plot
# --------------------------------------------------------------------------------------------


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def machine_description(workers: int) -> dict[str, Any]:
    import importlib.metadata

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "workers": workers,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "interpool": version("interpool"),
        "commit": _git_commit(),
        "peers": {d: version(d) for d in ("trio-parallel", "loky", "trio")},
    }


def build_document(
    candidates: list[Candidate], results: Results, cfg: Settings, workers: int
) -> dict[str, Any]:
    """The JSON document: settings, machine, per-backend summaries, ratios and notes."""
    backends: dict[str, Any] = {}
    for c in candidates:
        figures: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        if c.backend is None:
            skipped = dict.fromkeys(METRICS, c.reason or "unavailable")
        else:
            got = results.samples.get(c.name, {})
            for key, metric in METRICS.items():
                if got.get(key):
                    figures[key] = summarize(got[key], metric.unit)
                    rounds = results.rounds.get(c.name, {}).get(key, [])
                    if len(rounds) > 1:
                        # Calls have a long tail by nature; the steadiness of the machine shows
                        # in how much the per-round medians move.
                        spread = summarize(rounds, metric.unit)["spread"]
                        figures[key]["spread"] = spread
                        figures[key]["wide_spread"] = spread > WIDE_SPREAD
                        figures[key]["spread_of"] = "round medians"
                    else:
                        figures[key]["spread_of"] = "samples"
                else:
                    skipped[key] = results.skipped.get(c.name, {}).get(key, "not measured")
            for key, values in results.extra.get(c.name, {}).items():
                figures[key] = summarize(values, "MiB")
        backends[c.name] = {
            "group": c.group,
            "available": c.backend is not None,
            "reason": c.reason,
            "figures": figures,
            "skipped": skipped,
        }

    reference = REFERENCE_PEER if REFERENCE_PEER in results.samples else None
    ratios: dict[str, dict[str, float]] = {}
    if reference is not None:
        theirs = backends[reference]["figures"]
        for name, entry in backends.items():
            if entry["group"] != "interpool":
                continue
            mine = entry["figures"]
            r: dict[str, float] = {}
            for key, metric in METRICS.items():
                if key in mine and key in theirs and mine[key]["median"] > 0:
                    a, b = mine[key]["median"], theirs[key]["median"]
                    if b > 0:
                        r[key] = a / b if metric.higher_is_better else b / a
            rounds_mine = results.rounds.get(name, {}).get("warm_call_us", [])
            rounds_theirs = results.rounds.get(reference, {}).get("warm_call_us", [])
            if rounds_mine and len(rounds_mine) == len(rounds_theirs):
                r["warm_call_us"] = statistics.median(
                    t / m for m, t in zip(rounds_mine, rounds_theirs, strict=True) if m > 0
                )
            ratios[name] = r

    wide = [
        f"{name} {key} ({summary['spread']:.1f})"
        for name, entry in backends.items()
        for key, summary in entry["figures"].items()
        if summary["wide_spread"]
    ]
    notes = []
    copies = _copies_note()
    if copies is not None:
        notes.append(copies)
    if wide:
        notes.append(
            f"wide spread (p90/p10 > {WIDE_SPREAD:g}) in: {'; '.join(wide)}. The machine was "
            "probably busy: rerun, or trust the ratios (same run, interleaved) more than the "
            "absolute figures."
        )
    return {
        "schema": "interpool-bench/1",
        "mode": cfg.mode,
        "settings": {k: v for k, v in vars(cfg).items() if k != "mode"},
        "machine": machine_description(workers),
        "metrics": {
            k: {"label": m.label, "unit": m.unit, "higher_is_better": m.higher_is_better}
            for k, m in METRICS.items()
        },
        "backends": backends,
        "reference": reference,
        "ratios_vs_reference": ratios,
        "notes": notes,
    }


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


TABLES = (
    (
        "latency and start-up",
        (
            ("cold start", "cold_start_ms", "median", "ms"),
            ("new worker", "new_worker_ms", "median", "ms"),
            ("warm call", "warm_call_us", "median", "µs"),
            ("p99", "warm_call_us", "p99", "µs"),
            ("throughput", "throughput_jobs_per_s", "median", "/s"),
            ("CPU speedup", "cpu_speedup", "median", "x"),
        ),
    ),
    (
        "payload and memory",
        (
            ("1 KiB", "payload_1KiB_MBps", "median", "MB/s"),
            ("1 MiB", "payload_1MiB_MBps", "median", "MB/s"),
            ("64 MiB", "payload_64MiB_MBps", "median", "MB/s"),
            ("numpy 16M", f"payload_{NUMPY_PAYLOAD[0]}_MBps", "median", "MB/s"),
            ("memory/worker", "memory_per_worker_MiB", "median", "MiB"),
            ("map", "map_jobs_per_s", "median", "/s"),
        ),
    ),
)


def render_table(doc: dict[str, Any]) -> str:
    """The terminal report: two tables, the ratios to trio-parallel, skipped figures, notes."""
    m = doc["machine"]
    lines = [
        f"interpool bench ({doc['mode']}): Python {m['python']}, {m['cpu_count']} CPUs, "
        f"{m['workers']} workers per pool, interpool {m['interpool']}"
        + (f" ({m['commit']})" if m["commit"] else ""),
    ]
    names = [n for n, e in doc["backends"].items() if e["available"]]
    width = max([len(n) for n in names] + [len("vs " + (doc["reference"] or ""))]) + 2
    for title, columns in TABLES:
        lines.append("")
        lines.append(title)
        header = f"{'':{width}}" + "".join(f"{label:>14}" for label, *_ in columns)
        units = f"{'':{width}}" + "".join(f"{'(' + unit + ')':>14}" for *_, unit in columns)
        lines += [header, units]
        for name in names:
            figures = doc["backends"][name]["figures"]
            cells = []
            for _, key, stat, _ in columns:
                s = figures.get(key)
                cells.append(
                    f"{_fmt(s[stat]) + ('*' if s['wide_spread'] else ' '):>14}"
                    if s
                    else f"{'-':>14}"
                )
            lines.append(f"{name:{width}}" + "".join(cells))
            ratios = doc["ratios_vs_reference"].get(name)
            if ratios:
                cells = []
                for _, key, stat, _ in columns:
                    r = ratios.get(key) if stat == "median" else None
                    cells.append(f"{f'{r:.2f}x ' if r else '':>14}")
                lines.append(f"{'  vs ' + doc['reference']:{width}}" + "".join(cells))
    lines.append("")
    lines.append(
        "* wide spread (p90/p10 > 2). Ratios: how many times better interpool is than "
        f"{doc['reference'] or 'trio-parallel (not installed)'} (above 1: interpool is better)."
    )
    unavailable = [(n, e["reason"]) for n, e in doc["backends"].items() if not e["available"]]
    for name, reason in unavailable:
        lines.append(f"skipped {name}: {reason}")
    # Missing figures, grouped: "no KEYS for BACKENDS: WHY".
    by_reason: dict[str, dict[str, list[str]]] = {}
    for name in names:
        for key, why in doc["backends"][name]["skipped"].items():
            by_reason.setdefault(why, {}).setdefault(name, []).append(key)
    for why, who in by_reason.items():
        by_keys: dict[tuple[str, ...], list[str]] = {}
        for name, keys in who.items():
            by_keys.setdefault(tuple(keys), []).append(name)
        for keys, backends in by_keys.items():
            what = "in-process figures" if len(keys) > 5 else ", ".join(keys)
            lines.append(f"no {what} for {', '.join(backends)}: {why}")
    for note in doc["notes"]:
        lines.append(textwrap.fill(f"note: {note}", 100, subsequent_indent="  "))
    return "\n".join(lines)


_COLORS = {"interpool": "#1f77b4", "trio-parallel": "#ff7f0e", "peer": "#8c8c8c"}
_PANELS = (
    ("Warm round trip of a trivial call", "µs (median; bar: p10-p90)", ("warm_call_us",), False),
    ("Throughput, one worker per core", "trivial jobs/s (median)",
     ("throughput_jobs_per_s",), False),
    ("Start-up", "ms (median, log scale)", ("cold_start_ms", "new_worker_ms"), True),
    ("Memory per idle worker", "MiB of process-tree RSS", ("memory_per_worker_MiB",), False),
    ("Payload round trip", "MB/s (median, log scale)",
     (*(f"payload_{p}_MBps" for p in PAYLOADS), f"payload_{NUMPY_PAYLOAD[0]}_MBps"), True),
    ("CPU-bound speedup", "x, one worker per core vs one worker", ("cpu_speedup",), False),
)  # fmt: skip
_SERIES_LABELS = {
    "cold_start_ms": "cold start to first result",
    "new_worker_ms": "new worker, pool warm",
    **{f"payload_{p}_MBps": p for p in PAYLOADS},
    f"payload_{NUMPY_PAYLOAD[0]}_MBps": "numpy 16 MiB",
}


def write_plot(doc: dict[str, Any], path: Path) -> None:
    """Bar charts, one panel per figure, one bar per backend (interpool blue, trio-parallel
    orange, the other peers grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = [n for n, e in doc["backends"].items() if e["available"]]
    groups = [doc["backends"][n]["group"] for n in names]
    fig, axes = plt.subplots(3, 2, figsize=(14, 4 + 1.6 * len(names)), layout="constrained")
    for ax, (title, xlabel, keys, log) in zip(axes.flat, _PANELS, strict=True):
        height = 0.8 / len(keys)
        ys = list(range(len(names)))
        for k, key in enumerate(keys):
            for i, name in enumerate(names):
                s = doc["backends"][name]["figures"].get(key)
                y = i - 0.4 + height * (k + 0.5)
                if s is None:
                    ax.text(0.01, y, "n/a", va="center", fontsize=8, color="#666",
                            transform=ax.get_yaxis_transform())  # fmt: skip
                    continue
                color = _COLORS[groups[i]]
                err = None
                if key == "warm_call_us":
                    err = [[s["median"] - s["p10"]], [s["p90"] - s["median"]]]
                ax.barh(y, s["median"], height=height * 0.9, color=color, xerr=err,
                        alpha=1.0 - 0.22 * k, edgecolor="black", linewidth=0.4,
                        error_kw={"elinewidth": 0.8, "capsize": 2})  # fmt: skip
                label = _fmt(s["median"]) + ("*" if s["wide_spread"] else "")
                at = s["p90"] if err is not None else s["median"]
                ax.annotate(label, (at, y), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=8)  # fmt: skip
        ax.set_yticks(ys, names, fontsize=9)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_xlabel(xlabel, fontsize=9)
        if log:
            ax.set_xscale("log")
        ax.margins(x=0.18)
        if len(keys) > 1:
            shades = [Patch(facecolor="#999", alpha=1.0 - 0.22 * k, label=_SERIES_LABELS[key])
                      for k, key in enumerate(keys)]  # fmt: skip
            ax.legend(handles=shades, fontsize=8, loc="lower right", ncol=len(keys),
                      bbox_to_anchor=(1.0, 1.0), frameon=False)  # fmt: skip
        if keys == ("cpu_speedup",):
            ideal = doc["machine"]["workers"]
            ax.axvline(ideal, color="black", linestyle="--", linewidth=0.8)
            ax.set_xlim(0, max(ax.get_xlim()[1], ideal * 1.15))
    m = doc["machine"]
    fig.suptitle(
        f"interpool bench ({doc['mode']}): Python {m['python']}, {m['cpu_count']} CPUs, "
        f"{m['platform']}  —  blue: interpool, orange: trio-parallel, grey: other peers; "
        "* wide spread",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _known_types() -> list[str]:
    from ._types import WorkerType

    return [t.value for t in WorkerType]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m interpool",
        description="interpool's command line.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench",
        help="compare every available worker type (and the installed peers)",
        description=(
            "Measure every available interpool worker type and, with --peers, trio-parallel, "
            "loky, ProcessPoolExecutor, multiprocessing.Pool, a hand-written _interpreters "
            "baseline and (3.14+) InterpreterPoolExecutor, on the same work in the same run. "
            "See docs/bench-cli.md."
        ),
    )
    speed = bench.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer samples: under a minute")
    speed.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    bench.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the peers that are installed (default: on)",
    )
    bench.add_argument(
        "--peer",
        action="append",
        choices=PEERS,
        metavar="PEER",
        help=f"measure only this peer (repeatable; one of: {', '.join(PEERS)})",
    )
    bench.add_argument(
        "--types",
        nargs="+",
        metavar="TYPE",
        help=f"interpool worker types (default: all; known: {', '.join(_known_types())})",
    )
    bench.add_argument("--json", metavar="PATH", type=Path, help="write the results as JSON")
    bench.add_argument("--plot", metavar="PATH.png", type=Path, help="write bar charts (PNG)")
    bench.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=None,
        help="workers per pool (default: the CPU count, at least 2)",
    )
    bench.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        parser.exit(2, "\npython -m interpool: error: name a command (bench)\n")
    known = _known_types()
    for t in args.types or ():
        if t not in known:
            parser.error(f"--types: unknown worker type {t!r} (choose from {', '.join(known)})")
    if args.plot is not None:
        if args.plot.suffix.lower() != ".png":
            parser.error(f"--plot: the file must end in .png, not {str(args.plot)!r}")
        if _importable("matplotlib"):
            parser.error("--plot needs matplotlib: pip install -r requirements-bench.txt")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    if args.peer and not args.peers:
        parser.error("--peer and --no-peers contradict each other")
    return parser, args


def main(argv: Sequence[str] | None = None) -> int:
    _, args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "default"
    cfg = SETTINGS[mode]
    workers = args.workers or max(2, os.cpu_count() or 1)
    candidates = interpool_candidates(args.types)
    candidates += executor_candidates(args.types)
    if args.peers:
        candidates += peer_candidates(args.peer)
    if not any(c.backend for c in candidates):
        print("interpool bench: nothing to measure here:", file=sys.stderr)
        for c in candidates:
            print(f"  {c.name}: {c.reason}", file=sys.stderr)
        return 1
    results = run_benchmark(candidates, cfg, workers, not args.no_progress)
    doc = build_document(candidates, results, cfg, workers)
    print(render_table(doc))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        write_plot(doc, args.plot)
        print(f"wrote {args.plot}")
    return 0
