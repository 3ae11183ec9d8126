"""Worker type availability. Runs, without skips, on every supported CPython:
SUBINTERPRETER is available from 3.13 and reported unavailable (with a reason)
before that."""

import platform
import sys

import pytest

import interpool

HAS_SUBINTERPRETERS = sys.version_info >= (3, 13)


def _info(worker_type):
    infos = [i for i in interpool.available_worker_types() if i.worker_type is worker_type]
    assert len(infos) == 1, infos
    return infos[0]


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
    ]:
        assert name in interpool.__all__
        assert hasattr(interpool, name)


def test_worker_type_values():
    assert interpool.WorkerType("subinterpreter") is interpool.WorkerType.SUBINTERPRETER
    assert interpool.WorkerType.SUBINTERPRETER == "subinterpreter"
    assert isinstance(interpool.WorkerType.SUBINTERPRETER, str)
    with pytest.raises(ValueError):
        interpool.WorkerType("bogus")


def test_error_types():
    assert issubclass(interpool.WorkerTypeUnavailableError, RuntimeError)
    assert issubclass(interpool.BrokenWorkerError, RuntimeError)


def test_every_worker_type_is_listed_once():
    infos = interpool.available_worker_types()
    assert sorted(i.worker_type for i in infos) == sorted(interpool.WorkerType)
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


async def test_run_sync_on_the_default_context():
    if HAS_SUBINTERPRETERS:
        assert await interpool.run_sync(abs, -1) == 1
    else:
        reason = _info(interpool.WorkerType.SUBINTERPRETER).reason
        with pytest.raises(interpool.WorkerTypeUnavailableError) as excinfo:
            await interpool.run_sync(abs, -1)
        assert reason in str(excinfo.value)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"worker_type": interpool.WorkerType.SUBINTERPRETER}],
    ids=["default", "explicit"],
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
