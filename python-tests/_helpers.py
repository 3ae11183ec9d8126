"""Parent-side helpers for the tests (never imported by workers)."""

import asyncio
import contextlib
import os
import struct
import subprocess
import sys
import textwrap

import _funcs
import sniffio
import trio
import trio.testing

import interpool

# Generous bound that only turns a hang into a failure; no test asserts timings.
HANG_GUARD = 60

# The ways a call can be made cancellable, and with the default: the cancellation tests run
# each of them (``kwargs_id`` names them in test ids).
KILL_KWARGS = [{"kill_on_cancel": True}, {"cancellable": True}]
ALL_KWARGS = [{}, *KILL_KWARGS]


def kwargs_id(kwargs):
    return ",".join(kwargs) or "default"


def run_script(tmp_path, source, *args):
    """Runs ``source`` (dedented) as a script in a fresh interpreter, with ``args`` as its
    arguments; returns the finished ``subprocess.CompletedProcess`` with text output."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        text=True,
        timeout=HANG_GUARD * 2,
    )


class Pipe:
    """An ``os.pipe()`` shared with workers (fds are process-wide).

    Use as a context manager: both ends are closed on exit. Closing the write
    end also releases a worker still blocked reading the pipe (it reads EOF).
    """

    def __init__(self):
        self.r, self.w = os.pipe()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        self.close_write()
        if self.r is not None:
            os.close(self.r)
            self.r = None

    def close_write(self):
        """Close the write end: a worker reading the pipe then sees EOF."""
        if self.w is not None:
            os.close(self.w)
            self.w = None

    def send(self, data=b"r"):
        assert os.write(self.w, data) == len(data)

    async def receive(self, size):
        data = b""
        while len(data) < size:
            await wait_readable(self.r)
            chunk = os.read(self.r, size - len(data))
            assert chunk, "pipe closed"
            data += chunk
        return data

    async def wait_started(self):
        """Wait for a job's ``signal_started``; return its ``_funcs.worker_id()``."""
        data = await self.receive(_funcs.WORKER_ID_SIZE)
        return struct.unpack(_funcs.WORKER_ID_FORMAT, data)

    def readable_now(self):
        import select

        return bool(select.select([self.r], [], [], 0)[0])


class Fifo(Pipe):
    """:class:`Pipe`'s interface on a named pipe, for every worker type: jobs get its path as
    ``.w`` and ``.r`` (``_funcs.writing``/``reading`` open it), since processes share no fds
    with the test. The test holds one non-blocking read-write fd, so a job's ``open`` never
    waits; ``close_write`` closes it, and a job reading then sees EOF."""

    def __init__(self):
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="interpool-fifo-")
        self.path = os.path.join(self._dir, "fifo")
        os.mkfifo(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        self.r = self.w = self.path

    def close(self):
        self.close_write()
        if self._dir is not None:
            os.unlink(self.path)
            os.rmdir(self._dir)
            self._dir = None

    def close_write(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def send(self, data=b"r"):
        assert os.write(self._fd, data) == len(data)

    async def receive(self, size):
        data = b""
        while len(data) < size:
            await wait_readable(self._fd)
            try:
                chunk = os.read(self._fd, size - len(data))
            except BlockingIOError:
                continue
            assert chunk, "fifo closed"
            data += chunk
        return data

    def readable_now(self):
        import select

        return bool(select.select([self._fd], [], [], 0)[0])


async def wait_readable(fd):
    """``trio.lowlevel.wait_readable`` for trio or asyncio, whichever runs."""
    if sniffio.current_async_library() == "trio":
        await trio.lowlevel.wait_readable(fd)
        return
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop.add_reader(fd, lambda: future.done() or future.set_result(None))
    try:
        await future
    finally:
        loop.remove_reader(fd)


def run(library, async_fn, *args):
    """Run ``async_fn(*args)`` under ``"trio"`` or ``"asyncio"`` (in sync tests, so that
    pytest-trio's trio_mode leaves them alone), within the hang guard."""
    if library == "trio":

        async def guarded():
            with trio.fail_after(HANG_GUARD):
                return await async_fn(*args)

        return trio.run(guarded)

    async def guarded_asyncio():
        async with asyncio.timeout(HANG_GUARD):
            return await async_fn(*args)

    return asyncio.run(guarded_asyncio())


async def yield_a_few(n=20):
    """Let other tasks run n times (asyncio has no wait_all_tasks_blocked); a check that something
    did NOT happen meanwhile is only as strong as n, never a timing assumption."""
    for _ in range(n):
        await asyncio.sleep(0)


def assert_no_workers(ctx):
    stats = ctx.statistics()
    assert stats.running_workers == 0, stats
    assert stats.idle_workers == 0, stats


@contextlib.asynccontextmanager
async def checked_context(**kwargs):
    """``open_worker_context(**kwargs)`` that asserts no workers remain after exit; of
    subinterpreters unless ``worker_type`` says otherwise (what the suite tests)."""
    kwargs.setdefault("worker_type", interpool.WorkerType.SUBINTERPRETER)
    async with interpool.open_worker_context(**kwargs) as ctx:
        yield ctx
    assert_no_workers(ctx)


async def cancel_when_started(cancel_scope, started):
    """Cancel ``cancel_scope`` once the job signals ``started``; return its interpreter id."""
    interp = await started.wait_started()
    cancel_scope.cancel()
    return interp


def interpool_threads(excluding: tuple[str, ...] = ()) -> list[str]:
    """Names of this process's interpool threads (their names start with "interpool-", cut to
    15 characters by Linux), leaving out those starting with one of ``excluding``."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                name = f.read().strip()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        if name.startswith("interpool-") and not name.startswith(excluding):
            names.append(name)
    return sorted(names)


async def cancel_without_kill_returns_the_value(ctx, job, *args):
    """Runs ``job(*args, started, release, "value")`` in ``ctx`` (``started`` and ``release``:
    fifos; the job signals the first once it runs, then blocks reading the second) and cancels
    the call once it started, without ``kill_on_cancel``: the call must still wait for the job
    (checked before releasing it), return its value, and be cancelled at the next checkpoint."""
    result = []
    with Fifo() as started, Fifo() as release:
        with trio.fail_after(HANG_GUARD):
            async with trio.open_nursery() as nursery:

                async def cancel_then_release(cs):
                    await cancel_when_started(cs, started)
                    # The call must keep waiting for the job despite the cancel.
                    await trio.testing.wait_all_tasks_blocked()
                    assert not result
                    release.send()

                with trio.CancelScope() as cs:
                    nursery.start_soon(cancel_then_release, cs)
                    result.append(await ctx.run_sync(job, *args, started.w, release.r, "value"))
                    await trio.lowlevel.checkpoint()
                    raise AssertionError("Cancelled was not delivered at the next checkpoint")
    assert result == ["value"]
    assert cs.cancelled_caught
