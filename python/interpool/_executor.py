"""``interpool.Executor``: a ``concurrent.futures.Executor`` for code without an event loop, and
``get_reusable_executor``. See docs/executor.md.

An executor is a thin shell over a :class:`WorkerContext` of its own: calls go to the same Rust
worker caches, AUTO's choice and fallbacks (``ContextCore.cache_for`` / ``failed``), running
counts and statistics as ``run_sync``'s. What this module adds is waiting without an event loop:

- ``max_workers`` bounds the calls a worker has; the others wait, already pickled, in a FIFO
  here (``_Engine.queued``), and start as slots free up.
- ``Future.result()`` first spins on the Rust completion with the GIL released (a warm call is
  back in microseconds) and takes the outcome itself: no other thread is involved.
- A call nobody spins on is *watched*: its fd (``Call.arm()``) joins an epoll set that one thread
  per executor waits on. That thread takes the outcome, starts the next queued call and completes
  the future (running its done callbacks). A call is watched as soon as something other than a
  ``result()`` caller may wait for it: a done callback (``loop.run_in_executor`` adds one),
  ``concurrent.futures.wait`` / ``as_completed`` (they append to the future's ``_waiters``, see
  ``_Waiters``), calls queued behind it, a spin that ran out, a kill, shutdown.

Who takes a call's outcome is decided under ``_Engine.lock``: the thread that clears
``Future._call`` (``_claim_locked``), never while another thread spins on it (``_spinning``; the
Rust call cannot be borrowed mutably during a spin). Lock order: ``_Engine.lock`` may be held
while a future's ``_condition`` is taken, never the reverse (``wait()`` holds a future's condition
when it appends its waiter, so ``_Waiters.append`` defers to the watcher thread); done callbacks
(user code) never run under ``_Engine.lock``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import math
import os
import select
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures._base import CANCELLED, PENDING, RUNNING
from pickle import loads as pickle_loads
from typing import Any, TypeVar

from . import _outcome
from ._call import ABANDON_AFTER, SPIN_MICROSECONDS
from ._context import ContextCore, ContextOptions
from ._types import BrokenWorkerError, WorkerContextStatistics, WorkerType
from ._worker.chunks import ChunkError, run_chunk

T = TypeVar("T")

_NOT_DONE = (PENDING, RUNNING)
_NO_VALUE = object()
# Set when the interpreter starts to exit: no new calls then, as in the standard library.
_exiting = False
# Every engine not yet closed; shut down (waiting, as the standard library's executors do) when
# the interpreter exits.
_live_engines: set[_Engine] = set()


class _Waiters(list):  # type: ignore[type-arg]
    """A future's ``_waiters``. ``concurrent.futures.wait`` and ``as_completed`` install their
    waiter with ``future._waiters.append`` (holding the future's condition): the cue to watch
    the call, since nothing will spin on it."""

    __slots__ = ("future",)

    def __init__(self, future: Future[Any]) -> None:
        super().__init__()
        self.future = future

    def append(self, waiter: object) -> None:
        super().append(waiter)
        if self.future._call is not None:
            self.future._engine.request_watch(self.future)


class Future(concurrent.futures.Future[T]):
    """The future of an :meth:`Executor.submit` call: a ``concurrent.futures.Future`` whose
    ``result()`` waits for a warm call without a thread switch. ``cancel()`` cancels a call that
    has not started; a running one only with the executor's ``kill_on_cancel``."""

    # Defaults, overridden per instance when they change (cheaper than setting them all).
    _cache: Any = None
    # The Rust call while a worker has the job, until its outcome is taken (or abandoned).
    _call: Any = None
    _fd: int | None = None  # while watched
    _spinning = False
    _killed = False  # cancelled while running (kill_on_cancel): the outcome is moot
    _kill_deadline = 0.0
    _awaited = False  # a result() caller waits for it: watch it once it starts
    _load_error: bytes | None = None  # a subinterpreter's load error, while AUTO re-runs the job

    def __init__(self, engine: _Engine, fn: Callable[..., Any], payload: bytes | None) -> None:
        super().__init__()
        self._waiters = _Waiters(self)
        self._engine = engine
        self._fn = fn  # what AUTO routes by
        self._payload = payload

    def result(self, timeout: float | None = None) -> T:
        if self._state in _NOT_DONE:
            value, timeout = self._engine.spin(self, timeout)
            if value is not _NO_VALUE:
                return value  # type: ignore[no-any-return]
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state in _NOT_DONE:
            timeout = self._engine.spin(self, timeout)[1]
        return super().exception(timeout)

    def done(self) -> bool:
        if self._call is not None and self._call.done():
            self._engine.take_if_done(self)
        return super().done()

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[T]], object]) -> None:
        super().add_done_callback(fn)
        if self._call is not None:
            self._engine.watch(self)

    def cancel(self) -> bool:
        if self._call is not None and self._engine.kill(self):
            return True
        return super().cancel()


class _Engine:
    """An executor's state, shared with its futures and its watcher thread (which hold no
    reference to the :class:`Executor`, so that an executor dropped without ``shutdown()`` is
    collected, and then shut down)."""

    def __init__(self, ctx: ContextCore, max_workers: int, kill_on_cancel: bool) -> None:
        self.ctx = ctx
        self.max_workers = max_workers
        self.kill_on_cancel = kill_on_cancel
        self.lock = threading.Lock()
        self.queued: collections.deque[Future[Any]] = collections.deque()
        self.running: set[Future[Any]] = set()  # with a worker (a killed call until it stops)
        self.watched: dict[int, Future[Any]] = {}
        self.killing: list[Future[Any]] = []
        # Futures whose wait()/as_completed() asked for watching (see _Waiters).
        self.watch_requests: collections.deque[Future[Any]] = collections.deque()
        self.is_shutdown = False
        self.broken: str | None = None
        self.close_error: BaseException | None = None
        self.epoll = select.epoll()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        self.thread = threading.Thread(
            target=self.watch_loop, name="interpool-executor-watcher", daemon=True
        )
        _live_engines.add(self)
        self.thread.start()

    # --- submitting ------------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        route: Callable[..., Any] | None = None,
    ) -> Any:
        """``Executor.submit``; ``route``: the callable AUTO routes by, if not ``fn``."""
        error: BaseException | None = None
        try:
            job = functools.partial(fn, **kwargs) if kwargs else fn
            payload: Any = _outcome.dumps_job(job, args, fn)
        except Exception as exc:  # noqa: BLE001, reported by the future, as ProcessPoolExecutor does
            payload, error = None, exc
        if route is None:
            route = fn
        ready: list[Any] = []
        with self.lock:
            if self.is_shutdown or self.broken is not None or _exiting:
                self.refuse_locked()
            if error is None and (self.queued or len(self.running) >= self.max_workers):
                fut: Future[T] = Future(self, route, payload)
                if not self.queued:
                    # Queued calls start when a running one ends: someone must notice it.
                    ready = [r for f in list(self.running) if (r := self.watch_locked(f))]
                self.queued.append(fut)
            elif error is None:
                # The job first, the future while it runs.
                cache = self.ctx.cache_for(route, self.kill_on_cancel)
                try:
                    call = cache.submit(payload)
                except BaseException as exc:  # noqa: BLE001, the future carries it
                    call, error = None, exc
                fut = Future(self, route, payload)
                fut._state = RUNNING  # nobody else has this future yet
                if call is not None:
                    fut._call, fut._cache = call, cache
                    self.running.add(fut)
                    self.ctx.call_started()
            else:
                fut = Future(self, route, payload)
        if error is not None:
            fut._payload = None
            fut.set_exception(error)
        if ready:
            self.take_all(ready)
        return fut

    def refuse_locked(self) -> None:
        if self.broken is not None:
            raise BrokenWorkerError(self.broken)
        if self.is_shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def start_locked(self, fut: Future[Any]) -> BaseException | None:
        """Hands a RUNNING future's job to a worker; the error if none could take it."""
        cache = self.ctx.cache_for(fut._fn, self.kill_on_cancel)
        try:
            fut._call = cache.submit(fut._payload)
        except BaseException as exc:  # noqa: BLE001, the future carries it
            return exc
        fut._cache = cache
        self.running.add(fut)
        self.ctx.call_started()
        return None

    def fill_locked(self) -> tuple[list[tuple[Future[Any], BaseException]], list[Any]]:
        """Starts queued calls while slots are free: ``(failed_to_start, ready_outcomes)``."""
        failed, ready = [], []
        queued = self.queued
        while queued and len(self.running) < self.max_workers:
            fut = queued.popleft()
            if not fut.set_running_or_notify_cancel():  # cancelled meanwhile
                continue
            error = self.start_locked(fut)
            if error is not None:
                failed.append((fut, error))
            # Somebody other than a result() caller waits for it already, or will.
            elif queued or self.is_shutdown or fut._awaited or fut._waiters or fut._done_callbacks:  # type: ignore[attr-defined]
                if item := self.watch_locked(fut):
                    ready.append(item)
        return failed, ready

    # --- waiting ---------------------------------------------------------------------------

    def spin(self, fut: Future[Any], timeout: float | None) -> tuple[Any, float | None]:
        """``result()``'s first wait: spins on the call with the GIL released and takes the
        outcome if it came; else makes sure the call is watched. Returns the value if this took
        it and it is one (else ``_NO_VALUE``), and what is left of ``timeout``."""
        with self.lock:
            call = fut._call
            if call is None:
                fut._awaited = True  # still queued (or done): whoever starts it watches it
                return _NO_VALUE, timeout
            if fut._fd is not None or fut._spinning:
                return _NO_VALUE, timeout
            fut._spinning = True
        if timeout is None:
            spin = SPIN_MICROSECONDS
        else:
            spin = max(0, min(SPIN_MICROSECONDS, int(timeout * 1e6)))
            started = time.monotonic()
        done = False
        try:
            done = call.spin(spin)
        finally:
            with self.lock:
                fut._spinning = False
                if done:
                    call = self.claim_locked(fut)
                    item = None
                else:
                    call, item = None, self.watch_locked(fut)
        value = _NO_VALUE
        if call is not None:
            value, ready = self.take(fut, call)
            if ready:
                self.take_all(ready)
        elif item is not None:
            self.take_all([item])
        if timeout is not None:
            timeout = max(0.0, timeout - (time.monotonic() - started))
        return value, timeout

    def take_if_done(self, fut: Future[Any]) -> None:
        """``done()``'s check: takes the outcome of a finished call nobody else is taking."""
        with self.lock:
            call = self.claim_locked(fut) if fut._call is not None else None
        if call is not None:
            self.take_all([(fut, call)])

    def watch(self, fut: Future[Any]) -> None:
        with self.lock:
            item = self.watch_locked(fut)
        self.take_all([item] if item else [])

    def watch_locked(self, fut: Future[Any]) -> tuple[Future[Any], Any] | None:
        """Puts the call's fd in the watcher's epoll set. A call already done is claimed and
        returned ``(future, call)``, for the caller to take once the lock is released. A call
        being spun on is left to its spinner, which watches it if the spin runs out."""
        call = fut._call
        if call is None or fut._fd is not None or fut._spinning:
            return None
        fd = call.arm()
        if fd is None:
            return fut, self.claim_locked(fut)
        self.epoll.register(fd, select.EPOLLIN)
        self.watched[fd] = fut
        fut._fd = fd
        return None

    def request_watch(self, fut: Future[Any]) -> None:
        """Watching, for a caller that holds the future's condition (see _Waiters)."""
        self.watch_requests.append(fut)
        self.wake()

    def claim_locked(self, fut: Future[Any]) -> Any:
        """Makes this thread the one that takes the call's outcome: returns the call (None if it
        is taken already or being spun on). Its fd leaves the epoll set first: the fd closes with
        the call."""
        call = fut._call
        if call is None or fut._spinning:
            return None
        fut._call = None
        fd = fut._fd
        if fd is not None:
            fut._fd = None
            del self.watched[fd]
            self.epoll.unregister(fd)
        return call

    def take_all(self, items: list[Any]) -> None:
        while items:
            fut, call = items.pop()
            if call is not None:
                items += self.take(fut, call)[1]

    def take(self, fut: Future[Any], call: Any, abandon: bool = False) -> tuple[Any, list[Any]]:
        """Takes a claimed call's outcome and completes its future (or re-runs the job where AUTO
        now sends it), then starts queued calls. Returns the value set (``_NO_VALUE`` if none)
        and the outcomes that are ready meanwhile, for the caller to take."""
        ctx = self.ctx
        value: Any = None
        error: BaseException | None = None
        retry: Any = None
        broke = False
        try:
            if abandon:
                call.abandon()
            else:
                kind, data, reason = call.result()
                if fut._load_error is not None:
                    ctx.loaded_elsewhere(fut._fn, kind, fut._load_error)
                    fut._load_error = None
                if fut._killed:
                    pass
                elif kind == _outcome.VALUE:
                    value = pickle_loads(data)
                elif kind == _outcome.VALUE_BUFFERS:
                    value = pickle_loads(data[0], buffers=data[1])
                elif kind == _outcome.RAISED:
                    error = _outcome.rebuild_exception(data)
                else:
                    # A worker whose init (the executor's initializer) raised.
                    broke = reason is not None and reason[0] == _outcome.STAGE_INIT
                    retry = ctx.failed(fut._cache, kind, data, reason, fut._fn, self.kill_on_cancel)
                    # Re-run once where AUTO says; a second load error there is the call's.
                    fut._load_error = data if kind == _outcome.LOAD_ERROR else None
        except BaseException as exc:  # noqa: BLE001, the future carries it
            error = exc
        failed: Any = ()
        ready: Any = ()
        with self.lock:
            if retry is not None and not fut._killed:
                # The job never started: run it where AUTO sends it, in the same slot.
                cache = retry
                try:
                    fut._call, fut._cache = cache.submit(fut._payload), cache
                except BaseException as exc:  # noqa: BLE001
                    error = exc
                else:
                    item = self.watch_locked(fut)
                    return _NO_VALUE, [item] if item else []
            self.running.discard(fut)
            ctx.call_ended()
            if broke or self.queued or self.is_shutdown:
                failed, ready = self.slot_freed_locked(broke)
        fut._payload = None
        if fut._killed:
            value = _NO_VALUE
        elif error is None:
            fut.set_result(value)
        else:
            value = _NO_VALUE
            fut.set_exception(error)
        for other, other_error in failed:
            other._payload = None
            other.set_exception(other_error)
        return value, ready

    def slot_freed_locked(self, broke: bool) -> tuple[list[Any], list[Any]]:
        """After a call ended: the queue fails if the executor broke, else its calls start;
        the watcher is told when a shutdown has nothing left. ``(failed, ready)`` as
        ``fill_locked``'s."""
        failed: list[tuple[Future[Any], BaseException]] = []
        ready: list[Any] = []
        if broke and self.broken is None:
            self.broken = (
                "an initializer failed: the executor is not usable anymore (the standard "
                "library's executors break the same way)"
            )
        if self.broken is not None:
            while self.queued:
                queued = self.queued.popleft()
                if queued.set_running_or_notify_cancel():
                    failed.append((queued, BrokenWorkerError(self.broken)))
        if self.queued:
            failed, ready = self.fill_locked()
        if self.is_shutdown and not self.running and not self.queued:
            self.wake()
        return failed, ready

    # --- cancelling ------------------------------------------------------------------------

    def kill(self, fut: Future[Any]) -> bool:
        """``cancel()`` of a running call under ``kill_on_cancel``: interrupts the job, cancels
        the future now, and leaves the call to the watcher, which abandons the worker if it has
        not stopped within ABANDON_AFTER. False if this is not such a call."""
        if not self.kill_on_cancel:
            return False
        with self.lock:
            if fut._call is None or fut._killed:
                return fut._killed
            with fut._condition:
                if fut._state not in (PENDING, RUNNING):
                    return False
                fut._state = CANCELLED
                fut._condition.notify_all()
            fut._killed = True
            fut._call.interrupt()
            fut._kill_deadline = time.monotonic() + ABANDON_AFTER
            self.killing.append(fut)
            item = self.watch_locked(fut)
            self.wake()  # the watcher's timeout changed
        fut.set_running_or_notify_cancel()  # CANCELLED -> CANCELLED_AND_NOTIFIED, for wait()
        fut._invoke_callbacks()  # type: ignore[attr-defined]
        self.take_all([item] if item else [])
        return True

    # --- the watcher thread ----------------------------------------------------------------

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"\0")
        except (BlockingIOError, OSError):  # full: a wake-up is pending anyway
            pass

    def watch_loop(self) -> None:
        epoll, wake_r = self.epoll, self.wake_r
        while True:
            with self.lock:
                if self.is_shutdown and not self.running and not self.queued:
                    break
                deadline = min((f._kill_deadline for f in self.killing), default=None)
            timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            events = epoll.poll(timeout)
            ready: list[Any] = []
            abandoned: list[Any] = []
            with self.lock:
                for fd, _ in events:
                    if fd == wake_r:
                        try:
                            while os.read(wake_r, 4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    fut = self.watched.get(fd)
                    if fut is not None and fut._call.done():
                        ready.append((fut, self.claim_locked(fut)))
                while self.watch_requests:
                    if item := self.watch_locked(self.watch_requests.popleft()):
                        ready.append(item)
                if self.killing:
                    now = time.monotonic()
                    still = []
                    for fut in self.killing:
                        if fut._call is None:
                            continue
                        if now >= fut._kill_deadline and (call := self.claim_locked(fut)):
                            abandoned.append((fut, call))
                        else:
                            still.append(fut)
                    self.killing = still
            for fut, call in abandoned:
                self.take_all(self.take(fut, call, abandon=True)[1])
            self.take_all(ready)
        self.close()

    def close(self) -> None:
        """Ends the workers within the grace period (in the watcher thread, once no call is
        left); the failure report goes to ``shutdown(wait=True)``, or to stderr."""
        ctx = self.ctx
        try:
            ctx.close_blocking(ctx.options.grace_period)
        except BaseException as exc:  # noqa: BLE001
            self.close_error = exc
        finally:
            self.epoll.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            _live_engines.discard(self)

    # --- shutting down ---------------------------------------------------------------------

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        cancelled: list[Future[Any]] = []
        ready: list[Any] = []
        with self.lock:
            first = not self.is_shutdown
            self.is_shutdown = True
            if cancel_futures:
                cancelled = list(self.queued)
                self.queued.clear()
            for fut in list(self.running):
                if item := self.watch_locked(fut):
                    ready.append(item)
            if first:
                self.wake()
        for fut in cancelled:
            if fut.cancel():
                fut.set_running_or_notify_cancel()
        self.take_all(ready)
        if wait and threading.current_thread() is not self.thread:
            self.thread.join()
            error, self.close_error = self.close_error, None
            if error is not None:
                raise error

    def report_close_error(self) -> None:
        error, self.close_error = self.close_error, None
        if error is not None:
            print(f"interpool: Executor: {error}", file=sys.stderr)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, not {value!r}")
    return value


def _default_max_workers() -> int:
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return count or 1


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` that runs calls on interpool's workers (subinterpreters
    or processes; AUTO chooses per call). Code written for ``ProcessPoolExecutor`` or
    ``InterpreterPoolExecutor`` works by changing the constructor.

    Args:
        max_workers: How many calls run at once (default: the CPUs this process may use). The
            others wait in a queue here.
        worker_type: A :class:`WorkerType` (default AUTO: subinterpreters, falling back per call).
        initializer: Called with ``initargs`` once in each worker before its first call. MUST be
            picklable. If it raises, the executor breaks as the standard library's do: that
            call and every queued one fail with :class:`BrokenWorkerError`, and so does
            ``submit``.
        initargs: Arguments of ``initializer``.
        max_tasks_per_child: A worker ends after this many calls (a map chunk is one call) and a
            fresh one takes its place.
        idle_timeout: Seconds an idle worker waits for a call before it ends.
        grace_period: Seconds the workers get to end at shutdown.
        kill_on_cancel: ``Future.cancel()`` also stops a running call (its future is cancelled
            at once; a worker that does not stop within a second is abandoned). Under AUTO, calls
            then run on a process type, which can be killed.

    Raises:
        ValueError, TypeError: a bad argument (the message names it).
        WorkerTypeUnavailableError: the worker type cannot run here.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        worker_type: WorkerType | str = WorkerType.AUTO,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[object] = (),
        max_tasks_per_child: int | None = None,
        idle_timeout: float = 600.0,
        grace_period: float = 30.0,
        kill_on_cancel: bool = False,
    ) -> None:
        if max_workers is None:
            max_workers = _default_max_workers()
        max_workers = _check_count("max_workers", max_workers)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        initargs = tuple(initargs)
        if initargs and initializer is None:
            raise ValueError("initargs given without an initializer")
        init: Callable[[], object] = bool
        if initializer is not None:
            init = functools.partial(initializer, *initargs)
        if max_tasks_per_child is not None:
            _check_count("max_tasks_per_child", max_tasks_per_child)
        if not isinstance(kill_on_cancel, bool):
            raise TypeError(f"kill_on_cancel must be a bool, not {type(kill_on_cancel).__name__}")
        if _exiting:
            raise RuntimeError("cannot create an Executor after interpreter shutdown")
        # max_tasks_per_child is the context's max_tasks_per_worker: counted by the worker before
        # it publishes an outcome, so the next call never races with a retire hook.
        ctx = ContextCore(
            ContextOptions(
                idle_timeout=idle_timeout,
                init=init,
                grace_period=grace_period,
                worker_type=worker_type,
                max_tasks_per_worker=max_tasks_per_child,
            )
        )
        self._engine = _Engine(ctx, max_workers, kill_on_cancel)
        self._options = {
            "worker_type": ctx.options.worker_type,
            "initializer": initializer,
            "initargs": initargs,
            "max_tasks_per_child": max_tasks_per_child,
            "idle_timeout": ctx.options.idle_timeout,
            "grace_period": ctx.options.grace_period,
            "kill_on_cancel": kill_on_cancel,
        }
        # Dropped without shutdown(): the calls already submitted finish, then the workers end.
        weakref.finalize(self, self._engine.shutdown, False)

    max_workers = property(lambda self: self._engine.max_workers, doc="How many calls run at once.")
    worker_type = property(
        lambda self: self._engine.ctx.options.worker_type,
        doc="The :class:`WorkerType` of the workers.",
    )

    def __repr__(self) -> str:
        state = " shut down" if self._engine.is_shutdown else ""
        return (
            f"<interpool.Executor {self.worker_type.value} max_workers={self.max_workers}{state}>"
        )

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedules ``fn(*args, **kwargs)``; returns its :class:`Future`. ``fn`` and the
        arguments MUST be picklable (cloudpickle, if installed, handles lambdas); a pickling
        error is raised by the future, as with ``ProcessPoolExecutor``.

        Raises:
            RuntimeError: after ``shutdown()`` (or once the interpreter exits).
            BrokenWorkerError: after an initializer failed.
        """
        return self._engine.submit(fn, args, kwargs)  # type: ignore[no-any-return]

    def _submit_routed(
        self, route: Callable[..., Any] | None, fn: Callable[..., Any], *args: Any
    ) -> Future[Any]:
        """:meth:`submit` of ``fn(*args)`` that AUTO routes by ``route`` (None: by ``fn``): for
        jobs that run another callable, such as a map chunk or a Dask task (``interpool.dask``)."""
        return self._engine.submit(fn, args, {}, route)  # type: ignore[no-any-return]

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """``fn`` over the iterables (``fn(*items)``, as ``map``), results in order.

        Args:
            timeout: Seconds from this call; a result not in by then raises ``TimeoutError``.
            chunksize: Items per call: bigger chunks cost less per item.
            buffersize: At most this many calls (chunks) submitted ahead of the results
                consumed; None: everything is submitted now (the standard library's default).

        Leaving the iterator early (or an error) cancels the calls not started.
        """
        chunksize = _check_count("chunksize", chunksize)
        if buffersize is not None:
            buffersize = _check_count("buffersize", buffersize)
        if timeout is not None:
            timeout = float(timeout)
            if math.isnan(timeout):
                raise ValueError("timeout must be a number of seconds, not nan")
        end_time = None if timeout is None else time.monotonic() + timeout
        items = zip(*iterables, strict=False)
        if chunksize == 1:
            jobs = (self.submit(fn, *args) for args in items)
        else:
            jobs = (
                self._submit_routed(fn, run_chunk, fn, True, chunk)
                for chunk in _batched(items, chunksize)
            )
        if buffersize is None:
            futures = collections.deque(jobs)
        else:
            futures = collections.deque(itertools.islice(jobs, buffersize))
        return _map_results(futures, jobs if buffersize else None, chunksize > 1, end_time)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accepts no more calls. Queued calls run (unless ``cancel_futures``: they are
        cancelled), then the workers end within the grace period. ``wait``: returns when all
        that is done; without it, returns at once and it happens in the background.

        Raises:
            BrokenWorkerError: with ``wait``, if workers failed to shut down cleanly.
        """
        self._engine.shutdown(wait, cancel_futures)

    def statistics(self) -> WorkerContextStatistics:
        """Idle workers and running calls, in all and per worker type, as
        :meth:`WorkerContext.statistics` (AUTO's estimates and fallbacks included)."""
        return self._engine.ctx.statistics()

    def _resize(self, max_workers: int) -> None:
        engine = self._engine
        with engine.lock:
            engine.max_workers = max_workers
            failed, ready = engine.fill_locked()
        for fut, exc in failed:
            fut.set_exception(exc)
        engine.take_all(ready)


def _batched(items: Iterator[tuple[Any, ...]], n: int) -> Iterator[tuple[tuple[Any, ...], ...]]:
    while chunk := tuple(itertools.islice(items, n)):
        yield chunk


def _map_results(
    futures: collections.deque[Future[Any]],
    more: Iterator[Future[Any]] | None,
    chunked: bool,
    end_time: float | None,
) -> Iterator[Any]:
    try:
        while futures:
            fut = futures.popleft()
            if more is not None:
                futures.extend(itertools.islice(more, 1))
            left = None if end_time is None else end_time - time.monotonic()
            if not chunked:
                yield fut.result(left)
                continue
            error: BaseException | None = None
            try:
                results = fut.result(left)
            except ChunkError as exc:  # an item raised: the results before it count
                results = exc.args[1]
                error = exc.__cause__ if exc.__cause__ is not None else exc
            yield from results
            if error is not None:
                raise error
    finally:
        for fut in futures:
            fut.cancel()


# --- get_reusable_executor -----------------------------------------------------------------

_reusable: Executor | None = None
_reusable_lock = threading.Lock()


def get_reusable_executor(max_workers: int | None = None, **options: Any) -> Executor:
    """The process-wide :class:`Executor`, made on first use, as loky's function of this name.

    ``options`` are :class:`Executor`'s. A call with the same options returns the same executor,
    resized in place if ``max_workers`` differs (calls running keep running; a smaller size
    applies as they end). Different options, or an executor that was shut down or broke, give a
    new one (the old one is shut down once its calls are done, without waiting here)."""
    global _reusable
    if max_workers is None:
        max_workers = _default_max_workers()
    max_workers = _check_count("max_workers", max_workers)
    with _reusable_lock:
        current = _reusable
        if current is not None:
            engine = current._engine
            usable = not engine.is_shutdown and engine.broken is None
            if usable and _same_options(current, options):
                if max_workers != current.max_workers:
                    current._resize(max_workers)
                return current
            current.shutdown(wait=False)
        _reusable = Executor(max_workers, **options)
        return _reusable


def _same_options(executor: Executor, options: dict[str, Any]) -> bool:
    have = executor._options
    for name, value in options.items():
        if name not in have:
            raise TypeError(f"get_reusable_executor() got an unexpected keyword argument {name!r}")
        if name == "worker_type":
            value = WorkerType(value)
        elif name == "initargs":
            value = tuple(value)
        if have[name] != value:
            return False
    defaults = Executor.__init__.__kwdefaults__ or {}
    return all(have[n] == defaults[n] for n in have if n not in options)


def _shutdown_all_at_exit() -> None:
    """Before the interpreter joins its threads: every executor never shut down finishes its
    calls and ends its workers, as the standard library's executors do at exit."""
    global _exiting
    _exiting = True
    for engine in list(_live_engines):
        engine.shutdown(wait=False)
    for engine in list(_live_engines):
        engine.thread.join()
        engine.report_close_error()


threading._register_atexit(_shutdown_all_at_exit)  # type: ignore[attr-defined]
