"""Parallel execution across workers, and limiters."""

import os

import _funcs
import _helpers
import pytest
import trio
import trio.testing

import interpool

pytestmark = pytest.mark.needs_subinterpreters

SPIN_ITERATIONS = 2_000_000


async def test_two_jobs_run_at_once_in_separate_interpreters_with_own_gil():
    results = [None, None]
    with _helpers.Pipe() as a, _helpers.Pipe() as b:
        async with _helpers.checked_context() as ctx:
            limiter = trio.CapacityLimiter(2)
            # kill_on_cancel lets the hang guard end a job stuck at the rendezvous
            # (closing the pipes then releases its os.read).
            with trio.fail_after(_helpers.HANG_GUARD):
                async with trio.open_nursery() as nursery:

                    async def job(i, mine, other):
                        results[i] = await ctx.run_sync(
                            _funcs.rendezvous_and_spin,
                            mine.w,
                            other.r,
                            SPIN_ITERATIONS,
                            limiter=limiter,
                            kill_on_cancel=True,
                        )

                    nursery.start_soon(job, 0, a, b)
                    nursery.start_soon(job, 1, b, a)
            assert ctx.statistics().idle_workers == 2
    (pid0, id0, start0, end0, gil0), (pid1, id1, start1, end1, gil1) = results
    # Same process, two distinct subinterpreters (the main one is 0).
    assert pid0 == pid1 == os.getpid()
    assert id0 != id1
    assert 0 not in (id0, id1)
    # Each worker has its own GIL (PEP 684).
    assert gil0 == gil1 == "own"
    # Both CPU loops were in progress at the same time.
    assert start0 < end1
    assert start1 < end0


async def test_limiter_bounds_running_jobs(ctx):
    limiter = trio.CapacityLimiter(1)
    results = []
    with _helpers.Pipe() as started, _helpers.Pipe() as release:
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:

                async def job(value):
                    results.append(
                        await ctx.run_sync(
                            _funcs.signal_and_block,
                            started.w,
                            release.r,
                            value,
                            limiter=limiter,
                        )
                    )

                nursery.start_soon(job, "a")
                nursery.start_soon(job, "b")
                await started.wait_started()
                await trio.testing.wait_all_tasks_blocked()
                # One job runs; the other waits for the limiter and has not started.
                assert limiter.borrowed_tokens == 1
                assert limiter.statistics().tasks_waiting == 1
                assert not started.readable_now()
                assert ctx.statistics().running_workers <= 1
                release.send()
                await started.wait_started()
                release.send()
    assert sorted(results) == ["a", "b"]
    assert limiter.borrowed_tokens == 0
    # One worker was enough for both jobs.
    assert ctx.statistics().idle_workers == 1


async def test_limiter_is_released_after_an_exception(ctx):
    limiter = trio.CapacityLimiter(1)
    with trio.fail_after(_helpers.HANG_GUARD):
        with pytest.raises(ValueError):
            await ctx.run_sync(_funcs.raise_value_error, "x", limiter=limiter)
        assert limiter.borrowed_tokens == 0
        with pytest.raises(TypeError):
            await ctx.run_sync(_funcs.make_lock, limiter=limiter)
        assert limiter.borrowed_tokens == 0
        assert await ctx.run_sync(_funcs.add, 1, 2, limiter=limiter) == 3
    assert limiter.borrowed_tokens == 0


async def test_any_async_context_manager_is_a_limiter(ctx):
    semaphore = trio.Semaphore(1)
    assert await ctx.run_sync(_funcs.add, 1, 2, limiter=semaphore) == 3
    assert semaphore.value == 1


async def test_default_limiter():
    limiter = interpool.current_default_worker_limiter()
    assert isinstance(limiter, trio.CapacityLimiter)
    assert limiter.total_tokens == (os.cpu_count() or 1)
    assert interpool.current_default_worker_limiter() is limiter


def test_default_limiter_is_per_run():
    async def get():
        return interpool.current_default_worker_limiter()

    assert trio.run(get) is not trio.run(get)


async def test_calls_without_limiter_use_the_default_limiter(ctx):
    default = interpool.current_default_worker_limiter()
    with _helpers.Pipe() as started, _helpers.Pipe() as release:
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ctx.run_sync, _funcs.signal_and_block, started.w, release.r, 1)
                await started.wait_started()
                assert default.borrowed_tokens == 1
                release.send()
    assert default.borrowed_tokens == 0


# --- where a call among other calls yields -------------------------------------


async def test_a_call_while_a_token_is_out_is_a_checkpoint(ctx):
    limiter = trio.CapacityLimiter(2)
    limiter.acquire_on_behalf_of_nowait(holder := object())
    try:
        with trio.fail_after(_helpers.HANG_GUARD), trio.testing.assert_checkpoints():
            assert await ctx.run_sync(_funcs.add, 1, 2, limiter=limiter) == 3
        assert limiter.borrowed_tokens == 1
    finally:
        limiter.release_on_behalf_of(holder)


async def test_a_call_cancelled_while_it_waits_for_a_token_never_runs(ctx, tmp_path):
    path = tmp_path / "should-not-exist"
    limiter = trio.CapacityLimiter(1)
    limiter.acquire_on_behalf_of_nowait(holder := object())
    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def call():
                with scope:
                    await ctx.run_sync(_funcs.write_file, str(path), "ran", limiter=limiter)

            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert limiter.statistics().tasks_waiting == 1
            scope.cancel()
    assert scope.cancelled_caught
    assert not path.exists()
    assert limiter.borrowed_tokens == 1
    assert limiter.statistics().tasks_waiting == 0
    limiter.release_on_behalf_of(holder)
    assert ctx.statistics().running_workers == 0


async def test_a_burst_of_calls_on_two_tokens_returns_every_value(ctx):
    # More calls than tokens at once: they yield, try again, or park on the limiter (the
    # paths of a burst), and each comes back with its own value, every token returned.
    limiter = trio.CapacityLimiter(2)
    results = []

    async def one(i):
        results.append(await ctx.run_sync(_funcs.identity, i, limiter=limiter))

    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(one, i)
    assert sorted(results) == list(range(300))
    assert limiter.borrowed_tokens == 0
    assert limiter.statistics().tasks_waiting == 0
    assert ctx.statistics().running_workers == 0
