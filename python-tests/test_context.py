"""open_worker_context / WorkerContext: validation, attributes, statistics, lifetime."""

import math

import _funcs
import _helpers
import pytest
import trio
import trio.testing

import interpool

pytestmark = [
    pytest.mark.needs_subinterpreters,
    pytest.mark.contract,
    pytest.mark.usefixtures("worker_type"),
]


# --- validation -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"idle_timeout": -1}, ValueError),
        ({"idle_timeout": -0.001}, ValueError),
        ({"grace_period": -1}, ValueError),
        ({"grace_period": -math.inf}, ValueError),
        ({"idle_timeout": "1"}, TypeError),
        ({"grace_period": "1"}, TypeError),
        ({"idle_timeout": None}, TypeError),
        ({"init": 1}, TypeError),
        ({"retire": 1}, TypeError),
        ({"init": "bool"}, TypeError),
        ({"worker_type": "bogus"}, ValueError),
    ],
    ids=repr,
)
async def test_bad_arguments_are_rejected(kwargs, error):
    with pytest.raises(error):
        async with interpool.open_worker_context(**kwargs):
            pytest.fail("the context opened despite a bad argument")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"idle_timeout": math.inf},
        {"grace_period": math.inf},
        {"idle_timeout": math.inf, "grace_period": math.inf},
        {"idle_timeout": 0, "grace_period": 0},
        {"idle_timeout": 5, "grace_period": 5},
        {},
    ],
    ids=repr,
)
async def test_good_arguments_are_accepted(kwargs, worker_type):
    async with _helpers.checked_context(worker_type=worker_type, **kwargs) as ctx:
        for name, value in {**kwargs, "worker_type": worker_type}.items():
            assert getattr(ctx, name) == value


async def test_infinite_timeouts_run_jobs(worker_type):
    async with _helpers.checked_context(
        worker_type=worker_type, idle_timeout=math.inf, grace_period=math.inf
    ) as ctx:
        assert await ctx.run_sync(_funcs.add, 1, 2) == 3


def test_worker_context_has_no_public_constructor():
    with pytest.raises(TypeError):
        interpool.WorkerContext()


async def test_limiter_that_is_not_an_async_context_manager_is_rejected(ctx):
    with pytest.raises(TypeError):
        await ctx.run_sync(_funcs.add, 1, 2, limiter=object())
    with pytest.raises(TypeError):
        await interpool.run_sync(_funcs.add, 1, 2, limiter=object())
    # Nothing leaked: the context still works.
    assert await ctx.run_sync(_funcs.add, 1, 2) == 3


# --- attributes -------------------------------------------------------------


async def test_default_attributes(ctx, worker_type):
    assert ctx.idle_timeout == 600.0
    assert ctx.grace_period == 30.0
    assert ctx.init is bool
    assert ctx.retire is bool
    assert ctx.worker_type is worker_type


async def test_attributes_reflect_arguments(worker_type):
    async with _helpers.checked_context(
        worker_type=worker_type,
        idle_timeout=12.5,
        grace_period=3,
        init=_funcs.counting_init,
        retire=_funcs.always_true,
    ) as ctx:
        assert ctx.idle_timeout == 12.5
        assert ctx.grace_period == 3
        assert ctx.init is _funcs.counting_init
        assert ctx.retire is _funcs.always_true


@pytest.mark.parametrize("name", ["idle_timeout", "init", "retire", "grace_period", "worker_type"])
async def test_attributes_are_read_only(ctx, name):
    before = getattr(ctx, name)
    with pytest.raises(AttributeError):
        setattr(ctx, name, 1)
    assert getattr(ctx, name) == before


# --- statistics -------------------------------------------------------------


async def test_statistics_of_a_new_context(ctx):
    stats = ctx.statistics()
    assert stats.idle_workers == 0
    assert stats.running_workers == 0


async def test_statistics_after_one_call(ctx):
    assert await ctx.run_sync(_funcs.add, 1, 2) == 3
    stats = ctx.statistics()
    assert stats.idle_workers == 1
    assert stats.running_workers == 0


async def test_statistics_during_a_call(ctx):
    result = []
    with _helpers.Fifo() as started, _helpers.Fifo() as release:
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:

                async def job():
                    result.append(
                        await ctx.run_sync(_funcs.signal_and_block, started.w, release.r, "v")
                    )

                nursery.start_soon(job)
                await started.wait_started()
                stats = ctx.statistics()
                assert stats.running_workers == 1
                assert stats.idle_workers == 0
                release.send()
    assert result == ["v"]
    stats = ctx.statistics()
    assert stats.running_workers == 0
    assert stats.idle_workers == 1


async def test_default_context_statistics():
    stats = interpool.default_context_statistics()
    assert isinstance(stats.idle_workers, int)
    assert isinstance(stats.running_workers, int)
    assert stats.running_workers == 0


# --- lifetime ---------------------------------------------------------------


async def test_run_sync_after_exit_raises_closed_resource_error(worker_type):
    async with _helpers.checked_context(worker_type=worker_type) as ctx:
        assert await ctx.run_sync(_funcs.add, 1, 2) == 3
    with pytest.raises(trio.ClosedResourceError):
        await ctx.run_sync(_funcs.add, 1, 2)


async def test_run_sync_after_exit_of_unused_context_raises_closed_resource_error(worker_type):
    async with _helpers.checked_context(worker_type=worker_type) as ctx:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await ctx.run_sync(_funcs.add, 1, 2)


async def test_contexts_are_independent(worker_type):
    async with (
        _helpers.checked_context(worker_type=worker_type) as a,
        _helpers.checked_context(worker_type=worker_type) as b,
    ):
        ia = await a.run_sync(_funcs.worker_id)
        ib = await b.run_sync(_funcs.worker_id)
        assert ia != ib
        assert a.statistics().idle_workers == 1
        assert b.statistics().idle_workers == 1


async def test_exit_waits_for_a_running_job(worker_type):
    result = []
    exited = []
    in_exit = trio.Event()
    with _helpers.Fifo() as started, _helpers.Fifo() as release:
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:

                async def job(ctx):
                    result.append(
                        await ctx.run_sync(_funcs.signal_and_block, started.w, release.r, "done")
                    )

                async def use_context():
                    async with _helpers.checked_context(worker_type=worker_type) as ctx:
                        nursery.start_soon(job, ctx)
                        await started.wait_started()
                        in_exit.set()
                    exited.append(True)

                nursery.start_soon(use_context)
                await in_exit.wait()
                # use_context is now in the context's exit, the job still blocked.
                await trio.testing.wait_all_tasks_blocked()
                assert not exited
                assert not result
                release.send()
    assert result == ["done"]
    assert exited == [True]
