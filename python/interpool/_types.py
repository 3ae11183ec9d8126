"""Public types that need neither trio nor the extension module, so workers can import them."""

from __future__ import annotations

import dataclasses
import enum


class WorkerType(str, enum.Enum):
    """Where a job runs.

    ``SUBINTERPRETER``: a CPython subinterpreter with its own GIL (PEP 684) on its own thread, in
    this process. Fast to call (microseconds) and truly parallel, but it cannot stop code blocked
    in C, cannot survive a crash, and many compiled extension modules refuse to load in it.

    ``FORKSERVER``: a process forked from one server process per host, which imported the
    modules named with :func:`interpool.configure_forkserver` and the main script once. Starts in a
    few milliseconds; can be killed; a crash breaks only its own call.

    ``SPAWN``: a fresh Python process (``sys.executable``) per worker, as ``multiprocessing``'s
    spawn. Slowest to start (a Python start-up plus the imports); can be killed; a crash breaks
    only its own call.

    ``AUTO`` (the default): per call, the fastest available type able to run it. Calls with
    ``kill_on_cancel=True`` go to the fastest process type; a job that fails to load in a
    subinterpreter (a module refuses to import there, while unpickling or while the job runs, or
    anything else fails while unpickling) is re-run once on a process, and its module goes
    straight there afterwards. Before CPython 3.13 it uses processes. See docs/auto.md.
    A job that AUTO runs in a subinterpreter is in this process: a segfault or ``os._exit()`` in
    it ends the whole program (pin such code to a process type).

    There is no ``FORK``: forking a multi-threaded process (interpool's host always has threads)
    can deadlock the child; use FORKSERVER.
    """

    SUBINTERPRETER = "subinterpreter"
    FORKSERVER = "forkserver"
    SPAWN = "spawn"
    AUTO = "auto"


class BrokenWorkerError(RuntimeError):
    """A worker failed around a job: it could not start, its ``init`` raised, it was lost, or it
    did not shut down cleanly. The job itself may not have run."""


class WorkerTypeUnavailableError(RuntimeError):
    """The requested worker type cannot run on this interpreter or platform.

    The message says why, e.g. which CPython version it needs."""


@dataclasses.dataclass(frozen=True)
class WorkerTypeStatistics:
    """One worker type's share of an AUTO context (``WorkerContextStatistics.by_type``)."""

    worker_type: WorkerType
    idle_workers: int
    running_workers: int
    latency_estimate: float | None
    """The running estimate of this type's dispatch latency in seconds, from calls that came
    back within the caller's spin; None until one did (the ranking uses a prior then)."""
    fallbacks: int = 0
    """Calls that could not be loaded on this type and were re-run on another."""
    routed_away: dict[str, str] = dataclasses.field(default_factory=dict)
    """Modules whose calls no longer come here, each with the module that refused to load, or
    the type of another load error (``"<AttributeError>"``); key ``"<init>"``: the context's
    ``init`` refused, so no call comes here."""
    pinned: tuple[str, ...] = ()
    """Pins sending callables or modules here (``module`` or ``module:qualname``)."""


@dataclasses.dataclass(frozen=True)
class WorkerContextStatistics:
    """Counts of a worker context's workers (all types together), and per type."""

    idle_workers: int
    """Workers started and waiting for a job."""
    running_workers: int
    """Calls in progress, each holding one worker."""
    by_type: dict[WorkerType, WorkerTypeStatistics] = dataclasses.field(
        default_factory=dict, compare=False
    )
    """Per worker type: every available type of an AUTO context; the one type of any other
    context. Not part of equality."""


@dataclasses.dataclass(frozen=True)
class WorkerTypeInfo:
    """What :func:`interpool.available_worker_types` says about one worker type."""

    worker_type: WorkerType
    available: bool
    reason: str | None
    """Why it is unavailable; ``None`` if it is available."""
    hard_kill: bool
    """A running job can be stopped whatever it does (processes can be killed)."""
    crash_isolation: bool
    """A crash in a job leaves the caller's process alive."""
