"""What ``import interpool`` imports: neither trio nor asyncio until a program runs on one, so an
asyncio program never imports trio and a trio program never imports asyncio. Each check runs in a
fresh interpreter, where ``sys.modules`` shows exactly what was imported. And what a worker
imports: the worker-side package ``interpool._worker``, never the front end."""

import textwrap

import _funcs
import pytest
from _helpers import run_script

import interpool
from interpool import WorkerType

pytestmark = pytest.mark.needs_subinterpreters

LOADED = """
import sys

def loaded(prefix):
    return sorted(m for m in sys.modules if m == prefix or m.startswith(prefix + "."))
"""


def check(tmp_path, source):
    proc = run_script(tmp_path, LOADED + textwrap.dedent(source))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_import_interpool_imports_neither_trio_nor_asyncio(tmp_path):
    check(
        tmp_path,
        """
        import interpool
        assert loaded("trio") == [], loaded("trio")
        assert loaded("asyncio") == [], loaded("asyncio")
        print("ok")
        """,
    )


def test_an_asyncio_program_never_imports_trio(tmp_path):
    check(
        tmp_path,
        """
        import asyncio
        import interpool

        async def main():
            assert await interpool.run_sync(abs, -3) == 3
            async with interpool.amap(abs, [-1, -2]) as results:
                assert [r async for r in results] == [1, 2]
            async with interpool.open_worker_context() as ctx:
                assert await ctx.run_sync(abs, -4) == 4
            async with interpool.cache_scope():
                assert await interpool.run_sync(abs, -5) == 5
            limiter = interpool.current_default_worker_limiter()
            async with limiter:
                pass

        asyncio.run(main())
        assert loaded("trio") == [], loaded("trio")
        print("ok")
        """,
    )


def test_a_trio_program_never_imports_asyncio(tmp_path):
    check(
        tmp_path,
        """
        import trio
        import interpool as trio_parallel

        async def main():
            assert await trio_parallel.run_sync(abs, -3) == 3
            async with trio_parallel.amap(abs, [-1, -2]) as results:
                assert [r async for r in results] == [1, 2]
            async with trio_parallel.open_worker_context() as ctx:
                assert await ctx.run_sync(abs, -4) == 4
            async with trio_parallel.cache_scope():
                assert await trio_parallel.run_sync(abs, -5) == 5
            limiter = trio_parallel.current_default_worker_limiter()
            assert isinstance(limiter, trio.CapacityLimiter)

        trio.run(main)
        assert loaded("asyncio") == [], loaded("asyncio")
        print("ok")
        """,
    )


def test_trio_types_in_the_asyncio_api_still_arrive_when_needed(tmp_path):
    # A closed context raises trio.ClosedResourceError and a full asyncio limiter's
    # acquire_nowait raises trio.WouldBlock under asyncio too: trio is imported then.
    check(
        tmp_path,
        """
        import asyncio
        import interpool

        async def main():
            async with interpool.open_worker_context() as ctx:
                pass
            try:
                await ctx.run_sync(abs, -1)
            except Exception as exc:
                assert type(exc).__module__ == "trio", type(exc)
                assert type(exc).__name__ == "ClosedResourceError", type(exc)
            else:
                raise AssertionError("a closed context ran a call")
            limiter = interpool.AsyncioCapacityLimiter(1)
            limiter.acquire_nowait()
            import trio
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                pass
            else:
                raise AssertionError("a full limiter gave a second token")

        asyncio.run(main())
        print("ok")
        """,
    )


@pytest.mark.parametrize(
    "worker_type",
    [WorkerType.SUBINTERPRETER, WorkerType.FORKSERVER, WorkerType.SPAWN],
    ids=lambda t: t.value,
)
async def test_a_worker_imports_the_worker_side_package_and_no_front_end_module(worker_type):
    # A map chunk makes the worker import interpool._worker.chunks by reference; the job imports
    # the Dask task's module too.
    async with interpool.open_worker_context(worker_type=worker_type) as ctx:
        job = ["interpool._worker.dask_job"]
        async with interpool.amap(_funcs.interpool_modules, job, context=ctx) as results:
            [loaded] = [modules async for modules in results]
    assert {"interpool._worker.chunks", "interpool._worker.dask_job"} <= set(loaded), loaded
    shared = ("interpool", "interpool._types")
    front_end = [m for m in loaded if m not in shared and not m.startswith("interpool._worker")]
    assert front_end == [], loaded


def test_a_new_subinterpreter_worker_starts_without_functools_collections_or_array(tmp_path):
    # What a new worker's loop imports is what its start costs: _pickle gets a stand-in for
    # functools, and array is looked up only once something imported it. In a fresh parent: one
    # that imported multiprocessing makes its workers import it too (to take its authkey).
    check(
        tmp_path,
        """
        import trio
        import interpool

        # eval, a builtin, and a str: loading the job imports nothing more in the worker.
        NAMES = "[m for m in ('_pickle', 'functools', 'collections', 'array') if m in modules]"
        JOB = f"(lambda modules: {NAMES})(__import__('sys').modules)"
        REAL = "(lambda f, _f: f.partial is _f.partial and callable(f.lru_cache))" \\
            "(__import__('functools'), __import__('_functools'))"

        async def main():
            async with interpool.open_worker_context(worker_type="subinterpreter") as ctx:
                assert await ctx.run_sync(eval, JOB) == ["_pickle"], await ctx.run_sync(eval, JOB)
                assert await ctx.run_sync(eval, REAL)

        trio.run(main)
        print("ok")
        """,
    )


@pytest.mark.parametrize(
    "worker_type",
    [WorkerType.SUBINTERPRETER, WorkerType.FORKSERVER, WorkerType.SPAWN],
    ids=lambda t: t.value,
)
async def test_an_array_made_by_a_new_worker_still_travels_out_of_band(worker_type):
    threshold = interpool._interpool.BUFFER_THRESHOLD
    async with interpool.open_worker_context(worker_type=worker_type, retire=object) as ctx:
        assert await ctx.run_sync(_funcs.out_of_band_buffers, "array", threshold) == 1
        assert await ctx.run_sync(_funcs.out_of_band_buffers, "array", threshold - 1) == 0
        assert await ctx.run_sync(_funcs.out_of_band_buffers, "bytearray", threshold) == 1


@pytest.mark.parametrize("worker_type", ["subinterpreter", "forkserver", "spawn"])
def test_a_worker_takes_the_parents_authkey_when_it_imports_multiprocessing(tmp_path, worker_type):
    # Not at its start: importing multiprocessing costs a new worker ~12 ms. A job that imports
    # it (here, or a Manager proxy unpickling: test_run_sync.py) finds the parent's authkey set.
    check(
        tmp_path,
        f"""
        import multiprocessing
        import trio
        import interpool

        LOADED = "'multiprocessing.process' in __import__('sys').modules"
        KEY = "bytes(__import__('multiprocessing.process').process.current_process().authkey)"

        async def main():
            async with interpool.open_worker_context(worker_type={worker_type!r}) as ctx:
                if {worker_type!r} == "subinterpreter":
                    assert not await ctx.run_sync(eval, LOADED)
                key = await ctx.run_sync(eval, KEY)
                assert key == bytes(multiprocessing.current_process().authkey)
                assert await ctx.run_sync(eval, LOADED)

        trio.run(main)
        print("ok")
        """,
    )
