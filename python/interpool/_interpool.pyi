"""The extension module (Rust): workers, the worker cache, and one call's outcome slot.

Checked against the built module by ``make lint`` (mypy's stubtest): a name or signature that
differs from src/python/mod.rs fails it.
"""

from collections.abc import Buffer, Callable
from typing import final

__all__ = [
    "BROKEN",
    "LOAD_ERROR",
    "RAISED",
    "SUBINTERPRETER_REFUSALS",
    "VALUE",
    "VALUE_BUFFERS",
    "Cache",
    "Call",
    "HostBuffer",
    "configure_forkserver",
    "end_all_subinterpreters",
    "lent_buffers",
    "live_subinterpreters",
    "prior_latency",
    "rank",
    "release_buffers",
    "worker_type_info",
]

VALUE: int
RAISED: int
LOAD_ERROR: int
BROKEN: int
VALUE_BUFFERS: int
SUBINTERPRETER_REFUSALS: list[str]

def worker_type_info() -> list[tuple[str, bool, str | None, bool, bool]]: ...
def rank(
    candidates: list[tuple[str, bool, bool, bool, float | None]], need_hard_kill: bool
) -> list[str]: ...
def prior_latency(name: str) -> float: ...
def end_all_subinterpreters(timeout_seconds: float) -> int: ...
def live_subinterpreters() -> int: ...
def configure_forkserver(preload: list[str]) -> bool: ...
def release_buffers() -> int: ...
def lent_buffers() -> int: ...

@final
class HostBuffer(Buffer):
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def __len__(self) -> int: ...

@final
class Cache:
    def __new__(
        cls,
        worker_type: str,
        idle_timeout: float | None,
        setup: Callable[[], bytes],
        max_tasks: int | None = None,
        max_memory: int | None = None,
    ) -> Cache: ...
    def submit(self, payload: bytes | tuple[bytes, list[memoryview]]) -> Call: ...
    def latency_estimate(self) -> float | None: ...
    def statistics(self) -> tuple[int, int]: ...
    def close(self) -> None: ...
    def wait_closed(self, grace: float | None) -> tuple[list[bytes], int, int, list[int]]: ...

@final
class Call:
    @property
    def worker_id(self) -> int | None: ...
    def done(self) -> bool: ...
    def spin(self, microseconds: int) -> bool: ...
    def arm(self) -> int | None: ...
    def result(
        self,
    ) -> tuple[int, bytes | tuple[bytes, list[memoryview]], str | None]: ...
    def interrupt(self) -> None: ...
    def abandon(self) -> None: ...
