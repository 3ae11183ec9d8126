"""Reliability under cancellation churn, on every worker type.

- a cancellation that arrives after the job completed interrupts nothing: the worker is reused,
  its outcome stands, and closing reports nothing;
- ``retire`` runs after the caller has its result: a slow or stuck hook delays no call, its
  worker is simply not reused until the hook returns;
- worker recycling: ``max_tasks_per_worker`` and ``max_worker_memory``;
- churn: many concurrent calls, some cancelled at random points, with and without
  ``kill_on_cancel``: every call nobody cancelled returns its own input, closing raises nothing,
  and no worker thread, process or interpreter is left.

Jobs synchronise through FIFOs named by path (workers of every type can open them); the random
cancellation points are counted in scheduler passes, never in time.
"""

import functools
import pickle
import random
import sys
import textwrap

import _funcs
import _helpers
import pytest
import trio
import trio.testing
from test_process import Fifo, workers_left

import interpool
from interpool import _context, _interpool, _outcome

pytestmark = pytest.mark.needs_subinterpreters

WorkerType = interpool.WorkerType
TYPES = [WorkerType.SUBINTERPRETER, WorkerType.FORKSERVER, WorkerType.SPAWN]


def _id(t):
    return t.value


def worker_threads():
    """Names of this process's interpool worker threads; the short-lived interrupter threads
    are not workers."""
    return _helpers.interpool_threads(excluding=("interpool-inter",))


@pytest.mark.parametrize("worker_type", TYPES, ids=_id)
async def test_an_interrupt_after_the_job_completed_leaves_its_worker_in_service(worker_type):
    async with interpool.open_worker_context(worker_type=worker_type) as ctx:
        warm = await ctx.run_sync(_funcs.pid_and_interpreter)
        cache = _context.core_of(ctx).cache
        call = cache.submit(_outcome.dumps((_funcs.pid_and_interpreter, ())))
        fd = call.arm()
        if fd is not None:
            await trio.lowlevel.wait_readable(fd)
        # A kill_on_cancel cancellation that lands now, before the caller read the outcome.
        call.interrupt()
        kind, data, _ = call.result()
        assert kind == _outcome.VALUE
        assert pickle.loads(data) == warm
        # Not killed: the same worker serves on.
        assert await ctx.run_sync(_funcs.pid_and_interpreter) == warm
    # Leaving the context raised nothing: no exit of a killed worker is reported.


async def test_an_interrupt_while_the_job_loads_stops_it_before_it_starts_and_keeps_the_worker(
    tmp_path,
):
    # Loading may import modules: an interrupt is held back until the function would start (an
    # import cut short would leave the interpreter unfit for reuse), and then it does not start.
    path = tmp_path / "should-not-exist"
    async with _helpers.checked_context() as ctx:
        warm = await ctx.run_sync(_funcs.interpreter_id)
        with _helpers.Pipe() as started, _helpers.Pipe() as release:
            with trio.fail_after(_helpers.HANG_GUARD), trio.CancelScope() as cs:
                async with trio.open_nursery() as nursery:

                    async def cancel_then_release():
                        await started.wait_started()
                        cs.cancel()  # this task's scope too: shielded from here on
                        with trio.CancelScope(shield=True):
                            # The call has claimed the interrupt and waits for its worker.
                            await trio.testing.wait_all_tasks_blocked()
                        release.send()

                    nursery.start_soon(cancel_then_release)
                    await ctx.run_sync(
                        _funcs.write_file,
                        str(path),
                        _funcs.BlockWhileLoaded(started.w, release.r),
                        kill_on_cancel=True,
                    )
        assert cs.cancelled_caught
        assert not path.exists()
        assert await ctx.run_sync(_funcs.interpreter_id) == warm


@pytest.mark.parametrize("worker_type", TYPES, ids=_id)
async def test_a_slow_retire_delays_no_call_and_its_worker_waits_until_it_returns(
    worker_type, tmp_path
):
    release = Fifo(tmp_path / "release")
    retire = functools.partial(_funcs.keep_once_released, release.path)
    try:
        async with interpool.open_worker_context(worker_type=worker_type, retire=retire) as ctx:
            with trio.fail_after(_helpers.HANG_GUARD):
                # The result comes back while the worker's retire hook is still blocked...
                first = await ctx.run_sync(_funcs.pid_and_interpreter)
                # ...so the next call cannot wait for that worker: a fresh one serves it.
                second = await ctx.run_sync(_funcs.pid_and_interpreter)
            assert second != first
            assert ctx.statistics().running_workers == 0
            # Both hooks return once released; the context then closes cleanly.
            release.release()
            release.release()
    finally:
        release.close()


@pytest.mark.parametrize("worker_type", TYPES, ids=_id)
async def test_max_tasks_per_worker_replaces_a_worker_after_that_many_jobs(worker_type):
    async with _helpers.checked_context(worker_type=worker_type, max_tasks_per_worker=2) as ctx:
        assert ctx.max_tasks_per_worker == 2
        ids = [await ctx.run_sync(_funcs.pid_and_interpreter) for _ in range(4)]
    assert ids[0] == ids[1] != ids[2] == ids[3]


@pytest.mark.parametrize("worker_type", TYPES, ids=_id)
async def test_max_worker_memory_replaces_a_worker_above_it(worker_type):
    if worker_type is not WorkerType.SUBINTERPRETER and not sys.platform.startswith("linux"):
        pytest.skip("a process's RSS is measured on Linux only")
    # Every worker is above one byte after any job: each call gets a fresh worker.
    async with interpool.open_worker_context(worker_type=worker_type, max_worker_memory=1) as ctx:
        ids = [await ctx.run_sync(_funcs.pid_and_interpreter) for _ in range(3)]
    assert len(set(ids)) == 3


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), (2**64, ValueError), ("2", TypeError), (True, TypeError)],
)
@pytest.mark.parametrize("name", ["max_tasks_per_worker", "max_worker_memory"])
async def test_recycling_options_are_validated_everywhere(name, value, error):
    with pytest.raises(error, match=name):
        async with interpool.open_worker_context(**{name: value}):
            pass
    with pytest.raises(error, match=name):
        async with interpool.cache_scope(**{name: value}):
            pass
    with pytest.raises(error, match=name):
        interpool.configure_default_context(**{name: value})


def test_forking_while_subinterpreters_exist_warns_in_the_parent(tmp_path):
    script = textwrap.dedent(
        """
        import os, trio, interpool

        async def main():
            async with interpool.open_worker_context(worker_type="subinterpreter") as ctx:
                await ctx.run_sync(abs, -1)
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)
            pid = os.fork()  # no subinterpreter left: no warning
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)

        if __name__ == "__main__":
            trio.run(main)
        """
    )
    result = _helpers.run_script(tmp_path, script)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("RuntimeWarning: fork() while 1 interpool subinterpreter") == 1
    assert "forkserver" in result.stderr


CHURN_CALLERS = 6
CHURN_CALLS = 12


@pytest.mark.parametrize("kill_on_cancel", [False, True], ids=["plain", "kill"])
@pytest.mark.parametrize("worker_type", [*TYPES, WorkerType.AUTO], ids=_id)
async def test_churn_breaks_no_innocent_call_and_leaks_nothing(worker_type, kill_on_cancel):
    rng = random.Random(f"{worker_type.value}-{kill_on_cancel}")
    threads, processes = worker_threads(), set(workers_left())
    interpreters = _interpool.live_subinterpreters()
    limiter = trio.CapacityLimiter(2)
    returned, cancelled = [], 0

    async def cancelled_call(ctx, scope, value):
        with scope:
            await ctx.run_sync(
                _funcs.busy_identity,
                value,
                rng.randrange(100_000),
                kill_on_cancel=kill_on_cancel,
                limiter=limiter,
            )

    async def caller(ctx, first):
        nonlocal cancelled
        for value in range(first, first + CHURN_CALLS):
            if rng.random() < 0.7:
                got = await ctx.run_sync(
                    _funcs.busy_identity, value, rng.randrange(100_000), limiter=limiter
                )
                returned.append((value, got))
                continue
            scope = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancelled_call, ctx, scope, value)
                for _ in range(rng.randrange(30)):
                    await trio.lowlevel.checkpoint()
                scope.cancel()
            cancelled += 1

    with trio.fail_after(_helpers.HANG_GUARD):
        async with interpool.open_worker_context(worker_type=worker_type) as ctx:
            async with trio.open_nursery() as nursery:
                for i in range(CHURN_CALLERS):
                    nursery.start_soon(caller, ctx, i * CHURN_CALLS)
    # Leaving the context raised nothing (no false shutdown report), and:
    assert all(value == got for value, got in returned), returned
    assert len(returned) + cancelled == CHURN_CALLERS * CHURN_CALLS
    assert _interpool.live_subinterpreters() == interpreters
    assert set(workers_left()) <= processes
    # A worker thread reports its end just before it returns: wait for it to be gone.
    with trio.fail_after(_helpers.HANG_GUARD):
        while worker_threads() != threads:
            await trio.sleep(0.001)
