"""run_sync: values, exceptions, BaseExceptions, pickling failures, stdout, sys.path."""

import importlib
import os
import sys
import threading

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


# --- values -----------------------------------------------------------------


async def test_value_comes_back(ctx):
    assert await ctx.run_sync(_funcs.add, 1, 2) == 3


async def test_builtin_function_runs(ctx):
    assert await ctx.run_sync(abs, -5) == 5


async def test_large_argument_and_result_round_trip(ctx):
    payload = os.urandom(1 << 20)
    assert await ctx.run_sync(_funcs.identity, payload) == payload


async def test_structured_value_round_trips(ctx):
    value = {"a": [1, 2.5, None], ("t", 1): {b"bytes", frozenset({3})}}
    assert await ctx.run_sync(_funcs.identity, value) == value


@pytest.mark.in_process
async def test_job_runs_in_a_subinterpreter_of_this_process(ctx):
    pid, interp = await ctx.run_sync(_funcs.pid_and_interpreter)
    assert pid == os.getpid()
    assert interp != _funcs.interpreter_id()
    assert interp != 0


async def test_module_level_run_sync_uses_the_default_context():
    assert await interpool.run_sync(_funcs.add, 20, 22) == 42
    stats = interpool.default_context_statistics()
    assert stats.running_workers == 0
    assert stats.idle_workers >= 1


async def test_module_level_run_sync_accepts_keywords():
    assert await interpool.run_sync(_funcs.add, 1, 1, kill_on_cancel=True) == 2
    assert await interpool.run_sync(_funcs.add, 1, 2, cancellable=True) == 3
    limiter = trio.CapacityLimiter(1)
    assert await interpool.run_sync(_funcs.add, 2, 2, limiter=limiter) == 4


async def test_many_concurrent_calls_all_return_their_values(ctx):
    results = {}

    async def one(i):
        results[i] = await ctx.run_sync(_funcs.add, i, 1000)

    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
    assert results == {i: i + 1000 for i in range(50)}


async def test_many_sequential_calls_reuse_one_worker(ctx):
    interps = {await ctx.run_sync(_funcs.worker_id) for _ in range(20)}
    assert len(interps) == 1
    stats = ctx.statistics()
    assert stats.idle_workers == 1
    assert stats.running_workers == 0


# --- exceptions -------------------------------------------------------------


def _notes(exc):
    return "\n".join(getattr(exc, "__notes__", []))


async def test_exception_comes_back_with_type_and_message(ctx):
    with pytest.raises(ValueError) as excinfo:
        await ctx.run_sync(_funcs.raise_value_error, "boom")
    assert type(excinfo.value) is ValueError
    assert str(excinfo.value) == "boom"
    assert excinfo.value.args == ("boom",)


async def test_custom_exception_type_and_args_come_back(ctx):
    with pytest.raises(_funcs.CustomError) as excinfo:
        await ctx.run_sync(_funcs.raise_custom_error, "payload")
    assert type(excinfo.value) is _funcs.CustomError
    assert excinfo.value.args == ("payload", 42)


async def test_worker_traceback_is_attached_as_a_note(ctx):
    with pytest.raises(ValueError) as excinfo:
        await ctx.run_sync(_funcs.raise_value_error, "boom")
    notes = _notes(excinfo.value)
    assert "raise_value_error" in notes
    assert "raise ValueError(msg)" in notes  # the source line


async def test_explicit_cause_comes_back(ctx):
    with pytest.raises(KeyError) as excinfo:
        await ctx.run_sync(_funcs.raise_with_cause)
    exc = excinfo.value
    assert exc.args == ("the effect",)
    assert type(exc.__cause__) is ValueError
    assert exc.__cause__.args == ("the cause",)
    assert exc.__suppress_context__ is True
    # Each exception of the chain carries its own worker-side traceback.
    assert "raise_with_cause" in _notes(exc)
    assert "raise_with_cause" in _notes(exc.__cause__)


async def test_cause_that_was_never_raised_comes_back(ctx):
    with pytest.raises(KeyError) as excinfo:
        await ctx.run_sync(_funcs.raise_from_unraised_cause)
    assert type(excinfo.value.__cause__) is ValueError
    assert excinfo.value.__cause__.args == ("never raised",)


async def test_implicit_context_comes_back(ctx):
    with pytest.raises(KeyError) as excinfo:
        await ctx.run_sync(_funcs.raise_with_context)
    exc = excinfo.value
    assert exc.args == ("during handling",)
    assert exc.__cause__ is None
    assert exc.__suppress_context__ is False
    assert type(exc.__context__) is ValueError
    assert exc.__context__.args == ("the context",)


async def test_raise_from_none_suppresses_context(ctx):
    with pytest.raises(KeyError) as excinfo:
        await ctx.run_sync(_funcs.raise_from_none)
    exc = excinfo.value
    assert exc.args == ("suppressed",)
    assert exc.__cause__ is None
    assert exc.__suppress_context__ is True


async def test_a_new_worker_imports_neither_pickle_py_nor_traceback_until_needed():
    # Starting a worker is mostly its interpreter's own start-up: the loop uses the C pickler
    # alone and imports traceback for the first error it formats. Every worker after the first
    # runs the loop's code unmarshalled, not compiled: the second worker checks that path.
    # Once the parent uses multiprocessing (test_dask.py's distributed does), a worker takes its
    # authkey only when something imports multiprocessing there (test_imports.py).
    expected = []
    async with _helpers.checked_context(retire=_funcs.always_true) as ctx:
        for _ in range(2):
            loaded = await ctx.run_sync(_funcs.modules_loaded, ["pickle", "traceback"])
            assert loaded == expected
        with pytest.raises(ValueError) as info:
            await ctx.run_sync(_funcs.raise_value_error, "boom")
        assert any("raise_value_error" in note for note in info.value.__notes__)


async def test_worker_survives_an_exception(ctx):
    before = await ctx.run_sync(_funcs.worker_id)
    with pytest.raises(ValueError):
        await ctx.run_sync(_funcs.raise_value_error, "boom")
    assert await ctx.run_sync(_funcs.worker_id) == before


async def test_unpicklable_exception_raises_the_pickling_error(ctx):
    before = await ctx.run_sync(_funcs.worker_id)
    with pytest.raises(TypeError, match=r"cannot pickle '_thread\.lock' object"):
        await ctx.run_sync(_funcs.raise_unpicklable_exception)
    assert await ctx.run_sync(_funcs.worker_id) == before


async def test_system_exit_propagates(ctx):
    with pytest.raises(SystemExit) as excinfo:
        await ctx.run_sync(_funcs.raise_system_exit, 3)
    assert excinfo.value.code == 3
    # The context is still usable afterwards.
    assert await ctx.run_sync(_funcs.add, 1, 2) == 3


async def test_custom_base_exception_propagates(ctx):
    with pytest.raises(_funcs.CustomBaseError) as excinfo:
        await ctx.run_sync(_funcs.raise_custom_base_error, "payload")
    assert type(excinfo.value) is _funcs.CustomBaseError
    assert excinfo.value.args == ("payload",)
    assert await ctx.run_sync(_funcs.add, 1, 2) == 3


async def test_keyboard_interrupt_raised_by_the_job_propagates(ctx):
    with pytest.raises(KeyboardInterrupt):
        await ctx.run_sync(_funcs.raise_keyboard_interrupt)
    assert await ctx.run_sync(_funcs.add, 1, 2) == 3


# --- bad callables ----------------------------------------------------------


async def test_async_function_raises_type_error(ctx):
    with pytest.raises(TypeError):
        await ctx.run_sync(_funcs.async_job)
    assert await ctx.run_sync(_funcs.add, 1, 2) == 3


async def test_function_returning_a_coroutine_raises_type_error(ctx):
    with pytest.raises(TypeError):
        await ctx.run_sync(_funcs.returns_coroutine)
    assert await ctx.run_sync(_funcs.add, 1, 2) == 3


async def test_module_level_run_sync_rejects_async_function():
    with pytest.raises(TypeError):
        await interpool.run_sync(_funcs.async_job)


# --- pickling failures ------------------------------------------------------


async def test_unpicklable_argument_raises_in_caller_and_job_never_runs(ctx, tmp_path):
    before = await ctx.run_sync(_funcs.worker_id)
    path = tmp_path / "should-not-exist"
    with pytest.raises(TypeError):
        await ctx.run_sync(_funcs.write_file, str(path), threading.Lock())
    assert not path.exists()
    # The worker stays usable.
    assert await ctx.run_sync(_funcs.worker_id) == before
    stats = ctx.statistics()
    assert stats.running_workers == 0


async def test_unpicklable_argument_before_any_worker_started(ctx):
    with pytest.raises(TypeError):
        await ctx.run_sync(_funcs.identity, threading.Lock())
    assert await ctx.run_sync(_funcs.add, 1, 2) == 3


async def test_unpicklable_result_raises_in_caller_and_worker_survives(ctx):
    before = await ctx.run_sync(_funcs.worker_id)
    with pytest.raises(TypeError, match=r"cannot pickle '_thread\.lock' object"):
        await ctx.run_sync(_funcs.make_lock)
    assert await ctx.run_sync(_funcs.worker_id) == before


def test_without_cloudpickle_unpicklable_outcomes_raise_the_pickling_error(tmp_path, worker_type):
    """Where cloudpickle is missing (``pip install interpool`` does not pull it in), the worker's
    fallback to it must not replace pickle's error with ``ModuleNotFoundError``."""
    (tmp_path / "cloudpickle.py").write_text("raise ImportError('no cloudpickle here')\n")
    (tmp_path / "jobs.py").write_text(
        "import threading\n"
        "def make_lock():\n    return threading.Lock()\n"
        "def raise_lock():\n    raise ValueError(threading.Lock())\n"
    )
    result = _helpers.run_script(
        tmp_path,
        """
        import sys
        import trio
        import interpool
        import jobs

        async def main():
            async with interpool.open_worker_context(worker_type=sys.argv[1]) as ctx:
                for job in (jobs.make_lock, jobs.raise_lock):
                    try:
                        await ctx.run_sync(job)
                    except TypeError as error:
                        print(job.__name__, error)

        if __name__ == "__main__":
            trio.run(main)
        """,
        worker_type.value,
    )
    assert result.returncode == 0, result.stderr
    message = "cannot pickle '_thread.lock' object"
    assert result.stdout.splitlines() == [f"make_lock {message}", f"raise_lock {message}"]


# --- multiprocessing --------------------------------------------------------


@pytest.fixture(scope="module")
def manager():
    import multiprocessing

    # spawn: forking this multi-threaded process would warn (and can deadlock).
    with multiprocessing.get_context("spawn").Manager() as manager:
        yield manager


async def test_multiprocessing_manager_proxies_work_in_jobs(ctx, manager):
    """Workers inherit the parent's multiprocessing authkey, as multiprocessing's children do."""
    event, queue, shared = manager.Event(), manager.Queue(), manager.dict()
    await ctx.run_sync(_funcs.use_manager_proxies, event, queue, shared)
    assert event.is_set()
    assert queue.get_nowait() == "from the worker"
    assert shared["key"] == "value"


# --- stdout and sys.path ----------------------------------------------------


@pytest.mark.only_on(
    interpool.WorkerType.SUBINTERPRETER,
    interpool.WorkerType.SPAWN,
    interpool.WorkerType.AUTO,
    reason="a forkserver child writes to the stdout its server started with, which pytest's "
    "capfd swapped since (tests/test_process.py checks it in a fresh script)",
)
async def test_print_in_worker_reaches_parent_stdout(ctx, capfd):
    capfd.readouterr()
    assert await ctx.run_sync(_funcs.print_hello) == "printed"
    out, _ = capfd.readouterr()
    assert "hello from worker\n" in out


async def test_workers_see_parent_sys_path(tmp_path, monkeypatch, worker_type):
    name = "mymod_xyz_interpool_test"
    (tmp_path / f"{name}.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module(name)
        # A new context: workers snapshot sys.path when they start.
        async with _helpers.checked_context(worker_type=worker_type) as ctx:
            assert await ctx.run_sync(module.triple, 5) == 15
            assert str(tmp_path) in await ctx.run_sync(_funcs.get_sys_path)
    finally:
        sys.modules.pop(name, None)
