"""Cancellation: entry checkpoint, uncancellable jobs, kill_on_cancel / cancellable."""

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


# --- entry is a checkpoint --------------------------------------------------


@pytest.mark.parametrize("kwargs", _helpers.ALL_KWARGS, ids=_helpers.kwargs_id)
async def test_cancelled_before_entry_never_runs_the_job(ctx, tmp_path, kwargs):
    path = tmp_path / "should-not-exist"
    reached = False
    with trio.CancelScope() as cs:
        cs.cancel()
        await ctx.run_sync(_funcs.write_file, str(path), "ran", **kwargs)
        reached = True
    assert cs.cancelled_caught
    assert not reached
    assert not path.exists()
    assert ctx.statistics().running_workers == 0
    # The context is unaffected.
    assert await ctx.run_sync(_funcs.add, 1, 2) == 3


async def test_module_level_run_sync_in_cancelled_scope_never_runs_the_job(tmp_path):
    path = tmp_path / "should-not-exist"
    with trio.CancelScope() as cs:
        cs.cancel()
        await interpool.run_sync(_funcs.write_file, str(path), "ran")
    assert cs.cancelled_caught
    assert not path.exists()


@pytest.mark.parametrize("kwargs", _helpers.ALL_KWARGS, ids=_helpers.kwargs_id)
async def test_call_is_a_checkpoint(ctx, kwargs):
    # Once with no worker started, once with a warm worker.
    for _ in range(2):
        with trio.testing.assert_checkpoints():
            assert await ctx.run_sync(_funcs.add, 1, 2, **kwargs) == 3


async def test_module_level_call_is_a_checkpoint():
    with trio.testing.assert_checkpoints():
        assert await interpool.run_sync(_funcs.add, 1, 2) == 3


# --- without kill_on_cancel: the job finishes --------------------------------


async def test_cancel_without_kill_returns_the_value_then_cancels(ctx):
    await _helpers.cancel_without_kill_returns_the_value(ctx, _funcs.signal_and_block)
    # The worker was not harmed: it is reused.
    stats = ctx.statistics()
    assert stats.running_workers == 0
    assert stats.idle_workers == 1


async def test_uncancelled_kill_on_cancel_call_returns_value(ctx):
    with _helpers.Fifo() as started, _helpers.Fifo() as release:
        release.send()
        with trio.fail_after(_helpers.HANG_GUARD):
            value = await ctx.run_sync(
                _funcs.signal_and_block, started.w, release.r, "v", kill_on_cancel=True
            )
    assert value == "v"


# --- with kill_on_cancel: the job is interrupted ------------------------------


@pytest.mark.parametrize("kwargs", _helpers.KILL_KWARGS, ids=_helpers.kwargs_id)
async def test_kill_on_cancel_interrupts_python_code_and_keeps_a_subinterpreter(ctx, kwargs):
    warm = await ctx.run_sync(_funcs.worker_id, **kwargs)  # AUTO: on the type it kills on
    reached = False
    killed = []
    with _helpers.Fifo() as started:
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:

                async def canceller(cs):
                    killed.append(await _helpers.cancel_when_started(cs, started))

                with trio.CancelScope() as cs:
                    nursery.start_soon(canceller, cs)
                    await ctx.run_sync(_funcs.signal_and_spin, started.w, **kwargs)
                    reached = True
    assert cs.cancelled_caught
    assert not reached
    assert killed == [warm]  # the only idle worker took the job
    assert ctx.statistics().running_workers == 0
    # The next call works: on the same subinterpreter (KeyboardInterrupt left it healthy, and
    # ending it would leak its arenas on 3.13), on a fresh process (the old one was killed).
    with trio.fail_after(_helpers.HANG_GUARD):
        after = await ctx.run_sync(_funcs.worker_id, **kwargs)
    assert (after == warm) == (ctx.worker_type is interpool.WorkerType.SUBINTERPRETER)


async def test_kill_on_cancel_with_the_default_context():
    reached = False
    with _helpers.Fifo() as started:
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as cs:
                    nursery.start_soon(_helpers.cancel_when_started, cs, started)
                    await interpool.run_sync(_funcs.signal_and_spin, started.w, kill_on_cancel=True)
                    reached = True
            assert await interpool.run_sync(_funcs.add, 1, 2) == 3
    assert cs.cancelled_caught
    assert not reached
    assert interpool.default_context_statistics().running_workers == 0


async def _cancel_when_started(ctx, started, job, *args):
    """Run ``job`` with kill_on_cancel, cancel it once it signals ``started``;
    return the id of the interpreter that ran it."""
    reached = False
    interps = []

    async def canceller(cs):
        interps.append(await _helpers.cancel_when_started(cs, started))

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(canceller, cs)
            await ctx.run_sync(job, *args, kill_on_cancel=True)
            reached = True
    assert cs.cancelled_caught
    assert not reached
    return interps[0]


async def test_kill_on_cancel_of_job_blocked_in_c_code(ctx):
    # os.read blocks in C code, where the injected KeyboardInterrupt cannot stop
    # it; the interrupt may also land just before os.read. Either way the call
    # raises Cancelled promptly (the hang guard covers the 1 s abandon delay;
    # no timing is asserted) and the worker is gone from the statistics, or (a
    # subinterpreter the interrupt reached before os.read) kept and reused.
    with _helpers.Fifo() as started, _helpers.Fifo() as release:
        with trio.fail_after(_helpers.HANG_GUARD):
            stuck = await _cancel_when_started(
                ctx, started, _funcs.signal_and_block, started.w, release.r, "v"
            )
            stats = ctx.statistics()
            assert stats.running_workers == 0
            kept = stats.idle_workers == 1
            # The stuck worker does not block the context: a new one serves.
            assert (await ctx.run_sync(_funcs.worker_id) == stuck) == kept
        # Let a still-blocked os.read return, so that worker can end itself.
        release.send()
    # The ctx fixture then checks that the context closes cleanly.


@pytest.mark.only_on(
    interpool.WorkerType.SUBINTERPRETER,
    reason="abandoning is for a subinterpreter: a process that does not stop is killed",
)
async def test_kill_on_cancel_abandons_a_subinterpreter_that_does_not_stop(ctx):
    with (
        _helpers.Fifo() as started,
        _helpers.Fifo() as release,
        _helpers.Fifo() as finished,
    ):
        with trio.fail_after(_helpers.HANG_GUARD):
            stuck = await _cancel_when_started(
                ctx,
                started,
                _funcs.signal_and_ignore_interrupts,
                started.w,
                release.r,
                finished.w,
            )
            # Abandoned: not counted, never reused.
            _helpers.assert_no_workers(ctx)
            assert await ctx.run_sync(_funcs.worker_id) != stuck
            assert ctx.statistics().idle_workers == 1
            # EOF lets the abandoned job finish; its worker then ends by itself.
            release.close_write()
            assert await finished.receive(1) == b"f"
            # (release.r is closed on leaving the with block, once the job no
            # longer reads it.)
            assert await ctx.run_sync(_funcs.worker_id) != stuck
    # The ctx fixture then checks that the context closes cleanly.


# --- signals -----------------------------------------------------------------


@pytest.mark.in_process
def test_sigint_during_a_subinterpreter_job_raises_keyboard_interrupt_in_the_parent(tmp_path):
    """Signals are process-wide and only the main interpreter handles them: the caller gets
    KeyboardInterrupt at once, and the job keeps running (without kill_on_cancel) or is
    interrupted like a cancelled one (with it). docs/semantics.md says so."""
    result = _helpers.run_script(
        tmp_path,
        """
        import os, signal
        import trio, interpool

        def job(release_r):
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C while the job runs
            return os.read(release_r, 1)

        async def main(kwargs):
            release_r, release_w = os.pipe()
            async with interpool.open_worker_context(worker_type="subinterpreter") as ctx:
                try:
                    await ctx.run_sync(job, release_r, **kwargs)
                except KeyboardInterrupt:
                    print("KeyboardInterrupt, running:", ctx.statistics().running_workers)
                os.write(release_w, b"r")
                await ctx.run_sync(os.getpid)
            os.close(release_r)
            os.close(release_w)

        if __name__ == "__main__":
            trio.run(main, {})
            trio.run(main, {"kill_on_cancel": True})
            print("clean exit")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "KeyboardInterrupt, running: 1",  # the job still runs, until released
        "KeyboardInterrupt, running: 0",  # cancelled with kill_on_cancel (here: abandoned)
        "clean exit",
    ]
