"""Interpreter exit with workers alive, and what `import interpool` gives inside a worker."""

import _funcs
import pytest
from _helpers import run_script

import interpool

pytestmark = pytest.mark.needs_subinterpreters

# Starts a job that blocks in C (os.read on a pipe nobody writes), cancels it with
# kill_on_cancel so that its worker is abandoned, then lets the interpreter exit.
STUCK_AT_EXIT = """
    import os
    import trio
    import interpool

    def block(started_w, never_r):
        # Swallows the interrupt wherever it lands (the signal is inside the try too) and keeps
        # blocking in C, as a stubborn C extension would.
        signalled = False
        while True:
            try:
                if not signalled:
                    os.write(started_w, b"s")
                    signalled = True
                os.read(never_r, 1)
            except KeyboardInterrupt:
                pass

    async def main():
        # A subinterpreter stuck in C is what this tests (AUTO would pick a killable process).
        interpool.configure_default_context(worker_type="subinterpreter")
        started_r, started_w = os.pipe()
        never_r, never_w = os.pipe()
        async with trio.open_nursery() as nursery:
            async def call():
                await interpool.run_sync(block, started_w, never_r, kill_on_cancel=True)
            nursery.start_soon(call)
            await trio.lowlevel.wait_readable(started_r)
            nursery.cancel_scope.cancel()
        print("abandoned; exiting", flush=True)

    if __name__ == "__main__":
        trio.run(main)
"""

CLEAN_EXIT = """
    import atexit
    import sys

    if __name__ == "__main__":
        # Registered before interpool's own exit hook, so it runs after it (atexit is LIFO).
        def report():
            live = sys.modules["interpool._interpool"].live_subinterpreters()
            print("live after exit hook:", live)

        atexit.register(report)

    import trio
    import interpool
    from interpool import _interpool

    async def main():
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(interpool.run_sync, abs, -1)
        print("live before exit:", _interpool.live_subinterpreters() > 0, flush=True)

    if __name__ == "__main__":
        trio.run(main)
"""


def test_a_worker_stuck_in_c_at_exit_makes_the_process_exit_1_instead_of_aborting(tmp_path):
    proc = run_script(tmp_path, STUCK_AT_EXIT)
    assert proc.stdout == "abandoned; exiting\n"
    assert proc.returncode == 1, proc.stderr
    assert "stuck in C code at exit" in proc.stderr
    assert "Fatal Python error" not in proc.stderr


def test_exit_ends_the_default_context_workers_before_finalization(tmp_path):
    proc = run_script(tmp_path, CLEAN_EXIT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "live before exit: True\nlive after exit hook: 0\n"
    assert proc.stderr == ""


async def test_interpool_inside_a_worker_imports_but_refuses_to_run():
    message = await interpool.run_sync(_funcs.call_interpool_inside_worker)
    assert message == "interpool's API cannot be used inside an interpool worker"
