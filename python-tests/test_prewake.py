"""The learned-duration wait (``worker_types::prewake``): once a callable's run time is known, a
parked caller is woken shortly before its job is due and spins for the last stretch, or parks
again. These check that such a wait still ends with the job's own outcome whatever the job then
does: finish much later or much earlier than learned, be cancelled, be killed. Whether the early
wake-up fires at all depends on a free core, so nothing here depends on it (and no timing is
asserted); the alarm's own behaviour is tested in Rust (`prewake.rs`, `completion.rs`)."""

import asyncio

import _funcs
import _helpers
import pytest
import trio
import trio.testing

pytestmark = [
    pytest.mark.needs_subinterpreters,
    pytest.mark.contract,
    pytest.mark.usefixtures("worker_type"),
]

# Runs of this length park the caller (they outlast its spin), so they are learned.
LEARNED_RUN = 0.002


async def _release_once_blocked(release):
    await trio.testing.wait_all_tasks_blocked()
    release.send()


async def _release_once_parked(started, release):
    """Releases the job once it has started and its caller is parked."""
    await started.wait_started()
    await _release_once_blocked(release)


async def _learn(ctx, **kwargs):
    for _ in range(3):
        assert await ctx.run_sync(_funcs.learned_job, "busy", LEARNED_RUN, **kwargs) == "busy"


@pytest.mark.parametrize("kwargs", _helpers.ALL_KWARGS, ids=_helpers.kwargs_id)
async def test_a_job_much_longer_than_learned_returns_its_value(ctx, kwargs):
    await _learn(ctx, **kwargs)
    with _helpers.Fifo() as started, _helpers.Fifo() as release:
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_release_once_parked, started, release)
                value = await ctx.run_sync(
                    _funcs.learned_job, "block", started.w, release.r, "late", **kwargs
                )
    assert value == "late"
    assert ctx.statistics().running_workers == 0


@pytest.mark.parametrize("kwargs", _helpers.ALL_KWARGS, ids=_helpers.kwargs_id)
async def test_jobs_much_shorter_than_learned_return_their_outcome(ctx, kwargs):
    await _learn(ctx, **kwargs)
    assert await ctx.run_sync(_funcs.learned_job, "busy", 0.0, **kwargs) == "busy"
    with pytest.raises(TypeError):
        await ctx.run_sync(_funcs.learned_job, "busy", "not seconds", **kwargs)
    # And a long one again after them.
    assert await ctx.run_sync(_funcs.learned_job, "busy", LEARNED_RUN, **kwargs) == "busy"


async def test_cancel_without_kill_after_learning_returns_the_value_then_cancels(ctx):
    await _learn(ctx)
    await _helpers.cancel_without_kill_returns_the_value(ctx, _funcs.learned_job, "block")
    assert ctx.statistics().running_workers == 0


@pytest.mark.parametrize("kwargs", _helpers.KILL_KWARGS, ids=_helpers.kwargs_id)
async def test_kill_on_cancel_after_learning_interrupts_the_job(ctx, kwargs):
    await _learn(ctx, **kwargs)
    reached = False
    with _helpers.Fifo() as started:
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as cs:
                    nursery.start_soon(_helpers.cancel_when_started, cs, started)
                    await ctx.run_sync(_funcs.learned_job, "spin", started.w, **kwargs)
                    reached = True
            assert await ctx.run_sync(_funcs.learned_job, "busy", 0.0, **kwargs) == "busy"
    assert cs.cancelled_caught
    assert not reached
    assert ctx.statistics().running_workers == 0


# --- the same under asyncio ---------------------------------------------------


def _arun(worker_type, body):
    import interpool

    async def main():
        async with interpool.open_worker_context(worker_type=worker_type) as ctx:
            for _ in range(3):
                assert await ctx.run_sync(_funcs.learned_job, "busy", LEARNED_RUN) == "busy"
            await body(ctx)

    _helpers.run("asyncio", main)


def test_asyncio_a_job_much_longer_or_shorter_than_learned_returns_its_value(worker_type):
    async def body(ctx):
        with _helpers.Fifo() as started, _helpers.Fifo() as release:
            call = asyncio.ensure_future(
                ctx.run_sync(_funcs.learned_job, "block", started.w, release.r, "late")
            )
            await started.wait_started()
            release.send()
            assert await call == "late"
        assert await ctx.run_sync(_funcs.learned_job, "busy", 0.0) == "busy"

    _arun(worker_type, body)


@pytest.mark.parametrize("kwargs", _helpers.ALL_KWARGS, ids=_helpers.kwargs_id)
def test_asyncio_cancel_after_learning(worker_type, kwargs):
    async def body(ctx):
        with _helpers.Fifo() as started, _helpers.Fifo() as release:
            job = "spin" if kwargs else "block"
            args = (started.w,) if kwargs else (started.w, release.r, "v")
            call = asyncio.ensure_future(ctx.run_sync(_funcs.learned_job, job, *args, **kwargs))
            await started.wait_started()
            call.cancel()
            if not kwargs:
                release.send()  # without a kill the job runs to its end first
            with pytest.raises(asyncio.CancelledError):
                await call
        assert ctx.statistics().running_workers == 0
        assert await ctx.run_sync(_funcs.learned_job, "busy", 0.0, **kwargs) == "busy"

    _arun(worker_type, body)


# --- the ordered map, woken the same way ---------------------------------------


async def test_an_ordered_map_of_learned_chunks_returns_every_value_also_a_late_one(ctx):
    import interpool

    got = []
    with _helpers.Fifo() as started, _helpers.Fifo() as release:
        learned = [("busy", LEARNED_RUN)] * 4
        items = [*learned, ("block", started.w, release.r, "late"), ("busy", 0.0)]
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_release_once_parked, started, release)
                results = interpool.astarmap(
                    _funcs.learned_job, items, max_in_flight=1, context=ctx
                )
                async with results:
                    got += [value async for value in results]
    assert got == ["busy"] * 4 + ["late", "busy"]
    assert ctx.statistics().running_workers == 0


@pytest.mark.parametrize("kill_on_cancel", [False, True])
async def test_leaving_an_ordered_map_of_learned_chunks_ends_its_running_chunk(ctx, kill_on_cancel):
    import interpool

    got = []
    with _helpers.Fifo() as started, _helpers.Fifo() as release:
        last = ("spin", started.w) if kill_on_cancel else ("block", started.w, release.r, "v")
        items = [("busy", LEARNED_RUN)] * 4 + [last]
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:
                results = interpool.astarmap(
                    _funcs.learned_job,
                    items,
                    max_in_flight=2,
                    kill_on_cancel=kill_on_cancel,
                    context=ctx,
                )
                async with results:
                    async for value in results:
                        got.append(value)
                        if len(got) == 4:
                            await started.wait_started()
                            if not kill_on_cancel:  # the chunk runs to its end first
                                nursery.start_soon(_release_once_blocked, release)
                            break
    assert got == ["busy"] * 4
    assert ctx.statistics().running_workers == 0
    assert await ctx.run_sync(_funcs.learned_job, "busy", 0.0) == "busy"
