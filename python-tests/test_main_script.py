"""Functions defined in a script's __main__, and lambdas/closures with cloudpickle."""

import _funcs
import pytest
from _helpers import run_script

import interpool

pytestmark = pytest.mark.needs_subinterpreters


def _run_script(tmp_path, source):
    proc = run_script(tmp_path, source)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout.splitlines()


def test_function_defined_in_main_script(tmp_path):
    lines = _run_script(
        tmp_path,
        """
        import trio
        import interpool

        print("module level", __name__, flush=True)

        def work(x):
            return x * 2

        async def main():
            print("result", await interpool.run_sync(work, 21), flush=True)

        if __name__ == "__main__":
            trio.run(main)
        """,
    )
    # The worker loads the script as __mp_main__: its module-level code runs
    # there once, and the __main__ block does not.
    assert lines == ["module level __main__", "module level __mp_main__", "result 42"]


@pytest.mark.parametrize("worker_type", ["subinterpreter", "forkserver", "spawn"])
def test_function_defined_in_main_script_once_the_parent_uses_multiprocessing(
    tmp_path, worker_type
):
    # Workers then import multiprocessing for its authkey, whose __init__ aliases __mp_main__
    # to the worker's own, empty __main__: the script must still be found.
    lines = _run_script(
        tmp_path,
        f"""
        import multiprocessing
        import trio
        import interpool

        def work(x):
            return x * 2

        async def main():
            async with interpool.open_worker_context(worker_type={worker_type!r}) as ctx:
                print("result", await ctx.run_sync(work, 21), flush=True)

        if __name__ == "__main__":
            trio.run(main)
        """,
    )
    assert lines == ["result 42"]


def test_function_defined_in_main_script_with_explicit_context(tmp_path):
    lines = _run_script(
        tmp_path,
        """
        import trio
        import interpool

        FACTOR = 3

        def work(x):
            return x * FACTOR, __name__

        async def main():
            async with interpool.open_worker_context() as ctx:
                print(*await ctx.run_sync(work, 14), flush=True)

        if __name__ == "__main__":
            trio.run(main)
        """,
    )
    assert lines == ["42 __mp_main__"]


def test_lambda_in_main_script_with_cloudpickle(tmp_path):
    pytest.importorskip("cloudpickle")
    lines = _run_script(
        tmp_path,
        """
        import trio
        import interpool

        def make_adder(n):
            def add(x):
                return x + n
            return add

        async def main():
            print(await interpool.run_sync(lambda x: x * 3, 7), flush=True)
            print(await interpool.run_sync(make_adder(10), 5), flush=True)

        if __name__ == "__main__":
            trio.run(main)
        """,
    )
    assert lines == ["21", "15"]


async def test_lambda_with_cloudpickle(ctx):
    pytest.importorskip("cloudpickle")
    assert await ctx.run_sync(lambda x: x * 3, 7) == 21


async def test_closure_with_cloudpickle(ctx):
    pytest.importorskip("cloudpickle")
    n = 10

    def add(x):
        return x + n

    assert await ctx.run_sync(add, 5) == 15


async def test_closure_over_module_function_with_cloudpickle(ctx):
    pytest.importorskip("cloudpickle")
    offset = 100
    assert await ctx.run_sync(lambda: _funcs.add(offset, 1)) == 101


async def test_module_level_run_sync_with_lambda():
    pytest.importorskip("cloudpickle")
    assert await interpool.run_sync(lambda: 7 * 6) == 42


def test_a_script_without_a_main_guard_raises_broken_worker_error(tmp_path):
    """As trio-parallel's workers, ours cannot serve a script that starts its program at module
    level: BrokenWorkerError, with the loader's message, caused by the script's own error."""
    lines = _run_script(
        tmp_path,
        """
        import trio
        import interpool

        def work(x):
            return x * 2

        async def main():
            for worker_type in ("subinterpreter", "forkserver", "spawn", "auto"):
                async with interpool.open_worker_context(worker_type=worker_type) as ctx:
                    try:
                        await ctx.run_sync(work, 1)
                    except interpool.BrokenWorkerError as error:
                        assert "loading the parent's main script" in str(error), error
                        assert "if __name__ == '__main__':" in str(error), error
                        print(worker_type, type(error.__cause__).__name__, flush=True)

        trio.run(main)  # no guard: in a worker this fails, interpool's API is parent-only
        """,
    )
    assert lines == [f"{t} RuntimeError" for t in ("subinterpreter", "forkserver", "spawn", "auto")]
