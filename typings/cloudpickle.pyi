# The part of cloudpickle (an optional dependency without type information) that interpool uses.
from collections.abc import Callable
from pickle import PickleBuffer
from typing import Any

def dumps(
    obj: object,
    protocol: int | None = None,
    buffer_callback: Callable[[PickleBuffer], Any] | None = None,
) -> bytes: ...
