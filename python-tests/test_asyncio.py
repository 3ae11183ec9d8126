"""run_sync, worker contexts and the default limiter under asyncio, and under anyio's backends.

The tests are sync functions that start their own event loop (``_helpers.run``, ``asyncio.run``,
``anyio.run``), so pytest-trio's trio_mode and anyio's pytest plugin never claim them.
"""

import asyncio
import os
import threading

import _funcs
import _helpers
import anyio
import pytest
import trio

import interpool
from interpool import _context

SUB = interpool.WorkerType.SUBINTERPRETER
pytestmark = pytest.mark.needs_subinterpreters


def arun(async_fn, *args):
    return _helpers.run("asyncio", async_fn, *args)


# --- values, exceptions, contexts ---------------------------------------------


def test_values_and_exceptions_come_back():
    async def main():
        assert await interpool.run_sync(_funcs.add, 1, 2) == 3
        with pytest.raises(KeyError) as info:
            await interpool.run_sync(_funcs.raise_with_cause)
        assert isinstance(info.value.__cause__, ValueError)
        assert any("raise_with_cause" in note for note in info.value.__notes__)
        with pytest.raises(TypeError):
            await interpool.run_sync(_funcs.async_job)
        async with _helpers.checked_context() as ctx:
            assert await ctx.run_sync(_funcs.add, 2, 3) == 5
            first = await ctx.run_sync(_funcs.worker_id)
            assert await ctx.run_sync(_funcs.worker_id) == first  # the warm worker

    arun(main)


def test_closed_context_raises_closed_resource_error():
    async def main():
        async with interpool.open_worker_context(worker_type=SUB) as ctx:
            pass
        with pytest.raises(trio.ClosedResourceError):
            await ctx.run_sync(_funcs.add, 1, 2)

    arun(main)


def test_context_exit_waits_for_running_calls():
    async def main():
        with _helpers.Pipe() as started, _helpers.Pipe() as release:
            cm = interpool.open_worker_context(worker_type=SUB)
            ctx = await cm.__aenter__()
            call = asyncio.create_task(
                ctx.run_sync(_funcs.signal_and_block, started.w, release.r, "v")
            )
            await started.wait_started()
            exiting = asyncio.create_task(cm.__aexit__(None, None, None))
            await _helpers.yield_a_few()
            assert not exiting.done()
            release.send()
            assert await call == "v"
            await exiting
        _helpers.assert_no_workers(ctx)

    arun(main)


def test_context_exit_finishes_despite_a_cancellation_then_raises_it():
    async def main():
        with _helpers.Pipe() as started, _helpers.Pipe() as release:
            exiting = asyncio.Event()
            got = {}

            async def use():
                async with interpool.open_worker_context(worker_type=SUB) as ctx:
                    got["ctx"] = ctx
                    got["call"] = asyncio.create_task(
                        ctx.run_sync(_funcs.signal_and_block, started.w, release.r, 1)
                    )
                    await started.wait_started()
                    exiting.set()

            task = asyncio.create_task(use())
            await exiting.wait()
            await _helpers.yield_a_few()  # use() is now waiting in the context's exit
            task.cancel()
            await _helpers.yield_a_few()
            assert not task.done()  # the exit still waits for the running call
            release.send()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await got["call"] == 1
            _helpers.assert_no_workers(got["ctx"])  # and the workers were ended

    arun(main)


# --- cancellation ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs", _helpers.ALL_KWARGS, ids=_helpers.kwargs_id)
def test_timeout_zero_never_runs_the_job(tmp_path, kwargs):
    path = tmp_path / "should-not-exist"

    async def main():
        async with _helpers.checked_context() as ctx:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0):
                    await ctx.run_sync(_funcs.write_file, str(path), "ran", **kwargs)
            assert await ctx.run_sync(_funcs.add, 1, 2) == 3

    arun(main)
    assert not path.exists()


def test_cancel_without_kill_waits_for_the_job_then_raises():
    async def main():
        async with _helpers.checked_context() as ctx:
            with _helpers.Pipe() as started, _helpers.Pipe() as release:
                task = asyncio.create_task(
                    ctx.run_sync(_funcs.signal_and_block, started.w, release.r, "v")
                )
                interp = await started.wait_started()
                task.cancel()
                await _helpers.yield_a_few()
                assert not task.done()  # it keeps waiting for the job
                release.send()
                with pytest.raises(asyncio.CancelledError):
                    await task
            stats = ctx.statistics()
            assert (stats.running_workers, stats.idle_workers) == (0, 1)
            assert await ctx.run_sync(_funcs.worker_id) == interp  # not harmed: reused

    arun(main)


@pytest.mark.parametrize("kwargs", _helpers.KILL_KWARGS, ids=_helpers.kwargs_id)
def test_kill_on_cancel_interrupts_and_keeps_the_interpreter(kwargs):
    async def main():
        async with _helpers.checked_context() as ctx:
            warm = await ctx.run_sync(_funcs.worker_id)
            with _helpers.Pipe() as started:
                task = asyncio.create_task(
                    ctx.run_sync(_funcs.signal_and_spin, started.w, **kwargs)
                )
                assert await started.wait_started() == warm
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert ctx.statistics().running_workers == 0
            assert await ctx.run_sync(_funcs.worker_id) == warm

    arun(main)


def test_kill_on_cancel_abandons_a_worker_stuck_in_c_code():
    async def main():
        async with _helpers.checked_context() as ctx:
            with _helpers.Pipe() as started, _helpers.Pipe() as release:
                task = asyncio.create_task(
                    ctx.run_sync(
                        _funcs.signal_and_block, started.w, release.r, "v", kill_on_cancel=True
                    )
                )
                stuck = await started.wait_started()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                # Abandoned, or kept if the interrupt landed before os.read.
                stats = ctx.statistics()
                assert stats.running_workers == 0
                kept = stats.idle_workers == 1
                assert (await ctx.run_sync(_funcs.worker_id) == stuck) == kept
                release.send()

    arun(main)


def test_timeout_with_kill_on_cancel_raises_timeout_error():
    async def main():
        with _helpers.Pipe() as started:

            async def cancel_when_started(scope):
                await started.wait_started()
                scope.reschedule(asyncio.get_running_loop().time())

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as scope:
                    canceller = asyncio.create_task(cancel_when_started(scope))
                    await interpool.run_sync(_funcs.signal_and_spin, started.w, kill_on_cancel=True)
            await canceller
        assert await interpool.run_sync(_funcs.add, 1, 2) == 3

    arun(main)


# --- limiter --------------------------------------------------------------------


def test_default_limiter_is_one_per_event_loop():
    async def get():
        limiter = interpool.current_default_worker_limiter()
        assert interpool.current_default_worker_limiter() is limiter
        assert isinstance(limiter, interpool.AsyncioCapacityLimiter)
        assert limiter.total_tokens == (os.cpu_count() or 1)
        assert limiter.borrowed_tokens == 0
        return limiter

    assert arun(get) is not arun(get)


def test_default_limiter_needs_an_event_loop():
    with pytest.raises(RuntimeError):
        interpool.current_default_worker_limiter()


def test_calls_take_a_default_limiter_token():
    async def main():
        limiter = interpool.current_default_worker_limiter()
        with _helpers.Pipe() as started, _helpers.Pipe() as release:
            task = asyncio.create_task(
                interpool.run_sync(_funcs.signal_and_block, started.w, release.r, 1)
            )
            await started.wait_started()
            assert limiter.borrowed_tokens == 1
            release.send()
            assert await task == 1
        assert limiter.borrowed_tokens == 0

    arun(main)


@pytest.mark.parametrize(
    "make_limiter",
    [
        lambda: interpool.AsyncioCapacityLimiter(1),
        lambda: asyncio.Semaphore(1),
        lambda: anyio.CapacityLimiter(1),
    ],
    ids=["interpool", "asyncio.Semaphore", "anyio"],
)
def test_a_one_token_limiter_runs_one_job_at_a_time(make_limiter):
    async def main():
        limiter = make_limiter()
        async with _helpers.checked_context() as ctx:
            with _helpers.Pipe() as started, _helpers.Pipe() as release:
                calls = [
                    asyncio.create_task(
                        ctx.run_sync(
                            _funcs.signal_and_block, started.w, release.r, i, limiter=limiter
                        )
                    )
                    for i in range(2)
                ]
                await started.wait_started()
                await _helpers.yield_a_few()
                assert ctx.statistics().running_workers == 1
                assert not started.readable_now()
                release.send(b"rr")
                assert sorted(await asyncio.gather(*calls)) == [0, 1]

    arun(main)


def test_a_limiter_that_is_not_an_async_context_manager_is_a_type_error():
    async def main():
        with pytest.raises(TypeError):
            await interpool.run_sync(_funcs.add, 1, 2, limiter=object())

    arun(main)


def test_cancelled_limiter_waiter_passes_its_turn_on():
    async def main():
        limiter = interpool.AsyncioCapacityLimiter(1)
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        second = asyncio.create_task(limiter.acquire())
        await _helpers.yield_a_few()
        waiter.cancel()
        limiter.release()
        await second
        assert limiter.borrowed_tokens == 1
        with pytest.raises(trio.WouldBlock):
            limiter.acquire_nowait()
        limiter.release()
        limiter.acquire_nowait()

    arun(main)


# --- several event loops --------------------------------------------------------


def test_event_loops_in_several_threads_share_the_default_cache():
    results, errors = [], []

    def in_thread(runner):
        try:
            results.append(runner())
        except BaseException as exc:  # noqa: BLE001, reported below
            errors.append(exc)

    async def many():
        return [await interpool.run_sync(_funcs.add, i, 1) for i in range(200)]

    runners = [lambda: asyncio.run(many()), lambda: asyncio.run(many()), lambda: trio.run(many)]
    threads = [threading.Thread(target=in_thread, args=(r,)) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(_helpers.HANG_GUARD)
    assert not errors
    assert results == [list(range(1, 201))] * 3
    assert interpool.default_context_statistics().running_workers == 0


def test_context_closing_in_one_loop_waits_for_a_call_in_another_thread():
    async def main():
        with _helpers.Pipe() as started, _helpers.Pipe() as release:
            async with interpool.open_worker_context(worker_type=SUB) as ctx:
                outcome = []
                thread = threading.Thread(
                    target=lambda: outcome.append(
                        asyncio.run(ctx.run_sync(_funcs.signal_and_block, started.w, release.r, 7))
                    )
                )
                thread.start()
                await started.wait_started()
                exiting = asyncio.create_task(_context.core_of(ctx).aclose())
                await _helpers.yield_a_few()
                assert not exiting.done()
                release.send()
                await exiting
            thread.join(_helpers.HANG_GUARD)
            assert outcome == [7]

    arun(main)


# --- anyio ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_run_sync_values_contexts_and_limiters(backend):
    async def main():
        assert await interpool.run_sync(_funcs.add, 1, 2) == 3
        limiter = interpool.current_default_worker_limiter()
        expected = trio.CapacityLimiter if backend == "trio" else interpool.AsyncioCapacityLimiter
        assert type(limiter) is expected
        async with interpool.open_worker_context(worker_type=SUB) as ctx:
            assert await ctx.run_sync(_funcs.add, 2, 2, limiter=anyio.CapacityLimiter(1)) == 4

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_cancelled_scope_never_runs_the_job(backend, tmp_path):
    path = tmp_path / "should-not-exist"

    async def main():
        with anyio.CancelScope() as scope:
            scope.cancel()
            await interpool.run_sync(_funcs.write_file, str(path), "ran")
        assert scope.cancelled_caught

    anyio.run(main, backend=backend)
    assert not path.exists()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_kill_on_cancel_interrupts(backend):
    async def main():
        with _helpers.Pipe() as started:
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as scope:

                    async def cancel_when_started():
                        await started.wait_started()
                        scope.cancel()

                    tg.start_soon(cancel_when_started)
                    await interpool.run_sync(_funcs.signal_and_spin, started.w, kill_on_cancel=True)
                    pytest.fail("not cancelled")
            assert scope.cancelled_caught
        assert interpool.default_context_statistics().running_workers == 0

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_cancel_without_kill_waits_for_the_job(backend):
    async def main():
        with _helpers.Pipe() as started, _helpers.Pipe() as release:
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as scope:

                    async def cancel_then_release():
                        await started.wait_started()
                        scope.cancel()
                        await anyio.wait_all_tasks_blocked()
                        release.send()

                    tg.start_soon(cancel_then_release)
                    await interpool.run_sync(_funcs.signal_and_block, started.w, release.r, "v")
                    await anyio.lowlevel.checkpoint()
                    pytest.fail("not cancelled")
            assert scope.cancelled_caught
        assert interpool.default_context_statistics().running_workers == 0

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_amap(backend):
    async def main():
        async with interpool.amap(_funcs.raise_if_seven, range(7), chunksize=2) as results:
            assert [r async for r in results] == [x * 10 for x in range(7)]
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with interpool.amap(_funcs.identity, range(3)) as results:
                async for _ in results:
                    pytest.fail("a cancelled scope yielded a result")
        assert scope.cancelled_caught

    anyio.run(main, backend=backend)
