"""The extension module (Rust): workers, the worker cache, and one call's outcome slot.

Checked against the built module by ``make lint`` (mypy's stubtest): a name or signature that
differs from src/python/mod.rs fails it.
"""

from collections.abc import Buffer, Callable
from typing import final

__all__ = [
    "BROKEN",
    "BUFFER_THRESHOLD",
    "COPY_POPULATE_FROM",
    "COPY_SPLIT_FROM",
    "LOAD_ERROR",
    "MAX_BUFFERS",
    "RAISED",
    "STAGE_DIED",
    "STAGE_INIT",
    "STAGE_INTERRUPTED",
    "STAGE_JOB",
    "STAGE_SETUP",
    "STAGE_START",
    "SUBINTERPRETER_REFUSALS",
    "VALUE",
    "VALUE_BUFFERS",
    "Auto",
    "Cache",
    "Call",
    "HostBuffer",
    "configure_forkserver",
    "end_all_subinterpreters",
    "lent_buffers",
    "live_subinterpreters",
    "refusal",
    "release_buffers",
    "worker_type_info",
]

VALUE: int
RAISED: int
LOAD_ERROR: int
BROKEN: int
VALUE_BUFFERS: int
STAGE_START: int
STAGE_SETUP: int
STAGE_INIT: int
STAGE_JOB: int
STAGE_INTERRUPTED: int
STAGE_DIED: int
BUFFER_THRESHOLD: int
MAX_BUFFERS: int
COPY_POPULATE_FROM: int
COPY_SPLIT_FROM: int
SUBINTERPRETER_REFUSALS: list[str]

def worker_type_info() -> list[tuple[str, bool, str | None, bool, bool]]: ...
def end_all_subinterpreters(timeout_seconds: float) -> int: ...
def live_subinterpreters() -> int: ...
def configure_forkserver(preload: list[str]) -> bool: ...
def release_buffers() -> int: ...
def lent_buffers() -> int: ...
def refusal(data: bytes) -> str | None: ...

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
    def arm(self, key: int | None = None) -> int | None: ...
    def woken(self, spin: bool = True) -> bool: ...
    def result(
        self,
    ) -> tuple[int, bytes | tuple[bytes, list[memoryview]], tuple[int, str] | None]: ...
    def interrupt(self) -> None: ...
    def abandon(self) -> None: ...

@final
class Auto:
    def __new__(cls, caches: list[Cache]) -> Auto: ...
    @property
    def generation(self) -> int: ...
    def choices(self) -> tuple[Cache, Cache, Cache | None, Cache | None, bool]: ...
    def route(self, fn_: object, kill_on_cancel: bool) -> Cache: ...
    def note_parked(self) -> bool: ...
    def pin(self, target: object, worker_type: str | None) -> None: ...
    def fallback(
        self,
        cache: Cache,
        kind: int,
        data: bytes,
        reason: tuple[int, str] | None,
        fn_: object,
        kill_on_cancel: bool,
    ) -> Cache | None: ...
    def loaded_elsewhere(self, fn_: object, data: bytes) -> None: ...
    def statistics(
        self,
    ) -> list[tuple[str, int, int, float | None, int, list[tuple[str, str]], list[str]]]: ...
