"""``amap`` and ``astarmap``: a callable over an iterable, in chunks, lazily, under trio or asyncio.

One task drives a whole map: it submits chunk jobs straight to the worker cache (no task per
job) and waits for them the way ``run_sync`` does, spinning first and then parking on the job's
file descriptor; unordered maps park on an ``epoll`` instance that holds the fds of every chunk
in flight, so one wait serves them all whatever the event loop. See docs/map.md.
"""

from __future__ import annotations

import collections
import inspect
import math
import os
import select
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from . import _backends, _outcome
from ._call import ABANDON_AFTER, SPIN_MICROSECONDS, settle
from ._context import WorkerContext, core_of
from ._impl import _current_default_context
from ._worker.chunks import ChunkError, run_chunk

if TYPE_CHECKING:
    import trio
else:  # imported on first use: an asyncio program never imports trio
    trio = _backends.DeferredModule("trio", globals())

T = TypeVar("T")


class _Entry:
    """A chunk in flight (``call`` on ``cache``, kept with its ``payload`` for an AUTO
    fallback), or an error to raise at this position (``error``)."""

    __slots__ = ("cache", "call", "error", "fd", "load_error", "payload")

    def __init__(
        self,
        call: Any = None,
        error: BaseException | None = None,
        cache: Any = None,
        payload: bytes | tuple[bytes, list[memoryview]] | None = None,
    ) -> None:
        self.call, self.error = call, error
        self.fd: int | None = None
        self.cache, self.payload = cache, payload
        # The records of a subinterpreter's load error while AUTO re-runs the chunk.
        self.load_error: bytes | None = None


class MapResults(Generic[T]):
    """The results of :func:`amap` / :func:`astarmap`: an async context manager whose ``async
    with`` gives this object, an async iterator of the results. Leaving the ``async with`` ends
    the map: chunks still running are cancelled (see ``kill_on_cancel``)."""

    def __init__(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Any] | AsyncIterable[Any],
        star: bool,
        ordered: bool,
        chunksize: int,
        max_in_flight: int | None,
        kill_on_cancel: bool | None,
        context: WorkerContext | None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"fn must be a sync function, not the async function {fn!r}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, not {chunksize!r}")
        if max_in_flight is None:
            max_in_flight = os.cpu_count() or 1
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError(f"max_in_flight must be an int, not {type(max_in_flight).__name__}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight!r}")
        if isinstance(iterable, AsyncIterable):
            self._aiter: AsyncIterator[Any] | None = aiter(iterable)
            self._iter = None
        elif isinstance(iterable, Iterable):
            self._aiter, self._iter = None, iter(iterable)
        else:
            raise TypeError(f"{type(iterable).__name__!r} object is neither iterable nor async")
        self._fn, self._star, self._ordered = fn, star, ordered
        self._chunksize, self._max_in_flight = chunksize, max_in_flight
        # What a chunk's run time is learned under (see _next_in_order): callable and chunk size.
        self._run_key = hash((id(fn), chunksize)) % (1 << 64)
        self._kill_on_cancel = kill_on_cancel is not False
        # Only an explicit True makes AUTO pick a hard-killable (process) type; the default
        # (None) interrupts the chunks of whatever type AUTO picked.
        self._need_hard_kill = kill_on_cancel is True
        self._ctx = core_of(context if context is not None else _current_default_context())
        self._backend: Any = None
        self._entries: collections.deque[_Entry] = collections.deque()
        self._ready: collections.deque[T] = collections.deque()
        self._error: BaseException | None = None
        self._input_done = False  # exhausted, failed, or the map failed: submit nothing more
        self._state = "new"  # new -> open -> closed
        self._epoll: select.epoll | None = None

    # --- the context manager ---------------------------------------------------------------

    async def __aenter__(self) -> MapResults[T]:
        if self._state != "new":
            raise RuntimeError("a map can be entered only once")
        if self._ctx.closed:
            raise trio.ClosedResourceError("this worker context is closed")
        self._backend = _backends.current()
        self._state = "open"
        self._ctx.call_started()  # closing the context waits for the map to end
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        cancelled = await self._close()
        if cancelled is not None and exc_info[0] is None:
            raise cancelled

    def __aiter__(self) -> MapResults[T]:
        if self._state == "new":
            raise TypeError("use the map as `async with interpool.amap(...) as results:`")
        return self

    # --- iteration -------------------------------------------------------------------------

    async def __anext__(self) -> T:
        if self._ready:
            return self._ready.popleft()
        if self._error is not None:
            return self._raise_error()
        if self._state != "open" or (self._input_done and not self._entries):
            raise StopAsyncIteration
        await self._backend.checkpoint()
        await self._fill()
        if not self._entries:
            raise StopAsyncIteration
        entry = await (self._next_in_order() if self._ordered else self._next_completed())
        while not self._take(entry):  # AUTO re-ran the chunk elsewhere
            entry = await (self._next_in_order() if self._ordered else self._next_completed())
        if self._ready:
            return self._ready.popleft()
        return self._raise_error()

    def _raise_error(self) -> NoReturn:
        error, self._error = self._error, None
        self._input_done = True
        raise error  # type: ignore[misc]

    async def _fill(self) -> None:
        """Reads the input and submits chunks until ``max_in_flight`` are out."""
        while not self._input_done and len(self._entries) < self._max_in_flight:
            items: list[Any] = []
            error = None
            try:
                if self._aiter is not None:
                    while len(items) < self._chunksize:
                        try:
                            item = await anext(self._aiter)
                        except StopAsyncIteration:
                            self._input_done = True
                            break
                        items.append(tuple(item) if self._star else item)
                else:
                    for item in self._iter:  # type: ignore[union-attr]
                        items.append(tuple(item) if self._star else item)
                        if len(items) == self._chunksize:
                            break
                    else:
                        self._input_done = True
            except Exception as exc:  # noqa: BLE001, the input's error surfaces at its position
                error = exc
                self._input_done = True
            if items:
                self._submit(items)
            if error is not None:
                self._entries.append(_Entry(error=error))

    def _submit(self, items: list[Any]) -> None:
        try:
            payload = _outcome.dumps_job(run_chunk, (self._fn, self._star, items), self._fn)
        except Exception as exc:  # noqa: BLE001, an item (or fn) that cannot be pickled
            self._entries.append(_Entry(error=exc))
            self._input_done = True
            return
        cache = self._ctx.cache_for(self._fn, self._need_hard_kill)
        # AUTO may re-run a chunk that could not load: keep its payload until it is taken.
        kept = payload if self._ctx.may_fall_back else None
        self._entries.append(_Entry(call=cache.submit(payload), cache=cache, payload=kept))

    async def _next_in_order(self) -> _Entry:
        entry = self._entries[0]
        call = entry.call
        if call is not None and not call.spin(SPIN_MICROSECONDS):
            # The fd may turn readable shortly before the chunk is due (see _call.wait_for).
            fd = call.arm(self._run_key)
            if fd is not None:
                while not call.woken():
                    await self._backend.wait_readable(fd)
        return self._entries.popleft()

    async def _next_completed(self) -> _Entry:
        entries = self._entries
        while True:
            for i, entry in enumerate(entries):
                if entry.call is None or entry.call.done():
                    del entries[i]
                    return entry
            if entries[0].call.spin(SPIN_MICROSECONDS):
                return entries.popleft()
            if self._epoll is None:
                self._epoll = select.epoll()
            for i, entry in enumerate(entries):
                if entry.fd is None:
                    fd = entry.call.arm()
                    if fd is None:  # finished meanwhile
                        del entries[i]
                        return entry
                    self._epoll.register(fd, select.EPOLLIN)
                    entry.fd = fd
            await self._backend.wait_readable(self._epoll.fileno())

    def _take(self, entry: _Entry) -> bool:
        """Moves a finished chunk's results to ``_ready`` and its error to ``_error``. False if
        the chunk could not load and AUTO submitted it again, back at the front."""
        if entry.call is None:
            self._error = entry.error
            return True
        if entry.fd is not None:
            self._epoll.unregister(entry.fd)  # type: ignore[union-attr]
            entry.fd = None
        kind, data, reason = entry.call.result()
        if entry.load_error is not None:
            self._ctx.loaded_elsewhere(self._fn, kind, entry.load_error)
            entry.load_error = None
        if (kind == _outcome.LOAD_ERROR or kind == _outcome.BROKEN) and entry.payload is not None:
            retry = self._ctx.fallback(
                entry.cache, kind, data, reason, self._fn, self._need_hard_kill
            )
            if retry is not None:
                entry.load_error = data if kind == _outcome.LOAD_ERROR else None
                entry.cache = retry
                entry.call = retry.submit(entry.payload)
                self._entries.appendleft(entry)
                return False
        try:
            self._ready.extend(_outcome.unwrap(kind, data, reason))  # type: ignore[arg-type]
        except ChunkError as exc:
            self._ready.extend(exc.args[1])
            self._error = exc.__cause__ if exc.__cause__ is not None else exc
        except BaseException as exc:  # noqa: BLE001, raised at this chunk's position
            self._error = exc
        if self._error is not None:
            self._input_done = True  # the rest of the work is cancelled
        return True

    # --- the end -----------------------------------------------------------------------------

    async def _close(self) -> BaseException | None:
        """Cancels the chunks still in flight. Returns a cancellation that arrived meanwhile
        under asyncio (trio re-delivers its own)."""
        if self._state != "open":
            return None
        self._state = "closed"
        self._input_done = True
        self._ready.clear()
        if self._epoll is not None:
            self._epoll.close()
        calls = [entry.call for entry in self._entries if entry.call is not None]
        self._entries.clear()
        cancelled = None
        try:
            if self._kill_on_cancel:
                for call in calls:
                    if not call.done():
                        call.interrupt()
            deadline = time.monotonic() + (ABANDON_AFTER if self._kill_on_cancel else math.inf)
            for call in calls:
                fd = call.arm()
                # A call woken early for its learned run time is not done yet: wait on.
                while fd is not None and not call.woken(spin=False):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    cancelled = await self._backend.wait_readable_shielded(fd, left) or cancelled
                settle(call)
        finally:
            self._ctx.call_ended()
        return cancelled


def amap(
    fn: Callable[[Any], T],
    iterable: Iterable[Any] | AsyncIterable[Any],
    *,
    ordered: bool = True,
    chunksize: int = 1,
    max_in_flight: int | None = None,
    kill_on_cancel: bool | None = None,
    context: WorkerContext | None = None,
) -> MapResults[T]:
    """``fn(item)`` for each item of ``iterable`` in workers; use as
    ``async with interpool.amap(fn, items) as results: async for result in results: ...``.

    Args:
        fn: A picklable sync callable of one argument.
        iterable: An iterable or async iterable, consumed lazily: at most ``max_in_flight``
            chunks are read ahead of the results taken (infinite inputs are fine).
        ordered: Yield results in input order (True) or as chunks complete (False).
        chunksize: Items per job: one worker runs ``fn`` over a whole chunk.
        max_in_flight: Chunks submitted and not yet consumed, at most (default
            ``os.cpu_count()``); each running chunk holds a worker. The default worker limiter
            is not used.
        kill_on_cancel: When the map ends early (an error, ``break``, a cancellation),
            interrupt the chunks still running, as ``run_sync(kill_on_cancel=True)`` does. With
            False they run to completion first (their results are discarded). The default,
            None, interrupts too; only an explicit True also makes a ``WorkerType.AUTO``
            context run the chunks on a process type, which can be killed whatever it does.
        context: The :class:`WorkerContext` to run in (default: the default context).

    An exception raised by ``fn`` for an item is raised at that item's position (ordered) or
    when its chunk completes (unordered), after the results of the items before it in its
    chunk; the map then ends. An exception from the input is raised at its position likewise.
    """
    return MapResults(
        fn, iterable, False, ordered, chunksize, max_in_flight, kill_on_cancel, context
    )


def astarmap(
    fn: Callable[..., T],
    iterable: Iterable[Iterable[Any]] | AsyncIterable[Iterable[Any]],
    *,
    ordered: bool = True,
    chunksize: int = 1,
    max_in_flight: int | None = None,
    kill_on_cancel: bool | None = None,
    context: WorkerContext | None = None,
) -> MapResults[T]:
    """:func:`amap` with ``fn(*item)``: each item is a sequence of positional arguments."""
    return MapResults(
        fn, iterable, True, ordered, chunksize, max_in_flight, kill_on_cancel, context
    )
