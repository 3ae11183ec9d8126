"""Large buffers travel out of band (pickle protocol 5), on every worker type, both ways.

What is checked: every kind of buffer (``bytes``, ``bytearray``, ``memoryview``, ``array.array``,
numpy arrays on process workers, a user type exposing a ``PickleBuffer``) arrives whole and of the
right type in the worker and back in the caller; sizes of 0 bytes, just under and exactly at the
threshold; which path a buffer took (the object exporting a memoryview's memory says it); that a
caller's ``bytearray`` is free again once its call returned or was cancelled (it can be resized:
no export is left), with the pinned-job counter back to zero; that a value outlives its context;
and that a killed process worker leaves no shared-memory segment in the caller. Large copies
(``worker-types/src/large_copy.rs``): exact around both of their thresholds, from unaligned
sources and into every kind of result, with at most one helper thread; a cancelled call whose
large copy ran releases everything. (Whether a copy is split depends on a free core: the Rust
unit tests force both paths.)
"""

import os

import _funcs
import pytest
import trio

import interpool
from interpool import _interpool, _outcome

pytestmark = pytest.mark.needs_subinterpreters

THRESHOLD = _outcome.BUFFER_THRESHOLD
POPULATE_FROM = _interpool.COPY_POPULATE_FROM
SPLIT_FROM = _interpool.COPY_SPLIT_FROM
TYPES = [
    interpool.WorkerType.SUBINTERPRETER,
    interpool.WorkerType.FORKSERVER,
    interpool.WorkerType.SPAWN,
]
KINDS = ["bytes", "bytearray", "memoryview", "array", "numpy", "picklebuffer"]
SIZES = [0, THRESHOLD - 1, THRESHOLD, 3 * THRESHOLD + 5]


# A process worker's buffers go by peer memory where the system allows it, else by memfds
# (process/channel.rs): the forkserver runs every test both ways. AUTO runs them too (on
# subinterpreters, or on a process for numpy).
TRANSPORTS = [(worker_type, "peer") for worker_type in TYPES] + [
    (interpool.WorkerType.FORKSERVER, "memfd"),
    (interpool.WorkerType.AUTO, "peer"),
]


def peer_memory_refused():
    """Whether this system refuses a parent ``process_vm_readv`` of its own child (Yama)."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as scope:
            return int(scope.read()) >= 2
    except OSError:
        return False


@pytest.fixture(params=TRANSPORTS, ids=lambda p: p[0].value + ("-memfd" if p[1] == "memfd" else ""))
async def bctx(request, monkeypatch):
    worker_type, transport = request.param
    if transport == "memfd":
        monkeypatch.setenv("INTERPOOL_PEER_MEMORY", "0")  # read when each worker starts
    async with interpool.open_worker_context(worker_type=worker_type) as context:
        yield context
    assert _interpool.release_buffers() == 0, "a finished job still pins caller buffers"
    assert _interpool.lent_buffers() == 0, "a closed worker still keeps a result alive"


def on_subinterpreters(ctx):
    """Whether ``ctx`` runs these tests' jobs (builtins and ``_funcs``: nothing refuses to load)
    on subinterpreters: SUBINTERPRETER, and AUTO, which picks them for such jobs."""
    return ctx.worker_type in (interpool.WorkerType.SUBINTERPRETER, interpool.WorkerType.AUTO)


def skip_numpy_on_subinterpreters(kind, ctx):
    if kind == "numpy":
        pytest.importorskip("numpy")
        if ctx.worker_type is interpool.WorkerType.SUBINTERPRETER:
            pytest.skip("numpy refuses subinterpreters")


def memfds_of_this_process():
    """Descriptors and mappings of interpool's memfds held by this (the caller's) process."""
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:interpool"):
            fds.append(target)
    with open("/proc/self/maps") as maps:
        mapped = [line for line in maps if "/memfd:interpool" in line]
    return fds, mapped


async def cancel_once_started(ctx, tmp_path, *args):
    """Runs ``spin_with_buffer_after_signal(started, *args)`` with ``kill_on_cancel`` and cancels
    it once the job has started (it says so through a FIFO): mid-job, its buffers in use."""
    started = tmp_path / "started"
    os.mkfifo(started)
    fd = os.open(started, os.O_RDWR | os.O_NONBLOCK)
    try:
        with trio.CancelScope() as scope:

            async def cancel_when_started():
                await trio.lowlevel.wait_readable(fd)
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when_started)
                await ctx.run_sync(
                    _funcs.spin_with_buffer_after_signal, str(started), *args, kill_on_cancel=True
                )
        assert scope.cancelled_caught
    finally:
        os.close(fd)


def test_the_job_pickle_carries_large_buffers_out_of_band_from_the_threshold_on():
    for size, expected in [(0, 0), (THRESHOLD - 1, 0), (THRESHOLD, 1)]:
        payload = _outcome.dumps_job(_funcs.identity, (b"x" * size,))
        buffers = payload[1] if isinstance(payload, tuple) else []
        assert len(buffers) == expected, size
    same = b"y" * THRESHOLD
    _, buffers = _outcome.dumps_job(_funcs.add, (same, same))
    assert len(buffers) == 1, "one object passed twice travels once"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
async def test_buffers_go_to_the_worker_and_back(bctx, kind, size):
    skip_numpy_on_subinterpreters(kind, bctx)
    sent = _funcs.make_buffer(kind, size)
    expected = _funcs.describe(sent)
    # Into the worker: the job sees the same type and bytes.
    assert await bctx.run_sync(_funcs.describe, sent) == expected
    # Out of the worker: the caller gets the same type and bytes.
    made = await bctx.run_sync(_funcs.make_buffer, kind, size)
    assert _funcs.describe(made) == expected
    # Both ways at once.
    assert _funcs.describe(await bctx.run_sync(_funcs.identity, sent)) == expected


async def test_a_large_memoryview_argument_is_read_in_place_or_from_shared_memory(bctx):
    view = memoryview(bytearray(b"m" * THRESHOLD))
    exporter = await bctx.run_sync(_funcs.exporter_of, view)
    if on_subinterpreters(bctx):
        assert exporter == "CallerBuffer"  # the caller's memory itself, read-only
    else:
        assert exporter == "mmap"  # a private mapping: anonymous, or of the memfd
    small = memoryview(bytearray(b"m" * 10))
    assert await bctx.run_sync(_funcs.exporter_of, small) in ("bytes", "bytearray")


async def test_process_buffers_go_by_peer_memory_unless_it_is_refused_or_turned_off(bctx):
    if on_subinterpreters(bctx):
        pytest.skip("a process transport")
    mapped = await bctx.run_sync(_funcs.memfds_mapped_with, b"p" * THRESHOLD)
    turned_off = os.environ.get("INTERPOOL_PEER_MEMORY", "1") != "1"  # the fixture's memfd variant
    if not turned_off and not peer_memory_refused():
        assert mapped == 0, "the parent wrote the argument into the worker's own memory"
    else:
        assert mapped == 1, "the argument arrived in a memfd"


@pytest.mark.parametrize("value", ["off", "yes", ""])
async def test_any_peer_memory_setting_but_1_means_memfds(value, monkeypatch):
    monkeypatch.setenv("INTERPOOL_PEER_MEMORY", value)
    for worker_type in (interpool.WorkerType.FORKSERVER, interpool.WorkerType.SPAWN):
        async with interpool.open_worker_context(worker_type=worker_type) as ctx:
            mapped = await ctx.run_sync(_funcs.memfds_mapped_with, b"p" * THRESHOLD)
        assert mapped == 1, (worker_type, value)


async def test_a_retire_hook_runs_only_once_the_caller_has_the_value():
    # The hook overwrites the array that the value is a view of: the caller must get it intact,
    # so the hook waits until the parent has read the value out of the worker.
    size = SPLIT_FROM + 1
    for worker_type in TYPES:
        async with interpool.open_worker_context(
            worker_type=worker_type, retire=_funcs.overwrite_on_retire
        ) as ctx:
            for _ in range(3):
                value = await ctx.run_sync(_funcs.view_overwritten_on_retire, size)
                assert bytes(value) == b"k" * size, worker_type


async def test_a_large_value_comes_back_in_host_memory_without_another_copy(bctx):
    value = await bctx.run_sync(_funcs.make_buffer, "memoryview", THRESHOLD)
    assert type(value.obj).__name__ == "HostBuffer"
    assert not value.readonly  # the caller owns it alone
    value[0] = 7
    assert value[0] == 7


async def test_a_returned_bytes_is_the_workers_own_object_or_copied_once_from_it(bctx):
    expected = _funcs.make_buffer("bytes", 2 * THRESHOLD)
    # Nothing of the worker reaches its bytes once the job is over: a subinterpreter gives the
    # object itself to the caller (no copy, nothing kept in the worker); a process worker's comes
    # through shared memory.
    value = await bctx.run_sync(_funcs.make_buffer, "bytes", 2 * THRESHOLD)
    assert type(value) is bytes and value == expected
    assert _interpool.lent_buffers() == 0
    # The same when the result is the job's argument itself (an echo): its one copy is the
    # worker's bytes of it.
    sent = os.urandom(2 * THRESHOLD)
    echoed = await bctx.run_sync(_funcs.identity, sent)
    assert type(echoed) is bytes and echoed == sent and echoed is not sent
    assert _interpool.lent_buffers() == 0
    # A bytes the worker keeps: a subinterpreter lends it, the caller copies it straight into its
    # own bytes, and the worker keeps lending until its next job (or its end: see the fixture).
    kept = await bctx.run_sync(_funcs.make_kept_bytes, 2 * THRESHOLD)
    assert type(kept) is bytes and kept == expected
    lends = on_subinterpreters(bctx)
    assert _interpool.lent_buffers() == (1 if lends else 0)
    await bctx.run_sync(_funcs.release_kept)
    assert _interpool.lent_buffers() == 0
    # Every value stays valid and whole: given, copied, or after its worker let go of its own.
    assert value == expected and kept == expected and echoed == sent
    del value, echoed
    assert await bctx.run_sync(_funcs.identity, 1) == 1


async def test_a_bytes_made_from_a_memoryview_argument_comes_back_as_bytes(bctx):
    # The job reads the view in place (subinterpreter) or from its mapping (process); bytes()
    # is its one copy in the worker, and the caller gets a bytes, not a view.
    data = bytearray(b"v" * (2 * THRESHOLD))
    value = await bctx.run_sync(bytes, memoryview(data))
    assert type(value) is bytes and value == data
    echoed = await bctx.run_sync(_funcs.identity, memoryview(data))
    assert type(echoed) is memoryview and type(echoed.obj).__name__ == "HostBuffer"
    assert echoed == data


async def test_a_memoryview_keeps_its_format_and_shape(bctx):
    from array import array

    numbers = array("d", range(THRESHOLD // 8 + 3))
    view = memoryview(numbers)
    back = await bctx.run_sync(_funcs.identity, view)
    assert (back.format, back.shape, back.tolist()) == ("d", view.shape, numbers.tolist())
    assert await bctx.run_sync(memoryview.tolist, view) == numbers.tolist()


async def test_mutating_a_bytearray_after_the_call_does_not_affect_the_finished_job(bctx):
    data = bytearray(b"a" * (2 * THRESHOLD))
    result = await bctx.run_sync(bytes, data)
    data[:] = b"b" * len(data)
    data.extend(b"more")  # no export is left: the array may resize
    assert result == b"a" * (2 * THRESHOLD)
    assert await bctx.run_sync(bytes, data) == b"b" * (2 * THRESHOLD) + b"more"


async def test_a_large_value_outlives_its_context(worker_type=None):
    for kind_of_worker in TYPES:
        async with interpool.open_worker_context(worker_type=kind_of_worker) as ctx:
            value = await ctx.run_sync(_funcs.make_buffer, "bytearray", 4 * THRESHOLD)
            view = await ctx.run_sync(_funcs.make_buffer, "memoryview", 4 * THRESHOLD)
            blob = await ctx.run_sync(_funcs.make_buffer, "bytes", 4 * THRESHOLD)
        expected = _funcs.make_buffer("bytes", 4 * THRESHOLD)
        assert bytes(value) == expected
        assert bytes(view) == expected
        assert blob == expected
        assert _interpool.lent_buffers() == 0
        del value, view, blob
    assert memfds_of_this_process() == ([], [])


@pytest.mark.parametrize("worker_type", TYPES, ids=lambda t: t.value)
async def test_a_cancelled_call_releases_its_buffers(worker_type, tmp_path):
    data = bytearray(b"c" * (2 * THRESHOLD))
    async with interpool.open_worker_context(worker_type=worker_type) as ctx:
        await cancel_once_started(ctx, tmp_path, data)
    # The interrupted worker ended with the context, and with it the job that read `data`.
    assert _interpool.release_buffers() == 0
    data.extend(b"!")  # resizable: nothing exports it any more
    assert memfds_of_this_process() == ([], [])


@pytest.mark.parametrize(
    "worker_type", [interpool.WorkerType.FORKSERVER, interpool.WorkerType.SPAWN], ids=str
)
async def test_a_killed_process_worker_leaves_no_shared_memory_behind(worker_type, tmp_path):
    async with interpool.open_worker_context(worker_type=worker_type) as ctx:
        # A value in shared memory first: it is ours now, and freed with it.
        value = await ctx.run_sync(_funcs.make_buffer, "bytes", 2 * THRESHOLD)
        assert len(value) == 2 * THRESHOLD
        del value
        # kill_on_cancel: SIGKILL, mid-job, its buffers mapped.
        await cancel_once_started(ctx, tmp_path, b"k" * (4 * THRESHOLD))
    assert memfds_of_this_process() == ([], [])


def copy_helper_threads():
    """How many threads of this process are large copies' helper (``interpool-copy``)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        except OSError:
            continue
    return names.count("interpool-copy")


@pytest.mark.parametrize(
    "size",
    [
        POPULATE_FROM - 1,
        POPULATE_FROM,
        POPULATE_FROM + 1,
        SPLIT_FROM - 1,
        SPLIT_FROM,
        SPLIT_FROM + 1,
    ],
)
async def test_large_copies_are_exact_around_their_thresholds_both_ways(bctx, size):
    # Random bytes: a chunk copied to the wrong place (a page or a chunk off) cannot match.
    data = os.urandom(size)
    # A whole bytes: built by the worker (subinterpreter), lent back and copied by the caller.
    echoed = await bctx.run_sync(_funcs.identity, data)
    assert type(echoed) is bytes and echoed == data
    # From an unaligned, odd-sized source: a view of the caller's memory at an odd offset, and
    # a bytes the worker makes of it.
    view = memoryview(data)[3:]
    assert await bctx.run_sync(bytes, view) == data[3:]
    # Results copied out of the worker's memory: a bytearray, and a view at an odd offset.
    made = await bctx.run_sync(bytearray, data)
    assert type(made) is bytearray and made == data
    assert await bctx.run_sync(_funcs.view_from, data, 5) == data[5:]
    assert copy_helper_threads() <= 1


async def test_a_cancelled_call_whose_large_copy_ran_releases_its_buffers(bctx, tmp_path):
    big = os.urandom(SPLIT_FROM + 1)
    assert await bctx.run_sync(_funcs.identity, big) == big  # a result given or copied
    # The worker has copied `big` into its own bytes when the job starts.
    await cancel_once_started(bctx, tmp_path, big)
    assert await bctx.run_sync(_funcs.identity, 1) == 1  # a new worker; the old one is gone
    assert _interpool.release_buffers() == 0
    assert _interpool.lent_buffers() == 0
    assert copy_helper_threads() <= 1
