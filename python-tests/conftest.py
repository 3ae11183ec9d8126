"""Shared fixtures, the contract suite's parametrization and its leak checks.

Markers:

- ``needs_subinterpreters`` (every module except test_availability.py and test_process.py):
  skipped cleanly where ``available_worker_types()`` reports SUBINTERPRETER unavailable
  (CPython < 3.13).
- ``contract`` (the semantics modules: run_sync, context, cancellation, hooks, which also say
  ``usefixtures("worker_type")``): trio-parallel's contract, run on every worker type. Each test
  gets a ``worker_type`` (ids ``subinterpreter``, ``forkserver``, ``spawn``, ``auto``); the
  ``ctx`` fixture and the default context (of ``interpool.run_sync``) are of that type, and the
  test fails if it leaves a subinterpreter, a worker thread or a worker process behind.
- ``in_process``: a contract test that depends on the worker sharing the test's process (the
  pid, interpreter ids): it runs on SUBINTERPRETER only, with the id ``subinterpreter-only``.
- ``only_on(*types, reason=...)``: a contract test that holds only for these types' nature.

Jobs synchronise with contract tests through ``_helpers.Fifo`` (a named pipe passed by path),
which every worker type can open.

Outside contract modules the default context is SUBINTERPRETER and ``ctx`` is too (those
modules test subinterpreter specifics through pipes shared by the whole process).
"""

import time

import _helpers
import pytest

import interpool
from interpool import WorkerType, _context, _impl, _interpool

CONTRACT_TYPES = [
    WorkerType.SUBINTERPRETER,
    WorkerType.FORKSERVER,
    WorkerType.SPAWN,
    WorkerType.AUTO,
]


def subinterpreter_info():
    infos = [
        info
        for info in interpool.available_worker_types()
        if info.worker_type is WorkerType.SUBINTERPRETER
    ]
    assert len(infos) == 1, infos
    return infos[0]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "needs_subinterpreters: skip unless the SUBINTERPRETER worker type is available",
    )
    config.addinivalue_line(
        "markers", "contract: run each test on every worker type (the worker_type fixture)"
    )
    config.addinivalue_line(
        "markers",
        "in_process: a contract test that needs the worker in the test's process: "
        "SUBINTERPRETER only",
    )
    config.addinivalue_line(
        "markers", "only_on(*types, reason): a contract test for these worker types only"
    )


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("contract") is None:
        return
    assert "worker_type" in metafunc.fixturenames, "a contract module uses the worker_type fixture"
    if metafunc.definition.get_closest_marker("in_process") is not None:
        metafunc.parametrize(
            "worker_type", [WorkerType.SUBINTERPRETER], ids=["subinterpreter-only"]
        )
        return
    only_on = metafunc.definition.get_closest_marker("only_on")
    types = CONTRACT_TYPES if only_on is None else list(only_on.args)
    suffix = "" if only_on is None or len(types) > 1 else "-only"
    metafunc.parametrize("worker_type", types, ids=[t.value + suffix for t in types])


def pytest_collection_modifyitems(config, items):
    info = subinterpreter_info()
    if info.available:
        # Outside the contract modules the suite tests subinterpreter semantics (pipes shared by
        # the whole process, interpreter ids) through the default context: make it explicitly
        # SUBINTERPRETER. Contract tests get a default context of their own worker type.
        interpool.configure_default_context(worker_type=WorkerType.SUBINTERPRETER)
        return
    skip = pytest.mark.skip(reason=f"SUBINTERPRETER unavailable: {info.reason}")
    for item in items:
        if item.get_closest_marker("needs_subinterpreters") is not None:
            item.add_marker(skip)


@pytest.fixture
def worker_type():
    """The worker type under test: every type in contract modules, else SUBINTERPRETER."""
    return WorkerType.SUBINTERPRETER


def _interpool_threads():
    # The forkserver's thread lives as long as the forkserver (the whole test run).
    return _helpers.interpool_threads(excluding=("interpool-forks",))


def _worker_processes():
    """Worker processes of this process: its children and the forkserver's children (the
    forkserver itself lives as long as we do)."""
    from test_process import workers_left

    return set(workers_left())


def _leaks(before):
    threads, subinterpreters, processes = before
    now_threads = _interpool_threads()
    leaks = []
    if len(now_threads) > len(threads):
        leaks.append(f"worker threads left: {sorted(set(now_threads) - set(threads))}")
    if _interpool.live_subinterpreters() > subinterpreters:
        leaks.append(f"{_interpool.live_subinterpreters() - subinterpreters} subinterpreter(s)")
    left = _worker_processes() - processes
    if left:
        leaks.append(f"worker processes left: {sorted(left)}")
    return leaks


@pytest.fixture(autouse=True)
def _contract_default_context_and_leak_check(request):
    """In contract tests: a default context of the type under test, closed after the test, and
    a check that nothing the test started is left (polled up to the hang guard: workers end
    asynchronously once their context closed)."""
    if request.node.get_closest_marker("contract") is None:
        yield
        return
    before = (_interpool_threads(), _interpool.live_subinterpreters(), _worker_processes())
    options = _context.ContextOptions(worker_type=request.getfixturevalue("worker_type"))
    context = _context.WorkerContext._create(options)
    saved, _impl._default_context = _impl._default_context, context
    try:
        yield
    finally:
        _impl._default_context = saved
        _context.core_of(context).close_blocking(context.grace_period)
    _helpers.assert_no_workers(context)
    deadline = time.monotonic() + _helpers.HANG_GUARD
    while (leaks := _leaks(before)) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the workers to end, bounded: not a synchronisation
    assert not leaks, "; ".join(leaks)


@pytest.fixture
async def ctx(worker_type):
    """A fresh default-configured WorkerContext of the type under test.

    Teardown checks a clean shutdown: exiting the context raises nothing (an
    exception fails the test at teardown) and leaves no running or idle workers.
    """
    async with interpool.open_worker_context(worker_type=worker_type) as context:
        yield context
    _helpers.assert_no_workers(context)
