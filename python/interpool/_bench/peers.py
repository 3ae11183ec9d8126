"""Which backends exist here: interpool's worker types, ``interpool.Executor`` and the peers,
each available or with the reason why not."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .backends import Backend, ExecutorBackend, TrioBackend


@dataclass
class Candidate:
    """A backend, or why it cannot run here."""

    name: str
    group: str
    backend: Backend | None = None
    reason: str | None = None


def why_missing(module: str) -> str | None:
    """None if ``module`` can be imported here, else the reason (with how to install it)."""
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
        out.append(Candidate(name, "interpool", TrioBackend(name, "interpool", "interpool", value)))
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
        backend = ExecutorBackend(
            name,
            "interpool",
            "interpool",
            worker_type=value,
            on_subinterpreters=value == "subinterpreter",
        )
        out.append(Candidate(name, "interpool", backend))
    return out


def peer_candidates(only: Sequence[str] | None) -> list[Candidate]:
    """The peers that are installed (and those that are not, with the reason)."""
    out: list[Candidate] = []

    def want(peer: str) -> bool:
        return not only or peer in only

    if want("trio-parallel"):
        missing = why_missing("trio_parallel")
        if missing:
            out.append(Candidate("trio-parallel", "trio-parallel", reason=missing))
        else:
            import trio_parallel

            for wt in trio_parallel.WorkerType:
                name = f"trio-parallel {wt.value}"
                backend = TrioBackend(name, "trio-parallel", "trio_parallel", wt.value)
                if wt.value == "fork":
                    backend.cold_only = (
                        "fork() of this process, which runs subinterpreter workers, aborts the "
                        "child: measured in fresh processes only"
                    )
                out.append(Candidate(name, "trio-parallel", backend))
    if want("loky"):
        name = "loky"
        missing = why_missing("loky")
        loky = ExecutorBackend(
            name, "peer", "loky", why_not_fresh="loky has no per-task worker retirement"
        )
        out.append(Candidate(name, "peer", None if missing else loky, missing))
    if want("process-pool"):
        name = "ProcessPoolExecutor spawn"
        out.append(Candidate(name, "peer", ExecutorBackend(name, "peer", "process-pool")))
    if want("mp-pool"):
        name = "multiprocessing.Pool forkserver"
        out.append(Candidate(name, "peer", ExecutorBackend(name, "peer", "mp-pool")))
    out += _interpreter_peer_candidates(want)
    return out


def _interpreter_peer_candidates(want: Callable[[str], bool]) -> list[Candidate]:
    """The stdlib's subinterpreters: the hand-written baseline, and InterpreterPoolExecutor."""
    out: list[Candidate] = []
    if want("interpreters"):
        name = "_interpreters + threads"
        if sys.version_info < (3, 13) or why_missing("_interpreters"):
            reason = "the hand-written baseline needs CPython >= 3.13 (_interpreters)"
            out.append(Candidate(name, "peer", reason=reason))
        else:
            backend = ExecutorBackend(name, "peer", "interpreters", on_subinterpreters=True)
            out.append(Candidate(name, "peer", backend))
    if want("interpreter-pool"):
        name = "InterpreterPoolExecutor"
        if sys.version_info < (3, 14):
            reason = "concurrent.futures.InterpreterPoolExecutor is new in CPython 3.14"
            out.append(Candidate(name, "peer", reason=reason))
        else:
            backend = ExecutorBackend(
                name,
                "peer",
                "interpreter-pool",
                why_not_fresh="InterpreterPoolExecutor has no per-task worker retirement",
                on_subinterpreters=True,
            )
            out.append(Candidate(name, "peer", backend))
    return out
