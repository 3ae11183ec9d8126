"""Process worker types, SPAWN and FORKSERVER: what they add to the common contract.

Every test runs for both types. Processes can be killed (``kill_on_cancel`` SIGKILLs and reaps
them), a crash breaks only its own call (with the exit code in the error), they ignore Ctrl-C,
and they die with their parent. Subinterpreters are not expected to pass these: they can neither
be killed in C code nor survive a crash.

Workers inherit none of the test's fds, so jobs synchronise through FIFOs named by path
(:class:`Fifo`). No test sleeps to synchronise; deadlines only turn a hang into a failure.
"""

import math
import os
import select
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import _funcs
import _helpers
import pytest
import trio
import trio.testing

import interpool
from interpool import _context

PROCESS_TYPES = [interpool.WorkerType.SPAWN, interpool.WorkerType.FORKSERVER]
SCRIPT_TIMEOUT = 120

pytestmark = pytest.mark.parametrize("worker_type", PROCESS_TYPES, ids=lambda t: t.value)


def child_pids(pid="self"):
    """The children of ``pid``: {pid: command line}."""
    # A task or process that is exiting meanwhile reads as missing (ENOENT) or gone (ESRCH).
    children = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return children
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in pids:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    children[child] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                pass
    return children


def workers_left():
    """Worker processes of this process: its children and the forkserver's (the forkserver
    itself lives as long as we do)."""
    workers = {}
    for pid, cmd in child_pids().items():
        if " forkserver " in cmd:
            workers.update(child_pids(pid))
        else:
            workers[pid] = cmd
    return workers


async def wait_dead(pid):
    """Waits until the process ``pid`` has exited (a zombie counts)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already exited and reaped
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def assert_reaped(pid):
    """The worker ``pid`` ended and was reaped (by us or by the forkserver): no zombie."""
    assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} is still there"


class Fifo:
    """A named pipe in ``tmp_path`` that jobs open by path.

    ``wait_started`` reads a pid written by ``_funcs.signal_started_at``; ``release`` wakes a job
    blocked in ``_funcs.block_after_signal``. The read end is opened now and non-blocking, so a
    job's blocking open for writing succeeds at once; ``release`` keeps a read-write fd, so the
    job's open for reading never waits either.
    """

    def __init__(self, path):
        os.mkfifo(path)
        self.path = str(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    def close(self):
        os.close(self.fd)

    async def wait_started(self):
        data = b""
        while len(data) < _funcs.STARTED_SIZE:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                data += os.read(self.fd, _funcs.STARTED_SIZE - len(data))
            except BlockingIOError:
                continue
        return struct.unpack(_funcs.STARTED_FORMAT, data)[0]

    def release(self):
        os.write(self.fd, b"r")


@pytest.fixture
def fifos(tmp_path):
    made = []

    def make(name="started"):
        fifo = Fifo(tmp_path / name)
        made.append(fifo)
        return fifo

    yield make
    for fifo in made:
        fifo.close()


@pytest.fixture
async def pctx(worker_type):
    """A context of the type under test; teardown checks a clean exit and no worker left."""
    async with interpool.open_worker_context(worker_type=worker_type) as context:
        yield context
    _helpers.assert_no_workers(context)
    assert workers_left() == {}


async def cancel_when_started(cancel_scope, started, pids):
    pids.append(await started.wait_started())
    cancel_scope.cancel()


# --- the type itself -----------------------------------------------------------


def test_processes_can_be_killed_and_survive_crashes(worker_type):
    [info] = [i for i in interpool.available_worker_types() if i.worker_type is worker_type]
    assert info.available, info.reason
    assert info.hard_kill is True
    assert info.crash_isolation is True


def test_fork_is_refused_with_the_reason_and_the_alternative(worker_type):
    with pytest.raises(ValueError, match="multi-threaded") as excinfo:
        _context.ContextOptions(worker_type="fork")
    assert "FORKSERVER" in str(excinfo.value)


async def test_jobs_run_in_another_process_that_is_reused(pctx):
    first = await pctx.run_sync(os.getpid)
    assert first != os.getpid()
    assert await pctx.run_sync(os.getpid) == first
    assert await pctx.run_sync(_funcs.add, 1, 2) == 3
    assert await pctx.run_sync(_funcs.in_a_worker) is True
    assert await pctx.run_sync(_funcs.module_loaded, "trio") is False
    assert sys.path == await pctx.run_sync(_funcs.get_sys_path)


async def test_exceptions_come_back_with_their_chain(pctx):
    with pytest.raises(KeyError, match="the effect") as excinfo:
        await pctx.run_sync(_funcs.raise_with_cause)
    assert isinstance(excinfo.value.__cause__, ValueError)
    with pytest.raises(SystemExit):
        await pctx.run_sync(_funcs.raise_system_exit, 3)


# --- kill_on_cancel ------------------------------------------------------------


async def test_kill_on_cancel_kills_and_reaps_the_process(pctx, fifos):
    started = fifos()
    warm = await pctx.run_sync(os.getpid)
    pids = []
    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as cs:
                nursery.start_soon(cancel_when_started, cs, started, pids)
                await pctx.run_sync(_funcs.spin_after_signal, started.path, kill_on_cancel=True)
                pytest.fail("the call returned")
    assert cs.cancelled_caught
    assert pids == [warm]
    assert_reaped(warm)
    assert pctx.statistics().running_workers == 0
    fresh = await pctx.run_sync(os.getpid)
    assert fresh != warm


async def test_cancel_without_kill_waits_for_the_job_and_keeps_the_worker(pctx, fifos):
    started, release = fifos(), fifos("release")
    result = []

    async def cancel_then_release(cs):
        result.append(await started.wait_started())
        cs.cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.release()

    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as cs:
                nursery.start_soon(cancel_then_release, cs)
                result.append(
                    await pctx.run_sync(_funcs.block_after_signal, started.path, release.path)
                )
                await trio.lowlevel.checkpoint()
                pytest.fail("Cancelled was not delivered at the next checkpoint")
    pid, value = result
    assert value == b"r"
    assert cs.cancelled_caught
    assert await pctx.run_sync(os.getpid) == pid


async def test_kill_on_cancel_stops_a_job_blocked_in_c(pctx, fifos):
    started, release = fifos(), fifos("release")
    pids = []
    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as cs:
                nursery.start_soon(cancel_when_started, cs, started, pids)
                await pctx.run_sync(
                    _funcs.block_after_signal, started.path, release.path, kill_on_cancel=True
                )
    assert cs.cancelled_caught
    assert_reaped(pids[0])
    assert await pctx.run_sync(_funcs.add, 2, 2) == 4


# --- crashes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "args", "code"),
    [
        (_funcs.segfault, (), "exit code -11, SIGSEGV"),
        (os._exit, (42,), "exit code 42"),
    ],
    ids=["segfault", "os._exit"],
)
async def test_a_crash_breaks_only_its_call_with_the_exit_code(pctx, job, args, code):
    before = await pctx.run_sync(os.getpid)
    with trio.fail_after(_helpers.HANG_GUARD):
        with pytest.raises(interpool.BrokenWorkerError, match=code):
            await pctx.run_sync(job, *args)
    assert_reaped(before)
    after = await pctx.run_sync(os.getpid)
    assert after != before


async def test_an_external_sigkill_during_a_job_breaks_it(pctx, fifos):
    started, release = fifos(), fifos("release")

    async def kill_when_started():
        os.kill(await started.wait_started(), signal.SIGKILL)

    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_when_started)
            with pytest.raises(interpool.BrokenWorkerError, match="exit code -9, SIGKILL"):
                await pctx.run_sync(_funcs.block_after_signal, started.path, release.path)
    assert await pctx.run_sync(_funcs.add, 1, 1) == 2


async def test_a_worker_killed_while_idle_is_replaced(worker_type):
    with trio.fail_after(_helpers.HANG_GUARD):
        with pytest.raises(interpool.BrokenWorkerError, match=r"exited non-zero \(-9\)"):
            async with interpool.open_worker_context(worker_type=worker_type) as ctx:
                idle = await ctx.run_sync(os.getpid)
                os.kill(idle, signal.SIGKILL)
                await wait_dead(idle)
                # Its next job is handed to a fresh worker; the death is reported at exit.
                assert await ctx.run_sync(os.getpid) != idle
    assert workers_left() == {}


# --- every stage of a job can fail, specifically and without hanging --------------


async def test_failures_at_every_stage_raise_the_specific_error(pctx):
    pid = await pctx.run_sync(os.getpid)
    with trio.fail_after(_helpers.HANG_GUARD):
        with pytest.raises(TypeError, match="lock"):  # pickling the arguments, here
            await pctx.run_sync(_funcs.identity, threading.Lock())
        with pytest.raises(ValueError, match="unpickling in the worker failed"):
            await pctx.run_sync(_funcs.identity, _funcs.LoadFailsInWorker())
        with pytest.raises(ValueError, match="the call failed"):
            await pctx.run_sync(_funcs.raise_value_error, "the call failed")
        with pytest.raises(TypeError, match="lock"):  # pickling the result, there
            await pctx.run_sync(_funcs.make_lock)
        with pytest.raises(ValueError, match="unpickling in the parent failed"):
            await pctx.run_sync(_funcs.return_load_fails_in_parent)
    # None of these harmed the worker.
    assert await pctx.run_sync(os.getpid) == pid


async def test_a_failing_init_breaks_calls_without_hanging(worker_type):
    with trio.fail_after(_helpers.HANG_GUARD):
        async with interpool.open_worker_context(
            worker_type=worker_type, init=_funcs.failing_init
        ) as ctx:
            with pytest.raises(interpool.BrokenWorkerError) as excinfo:
                await ctx.run_sync(_funcs.add, 1, 2)
    assert isinstance(excinfo.value.__cause__, ValueError)


async def test_init_and_retire_run_in_the_process(worker_type):
    async with _helpers.checked_context(
        worker_type=worker_type, init=_funcs.counting_init, retire=_funcs.always_true
    ) as ctx:
        first = await ctx.run_sync(os.getpid)
        assert await ctx.run_sync(_funcs.get_init_count) == 1
        assert await ctx.run_sync(os.getpid) != first
    assert workers_left() == {}


# --- signals, shutdown, parent death -------------------------------------------


async def test_sigint_does_not_reach_a_running_job(pctx, fifos):
    started, release = fifos(), fifos("release")

    async def interrupt_then_release():
        os.kill(await started.wait_started(), signal.SIGINT)
        release.release()

    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupt_then_release)
            value = await pctx.run_sync(_funcs.block_after_signal, started.path, release.path)
    assert value == b"r"


def _run_script(tmp_path, source, worker_type, **kwargs):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source).replace("WORKER_TYPE", repr(worker_type.value)))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        **kwargs,
    )


def test_ctrl_c_reaches_the_parent_not_its_workers(tmp_path, worker_type):
    proc = _run_script(
        tmp_path,
        """
        import os, signal, trio, interpool

        async def main():
            async with interpool.open_worker_context(worker_type=WORKER_TYPE) as ctx:
                pid = await ctx.run_sync(os.getpid)
                try:
                    os.killpg(0, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
                    await trio.sleep_forever()
                except KeyboardInterrupt:
                    print("parent: KeyboardInterrupt", flush=True)
                print("same worker:", await ctx.run_sync(os.getpid) == pid, flush=True)

        if __name__ == "__main__":
            trio.run(main)
            print("clean exit", flush=True)
        """,
        worker_type,
        start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "parent: KeyboardInterrupt",
        "same worker: True",
        "clean exit",
    ]


def test_main_script_functions_and_print_reach_the_parent(tmp_path, worker_type):
    proc = _run_script(
        tmp_path,
        """
        import trio
        import interpool

        def work(x):
            print("printed by the worker", __name__)
            return x * 2

        async def main():
            async with interpool.open_worker_context(worker_type=WORKER_TYPE) as ctx:
                print("result", await ctx.run_sync(work, 21), flush=True)

        if __name__ == "__main__":
            trio.run(main)
        """,
        worker_type,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == ["printed by the worker __mp_main__", "result 42"]


def test_the_forkserver_preloads_configured_modules(tmp_path, worker_type):
    proc = _run_script(
        tmp_path,
        """
        import sys, trio, interpool

        def loaded():
            return "colorsys" in sys.modules

        async def main():
            interpool.configure_forkserver(preload=["colorsys"])
            async with interpool.open_worker_context(worker_type=WORKER_TYPE) as ctx:
                print(await ctx.run_sync(loaded), flush=True)
            try:
                interpool.configure_forkserver(preload=["json"])
            except RuntimeError:
                print("already running", flush=True)

        if __name__ == "__main__":
            trio.run(main)
        """,
        worker_type,
    )
    assert proc.returncode == 0, proc.stderr
    if worker_type is interpool.WorkerType.FORKSERVER:
        assert proc.stdout.splitlines() == ["True", "already running"]
    else:  # SPAWN never starts the forkserver
        assert proc.stdout.splitlines() == ["False"]


def test_workers_and_the_forkserver_die_with_their_parent(tmp_path, worker_type):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, trio, trio.testing, interpool

            def spin():
                print("busy", os.getpid(), flush=True)
                while True:
                    pass

            async def main():
                async with interpool.open_worker_context(worker_type=WORKER_TYPE) as ctx:
                    server = await ctx.run_sync(os.getppid)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(ctx.run_sync, spin)  # takes the idle worker
                        await trio.testing.wait_all_tasks_blocked()
                        idle = await ctx.run_sync(os.getpid)  # so this starts another
                        print("idle", idle, server, flush=True)
                        await trio.sleep_forever()

            if __name__ == "__main__":
                trio.run(main)
            """
        ).replace("WORKER_TYPE", repr(worker_type.value))
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = dict(proc.stdout.readline().split(" ", 1) for _ in range(2))
        idle, server = map(int, lines["idle"].split())
        pids = {idle, int(lines["busy"]), server} - {proc.pid}
        assert len(pids) == (3 if worker_type is interpool.WorkerType.FORKSERVER else 2)
        fds = [os.pidfd_open(pid) for pid in pids]
    finally:
        proc.kill()  # SIGKILL: no atexit, no clean-up of any kind
        proc.wait()
        proc.stdout.close()
    try:
        deadline = time.monotonic() + 30  # a hang guard: they go within milliseconds
        for fd in fds:
            ready, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
            assert ready, f"a worker process survived its parent: {pids}"
    finally:
        for fd in fds:
            os.close(fd)


async def test_context_exit_kills_a_worker_that_does_not_end_in_time(worker_type):
    with trio.fail_after(_helpers.HANG_GUARD):
        with pytest.raises(interpool.BrokenWorkerError, match=r"1 worker.* killed after"):
            async with interpool.open_worker_context(
                worker_type=worker_type, grace_period=0.05
            ) as ctx:
                pid = await ctx.run_sync(os.getpid)
                os.kill(pid, signal.SIGSTOP)  # it cannot read the end of its channel now
    assert_reaped(pid)
    assert workers_left() == {}


async def test_context_exit_reports_a_nonzero_exit(worker_type):
    with trio.fail_after(_helpers.HANG_GUARD):
        with pytest.raises(interpool.BrokenWorkerError, match=r"exited non-zero \(-15\)"):
            async with interpool.open_worker_context(
                worker_type=worker_type, grace_period=math.inf
            ) as ctx:
                pid = await ctx.run_sync(os.getpid)
                os.kill(pid, signal.SIGTERM)
    assert_reaped(pid)


async def test_a_dead_forkserver_is_replaced(worker_type):
    if worker_type is not interpool.WorkerType.FORKSERVER:
        pytest.skip("only FORKSERVER has a server")
    with trio.fail_after(_helpers.HANG_GUARD):
        async with _helpers.checked_context(worker_type=worker_type, retire=object) as ctx:
            server = await ctx.run_sync(os.getppid)
            os.kill(server, signal.SIGKILL)  # e.g. the out-of-memory killer
            await wait_dead(server)
            # The next worker (each one retires after its job) comes from a new server.
            assert await ctx.run_sync(os.getppid) not in (server, os.getpid())
    assert workers_left() == {}


# --- large payloads --------------------------------------------------------------


async def test_a_64_mib_payload_goes_through_both_ways(pctx):
    payload = bytes(range(256)) * (64 * 1024 * 1024 // 256)
    with trio.fail_after(_helpers.HANG_GUARD):
        result = await pctx.run_sync(_funcs.identity, payload)
    assert result == payload
