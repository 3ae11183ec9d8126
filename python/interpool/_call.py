"""The call path of ``run_sync``, for trio and asyncio, written once (see docs/architecture.md,
"The completion slot"); what differs per library is behind the backend (``_backends.py``).

A call's path, which decides interpool's latency:

1. ``backend.check_cancelled()``: under trio a cancellation point that never yields; under
   asyncio a pass through the event loop, since asyncio delivers a cancellation only at a
   suspension: this is where an already-requested one (``asyncio.timeout(0)``'s) stops the job
   from ever running;
2. the job is pickled here, in the caller's interpreter, and the cache chosen (AUTO: one list
   read while no route is known);
3. a token of the limiter, without ``async with`` when it is the library's own
   (``backend.try_take_token``, then ``backend.take_token`` among other calls: under trio that
   one yields before taking the token, so that no task yields while holding one);
4. the Rust cache hands the job to the hottest idle worker, which is usually still spinning;
5. ``backend.after_submit``: under trio, for a call alone (it took its token without yielding),
   one shielded schedule point that overlaps the job; asyncio has none;
6. the caller spins a few microseconds with the GIL released, and only then parks on a file
   descriptor that the worker writes only if somebody parked (:func:`wait_for`); once the
   callable's run time is learned, the fd is also written shortly before the job is due, and the
   caller spins the last stretch (``Call.woken``; ``worker_types::prewake`` in Rust);
7. the outcome: a value, an exception, or a job that could not load, which AUTO re-runs once on
   a process (``ContextCore.failed``).

Cancellation afterwards follows trio's rules as far as asyncio allows (see :func:`wait_for` and
docs/asyncio.md). ``_map.py`` and ``_executor.py`` wait for their calls with the same pieces
(:data:`SPIN_MICROSECONDS`, :data:`ABANDON_AFTER`, :func:`settle`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pickle import loads as pickle_loads
from typing import TYPE_CHECKING, Any, TypeVar

from . import _backends, _outcome

if TYPE_CHECKING:
    import trio

    from ._context import ContextCore, WorkerContext
else:  # imported on first use: an asyncio program never imports trio
    trio = _backends.DeferredModule("trio", globals())

T = TypeVar("T")

# How long a caller spins for the outcome before parking. Warm trivial jobs come back in a few
# microseconds, so this saves the two cross-thread wake-ups that parking costs; longer jobs pay
# at most this much CPU once.
SPIN_MICROSECONDS = _backends.SPIN_MICROSECONDS
# After interrupting a job on cancellation, how long to wait before abandoning its worker (the
# interrupt needs the worker's GIL, which takes up to a switch interval, 5 ms).
ABANDON_AFTER = 1.0

_sniffio_local = _backends.sniffio_thread_local
# The trio backend once made: the warm path under trio reads it instead of asking sniffio.
_trio_backend: Any = None


def _current_backend() -> Any:
    global _trio_backend
    backend = _backends.current()
    if backend.name == "trio":
        _trio_backend = backend
    return backend


async def run_sync(
    self: WorkerContext,
    sync_fn: Callable[..., T],
    *args: object,
    kill_on_cancel: bool = False,
    cancellable: bool = False,
    limiter: Any = None,
) -> T:
    """Runs ``sync_fn(*args)`` in one of this context's workers.

    The same contract as :func:`interpool.run_sync`, plus ``trio.ClosedResourceError`` once
    the context has closed."""
    core = self._core
    if core.closed:
        raise trio.ClosedResourceError("this worker context is closed")
    if _sniffio_local.name == "trio" and _trio_backend is not None:
        backend = _trio_backend
    else:
        backend = _current_backend()
    await backend.check_cancelled()
    payload = _outcome.dumps_job(sync_fn, args)
    kill_on_cancel = kill_on_cancel or cancellable
    # ContextCore.cache_for, inlined: no route known, one list read (see _auto.py).
    auto = core.auto
    if auto is None:
        cache = core.cache
    elif auto.routes:
        cache = auto.route(sync_fn, kill_on_cancel)
    else:
        cache = auto.best[kill_on_cancel]
    if limiter is None:
        limiter = backend.default_limiter()
    if type(limiter) is backend.limiter_type:
        if backend.try_take_token(limiter):
            after_submit = backend.after_submit
            turn = None
        else:
            # Its schedule point comes before the token; under trio, a token holder may have
            # submitted the job for it meanwhile (the turn).
            turn = await backend.take_token(limiter, core, cache, payload)
            after_submit = None
        try:
            return await _run(  # type: ignore[no-any-return]
                core, backend, cache, payload, kill_on_cancel, sync_fn, after_submit, turn
            )
        finally:
            backend.release_token(limiter, turn)
    async with limiter:
        return await _run(  # type: ignore[no-any-return]
            core, backend, cache, payload, kill_on_cancel, sync_fn, backend.after_submit
        )


async def _run(
    core: ContextCore,
    backend: Any,
    cache: Any,
    payload: Any,
    kill_on_cancel: bool,
    fn: object,
    after_submit: Callable[[], Awaitable[None]] | None,
    turn: _backends.Turn | None = None,
) -> Any:
    """Submits the job, waits for its outcome and returns it (or raises it); re-runs it once
    where AUTO says if it could not load. A ``turn`` is a job a token holder submitted for this
    call (counted as running already), with its outcome taken if the job was quick."""
    running = core.running
    if turn is None:
        if core.closed:
            raise trio.ClosedResourceError("this worker context is closed")
        running.append(None)
        call = outcome = None
    else:
        call, outcome = turn.call, turn.outcome
    load_error = None  # the records of a subinterpreter's load error being retried
    try:
        while True:
            if outcome is None:
                if call is None:
                    call = cache.submit(payload)
                    if after_submit is not None:
                        await after_submit()
                if not call.spin(SPIN_MICROSECONDS):
                    if core.auto is not None:
                        core.auto.note_parked()
                    await wait_for(backend, call, kill_on_cancel, id(fn))
                outcome = call.result()
            kind, data, reason = outcome
            if load_error is not None:
                core.loaded_elsewhere(fn, kind, load_error)
                load_error = None
            if kind == _outcome.VALUE:
                return pickle_loads(data)
            if kind == _outcome.VALUE_BUFFERS:
                return pickle_loads(data[0], buffers=data[1])
            if kind == _outcome.RAISED:
                break
            retry = core.failed(cache, kind, data, reason, fn, kill_on_cancel)
            if retry is None:
                break
            # Re-run once on a process, still counted as running (a closing context waits
            # for it); a second load error there is the call's.
            load_error = data if kind == _outcome.LOAD_ERROR else None
            cache = retry
            call = outcome = None
    finally:
        running.pop()
        if core.on_drained is not None and not running:
            core.on_drained()
    return _outcome.unwrap(kind, data, reason)


async def wait_for(backend: Any, call: Any, kill_on_cancel: bool, key: int | None = None) -> None:
    """Parks until the outcome of ``call`` is in.

    Without ``kill_on_cancel`` the job finishes and its outcome is delivered whatever happens:
    under trio the wait is shielded, and the cancellation hits at the caller's next checkpoint;
    under asyncio, where a cancellation arrives once, the outcome is discarded (the worker stays
    in the cache) and ``CancelledError`` is raised when the job is done: the caller cannot both
    get the value and see the cancellation. With it, a cancellation interrupts the job, waits up
    to ABANDON_AFTER for the worker to stop, abandons it otherwise, and re-raises.

    ``key`` names the callable, whose learned run time lets the fd turn readable shortly before
    the job is due: ``call.woken()`` then spins the last stretch, or says to park again."""
    fd = call.arm(key)
    if fd is None:
        return
    if not kill_on_cancel and backend.level_triggered:
        while not call.woken():
            await backend.wait_readable_shielded(fd)
        return
    try:
        while not call.woken():
            await backend.wait_readable(fd)
    except BaseException:
        if kill_on_cancel:
            call.interrupt()
            deadline = time.monotonic() + ABANDON_AFTER
            while not call.woken(spin=False) and (left := deadline - time.monotonic()) > 0:
                await backend.wait_readable_shielded(fd, left)
        else:
            while not call.woken(spin=False):
                await backend.wait_readable_shielded(fd)
        settle(call)
        raise


def settle(call: Any) -> None:
    """Ends a call whose outcome is moot: takes it if it is in (handing the worker back, to
    retire if it was interrupted), else abandons the worker."""
    if call.done():
        call.result()
    else:
        call.abandon()
