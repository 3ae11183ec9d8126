"""What interpool needs from the running async library, for trio and for asyncio.

The call paths (``_call.py``, ``_map.py``) wait for a job in one way whatever the library:
spin with the GIL released, then park on the call's file descriptor. What differs is how to
check for cancellation, whether to yield right after submitting, how to take a token of the
default capacity limiter (and which one that is), park on an fd, shield a wait, make a
thread-safe event and run a blocking call in a thread. Each library gets one object with the
same attributes (a ``_Trio``, made on first use, and :data:`ASYNCIO`); :func:`current` picks the
running one (anyio runs on either, and is served by the one it runs on).

Cancellation differs at the root: trio's is level-triggered (a cancelled scope raises at every
checkpoint until it is left), asyncio's is edge-triggered (``Task.cancel`` throws one
``CancelledError`` into the task's next suspension). So a shielded wait under asyncio catches
the ``CancelledError`` that arrives meanwhile and returns it, for the caller to re-raise once
the wait is over; under trio it returns None and trio re-delivers the cancellation by itself.

Neither library is imported here until a program runs on it (see :class:`DeferredModule`): an
asyncio program never imports trio, a trio program never imports asyncio.
"""

from __future__ import annotations

import collections
import importlib
import math
import os
import sys
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

import sniffio

from . import _outcome


class DeferredModule:
    """Stands for a module until the first attribute access, which imports it and puts the
    module in the proxy's place in ``namespace`` (under the module's name): later uses are
    plain global lookups. ``trio = DeferredModule("trio", globals())`` replaces ``import trio``
    in modules that run under both libraries."""

    __slots__ = ("_name", "_namespace")

    def __init__(self, name: str, namespace: dict[str, Any]) -> None:
        self._name, self._namespace = name, namespace

    def __getattr__(self, attribute: str) -> Any:
        module = importlib.import_module(self._name)
        self._namespace[self._name] = module
        return getattr(module, attribute)


if TYPE_CHECKING:
    import asyncio

    import trio
else:
    asyncio = DeferredModule("asyncio", globals())
    trio = DeferredModule("trio", globals())

# Trio sets this for each task step; checking it first keeps trio's hot path free of sniffio's
# slower fallbacks.
sniffio_thread_local = sniffio.thread_local


def current_library() -> str:
    """``"trio"`` or ``"asyncio"``; RuntimeError for anything else (or no async library)."""
    name = sniffio_thread_local.name
    if name is None:
        name = sniffio.current_async_library()
    if name not in ("trio", "asyncio"):
        raise RuntimeError(f"interpool supports trio and asyncio (and anyio on both), not {name}")
    return name


def current() -> _Trio | _Asyncio:
    """The adapter of the running library."""
    if current_library() != "trio":
        return ASYNCIO
    global _trio_adapter
    if _trio_adapter is None:
        _trio_adapter = _Trio()
    return _trio_adapter


# --- trio ----------------------------------------------------------------------------------------

# How long a caller spins for the outcome before parking (see ``_call.py``).
SPIN_MICROSECONDS = 30
# The most queued jobs one token holder runs for other calls in one pass of trio's loop: bounds
# how long serving them keeps the loop from its other tasks (each job at most the spin).
SERVE_AT_MOST = 64
# Outcomes that end a call; any other (a load error) may be re-run elsewhere under its token.
_FINAL_KINDS = (_outcome.VALUE, _outcome.VALUE_BUFFERS, _outcome.RAISED)


class Turn:
    """A call parked on a ``trio.CapacityLimiter`` with its job ready, for a token holder to run
    (:meth:`_Trio.serve`). ``state``: ``WAITING`` (parked); ``HANDED`` (a release by one of our
    token holders woke its task with the token, and nobody submitted its job yet); ``SERVED``
    (its task holds a token and ``call`` is its submitted job, ``outcome`` possibly taken
    already); ``DONE`` (``outcome`` taken and the token given back); ``OWN`` (its task got a
    token nobody used: it runs the call itself); ``GONE`` (cancelled while parked: the job never
    ran)."""

    __slots__ = ("cache", "call", "core", "outcome", "payload", "state", "task")
    WAITING, HANDED, SERVED, DONE, OWN, GONE = "waiting", "handed", "served", "done", "own", "gone"

    def __init__(self, task: trio.lowlevel.Task, core: Any, cache: Any, payload: Any) -> None:
        self.task, self.core, self.cache, self.payload = task, core, cache, payload
        self.state = Turn.WAITING
        self.call: Any = None
        self.outcome: tuple[int, Any, Any] | None = None


class _Trio:
    """Made on the first use under trio (trio is imported then)."""

    name = "trio"
    # A cancellation raises again at every checkpoint until its scope is left: a wait can be
    # shielded and the cancellation still reaches the caller afterwards.
    level_triggered = True

    def __init__(self) -> None:
        self.checkpoint = trio.lowlevel.checkpoint
        # Before a job is submitted: raises a cancellation already requested and never yields
        # (the call's schedule point comes later: after_submit, or take_token among other calls).
        self.check_cancelled = trio.lowlevel.checkpoint_if_cancelled
        # The schedule point of a call alone: one yield while its job runs, shielded so that it
        # does not cancel a job that already started.
        self.after_submit: Callable[[], Awaitable[None]] | None = (
            trio.lowlevel.cancel_shielded_checkpoint
        )
        self.limiter_type = trio.CapacityLimiter
        self.wait_readable = trio.lowlevel.wait_readable
        self._default_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar(
            "interpool_default_limiter"
        )
        # Per limiter, the calls parked on it whose jobs a token holder may run (see serve).
        self._turns: weakref.WeakKeyDictionary[trio.CapacityLimiter, collections.deque[Turn]] = (
            weakref.WeakKeyDictionary()
        )
        # Per limiter, the calls yielding in take_token to take a free token afterwards.
        self._approaching: weakref.WeakKeyDictionary[trio.CapacityLimiter, int] = (
            weakref.WeakKeyDictionary()
        )

    def default_limiter(self) -> trio.CapacityLimiter:
        """The default worker limiter of this ``trio.run`` (``os.cpu_count()`` tokens)."""
        try:
            return self._default_limiter.get()
        except LookupError:
            limiter = trio.CapacityLimiter(os.cpu_count() or 1)
            self._default_limiter.set(limiter)
            return limiter

    @staticmethod
    def try_take_token(limiter: trio.CapacityLimiter) -> bool:
        """Takes a token of ``limiter`` without yielding, if no other call holds one (``async
        with`` costs ~5 µs); False otherwise: the call is in a burst, see :meth:`take_token`."""
        if limiter.borrowed_tokens:
            return False
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    async def take_token(
        self, limiter: trio.CapacityLimiter, core: Any, cache: Any, payload: Any
    ) -> Turn | None:
        """Takes a token among other calls: yields before taking it (a task never yields with a
        token held, see :meth:`after_submit`) if one is free that calls yielding for a token do
        not already count on (``_approaching``), and if none is free then, parks on the limiter
        with its job in the limiter's queue of turns (:class:`Turn`), for a token holder to serve
        (:meth:`release_token`). Returns the turn if its job was submitted for it (it holds the
        token unless the turn is ``DONE``); None if the call holds a token and runs as usual."""
        approaching = self._approaching.get(limiter, 0)
        if limiter.available_tokens > approaching:
            self._approaching[limiter] = approaching + 1
            try:
                await trio.lowlevel.checkpoint()
            finally:
                self._approaching[limiter] -= 1
            try:
                limiter.acquire_nowait()
                return None
            except trio.WouldBlock:
                pass
        # No token is left for this call (free ones are spoken for by calls that yielded to take
        # them): parking on the limiter is its schedule point and its check for cancellation.
        queue = self._turns.get(limiter)
        if queue is None:
            queue = self._turns[limiter] = collections.deque()
        task = trio.lowlevel.current_task()
        turn = Turn(task, core, cache, payload)
        # The turns of a queue are in the order of their tasks in the limiter's parking lot: both
        # are appended here, with no yield in between (the limiter's own acquire_nowait, inside
        # acquire, fails as ours did).
        queue.append(turn)
        # Non-None until trio reschedules the task (its documented contract), so while the turn
        # is WAITING this says whether its task still sleeps in the limiter's lot (see _release).
        task.custom_sleep_data = turn
        try:
            await limiter.acquire()
        except BaseException:
            turn.state = Turn.GONE
            task.custom_sleep_data = None  # cancelled before it parked: let go of the payload
            raise
        if turn.state is Turn.SERVED or turn.state is Turn.DONE:
            return turn
        turn.state = Turn.OWN  # it holds the token (HANDED or not); nobody submitted its job
        return None

    def release_token(self, limiter: trio.CapacityLimiter, turn: Turn | None) -> None:
        """Gives back the call's token (unless the holder that served its turn did), then serves
        the limiter's queued turns: see :meth:`serve`."""
        # A limiter's queue goes once it is empty: a lone call reads no queue.
        queue = self._turns.get(limiter) if self._turns else None
        if turn is None or turn.state is Turn.SERVED:
            if queue is None:
                limiter.release()
                return
            _release(limiter, queue)
        if queue is not None:
            self.serve(limiter, queue)

    def serve(self, limiter: trio.CapacityLimiter, queue: collections.deque[Turn]) -> None:
        """Runs queued calls' jobs in this pass of the loop, while the limiter hands their tasks
        its tokens.

        ``release`` gives a freed token to the first task parked on the limiter, which would run
        only in the next pass of trio's loop: in a burst each token would then carry one job per
        pass (a convoy: ~5,000 passes for 10k jobs on 2 tokens). Instead, as long as the first
        waiting turn's task got the token from one of our releases (``HANDED``, see
        :func:`_release`), this submits its job, spins for it and takes its outcome, then gives
        the token back on that task's behalf, which hands it to the next turn: up to
        SERVE_AT_MOST jobs in one pass, each on a worker still hot from the last. The served
        tasks wake in the next pass with their outcome in (``DONE``). A job that does not finish
        within the spin (or an outcome AUTO may re-run) stays with its turn (``SERVED``): the
        task holds the token, waits for the job itself and serves the queue when it gives the
        token back. A token the limiter gave elsewhere (a task parked on it by other code, a
        resize) ends the serving; every task given a token wakes in any case, and an unserved
        turn runs its call itself (``OWN``), so no call waits on this. Each step is O(1): no
        look at the limiter's borrowers (``statistics()`` copies them)."""
        for _ in range(SERVE_AT_MOST):
            while queue and not _may_serve(queue[0]):
                queue.popleft()  # cancelled, or woken with a token nobody used for it
            if not queue:
                del self._turns[limiter]
                return
            turn = queue[0]
            if turn.state is not Turn.HANDED:
                return  # its task still sleeps: the token went to another task, or to none
            core = turn.core
            if core.closed:
                return  # its task raises ClosedResourceError itself
            queue.popleft()
            turn.state = Turn.SERVED
            core.running.append(None)  # popped by the turn's task, as for its own calls
            try:
                call = turn.call = turn.cache.submit(turn.payload)
            except Exception:  # noqa: BLE001 (not this call's: its task tries again and raises it)
                core.running.pop()
                turn.state = Turn.OWN
                return
            if not call.spin(SPIN_MICROSECONDS):
                return
            outcome = turn.outcome = call.result()
            if outcome[0] not in _FINAL_KINDS:
                return
            turn.state = Turn.DONE
            _release(limiter, queue, turn.task)

    @staticmethod
    async def wait_readable_shielded(fd: int, timeout: float = math.inf) -> None:
        """Waits, immune to cancellation, until ``fd`` is readable or ``timeout`` passes.
        Returns None: trio re-delivers a cancellation at the next checkpoint by itself."""
        if timeout == math.inf:
            with trio.CancelScope(shield=True):
                await trio.lowlevel.wait_readable(fd)
            return
        with trio.move_on_after(timeout, shield=True):
            await trio.lowlevel.wait_readable(fd)

    @staticmethod
    async def shielded(fn: Callable[..., Awaitable[Any]], *args: object) -> Any:
        """``await fn(*args)`` immune to cancellation."""
        with trio.CancelScope(shield=True):
            return await fn(*args)

    @staticmethod
    def threadsafe_event() -> tuple[Callable[[], Awaitable[object]], Callable[[], None]]:
        """``(wait, set)``: ``set`` may be called from any thread, any number of times."""
        event = trio.Event()
        token = trio.lowlevel.current_trio_token()
        return event.wait, lambda: token.run_sync_soon(event.set)

    @staticmethod
    async def run_in_thread(fn: Callable[..., Any], *args: object) -> Any:
        return await trio.to_thread.run_sync(fn, *args)


def _may_serve(turn: Turn) -> bool:
    """Whether a token holder may yet serve ``turn``: it was ``HANDED`` a token, or is
    ``WAITING`` with its task still asleep on the limiter. A ``WAITING`` turn whose task trio
    rescheduled otherwise (cancelled, or given a token by a resize) runs, or drops, its call
    itself."""
    return turn.state is Turn.HANDED or _parked(turn)


def _parked(turn: Turn) -> bool:
    """Whether ``turn`` is ``WAITING`` with its task still asleep on the limiter (trio clears
    ``custom_sleep_data`` whenever it reschedules a task)."""
    return turn.state is Turn.WAITING and turn.task.custom_sleep_data is not None


def _release(
    limiter: trio.CapacityLimiter, queue: collections.deque[Turn], borrower: object = None
) -> None:
    """Gives back a token of ``limiter`` (the current task's, or ``borrower``'s), whose queue of
    turns is ``queue``, and marks ``HANDED`` the queued turn whose task that woke with it.

    The first :func:`_parked` turn is the first of the queue's tasks in the limiter's parking
    lot. A release wakes the lot's first task with the token, synchronously; if that
    task is this turn's, it was asleep before the release and is rescheduled after it, and
    nothing else can have woken it in between. So the holders know who holds the token they
    passed on without reading the limiter's borrowers."""
    first = next((turn for turn in queue if _parked(turn)), None)
    if borrower is None:
        limiter.release()
    else:
        limiter.release_on_behalf_of(borrower)
    if first is not None and first.task.custom_sleep_data is None:
        first.state = Turn.HANDED


# --- asyncio -------------------------------------------------------------------------------------


@types.coroutine
def _yield_once() -> Generator[None, None, None]:  # asyncio.sleep(0) without its wrapper
    yield


def _anyio_shield() -> Any:
    """A shielding anyio cancel scope if anyio is in use, else a no-op context.

    anyio's cancel scopes on asyncio re-cancel a waiting task on every loop iteration until it
    leaves the scope; a shielded child scope stops that. Plain ``Task.cancel`` calls are not
    affected by it: those the shielded waits below catch themselves."""
    anyio = sys.modules.get("anyio")
    if anyio is None:
        return _NO_SHIELD
    return anyio.CancelScope(shield=True)


class _NoShield:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SHIELD = _NoShield()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Asyncio:
    name = "asyncio"
    # A cancellation is thrown into one suspension: a shielded wait must hand it back.
    level_triggered = False
    # No yield after submitting: asyncio cannot shield one, and a cancellation delivered there
    # would be lost for a job that already started.
    after_submit: Callable[[], Awaitable[None]] | None = None

    @staticmethod
    async def checkpoint() -> None:
        """One pass through the event loop: a cancellation requested before it (or while it
        waits, such as ``asyncio.timeout(0)``'s) is raised here."""
        await _yield_once()

    # Before a job is submitted, a full pass through the event loop: asyncio delivers a
    # cancellation only at a suspension, so this is where an already-requested one stops the job
    # from ever running.
    check_cancelled = checkpoint

    limiter_type: type[CapacityLimiter]  # set below, once the class exists

    @staticmethod
    def default_limiter() -> CapacityLimiter:
        """The default worker limiter of the running event loop (``os.cpu_count()`` tokens)."""
        return asyncio_default_limiter()

    @staticmethod
    def try_take_token(limiter: CapacityLimiter) -> bool:
        """Takes a token of ``limiter`` if one is free and nobody waits; never yields."""
        return limiter.try_acquire()

    @staticmethod
    async def take_token(limiter: CapacityLimiter, core: Any, cache: Any, payload: Any) -> None:
        """Waits for a token of ``limiter``, first come first served."""
        await limiter.acquire()

    @staticmethod
    def release_token(limiter: CapacityLimiter, turn: None) -> None:
        limiter.release()

    @staticmethod
    async def wait_readable(fd: int, timeout: float | None = None) -> None:
        """Parks until ``fd`` is readable (or ``timeout`` seconds pass)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.add_reader(fd, _wake, future)
        timer = None if timeout is None else loop.call_later(timeout, _wake, future)
        try:
            await future
        finally:
            loop.remove_reader(fd)
            if timer is not None:
                timer.cancel()

    @staticmethod
    async def wait_readable_shielded(
        fd: int, timeout: float = math.inf
    ) -> asyncio.CancelledError | None:
        """Waits, immune to cancellation, until ``fd`` is readable or ``timeout`` passes.
        Returns the ``CancelledError`` that arrived meanwhile (None if none), to re-raise."""
        cancelled = None
        deadline = time.monotonic() + timeout
        with _anyio_shield():
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await _Asyncio.wait_readable(fd, None if left == math.inf else left)
                    break
                except asyncio.CancelledError as exc:
                    cancelled = exc
        return cancelled

    @staticmethod
    async def shielded(fn: Callable[..., Awaitable[Any]], *args: object) -> Any:
        """``await fn(*args)`` in a task of its own, which a cancellation does not stop; a
        ``CancelledError`` that arrived meanwhile is raised once it is done."""
        task = asyncio.ensure_future(fn(*args))
        cancelled = None
        with _anyio_shield():
            while True:
                try:
                    result = await asyncio.shield(task)
                    break
                except asyncio.CancelledError as exc:
                    if task.done():
                        raise
                    cancelled = exc
        if cancelled is not None:
            raise cancelled
        return result

    @staticmethod
    def threadsafe_event() -> tuple[Callable[[], Awaitable[object]], Callable[[], None]]:
        """``(wait, set)``: ``set`` may be called from any thread, any number of times."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        async def wait() -> None:
            await future

        def set_from_any_thread() -> None:
            loop.call_soon_threadsafe(_wake, future)

        return wait, set_from_any_thread

    @staticmethod
    async def run_in_thread(fn: Callable[..., Any], *args: object) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


_trio_adapter: _Trio | None = None
ASYNCIO = _Asyncio()


class CapacityLimiter:
    """An asyncio capacity limiter: at most ``total_tokens`` holders at once, first come first
    served. The default worker limiter under asyncio (one per event loop).

    The same surface as trio's and anyio's, minus per-task borrower tracking: ``async with``,
    ``acquire``/``release``, ``acquire_nowait`` (raises ``trio.WouldBlock``), ``total_tokens``
    (settable), ``borrowed_tokens`` and ``available_tokens``. Use it from one event loop."""

    __slots__ = ("_borrowed", "_total", "_waiters")

    def __init__(self, total_tokens: int | float) -> None:
        self._borrowed = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.total_tokens = total_tokens

    @property
    def total_tokens(self) -> int | float:
        return self._total

    @total_tokens.setter
    def total_tokens(self, value: int | float) -> None:
        if not isinstance(value, int) and value != math.inf:
            raise TypeError("total_tokens must be an int or math.inf")
        if value < 1:
            raise ValueError("total_tokens must be >= 1")
        self._total = value
        self._wake_waiters()

    @property
    def borrowed_tokens(self) -> int:
        return self._borrowed

    @property
    def available_tokens(self) -> int | float:
        return self._total - self._borrowed

    def __repr__(self) -> str:
        return (
            f"<interpool asyncio CapacityLimiter {self._borrowed}/{self._total} borrowed, "
            f"{len(self._waiters)} waiting>"
        )

    def try_acquire(self) -> bool:
        """Takes a token if one is free and nobody waits; never blocks."""
        if self._borrowed < self._total and not self._waiters:
            self._borrowed += 1
            return True
        return False

    def acquire_nowait(self) -> None:
        if not self.try_acquire():
            raise trio.WouldBlock

    async def acquire(self) -> None:
        if self.try_acquire():
            await _yield_once()  # a checkpoint, like trio's and anyio's
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future  # release() hands the token over by resolving it
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # the token arrived with the cancellation: pass it on
            else:
                try:
                    self._waiters.remove(future)
                except ValueError:  # already dropped by _wake_waiters
                    pass
            raise

    def release(self) -> None:
        if self._borrowed <= 0:
            raise RuntimeError("release() without a borrowed token")
        self._borrowed -= 1
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        while self._waiters and self._borrowed < self._total:
            future = self._waiters.popleft()
            if not future.done():
                self._borrowed += 1
                future.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


_Asyncio.limiter_type = CapacityLimiter

_asyncio_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def asyncio_default_limiter() -> CapacityLimiter:
    """The default worker limiter of the running event loop (``os.cpu_count()`` tokens)."""
    loop = asyncio.get_running_loop()
    limiter = _asyncio_limiters.get(loop)
    if limiter is None:
        limiter = _asyncio_limiters[loop] = CapacityLimiter(os.cpu_count() or 1)
    return limiter
