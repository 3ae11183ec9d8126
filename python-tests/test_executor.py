"""interpool.Executor: the concurrent.futures contract, on every worker type.

The behaviours of CPython's own executor tests that apply to a process/interpreter pool (map
ordering and timeouts, shutdown with pending work, cancel_futures, initializer failure, exception
propagation, as_completed / wait), plus interpool's own: a crash fails only its future, kill on
cancel, AUTO's fallback, no worker or thread left after shutdown. Jobs that must block wait on
FIFOs named by path (every worker type can open them); nothing here sleeps to synchronise.
Tests that take ``worker_type`` are contract tests (see conftest.py): they run on every worker
type and fail if they leave a worker, thread or subinterpreter behind; the others share one
executor per worker type (``shared``).
"""

import asyncio
import concurrent.futures as cf
import os
import select
import struct
import threading

import _funcs
import _helpers
import pytest

import interpool
from interpool import WorkerType

pytestmark = pytest.mark.needs_subinterpreters

ALL_TYPES = [WorkerType.SUBINTERPRETER, WorkerType.FORKSERVER, WorkerType.SPAWN, WorkerType.AUTO]
PROCESS_TYPES = [WorkerType.FORKSERVER, WorkerType.SPAWN]
GUARD = _helpers.HANG_GUARD


def watcher_threads():
    return [t for t in threading.enumerate() if t.name == "interpool-executor-watcher"]


def assert_clean(executor):
    """After shutdown: no worker idle or running, the watcher thread ended."""
    _helpers.assert_no_workers(executor)
    assert not executor._engine.thread.is_alive()


@pytest.fixture(scope="module", params=ALL_TYPES, ids=lambda t: t.value)
def shared(request):
    """One executor per worker type for the tests that leave it as they found it."""
    executor = interpool.Executor(2, worker_type=request.param)
    yield executor
    executor.shutdown()
    assert_clean(executor)


class Fifo:
    """A named pipe that jobs open by path: ``_funcs.signal_started_at`` writes a pid to it,
    ``_funcs.block_after_signal`` reads a release byte from another. Opened read-write and
    non-blocking here, so neither side's open waits."""

    def __init__(self, path):
        os.mkfifo(path)
        self.path = str(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    def wait_started(self):
        data = b""
        while len(data) < _funcs.STARTED_SIZE:
            assert select.select([self.fd], [], [], GUARD)[0], "the job never started"
            try:
                data += os.read(self.fd, _funcs.STARTED_SIZE - len(data))
            except BlockingIOError:
                continue
        return struct.unpack(_funcs.STARTED_FORMAT, data)[0]

    def release(self, n=1):
        os.write(self.fd, b"r" * n)

    def close(self):
        os.close(self.fd)


@pytest.fixture
def fifos(tmp_path):
    made = []

    def make(name):
        fifo = Fifo(tmp_path / name)
        made.append(fifo)
        return fifo

    yield make
    for fifo in made:
        fifo.close()


def blocked_job(executor, fifos, name="job"):
    """Submits a job that blocks until released; returns ``(future, release_fifo)`` once it
    runs."""
    started, release = fifos(f"{name}-started"), fifos(f"{name}-release")
    future = executor.submit(_funcs.block_after_signal, started.path, release.path)
    started.wait_started()
    return future, release


# --- submit and map --------------------------------------------------------------------


def test_submit_returns_a_future_with_the_result(shared):
    future = shared.submit(_funcs.add, 1, b=2)
    assert isinstance(future, cf.Future)
    assert future.result(GUARD) == 3
    assert future.done() and not future.running() and not future.cancelled()
    assert future.exception() is None
    assert [shared.submit(_funcs.identity, i).result(GUARD) for i in range(20)] == list(range(20))


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_keeps_the_order_of_the_inputs(shared, chunksize):
    assert list(shared.map(_funcs.add, range(10), range(100, 110), chunksize=chunksize)) == [
        i + 100 + i for i in range(10)
    ]
    # The shortest iterable ends the map; no input gives no result.
    assert list(shared.map(_funcs.add, range(5), [1, 1], chunksize=chunksize)) == [1, 2]
    assert list(shared.map(_funcs.identity, [], chunksize=chunksize)) == []


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_raises_at_the_failing_item_after_the_results_before_it(shared, chunksize):
    results = shared.map(_funcs.raise_if_seven, range(10), chunksize=chunksize)
    assert [next(results) for _ in range(7)] == [x * 10 for x in range(7)]
    with pytest.raises(ValueError) as info:
        next(results)
    assert info.value.args == (7,)


def test_map_buffersize_bounds_the_submitted_work(shared):
    consumed = []

    def inputs():
        for i in range(10):
            consumed.append(i)
            yield i

    results = shared.map(_funcs.identity, inputs(), buffersize=2)
    assert consumed == [0, 1]
    assert next(results) == 0
    assert consumed == [0, 1, 2]
    assert list(results) == list(range(1, 10))


def test_map_rejects_bad_arguments(shared):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="chunksize"):
            shared.map(abs, [1], chunksize=bad)
        with pytest.raises(ValueError, match="buffersize"):
            shared.map(abs, [1], buffersize=bad)
    with pytest.raises(TypeError, match="buffersize"):
        shared.map(abs, [1], buffersize=1.5)


def test_callbacks_wait_and_as_completed(shared):
    seen = []
    done = threading.Event()

    def callback(future):
        seen.append(future.result())
        done.set()

    future = shared.submit(_funcs.identity, "called back")
    future.add_done_callback(callback)
    assert done.wait(GUARD)
    assert seen == ["called back"]
    futures = [shared.submit(_funcs.add, i, i) for i in range(12)]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=GUARD)) == [
        2 * i for i in range(12)
    ]
    futures = [shared.submit(_funcs.add, i, 1) for i in range(6)]
    finished, not_finished = cf.wait(futures, timeout=GUARD)
    assert not not_finished and finished == set(futures)


def test_from_other_threads_at_once(shared):
    with cf.ThreadPoolExecutor(4) as threads:
        got = list(
            threads.map(lambda i: shared.submit(_funcs.identity, i).result(GUARD), range(40))
        )
    assert got == list(range(40))


def test_run_in_executor_under_asyncio(shared):
    async def main():
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(shared, _funcs.add, i, 1) for i in range(8)]
        return await asyncio.wait_for(asyncio.gather(*calls), GUARD)

    assert asyncio.run(main()) == list(range(1, 9))


# --- errors ----------------------------------------------------------------------------


def test_the_functions_exception_comes_back_with_its_chain(shared):
    future = shared.submit(_funcs.raise_with_cause)
    error = future.exception(GUARD)
    assert isinstance(error, KeyError) and error.args == ("the effect",)
    assert isinstance(error.__cause__, ValueError)
    assert any("Worker traceback" in note for note in error.__notes__)
    with pytest.raises(KeyError):
        future.result()
    with pytest.raises(_funcs.CustomBaseError):
        shared.submit(_funcs.raise_custom_base_error, "base").result(GUARD)


def test_an_unpicklable_call_fails_its_future_not_submit(shared):
    future = shared.submit(_funcs.identity, threading.Lock())
    with pytest.raises(TypeError, match="lock"):
        future.result(GUARD)
    assert shared.submit(_funcs.identity, 1).result(GUARD) == 1


@pytest.mark.contract
@pytest.mark.only_on(*PROCESS_TYPES, reason="a subinterpreter cannot survive a crash")
def test_a_crashed_worker_fails_only_its_future(worker_type):
    with interpool.Executor(2, worker_type=worker_type) as executor:
        crashed = executor.submit(_funcs.segfault)
        with pytest.raises(interpool.BrokenWorkerError):
            crashed.result(GUARD)
        assert list(executor.map(_funcs.identity, range(5))) == list(range(5))
    assert_clean(executor)


# --- timeouts and cancellation ---------------------------------------------------------


def test_result_and_map_time_out_and_the_job_still_finishes(shared, fifos):
    future, release = blocked_job(shared, fifos)
    assert not future.done() and future.running()
    with pytest.raises(TimeoutError):
        future.result(timeout=0)
    with pytest.raises(TimeoutError):
        future.exception(timeout=0.001)
    assert not future.cancel()  # running, and this executor does not kill
    started, map_release = fifos("map-started"), fifos("map-release")
    results = shared.map(_funcs.block_after_signal, [started.path], [map_release.path], timeout=0)
    started.wait_started()
    with pytest.raises(TimeoutError):
        next(results)
    release.release()
    map_release.release()
    assert future.result(GUARD) == b"r"


@pytest.mark.contract
def test_cancel_stops_a_queued_call_from_running(worker_type, fifos, tmp_path):
    with interpool.Executor(1, worker_type=worker_type) as executor:
        running, release = blocked_job(executor, fifos)
        marker = tmp_path / "never"
        queued = executor.submit(_funcs.write_file, str(marker), "ran")
        assert queued.cancel() and queued.cancelled()
        with pytest.raises(cf.CancelledError):
            queued.result()
        release.release()
        assert running.result(GUARD) == b"r"
        assert executor.submit(_funcs.identity, 5).result(GUARD) == 5
    assert not marker.exists()
    assert_clean(executor)


@pytest.mark.contract
def test_wait_first_completed_and_first_exception(worker_type, fifos):
    with interpool.Executor(2, worker_type=worker_type) as executor:
        slow, release = blocked_job(executor, fifos)
        quick = executor.submit(_funcs.identity, 1)
        done, not_done = cf.wait([slow, quick], GUARD, return_when=cf.FIRST_COMPLETED)
        assert done == {quick} and not_done == {slow}
        failing = executor.submit(_funcs.raise_value_error, "x")
        done, not_done = cf.wait([slow, failing], GUARD, return_when=cf.FIRST_EXCEPTION)
        assert done == {failing} and not_done == {slow}
        release.release()
        done, not_done = cf.wait([slow, quick, failing], GUARD)
        assert not not_done
    assert_clean(executor)


@pytest.mark.contract
def test_kill_on_cancel_stops_a_running_call(worker_type, fifos):
    with interpool.Executor(1, worker_type=worker_type, kill_on_cancel=True) as executor:
        started = fifos("started")
        future = executor.submit(_funcs.spin_after_signal, started.path)
        started.wait_started()
        assert future.cancel() and future.cancelled()
        with pytest.raises(cf.CancelledError):
            future.result()
        # The worker stopped: the only slot serves the next call.
        assert executor.submit(_funcs.identity, 7).result(GUARD) == 7
    assert_clean(executor)


# --- shutdown --------------------------------------------------------------------------


@pytest.mark.contract
def test_shutdown_runs_the_queued_calls_then_ends_the_workers(worker_type):
    executor = interpool.Executor(1, worker_type=worker_type)
    futures = [executor.submit(_funcs.identity, i) for i in range(6)]
    executor.shutdown(wait=True)
    assert [f.result(0) for f in futures] == list(range(6))
    assert_clean(executor)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(_funcs.identity, 1)
    executor.shutdown()  # again: nothing to do


@pytest.mark.contract
def test_shutdown_cancel_futures_cancels_the_queued_calls(worker_type, fifos):
    executor = interpool.Executor(1, worker_type=worker_type)
    running, release = blocked_job(executor, fifos)
    queued = [executor.submit(_funcs.identity, i) for i in range(3)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert not running.cancelled()
    release.release()
    executor.shutdown(wait=True)
    assert running.result(0) == b"r"
    assert_clean(executor)


@pytest.mark.contract
def test_shutdown_without_wait_finishes_in_the_background(worker_type):
    executor = interpool.Executor(1, worker_type=worker_type)
    futures = [executor.submit(_funcs.identity, i) for i in range(4)]
    executor.shutdown(wait=False)
    assert [f.result(GUARD) for f in futures] == list(range(4))
    executor._engine.thread.join(GUARD)
    assert_clean(executor)


def test_a_context_manager_shuts_down_and_leaves_no_thread():
    before = len(watcher_threads())
    with interpool.Executor(2, worker_type=WorkerType.SUBINTERPRETER) as executor:
        assert executor.submit(_funcs.identity, 1).result(GUARD) == 1
        assert len(watcher_threads()) == before + 1
    assert len(watcher_threads()) == before
    assert_clean(executor)


@pytest.mark.contract
def test_an_executor_never_shut_down_ends_cleanly_at_exit(tmp_path, worker_type):
    result = _helpers.run_script(
        tmp_path,
        f"""
        import interpool

        def work(x):
            return x * 2

        if __name__ == "__main__":
            executor = interpool.Executor(2, worker_type={worker_type.value!r})
            print(sum(executor.map(work, range(10))))
            pending = [executor.submit(work, i) for i in range(20)]
            keep = executor  # never shut down
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "90\n"
    assert result.stderr == ""


# --- options ---------------------------------------------------------------------------


@pytest.mark.contract
def test_the_initializer_runs_once_in_each_worker(worker_type):
    with interpool.Executor(
        2, worker_type=worker_type, initializer=_funcs.counting_init
    ) as executor:
        futures = [executor.submit(_funcs.get_init_count) for _ in range(6)]
        assert {f.result(GUARD) for f in futures} == {1}


@pytest.mark.contract
def test_a_failing_initializer_breaks_the_executor(worker_type):
    executor = interpool.Executor(1, worker_type=worker_type, initializer=_funcs.failing_init)
    futures = [executor.submit(_funcs.identity, i) for i in range(3)]
    for future in futures:
        with pytest.raises(interpool.BrokenWorkerError):
            future.result(GUARD)
    with pytest.raises(interpool.BrokenWorkerError, match="initializer failed"):
        executor.submit(_funcs.identity, 1)
    executor.shutdown()
    assert_clean(executor)


@pytest.mark.contract
def test_max_tasks_per_child_replaces_the_worker(worker_type):
    with interpool.Executor(1, worker_type=worker_type, max_tasks_per_child=2) as executor:
        workers = [executor.submit(_funcs.pid_and_interpreter).result(GUARD) for _ in range(4)]
    assert workers[0] == workers[1] and workers[2] == workers[3]
    assert workers[1] != workers[2]
    assert_clean(executor)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_workers": 0}, ValueError, "max_workers"),
        ({"max_workers": 1.5}, TypeError, "max_workers"),
        ({"initializer": 3}, TypeError, "initializer"),
        ({"initargs": (1,)}, ValueError, "initargs"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child"),
        ({"worker_type": "fork"}, ValueError, "fork"),
        ({"idle_timeout": -1}, ValueError, "idle_timeout"),
        ({"kill_on_cancel": 1}, TypeError, "kill_on_cancel"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    before = len(watcher_threads())
    with pytest.raises(error, match=match):
        interpool.Executor(**kwargs)
    assert len(watcher_threads()) == before


def test_statistics_count_running_calls_and_idle_workers(fifos):
    with interpool.Executor(2, worker_type=WorkerType.SUBINTERPRETER) as executor:
        future, release = blocked_job(executor, fifos)
        stats = executor.statistics()
        assert stats.running_workers == 1
        release.release()
        future.result(GUARD)
        stats = executor.statistics()
        assert stats.running_workers == 0 and stats.idle_workers == 1
    assert_clean(executor)


def test_auto_falls_back_to_a_process_for_numpy():
    pytest.importorskip("numpy")
    import _uses_numpy

    with interpool.Executor(2) as executor:
        (total, pid), in_worker = (
            executor.submit(_uses_numpy.total, 10).result(GUARD),
            executor.submit(_funcs.pid_and_interpreter).result(GUARD),
        )
        assert total == 45 and pid != os.getpid()
        assert in_worker[0] == os.getpid() and in_worker[1] != 0  # a subinterpreter
        stats = executor.statistics().by_type
        assert stats[WorkerType.SUBINTERPRETER].fallbacks == 1
        # Chunks are routed by their function: numpy's go to a process, the others do not.
        totals = executor.map(_uses_numpy.total, [3, 4, 5], chunksize=2)
        assert [total for total, _ in totals] == [3, 6, 10]
        values = [v for v, _ in executor.map(_funcs.value_and_interpreter, range(4), chunksize=2)]
        assert values == [0, 1, 2, 3]
        # Where the others run is AUTO's latency ranking (a loaded machine may prefer a
        # process); what must hold is that only numpy's module was routed away.
        routed = executor.statistics().by_type[WorkerType.SUBINTERPRETER].routed_away
        assert "_uses_numpy" in routed and "_funcs" not in routed
    assert_clean(executor)


def test_large_buffers_go_there_and_back(shared):
    data = os.urandom(3 << 20)
    assert shared.submit(_funcs.identity, data).result(GUARD) == data
    assert shared.submit(_funcs.identity, bytearray(data)).result(GUARD) == bytearray(data)


# --- get_reusable_executor -------------------------------------------------------------


def test_get_reusable_executor_reuses_resizes_and_rebuilds():
    first = interpool.get_reusable_executor(2, worker_type=WorkerType.SUBINTERPRETER)
    try:
        assert first.submit(_funcs.identity, 1).result(GUARD) == 1
        same = interpool.get_reusable_executor(2, worker_type="subinterpreter")
        assert same is first
        resized = interpool.get_reusable_executor(3, worker_type=WorkerType.SUBINTERPRETER)
        assert resized is first and first.max_workers == 3
        other = interpool.get_reusable_executor(3, worker_type=WorkerType.FORKSERVER)
        assert other is not first
        with pytest.raises(RuntimeError, match="after shutdown"):
            first.submit(_funcs.identity, 1)
        assert other.submit(_funcs.identity, 2).result(GUARD) == 2
        other.shutdown()
        again = interpool.get_reusable_executor(3, worker_type=WorkerType.FORKSERVER)
        assert again is not other
        with pytest.raises(TypeError, match="unexpected keyword"):
            interpool.get_reusable_executor(3, nonsense=1)
    finally:
        interpool.get_reusable_executor(1).shutdown()
        first._engine.thread.join(GUARD)
        assert_clean(first)
