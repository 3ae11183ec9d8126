"""init and retire hooks."""

import _funcs
import _helpers
import pytest
import trio

import interpool

pytestmark = [
    pytest.mark.needs_subinterpreters,
    pytest.mark.contract,
    pytest.mark.usefixtures("worker_type"),
]


# --- init -------------------------------------------------------------------


async def test_init_runs_once_per_worker_before_its_first_job(worker_type):
    async with _helpers.checked_context(worker_type=worker_type, init=_funcs.counting_init) as ctx:
        first = await ctx.run_sync(_funcs.worker_id)
        # init ran before the first job, and only once in this worker.
        assert await ctx.run_sync(_funcs.get_init_count) == 1
        assert await ctx.run_sync(_funcs.get_init_count) == 1
        assert await ctx.run_sync(_funcs.worker_id) == first
    # Module globals are per interpreter: the parent's copy is untouched.
    assert _funcs.init_count == 0


async def test_init_runs_in_every_new_worker(worker_type):
    async with _helpers.checked_context(
        worker_type=worker_type, init=_funcs.counting_init, retire=_funcs.always_true
    ) as ctx:
        assert await ctx.run_sync(_funcs.get_init_count) == 1
        assert await ctx.run_sync(_funcs.get_init_count) == 1


async def test_default_init_leaves_worker_state_alone(ctx):
    assert await ctx.run_sync(_funcs.get_init_count) == 0


async def test_failing_init_raises_broken_worker_error_without_hanging(worker_type):
    outcomes = []
    with trio.fail_after(_helpers.HANG_GUARD):
        try:
            async with interpool.open_worker_context(
                init=_funcs.failing_init, worker_type=worker_type
            ) as ctx:
                for _ in range(2):
                    try:
                        outcomes.append(await ctx.run_sync(_funcs.add, 1, 2))
                    except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                        outcomes.append(exc)
                    assert ctx.statistics().running_workers == 0
        except interpool.BrokenWorkerError as exc:
            # The contract leaves open whether the exit also reports the broken
            # workers; it must not hang or raise anything else.
            assert exc.__context__ is None
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, interpool.BrokenWorkerError), outcome
        assert type(outcome.__cause__) is ValueError
        assert outcome.__cause__.args == ("init failed",)
    assert ctx.statistics().running_workers == 0


def test_broken_worker_error_is_a_runtime_error():
    assert issubclass(interpool.BrokenWorkerError, RuntimeError)


# --- retire -----------------------------------------------------------------


async def test_default_retire_keeps_the_worker(ctx):
    first = await ctx.run_sync(_funcs.worker_id)
    assert await ctx.run_sync(_funcs.worker_id) == first


async def test_truthy_retire_gives_each_call_a_fresh_interpreter(worker_type):
    async with _helpers.checked_context(worker_type=worker_type, retire=_funcs.always_true) as ctx:
        first = await ctx.run_sync(_funcs.worker_id)
        second = await ctx.run_sync(_funcs.worker_id)
        assert first != second
        assert await ctx.run_sync(_funcs.add, 1, 2) == 3


async def test_failing_retire_delivers_the_result_and_exit_reports_it(worker_type):
    with trio.fail_after(_helpers.HANG_GUARD):
        with pytest.raises(interpool.BrokenWorkerError) as excinfo:
            async with interpool.open_worker_context(
                retire=_funcs.failing_retire, worker_type=worker_type
            ) as ctx:
                result = await ctx.run_sync(_funcs.add, 1, 2)
    # Asserted outside the block so that the exit's error cannot mask a failure.
    assert result == 3
    assert _mentions(excinfo.value, "retire failed")
    _helpers.assert_no_workers(ctx)


async def test_failing_retire_discards_the_worker(worker_type):
    with trio.fail_after(_helpers.HANG_GUARD):
        with pytest.raises(interpool.BrokenWorkerError):
            async with interpool.open_worker_context(
                retire=_funcs.failing_retire, worker_type=worker_type
            ) as ctx:
                first = await ctx.run_sync(_funcs.worker_id)
                second = await ctx.run_sync(_funcs.worker_id)
    assert first != second
    _helpers.assert_no_workers(ctx)


def _mentions(exc, text):
    """Whether ``text`` appears in exc's message, notes, or its cause/context chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if text in str(exc) or text in "\n".join(getattr(exc, "__notes__", [])):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
