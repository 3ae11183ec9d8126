"""The job that runs one chunk of a map in a worker.

Workers import this module by name (``interpool._worker.chunks``), so it must import nothing but
the standard library: inside a worker ``import interpool`` gives the stand-ins of
``_worker/api.py``, with neither trio nor the extension module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class ChunkError(Exception):
    """An item of a chunk raised: ``args == (index, results_before_it)``, ``__cause__`` is what
    the item raised. The front end yields the results, then raises the cause."""


def run_chunk(fn: Callable[..., object], star: bool, items: Sequence[object]) -> list[object]:
    """``[fn(item) for item in items]`` (``fn(*item)`` if ``star``); if an item raises an
    Exception, :class:`ChunkError` carries the results before it. BaseExceptions (SystemExit,
    an interrupt) end the chunk as they are."""
    results: list[object] = []
    append = results.append
    try:
        if star:
            for args in items:
                append(fn(*args))  # type: ignore[misc]
        else:
            for item in items:
                append(fn(item))
    except Exception as exc:
        raise ChunkError(len(results), results) from exc
    return results
