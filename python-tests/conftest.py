"""Shared fixtures and the ``needs_subinterpreters`` marker.

Every module except test_availability.py sets
``pytestmark = pytest.mark.needs_subinterpreters``: those tests are skipped
cleanly where ``available_worker_types()`` reports SUBINTERPRETER unavailable
(CPython < 3.13), and all run on 3.13.
"""

import _helpers
import pytest

import interpool


def subinterpreter_info():
    infos = [
        info
        for info in interpool.available_worker_types()
        if info.worker_type is interpool.WorkerType.SUBINTERPRETER
    ]
    assert len(infos) == 1, infos
    return infos[0]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "needs_subinterpreters: skip unless the SUBINTERPRETER worker type is available",
    )


def pytest_collection_modifyitems(config, items):
    info = subinterpreter_info()
    if info.available:
        # The suite tests subinterpreter semantics (pipes shared by the whole process, interpreter
        # ids) through the default context: make it explicitly SUBINTERPRETER. AUTO, the default
        # otherwise, has its own tests (test_auto.py, test_availability.py), on explicit contexts.
        interpool.configure_default_context(worker_type=interpool.WorkerType.SUBINTERPRETER)
        return
    skip = pytest.mark.skip(reason=f"SUBINTERPRETER unavailable: {info.reason}")
    for item in items:
        if item.get_closest_marker("needs_subinterpreters") is not None:
            item.add_marker(skip)


@pytest.fixture
async def ctx():
    """A fresh default-configured WorkerContext of subinterpreters (what the suite tests).

    Teardown checks a clean shutdown: exiting the context raises nothing (an
    exception fails the test at teardown) and leaves no running or idle workers.
    """
    async with interpool.open_worker_context(
        worker_type=interpool.WorkerType.SUBINTERPRETER
    ) as context:
        yield context
    _helpers.assert_no_workers(context)
