"""WorkerType.AUTO: per call, the fastest available type able to run it; a job that cannot load
in a subinterpreter is re-run on a process, once, and its module is remembered.

Subinterpreters share the test's pid and processes do not, so ``os.getpid()`` says where a job
ran. The ranking is tested with injected latency estimates, never with timings.
"""

import asyncio
import os
import warnings

import _funcs
import _helpers
import _lazy_imports
import _uses_numpy
import _uses_singlephase
import pytest
import trio
from test_process import assert_reaped, cancel_when_started, fifos  # noqa: F401

import interpool
from interpool import WorkerType

pytestmark = pytest.mark.needs_subinterpreters

SUB, FORK, SPAWN = WorkerType.SUBINTERPRETER, WorkerType.FORKSERVER, WorkerType.SPAWN
MY_PID = os.getpid()


@pytest.fixture
async def actx():
    async with interpool.open_worker_context(worker_type=WorkerType.AUTO) as context:
        yield context
    _helpers.assert_no_workers(context)


def by_type(ctx):
    return ctx.statistics().by_type


# --- defaults ------------------------------------------------------------------


async def test_auto_is_the_default_and_warm_calls_use_subinterpreters():
    async with interpool.open_worker_context() as ctx:
        assert ctx.worker_type is WorkerType.AUTO
        assert "auto" in repr(ctx)
        for _ in range(5):
            assert await ctx.run_sync(os.getpid) == MY_PID
        stats = ctx.statistics()
        assert set(stats.by_type) == {SUB, FORK, SPAWN}
        assert stats.by_type[SUB].idle_workers == stats.idle_workers == 1
        assert stats.by_type[SUB].fallbacks == 0
    assert await interpool.run_sync(os.getpid) == MY_PID


async def test_statistics_stay_comparable_with_the_two_totals(actx):
    assert actx.statistics() == interpool.WorkerContextStatistics(0, 0)
    await actx.run_sync(abs, -1)
    assert actx.statistics() == interpool.WorkerContextStatistics(1, 0)


async def test_an_explicit_context_has_its_one_type_in_by_type():
    async with interpool.open_worker_context(worker_type=SPAWN) as ctx:
        await ctx.run_sync(abs, -1)
        assert set(by_type(ctx)) == {SPAWN}
        assert by_type(ctx)[SPAWN].idle_workers == 1


# --- load errors: fallback once, then straight to processes ----------------------


@pytest.mark.parametrize(
    ("fn", "refused"),
    [
        (_uses_numpy.total, "numpy._core._multiarray_umath"),
        (_uses_singlephase.pid_and_name, "_testsinglephase"),
    ],
    ids=["numpy", "_testsinglephase"],
)
async def test_a_module_refusing_subinterpreters_falls_back_once(actx, fn, refused):
    args = (10,) if fn is _uses_numpy.total else ()
    pids = set()
    for _ in range(20):
        result = await actx.run_sync(fn, *args)
        pids.add(result[0])
    assert MY_PID not in pids  # every call ran in a process
    stats = by_type(actx)
    assert stats[SUB].fallbacks == 1
    assert stats[SUB].routed_away == {fn.__module__: refused}
    assert stats[FORK].idle_workers == 1  # the fastest process type took them
    # Other modules still run in subinterpreters.
    assert await actx.run_sync(os.getpid) == MY_PID


async def test_numpy_arguments_route_the_callable_away(actx):
    array = _uses_numpy.make_array(5)
    assert await actx.run_sync(_funcs.add, 1, 2) == 3
    value, pid = await actx.run_sync(_funcs.numpy_sum, array)
    assert value == 10 and pid != MY_PID
    value, pid = await actx.run_sync(_funcs.numpy_sum, array)
    assert by_type(actx)[SUB].fallbacks == 1
    assert "_funcs" in by_type(actx)[SUB].routed_away


async def test_explicit_subinterpreter_raises_the_load_error_with_a_hint():
    async with interpool.open_worker_context(worker_type=SUB) as ctx:
        with pytest.raises(ImportError, match="does not support loading in subinterpreters") as e:
            await ctx.run_sync(_uses_singlephase.pid_and_name)
        with pytest.raises(ImportError, match="Original error was") as e:
            await ctx.run_sync(_uses_numpy.total, 3)
    notes = "\n".join(e.value.__notes__)
    assert "WorkerType.AUTO" in notes
    assert "WorkerType.FORKSERVER" in notes and "WorkerType.SPAWN" in notes


async def test_a_user_exception_is_never_retried(actx):
    with pytest.raises(ImportError, match="does not support loading") as excinfo:
        await actx.run_sync(_funcs.raise_refusal_lookalike)
    assert f"({MY_PID})" in str(excinfo.value)  # raised in a subinterpreter, once
    assert by_type(actx)[SUB].fallbacks == 0
    assert by_type(actx)[SUB].routed_away == {}
    with pytest.raises(ImportError):
        await actx.run_sync(_funcs.raise_refusal_lookalike)
    assert by_type(actx)[SUB].fallbacks == 0


@pytest.mark.parametrize(
    ("fn", "args", "refused"),
    [
        (_lazy_imports.numpy_total, (10,), "numpy._core._multiarray_umath"),
        (_lazy_imports.singlephase_name, (), "_testsinglephase"),
    ],
    ids=["import-numpy-in-the-body", "import_module-_testsinglephase"],
)
async def test_a_refusal_while_the_job_runs_falls_back_once(actx, fn, args, refused):
    pids = {(await actx.run_sync(fn, *args))[1] for _ in range(5)}
    assert MY_PID not in pids
    stats = by_type(actx)
    assert stats[SUB].fallbacks == 1
    assert stats[SUB].routed_away == {"_lazy_imports": refused}


async def test_a_refusal_after_a_side_effect_repeats_the_side_effect(actx, tmp_path):
    log = tmp_path / "log"
    value, pid = await actx.run_sync(_lazy_imports.append_then_import_numpy, str(log))
    assert (value, pid != MY_PID) == (7, True)
    assert log.read_text() == "xx"  # once in the subinterpreter, once in the process
    await actx.run_sync(_lazy_imports.append_then_import_numpy, str(log))
    assert log.read_text() == "xxx"  # routed away: once


async def test_a_lazy_refusal_on_explicit_subinterpreters_raises_with_the_hint():
    async with _helpers.checked_context(worker_type=SUB) as ctx:
        with pytest.raises(ImportError, match="Original error was") as excinfo:
            await ctx.run_sync(_lazy_imports.numpy_total, 3)
    assert "WorkerType.AUTO" in "\n".join(excinfo.value.__notes__)


async def test_a_load_error_failing_on_the_process_too_raises_the_process_error(actx):
    with pytest.raises(ValueError, match=r"unpickling in the worker failed \(pid") as excinfo:
        await actx.run_sync(_funcs.identity, _funcs.LoadFailsInWorkerNamingPid())
    assert f"(pid {MY_PID})" not in str(excinfo.value)  # the process's error
    stats = by_type(actx)
    assert stats[SUB].fallbacks == 1
    assert stats[SUB].routed_away == {}  # it fails anywhere: nothing learnt


async def test_an_init_refusing_subinterpreters_sends_the_context_to_processes():
    async with interpool.open_worker_context(init=_funcs.import_numpy) as ctx:
        assert await ctx.run_sync(os.getpid) != MY_PID
        assert await ctx.run_sync(_funcs.add, 1, 1) == 2
        stats = by_type(ctx)
        assert stats[SUB].fallbacks == 1
        assert stats[SUB].routed_away == {"<init>": "numpy._core._multiarray_umath"}
        assert stats[SUB].idle_workers == 0


async def test_an_init_that_just_fails_is_not_retried():
    async with interpool.open_worker_context(init=_funcs.failing_init) as ctx:
        with pytest.raises(interpool.BrokenWorkerError):
            await ctx.run_sync(os.getpid)
        assert by_type(ctx)[SUB].fallbacks == 0


async def test_a_main_script_importing_numpy_falls_back(tmp_path):
    result = _helpers.run_script(
        tmp_path,
        """
        import os
        import numpy
        import trio
        import interpool

        def job(n):
            return int(numpy.arange(n).sum()), os.getpid()

        async def main():  # the default context: AUTO by default
            for _ in range(5):
                value, pid = await interpool.run_sync(job, 5)
                assert value == 10 and pid != os.getpid()
            assert await interpool.run_sync(os.getpid) == os.getpid()
            stats = interpool.default_context_statistics()
            stats = stats.by_type[interpool.WorkerType.SUBINTERPRETER]
            print(stats.fallbacks, sorted(stats.routed_away))

        if __name__ == "__main__":
            trio.run(main)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "['__main__']"]


def test_a_main_script_failing_to_load_only_in_subinterpreters_runs_on_a_process(tmp_path):
    """A load error that is not a refusal, raised only in subinterpreters. The real case is
    tricycle on 3.13 (AttributeError: 3.13's subinterpreters lack _contextvars.Token.MISSING;
    3.14+ load it), so the script raises that error itself, the same on every version."""
    result = _helpers.run_script(
        tmp_path,
        """
        import os
        import _interpreters
        if _interpreters.get_current()[0] != _interpreters.get_main()[0]:
            raise AttributeError("type object '_contextvars.Token' has no attribute 'MISSING'")
        import trio
        import interpool

        def job():
            return os.getpid()

        async def main():
            for _ in range(3):
                assert await interpool.run_sync(job) != os.getpid()
            assert await interpool.run_sync(os.getpid) == os.getpid()
            stats = interpool.default_context_statistics()
            stats = stats.by_type[interpool.WorkerType.SUBINTERPRETER]
            print(stats.fallbacks, stats.routed_away)

        if __name__ == "__main__":
            trio.run(main)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(maxsplit=1) == ["1", "{'__main__': '<AttributeError>'}\n"]


async def test_asyncio_falls_back_too():
    async def main():
        async with interpool.open_worker_context() as ctx:
            value, pid = await ctx.run_sync(_uses_numpy.total, 4)
            assert (value, pid != MY_PID) == (6, True)
            assert await ctx.run_sync(os.getpid) == MY_PID
            return by_type(ctx)[SUB].fallbacks

    assert await trio.to_thread.run_sync(asyncio.run, main()) == 1


async def test_amap_falls_back_per_chunk(actx):
    maps = interpool.amap(_uses_numpy.total, range(12), chunksize=2, context=actx)
    async with maps as results:
        got = [r async for r in results]
    assert [v for v, _ in got] == [sum(range(n)) for n in range(12)]
    assert MY_PID not in {pid for _, pid in got}
    assert by_type(actx)[SUB].fallbacks >= 1
    assert list(by_type(actx)[SUB].routed_away) == ["_uses_numpy"]


# --- kill_on_cancel needs a process ------------------------------------------------


async def test_kill_on_cancel_runs_in_a_process_and_is_killed(actx, fifos):  # noqa: F811
    started = fifos()
    pids = []
    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as cs:
                nursery.start_soon(cancel_when_started, cs, started, pids)
                await actx.run_sync(_funcs.spin_after_signal, started.path, kill_on_cancel=True)
                pytest.fail("the call returned")
    assert cs.cancelled_caught
    assert pids[0] != MY_PID
    assert_reaped(pids[0])
    assert await actx.run_sync(os.getpid, cancellable=True) != MY_PID
    assert await actx.run_sync(os.getpid) == MY_PID


# --- pins ----------------------------------------------------------------------


async def test_pins_send_a_callable_or_a_module_to_a_type(actx):
    actx.pin(_funcs.pid, FORK)
    assert await actx.run_sync(_funcs.pid) != MY_PID
    assert await actx.run_sync(os.getpid) == MY_PID
    assert by_type(actx)[FORK].pinned == ("_funcs:pid",)
    actx.pin(_funcs.pid, None)
    assert await actx.run_sync(_funcs.pid) == MY_PID
    actx.pin("posix", "spawn")  # os.getpid lives in posix
    assert await actx.run_sync(os.getpid) != MY_PID
    assert by_type(actx)[SPAWN].idle_workers == 1


async def test_a_pin_to_subinterpreters_is_explicit_no_fallback(actx):
    actx.pin("_uses_singlephase", SUB)
    with pytest.raises(ImportError, match="does not support") as excinfo:
        await actx.run_sync(_uses_singlephase.pid_and_name)
    assert "WorkerType.AUTO" in "\n".join(excinfo.value.__notes__)
    assert by_type(actx)[SUB].fallbacks == 0


async def test_pin_checks_its_arguments(actx):
    with pytest.raises(TypeError):
        actx.pin(42, FORK)
    with pytest.raises(ValueError):
        actx.pin(_funcs.pid, "fork")
    async with interpool.open_worker_context(worker_type=SPAWN) as ctx:
        with pytest.raises(RuntimeError, match="AUTO"):
            ctx.pin(_funcs.pid, FORK)


# The ranking with injected latencies, the rerank after parked calls and the refusal classifier
# are unit tests of src/auto.rs, where that logic lives.


# --- default context configuration ------------------------------------------------


async def test_cache_scope_overrides_run_sync_in_its_task_tree():
    seen = []

    async def child():
        seen.append(interpool.default_context_statistics().by_type.keys())
        seen.append(await interpool.run_sync(os.getpid))

    async with interpool.cache_scope(worker_type=SPAWN):
        assert await interpool.run_sync(os.getpid) != MY_PID
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        assert list(interpool.default_context_statistics().by_type) == [SPAWN]
    assert list(seen[0]) == [SPAWN] and seen[1] != MY_PID
    assert await interpool.run_sync(os.getpid) == MY_PID


async def test_cache_scope_does_not_follow_a_task_out_of_its_tree():
    results = []

    async def late(event):
        await event.wait()
        results.append(await interpool.run_sync(os.getpid))

    event = trio.Event()
    async with trio.open_nursery() as outer:
        async with interpool.cache_scope(worker_type=SPAWN):
            outer.start_soon(late, event)  # spawned from inside, into a nursery outside
        event.set()  # the scope has closed: the task uses the global default
    assert results == [MY_PID]


async def test_cache_scope_reaches_a_task_started_into_its_nursery_from_outside():
    """trio-parallel's rule (a TreeVar): a task uses the scope of the nursery it runs in, even
    when a task outside the scope started it there."""
    pids = []
    send, receive = trio.open_memory_channel(1)
    spawned = trio.Event()

    async def child():
        pids.append(await interpool.run_sync(os.getpid))

    async def spawner_outside_the_scope():
        nursery = await receive.receive()
        nursery.start_soon(child)
        spawned.set()

    async with trio.open_nursery() as outside:
        outside.start_soon(spawner_outside_the_scope)
        async with interpool.cache_scope(worker_type=SPAWN):
            async with trio.open_nursery() as inside:
                await send.send(inside)
                await spawned.wait()
    assert len(pids) == 1 and pids[0] != MY_PID  # the scope's spawned process


async def test_cache_scope_does_not_reach_a_task_started_into_an_outer_nursery():
    """``await outer.start(fn)`` from inside the scope: the task belongs to ``outer``, opened
    outside the scope, and uses the default context before and after ``started()``."""
    pids = []

    async def starter(task_status=trio.TASK_STATUS_IGNORED):
        pids.append(await interpool.run_sync(os.getpid))
        task_status.started()
        pids.append(await interpool.run_sync(os.getpid))

    async with trio.open_nursery() as outer:
        async with interpool.cache_scope(worker_type=SPAWN):
            await outer.start(starter)
            assert await interpool.run_sync(os.getpid) != MY_PID  # the block itself: the scope
    assert pids == [MY_PID, MY_PID]


async def test_cache_scope_under_asyncio_follows_contextvars():
    async def main():
        async def child():
            return await interpool.run_sync(os.getpid)

        async with interpool.cache_scope(worker_type=SPAWN):
            created_inside = asyncio.create_task(child())
            inside = await interpool.run_sync(os.getpid)
            assert MY_PID not in {inside, await created_inside}  # both on the scope's processes
        return await interpool.run_sync(os.getpid)

    assert await trio.to_thread.run_sync(asyncio.run, main()) == MY_PID


async def test_workers_never_import_tricycle():
    async with interpool.cache_scope(worker_type=SUB):
        assert not await interpool.run_sync(_funcs.module_imported, "tricycle")
    assert _funcs.module_imported("tricycle")  # the front end's TreeVar


async def test_cache_scope_defaults_to_auto_and_validates():
    async with interpool.cache_scope():
        assert await interpool.run_sync(os.getpid) == MY_PID
        assert set(interpool.default_context_statistics().by_type) == {SUB, FORK, SPAWN}
    with pytest.raises(ValueError):
        async with interpool.cache_scope(idle_timeout=-1):
            pass


def test_configure_default_context_and_the_old_grace_period(tmp_path):
    result = _helpers.run_script(
        tmp_path,
        """
        import os, threading, warnings
        import trio
        import interpool

        interpool.configure_default_context(worker_type="spawn", grace_period=5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            interpool.atexit_shutdown_grace_period(3)
        assert caught[0].category is DeprecationWarning

        errors = []
        def off_main():
            try:
                interpool.configure_default_context()
            except RuntimeError as e:
                errors.append(str(e))
        t = threading.Thread(target=off_main); t.start(); t.join()
        assert "main thread" in errors[0]

        async def main():
            assert await interpool.run_sync(os.getpid) != os.getpid()
            print(list(interpool.default_context_statistics().by_type))

        trio.run(main)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "SPAWN" in result.stdout
    assert result.stderr == ""


def test_configure_default_context_validates():
    with pytest.raises(ValueError):
        interpool.configure_default_context(grace_period=-1)
    with pytest.raises(TypeError):
        interpool.configure_default_context(init=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError):
            interpool.atexit_shutdown_grace_period(-1)


async def test_amap_interrupts_by_default_but_needs_a_process_only_when_asked(actx):
    async with interpool.astarmap(_funcs.pid, [(), ()], context=actx) as results:
        assert [p async for p in results] == [MY_PID, MY_PID]
    async with interpool.astarmap(_funcs.pid, [()], kill_on_cancel=True, context=actx) as results:
        assert [p async for p in results] != [MY_PID]
