"""interpool.dask on a real distributed.LocalCluster: a scheduler and two worker processes on
localhost, started and stopped here. Skipped where distributed is not installed."""

import os
import select
import subprocess
import sys

import _dask_funcs
import _funcs
import pytest

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

import interpool.dask  # noqa: E402, needs distributed

pytestmark = [
    pytest.mark.needs_subinterpreters,
    # distributed's own deprecations and resource notes are not this suite's business.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

GUARD = 120


def wait_ended(pids):
    """Waits (within the guard) until every pid has exited; returns those still running."""
    left = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if not select.select([fd], [], [], GUARD)[0]:
                left.append(pid)
        finally:
            os.close(fd)
    return left


# The cluster runs in a process of its own: multiprocessing starts a resource tracker beside the
# nannies' worker processes, which would otherwise outlive the cluster as a child of this one.
CLUSTER_SCRIPT = """
import sys

import dask
import distributed

if __name__ == "__main__":
    # Dask's profiler crashes CPython 3.13 processes that run subinterpreters (see dask.py).
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
        )
    print(cluster.scheduler_address, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    cluster.close()
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster and a client; on teardown, after closing both, no process of the cluster (its
    workers, their interpool workers and forkservers) is left."""
    script = tmp_path_factory.mktemp("dask") / "cluster.py"
    script.write_text(CLUSTER_SCRIPT)
    # The workers import the test's job modules (_funcs, _dask_funcs) from this folder.
    path = os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": path},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert select.select([process.stdout], [], [], GUARD)[0], "the cluster never started"
        address = process.stdout.readline().strip()
        client = distributed.Client(address, timeout=GUARD)
        seen = {process.pid}
        yield client, seen
        for tree in client.run(_dask_funcs.process_tree).values():
            seen.update(tree)
        client.close()
    finally:
        process.stdin.close()
        process.wait(GUARD)
    assert process.returncode == 0
    assert wait_ended(seen) == []


@pytest.fixture
def client(cluster):
    client, seen = cluster
    interpool.dask.register(client)
    yield client
    for tree in client.run(_dask_funcs.process_tree).values():
        seen.update(tree)
    interpool.dask.unregister(client)
    for names in client.run(_dask_funcs.executor_names).values():
        assert "interpool" not in names


def test_annotated_tasks_run_in_subinterpreters_with_correct_results(client):
    with dask.annotate(executor="interpool"):
        sums = client.map(_funcs.add, range(20), range(100, 120), pure=False)
        interpreters = client.map(_funcs.value_and_interpreter, range(8), pure=False)
    assert client.gather(sums) == [i + 100 + i for i in range(20)]
    ids = [i for _, i in client.gather(interpreters)]
    assert 0 not in ids  # not the Dask worker's main interpreter
    # Tasks not annotated still run on the workers' threads.
    plain = client.submit(_funcs.value_and_interpreter, 1, pure=False).result(GUARD)
    assert plain == (1, 0)
    names = client.run(_dask_funcs.executor_names)
    assert all("interpool" in n for n in names.values())


def test_a_numpy_task_falls_back_to_a_process(client):
    pytest.importorskip("numpy")
    import _uses_numpy

    dask_pids = {int(pid) for pid in client.run(os.getpid).values()}
    with dask.annotate(executor="interpool"):
        total, pid = client.submit(_uses_numpy.total, 10, pure=False).result(GUARD)
    assert total == 45
    assert pid not in dask_pids and pid != os.getpid()


def test_errors_come_back_as_dask_errors(client):
    with dask.annotate(executor="interpool"):
        future = client.submit(_funcs.raise_value_error, "from a subinterpreter", pure=False)
    with pytest.raises(ValueError, match="from a subinterpreter"):
        future.result(GUARD)


def test_a_cancelled_dask_future_leaves_no_running_worker(client, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    os.mkfifo(started)
    os.mkfifo(release)
    started_fd = os.open(started, os.O_RDWR)
    release_fd = os.open(release, os.O_RDWR)
    try:
        with dask.annotate(executor="interpool"):
            future = client.submit(
                _funcs.block_after_signal, str(started), str(release), pure=False
            )
        assert select.select([started_fd], [], [], GUARD)[0], "the task never started"
        assert len(os.read(started_fd, _funcs.STARTED_SIZE)) == _funcs.STARTED_SIZE
        future.cancel()
        os.write(release_fd, b"r")
        # Once the job returned, no call is left running on any worker.
        client.run(_dask_funcs.wait_idle)
        assert set(client.run(_dask_funcs.running_calls).values()) == {0}
    finally:
        os.close(started_fd)
        os.close(release_fd)


def test_default_makes_every_task_run_there_and_unregister_restores(cluster):
    client, _ = cluster
    interpool.dask.register(client, name="everything", default=True)
    try:
        assert client.submit(_funcs.value_and_interpreter, 2, pure=False).result(GUARD)[1] != 0
    finally:
        interpool.dask.unregister(client, name="everything")
    assert client.submit(_funcs.value_and_interpreter, 3, pure=False).result(GUARD) == (3, 0)
    assert all("everything" not in n for n in client.run(_dask_funcs.executor_names).values())


def test_bad_options_are_refused_before_reaching_the_cluster(cluster):
    client, _ = cluster
    with pytest.raises(TypeError, match="nonsense"):
        interpool.dask.register(client, nonsense=1)
    with pytest.raises(ValueError, match="name"):
        interpool.dask.register(client, name="default")


@pytest.mark.skipif(sys.version_info[:2] != (3, 13), reason="a CPython 3.13 bug")
def test_setup_refuses_subinterpreters_beside_the_profiler_on_3_13():
    plugin = interpool.dask.InterpoolPlugin()
    with dask.config.set({"distributed.worker.profile.enabled": True}):
        with pytest.raises(RuntimeError, match=r"profile\.enabled"):
            plugin.setup(worker=None)
