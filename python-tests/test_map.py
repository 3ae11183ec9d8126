"""amap / astarmap, each rule under trio and under asyncio.

Sync tests that start their own loop (``_helpers.run``), parametrised by library.
"""

import itertools

import _funcs
import _helpers
import pytest
import trio

import interpool

pytestmark = [
    pytest.mark.needs_subinterpreters,
    pytest.mark.parametrize("library", ["trio", "asyncio"]),
]


async def collect(results):
    return [r async for r in results]


@pytest.mark.parametrize("chunksize", [1, 3, 7])
@pytest.mark.parametrize("ordered", [True, False])
def test_results_of_every_item(library, chunksize, ordered):
    async def main():
        for n in (0, 1, 10, 25):
            async with interpool.amap(
                _funcs.raise_if_seven, range(8, 8 + n), chunksize=chunksize, ordered=ordered
            ) as results:
                got = await collect(results)
            expected = [x * 10 for x in range(8, 8 + n)]
            assert (got if ordered else sorted(got)) == expected
        assert interpool.default_context_statistics().running_workers == 0

    _helpers.run(library, main)


def test_starmap_and_async_input(library):
    async def pairs():
        for i in range(10):
            yield (i, 100)

    async def main():
        async with interpool.astarmap(_funcs.add, pairs(), chunksize=3) as results:
            assert await collect(results) == [i + 100 for i in range(10)]
        async with interpool.astarmap(_funcs.add, [[1, 2], (3, 4)]) as results:
            assert await collect(results) == [3, 7]

    _helpers.run(library, main)


def test_unordered_yields_as_completed(library):
    async def main():
        with _helpers.Pipe() as release:
            items = [("block_then_return", release.r, "slow"), ("identity", "fast")]
            async with interpool.astarmap(
                _funcs.dispatch, items, ordered=False, max_in_flight=2
            ) as results:
                assert await results.__anext__() == "fast"  # while "slow" still blocks
                release.send()
                assert await collect(results) == ["slow"]

    _helpers.run(library, main)


def test_ordered_waits_for_the_first_item(library):
    async def main():
        with _helpers.Pipe() as started, _helpers.Pipe() as release:
            items = [("signal_and_block", started.w, release.r, "slow"), ("identity", "fast")]
            async with interpool.astarmap(_funcs.dispatch, items, max_in_flight=2) as results:

                async def release_when_started():
                    await started.wait_started()
                    release.send()

                if library == "trio":
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(release_when_started)
                        assert await collect(results) == ["slow", "fast"]
                else:
                    import asyncio

                    task = asyncio.create_task(release_when_started())
                    assert await collect(results) == ["slow", "fast"]
                    await task

    _helpers.run(library, main)


def test_a_chunk_is_one_job(library):
    async def main():
        # Single-use workers: each job gets an interpreter of its own.
        async with _helpers.checked_context(retire=_funcs.always_true) as ctx:
            async with interpool.amap(
                _funcs.value_and_interpreter, range(20), chunksize=5, context=ctx
            ) as results:
                got = await collect(results)
        assert [value for value, _ in got] == list(range(20))
        interps = [interp for _, interp in got]
        assert len(set(interps)) == 4
        for start in range(0, 20, 5):
            assert len(set(interps[start : start + 5])) == 1

    _helpers.run(library, main)


@pytest.mark.parametrize("ordered", [True, False])
def test_input_is_consumed_lazily_and_bounded(library, ordered):
    consumed = 0

    def numbers():
        nonlocal consumed
        for i in itertools.count():
            consumed = i + 1
            yield i

    async def main():
        taken = 0
        async with _helpers.checked_context() as ctx:
            async with interpool.amap(
                _funcs.identity,
                numbers(),
                chunksize=2,
                max_in_flight=3,
                ordered=ordered,
                context=ctx,
            ) as results:
                async for _ in results:
                    taken += 1
                    # At most max_in_flight chunks are read ahead of what was taken, and at
                    # most that many hold a worker.
                    assert consumed - taken <= 2 * 3
                    assert ctx.statistics().running_workers <= 3
                    if taken == 50:
                        break
            assert ctx.statistics().running_workers == 0

    _helpers.run(library, main)


def test_an_item_error_surfaces_at_its_position(library):
    async def main():
        got = []
        with pytest.raises(ValueError) as info:
            async with interpool.amap(_funcs.raise_if_seven, range(20), chunksize=3) as results:
                async for r in results:
                    got.append(r)
        assert got == [x * 10 for x in range(7)]
        assert info.value.args == (7,)
        assert any("raise_if_seven" in note for note in info.value.__notes__)
        assert interpool.default_context_statistics().running_workers == 0

    _helpers.run(library, main)


def test_unordered_error_surfaces_when_it_completes_and_cancels_the_rest(library):
    async def main():
        async with _helpers.checked_context() as ctx:
            with _helpers.Pipe() as started:
                items = [("signal_and_spin", started.w), ("raise_value_error", "boom")]
                with pytest.raises(ValueError, match="boom"):
                    async with interpool.astarmap(
                        _funcs.dispatch, items, ordered=False, max_in_flight=2, context=ctx
                    ) as results:
                        await collect(results)  # the spinning job never ends by itself
            # The spinning job was interrupted (or never started, if the interrupt came first)
            # and its worker retired.
            assert ctx.statistics().running_workers == 0

    _helpers.run(library, main)


def test_an_input_error_surfaces_at_its_position(library):
    def items():
        yield from range(5)
        raise KeyError("input")

    async def main():
        got = []
        with pytest.raises(KeyError, match="input"):
            async with interpool.amap(_funcs.identity, items(), chunksize=2) as results:
                async for r in results:
                    got.append(r)
        assert got == list(range(5))
        with pytest.raises(KeyError, match="input"):
            async with interpool.amap(_funcs.identity, items(), ordered=False) as results:
                await collect(results)
        # An item that cannot be pickled is an error at its position too.
        got = []
        with pytest.raises(TypeError):
            async with interpool.amap(_funcs.identity, [1, _funcs.make_lock()]) as results:
                async for r in results:
                    got.append(r)
        assert got == [1]

    _helpers.run(library, main)


@pytest.mark.parametrize("ordered", [True, False])
def test_leaving_early_interrupts_outstanding_jobs(library, ordered):
    async def main():
        async with _helpers.checked_context() as ctx:
            with _helpers.Pipe() as started:
                items = [("identity", "first"), ("signal_and_spin", started.w)]
                async with interpool.astarmap(
                    _funcs.dispatch, items, ordered=ordered, max_in_flight=2, context=ctx
                ) as results:
                    async for r in results:
                        assert r == "first"
                        await started.wait_started()
                        break
            # The spinning job was interrupted; both workers are back (an interrupted
            # subinterpreter is kept).
            stats = ctx.statistics()
            assert (stats.running_workers, stats.idle_workers) == (0, 2)

    _helpers.run(library, main)


def test_leaving_early_without_kill_lets_jobs_finish(library):
    async def main():
        async with _helpers.checked_context() as ctx:
            with _helpers.Pipe() as started, _helpers.Pipe() as release:
                items = [("identity", "first"), ("signal_and_block", started.w, release.r, "x")]
                async with interpool.astarmap(
                    _funcs.dispatch,
                    items,
                    max_in_flight=2,
                    kill_on_cancel=False,
                    context=ctx,
                ) as results:
                    async for _ in results:
                        interp = await started.wait_started()
                        release.send()
                        break
            stats = ctx.statistics()
            # Not interrupted: both workers are back in the cache.
            assert (stats.running_workers, stats.idle_workers) == (0, 2)
            assert interp in {await _run_sync(ctx, _funcs.worker_id) for _ in range(2)}

    _helpers.run(library, main)


def test_cancelling_the_consumer_interrupts_outstanding_jobs(library):
    async def main():
        async with _helpers.checked_context() as ctx:
            with _helpers.Pipe() as started:
                items = [("signal_and_spin", started.w)]
                if library == "trio":
                    with trio.CancelScope() as scope:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(_helpers.cancel_when_started, scope, started)
                            async with interpool.astarmap(
                                _funcs.dispatch, items, context=ctx
                            ) as results:
                                await collect(results)
                    assert scope.cancelled_caught
                else:
                    import asyncio

                    async def consume():
                        async with interpool.astarmap(
                            _funcs.dispatch, items, context=ctx
                        ) as results:
                            await collect(results)

                    task = asyncio.create_task(consume())
                    await started.wait_started()
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
            assert ctx.statistics().running_workers == 0

    _helpers.run(library, main)


def test_bad_arguments(library):
    async def main():
        with pytest.raises(ValueError):
            interpool.amap(_funcs.identity, [], chunksize=0)
        with pytest.raises(ValueError):
            interpool.amap(_funcs.identity, [], max_in_flight=0)
        with pytest.raises(TypeError):
            interpool.amap(_funcs.async_job, [])
        with pytest.raises(TypeError):
            interpool.amap(_funcs.identity, 5)
        with pytest.raises(TypeError):
            async for _ in interpool.amap(_funcs.identity, []):
                pass
        async with interpool.open_worker_context() as ctx:
            pass
        with pytest.raises(trio.ClosedResourceError):
            async with interpool.amap(_funcs.identity, [1], context=ctx):
                pass

    _helpers.run(library, main)


async def _run_sync(ctx, fn, *args):
    return await ctx.run_sync(fn, *args)
