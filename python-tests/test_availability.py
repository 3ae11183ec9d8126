"""Worker type availability. Runs, without skips, on every supported CPython:
SUBINTERPRETER is available from 3.13 and reported unavailable (with a reason)
before that; AUTO, the default, works everywhere (before 3.13 on processes)."""

import pickle
import platform
import sys
import traceback

import _helpers
import pytest

import interpool

HAS_SUBINTERPRETERS = sys.version_info >= (3, 13)


def _info(worker_type):
    infos = [i for i in interpool.available_worker_types() if i.worker_type is worker_type]
    assert len(infos) == 1, infos
    return infos[0]


@pytest.mark.parametrize("name", interpool.__all__)
def test_public_objects_name_the_public_module(name):
    public = getattr(interpool, name)
    assert public.__module__ == "interpool"
    assert getattr(interpool, public.__qualname__) is public


def test_pickles_and_tracebacks_name_the_public_module():
    error = interpool.BrokenWorkerError("lost")
    blob = pickle.dumps(error)
    assert b"interpool._types" not in blob
    assert type(pickle.loads(blob)) is interpool.BrokenWorkerError
    assert pickle.loads(pickle.dumps(interpool.WorkerType.SPAWN)) is interpool.WorkerType.SPAWN
    assert b"_types" not in pickle.dumps(interpool.WorkerType.SPAWN)
    line = traceback.format_exception_only(error)[-1]
    assert line == "interpool.BrokenWorkerError: lost\n"


def test_public_names():
    for name in [
        "run_sync",
        "open_worker_context",
        "WorkerContext",
        "WorkerType",
        "current_default_worker_limiter",
        "default_context_statistics",
        "available_worker_types",
        "BrokenWorkerError",
        "WorkerTypeUnavailableError",
        "WorkerTypeStatistics",
        "configure_default_context",
        "cache_scope",
        "atexit_shutdown_grace_period",
        "pin",
    ]:
        assert name in interpool.__all__
        assert hasattr(interpool, name)


def test_worker_type_values():
    assert interpool.WorkerType("subinterpreter") is interpool.WorkerType.SUBINTERPRETER
    assert interpool.WorkerType.SUBINTERPRETER == "subinterpreter"
    assert isinstance(interpool.WorkerType.SUBINTERPRETER, str)
    assert interpool.WorkerType("auto") is interpool.WorkerType.AUTO
    with pytest.raises(ValueError):
        interpool.WorkerType("bogus")


def test_error_types():
    assert issubclass(interpool.WorkerTypeUnavailableError, RuntimeError)
    assert issubclass(interpool.BrokenWorkerError, RuntimeError)


def test_every_worker_type_is_listed_once():
    infos = interpool.available_worker_types()
    # AUTO is a choice among these, not a type of worker: it is always available.
    concrete = [t for t in interpool.WorkerType if t is not interpool.WorkerType.AUTO]
    assert sorted(i.worker_type for i in infos) == sorted(concrete)
    for info in infos:
        assert isinstance(info.available, bool)
        assert isinstance(info.hard_kill, bool)
        assert isinstance(info.crash_isolation, bool)
        assert (info.reason is None) == info.available


def test_subinterpreter_availability():
    info = _info(interpool.WorkerType.SUBINTERPRETER)
    assert info.hard_kill is False
    assert info.crash_isolation is False
    if HAS_SUBINTERPRETERS:
        assert info.available is True
        assert info.reason is None
    else:
        assert info.available is False
        assert "3.13" in info.reason
        assert platform.python_version() in info.reason


def test_run_sync_on_the_default_context(tmp_path):
    # The default is AUTO: subinterpreters from 3.13, processes before. In a fresh interpreter:
    # the default context's workers live until exit (test_process.py checks none are left).
    result = _helpers.run_script(
        tmp_path,
        """
        import trio
        import interpool

        async def main():
            print(await interpool.run_sync(abs, -1))
            print(sorted(interpool.default_context_statistics().by_type))

        if __name__ == "__main__":
            trio.run(main)
        """,
    )
    assert result.returncode == 0, result.stderr
    value, types = result.stdout.splitlines()
    assert value == "1"
    assert ("SUBINTERPRETER" in types) is HAS_SUBINTERPRETERS


async def test_auto_uses_processes_where_subinterpreters_are_unavailable():
    async with interpool.open_worker_context() as ctx:
        assert ctx.worker_type is interpool.WorkerType.AUTO
        assert await ctx.run_sync(abs, -1) == 1
        by_type = ctx.statistics().by_type
        assert (interpool.WorkerType.SUBINTERPRETER in by_type) is HAS_SUBINTERPRETERS
        if not HAS_SUBINTERPRETERS:
            assert by_type[interpool.WorkerType.FORKSERVER].idle_workers == 1
    async with interpool.cache_scope():
        assert await interpool.run_sync(abs, -2) == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"worker_type": interpool.WorkerType.SUBINTERPRETER}],
    ids=["explicit"],
)
async def test_open_worker_context(kwargs):
    if HAS_SUBINTERPRETERS:
        async with interpool.open_worker_context(**kwargs) as ctx:
            assert await ctx.run_sync(abs, -1) == 1
    else:
        reason = _info(interpool.WorkerType.SUBINTERPRETER).reason
        with pytest.raises(interpool.WorkerTypeUnavailableError) as excinfo:
            async with interpool.open_worker_context(**kwargs):
                pytest.fail("opened an unavailable worker type")
        assert reason in str(excinfo.value)
