"""The jobs that ``python -m interpool bench`` sends to workers.

Standard library only, and nothing at import time: every worker of every peer imports this
module to unpickle a job (subinterpreters, spawned processes, the hand-written ``_interpreters``
baseline), so it must load without trio, without interpool's extension and fast.
"""

from __future__ import annotations

import os
import time


def noop() -> None:
    """The trivial call: what a round trip costs when the job costs nothing."""
    return None


def echo(data: bytes) -> bytes:
    """Payload round trip: the bytes go to the worker and come back."""
    return data


def spin(iterations: int) -> int:
    """Pure-Python CPU work (holds its interpreter's GIL throughout)."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def hold(seconds: float) -> int:
    """Keeps a worker busy, so that concurrent holds need distinct workers; returns the pid."""
    time.sleep(seconds)
    return os.getpid()


def always() -> bool:
    """A ``retire`` hook that ends the worker after every job."""
    return True
