"""Bursts: many more calls than tokens at once, under trio and asyncio, on every worker type.

Under trio the calls that find every token of a ``trio.CapacityLimiter`` out park on it with
their job ready, and a call giving its token back runs the queued jobs for them (``_Trio.serve``
in ``_backends.py``). What these tests hold to, whatever path a call took: every call returns
its own value, each job runs exactly once (``_funcs.claim`` refuses a second run), a call
cancelled while it waits for a token never runs, and every token comes back.
"""

import asyncio
import contextlib
import os

import _funcs
import _helpers
import pytest
import trio
import trio.testing

import interpool
from interpool import _backends

pytestmark = [
    pytest.mark.needs_subinterpreters,
    pytest.mark.contract,
    pytest.mark.usefixtures("worker_type"),
]

BURST = 300
QUEUED = 40


def claimed(directory):
    return sorted(int(name) for name in os.listdir(directory))


def assert_tokens_back(limiter):
    assert limiter.borrowed_tokens == 0
    assert limiter.statistics().tasks_waiting == 0


async def burst(ctx, directory, limiter, jobs=BURST):
    results = {}

    async def one(i):
        results[i] = await ctx.run_sync(_funcs.claim, str(directory), i, limiter=limiter)

    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            for i in range(jobs):
                nursery.start_soon(one, i)
    return results


@pytest.mark.parametrize("tokens", [1, 2, 3])
async def test_a_burst_returns_every_value_and_runs_each_job_once(ctx, tmp_path, tokens):
    limiter = trio.CapacityLimiter(tokens)
    results = await burst(ctx, tmp_path, limiter)
    assert results == {i: i for i in range(BURST)}
    assert claimed(tmp_path) == list(range(BURST))
    assert_tokens_back(limiter)
    assert ctx.statistics().running_workers == 0


async def test_a_burst_on_the_default_limiter(ctx, tmp_path):
    limiter = interpool.current_default_worker_limiter()
    limiter.total_tokens = 2
    results = await burst(ctx, tmp_path, None)
    assert results == {i: i for i in range(BURST)}
    assert claimed(tmp_path) == list(range(BURST))
    assert_tokens_back(limiter)


async def test_a_burst_on_a_limiter_that_is_no_capacity_limiter(ctx, tmp_path):
    semaphore = trio.Semaphore(2)
    results = await burst(ctx, tmp_path, semaphore)
    assert results == {i: i for i in range(BURST)}
    assert claimed(tmp_path) == list(range(BURST))
    assert semaphore.value == 2


def test_a_burst_under_asyncio(worker_type, tmp_path):
    async def main():
        async with interpool.open_worker_context(worker_type=worker_type) as ctx:
            limiter = interpool.AsyncioCapacityLimiter(2)
            results = {}

            async def one(i):
                results[i] = await ctx.run_sync(_funcs.claim, str(tmp_path), i, limiter=limiter)

            async with asyncio.TaskGroup() as group:
                for i in range(BURST):
                    group.create_task(one(i))
            assert limiter.borrowed_tokens == 0
        _helpers.assert_no_workers(ctx)
        return results

    assert _helpers.run("asyncio", main) == {i: i for i in range(BURST)}
    assert claimed(tmp_path) == list(range(BURST))


class Counted(dict):
    """A dict of results whose size a test can wait for (jobs finish in workers: a task waiting
    for one counts as blocked for ``wait_all_tasks_blocked``)."""

    def __init__(self):
        super().__init__()
        self._waiting = []

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        for size, event in self._waiting:
            if len(self) >= size:
                event.set()

    async def wait_for_size(self, size):
        event = trio.Event()
        self._waiting.append((size, event))
        if len(self) >= size:
            event.set()
        await event.wait()


class Blocked:
    """Two calls holding both tokens of ``limiter`` with jobs blocked until :meth:`release`."""

    def __init__(self, ctx, limiter, nursery, started, release):
        self.ctx, self.limiter, self.nursery = ctx, limiter, nursery
        self.started, self._release = started, release
        self.values = Counted()

    async def start(self, n=2):
        borrowed = self.limiter.borrowed_tokens
        for i in range(n):
            self.nursery.start_soon(self._hold, i)
        for _ in range(n):
            await self.started.wait_started()
        assert self.limiter.borrowed_tokens == borrowed + n

    async def _hold(self, i):
        # kill_on_cancel: a failed assertion cancels the nursery, which must not wait for them.
        args = (_funcs.signal_and_block, self.started.w, self._release.r, i)
        self.values[i] = await self.ctx.run_sync(*args, limiter=self.limiter, kill_on_cancel=True)

    def release(self, n=1):
        self._release.send(b"r" * n)


@contextlib.asynccontextmanager
async def two_blocked_calls(ctx, limiter):
    """A nursery in which two calls hold both tokens of ``limiter`` (see :class:`Blocked`),
    within the hang guard."""
    with _helpers.Fifo() as started, _helpers.Fifo() as release:
        with trio.fail_after(_helpers.HANG_GUARD):
            async with trio.open_nursery() as nursery:
                blocked = Blocked(ctx, limiter, nursery, started, release)
                await blocked.start()
                yield nursery, blocked


async def queue_calls(ctx, directory, limiter, nursery, indices, results, **kwargs):
    """Starts a call per index and returns once all of them wait for a token; each cancel
    scope (by index) covers its call only."""
    scopes = {i: trio.CancelScope() for i in indices}

    async def one(i):
        with scopes[i]:
            results[i] = await ctx.run_sync(
                _funcs.claim, str(directory), i, limiter=limiter, **kwargs
            )

    waiting = limiter.statistics().tasks_waiting
    for i in indices:
        nursery.start_soon(one, i)
    await trio.testing.wait_all_tasks_blocked()
    assert limiter.statistics().tasks_waiting == waiting + len(indices)
    return scopes


@pytest.mark.parametrize("kwargs", [{}, {"kill_on_cancel": True}], ids=["default", "kill"])
async def test_calls_cancelled_while_queued_never_run_and_the_rest_run_once(ctx, tmp_path, kwargs):
    limiter = trio.CapacityLimiter(2)
    results = {}
    async with two_blocked_calls(ctx, limiter) as (nursery, blocked):
        indices = range(QUEUED)
        scopes = await queue_calls(ctx, tmp_path, limiter, nursery, indices, results, **kwargs)
        for i in indices[1::2]:
            scopes[i].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == QUEUED // 2
        assert claimed(tmp_path) == []
        blocked.release(2)
    kept = list(indices[::2])
    assert results == {i: i for i in kept}
    assert claimed(tmp_path) == kept
    assert all(scopes[i].cancelled_caught for i in indices[1::2])
    assert blocked.values == {0: 0, 1: 1}
    assert_tokens_back(limiter)
    assert ctx.statistics().running_workers == 0


async def test_a_resized_limiter_mid_burst_hands_out_what_it_has(ctx, tmp_path):
    limiter = trio.CapacityLimiter(2)
    results = Counted()
    async with two_blocked_calls(ctx, limiter) as (nursery, blocked):
        first = range(QUEUED)
        await queue_calls(ctx, tmp_path, limiter, nursery, first, results)
        # Two more tokens: the queued calls all run on them, beside the blocked two.
        limiter.total_tokens = 4
        await results.wait_for_size(QUEUED)
        assert results == {i: i for i in first}
        assert limiter.borrowed_tokens == 2
        assert limiter.statistics().tasks_waiting == 0
        # One token, two still out: queued calls wait until both are back.
        limiter.total_tokens = 1
        second = range(QUEUED, 2 * QUEUED)
        await queue_calls(ctx, tmp_path, limiter, nursery, second, results)
        blocked.release()
        await blocked.values.wait_for_size(1)  # its call gave its token back
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.borrowed_tokens == 1
        assert limiter.statistics().tasks_waiting == QUEUED
        assert claimed(tmp_path) == list(first)
        blocked.release()
    assert results == {i: i for i in range(2 * QUEUED)}
    assert claimed(tmp_path) == list(range(2 * QUEUED))
    assert_tokens_back(limiter)


async def test_a_task_parked_on_the_limiter_by_other_code_gets_its_turn(ctx, tmp_path):
    # A token the limiter hands to a task that is no call ends the serving; the calls queued
    # behind that task still run once it gives the token back.
    limiter = trio.CapacityLimiter(2)
    results = {}
    entered = []
    async with two_blocked_calls(ctx, limiter) as (nursery, blocked):
        await queue_calls(ctx, tmp_path, limiter, nursery, range(10), results)

        async def other_code():
            async with limiter:
                entered.append(limiter.borrowed_tokens)
                await trio.sleep(0)

        nursery.start_soon(other_code)
        await trio.testing.wait_all_tasks_blocked()
        await queue_calls(ctx, tmp_path, limiter, nursery, range(10, 20), results)
        blocked.release(2)
    assert entered and entered[0] >= 1
    assert results == {i: i for i in range(20)}
    assert claimed(tmp_path) == list(range(20))
    assert_tokens_back(limiter)


@pytest.fixture
def turns(monkeypatch):
    """Every ``Turn`` the trio backend makes during the test (a call that queued for a token)."""
    made = []

    class Recorded(_backends.Turn):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(_backends, "Turn", Recorded)
    return made


async def test_token_holders_serve_the_queue_without_reading_the_borrowers(
    ctx, tmp_path, turns, monkeypatch
):
    # 998 of the limiter's 1000 tokens are out to other borrowers: reading its borrowers
    # (statistics() copies them) would cost each served job 1000 steps. Nothing reads them, and
    # still every queued call is served by the holder that passes a token on, in order: none
    # finds a token nobody used for it (OWN), every job runs once.
    limiter = trio.CapacityLimiter(1000)
    others = [object() for _ in range(998)]
    for borrower in others:
        limiter.acquire_on_behalf_of_nowait(borrower)
    async with two_blocked_calls(ctx, limiter) as (nursery, blocked):
        results = {}
        await queue_calls(ctx, tmp_path, limiter, nursery, range(QUEUED), results)
        reads = []
        statistics = trio.CapacityLimiter.statistics
        monkeypatch.setattr(
            trio.CapacityLimiter, "statistics", lambda self: reads.append(self) or statistics(self)
        )
        blocked.release(2)
    assert reads == []
    assert results == {i: i for i in range(QUEUED)}
    assert claimed(tmp_path) == list(range(QUEUED))
    assert len(turns) == QUEUED
    assert {turn.state for turn in turns} <= {_backends.Turn.SERVED, _backends.Turn.DONE}
    for borrower in others:
        limiter.release_on_behalf_of(borrower)
    assert_tokens_back(limiter)


async def test_a_queued_call_cancelled_before_a_token_reaches_it_is_passed_over(
    ctx, tmp_path, turns
):
    # The test's task holds the only token, as a call would, and gives it back the way a call
    # does right after the first queued call was cancelled (its task woken, not yet run): the
    # token goes to the second call, which is served in its place, and so are the rest.
    limiter = trio.CapacityLimiter(1)
    results, scopes, indices = {}, {}, {}

    async def one(i):
        indices[trio.lowlevel.current_task()] = i
        with trio.CancelScope() as scopes[i]:
            results[i] = await ctx.run_sync(_funcs.claim, str(tmp_path), i, limiter=limiter)

    with trio.fail_after(_helpers.HANG_GUARD):
        async with trio.open_nursery() as nursery:
            await limiter.acquire()
            for i in range(10):
                nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            assert len(turns) == 10
            first = indices[turns[0].task]
            scopes[first].cancel()
            _backends.current().release_token(limiter, None)
    assert scopes[first].cancelled_caught
    kept = sorted(set(range(10)) - {first})
    assert results == {i: i for i in kept}
    assert claimed(tmp_path) == kept
    assert turns[0].state is _backends.Turn.GONE
    assert {turn.state for turn in turns[1:]} <= {_backends.Turn.SERVED, _backends.Turn.DONE}
    assert_tokens_back(limiter)


async def test_a_burst_beside_a_borrower_that_is_no_call_gets_the_free_token(ctx, tmp_path):
    # One of two tokens is out to another borrower (no call: it never gives it back meanwhile),
    # so the burst's first call cannot take the other at once and yields for it; the calls after
    # it, finding that token spoken for, park at once. The free token must still reach a call
    # (no call holds one to pass it on), whichever of them trio runs first: every call returns,
    # every job runs once.
    limiter = trio.CapacityLimiter(2)
    other = object()
    limiter.acquire_on_behalf_of_nowait(other)
    results = await burst(ctx, tmp_path, limiter, jobs=QUEUED)
    assert results == {i: i for i in range(QUEUED)}
    assert claimed(tmp_path) == list(range(QUEUED))
    limiter.release_on_behalf_of(other)
    assert_tokens_back(limiter)


class StepCounter(trio.abc.Instrument):
    """How many steps trio ran of each task."""

    def __init__(self):
        self.steps = {}

    def before_task_step(self, task):
        self.steps[task] = self.steps.get(task, 0) + 1


async def test_calls_finding_every_free_token_spoken_for_park_without_yielding_first(
    ctx, tmp_path, monkeypatch
):
    # The burst's first call yields once to take the free token (one is out to another
    # borrower, so it cannot take it at once); the others, started in the same pass, find that
    # token spoken for and queue their turn in their first step instead of yielding only to
    # find it taken. At most one turn (the first call's, if a parked call took the token inside
    # the limiter's own acquire meanwhile) is queued later.
    counter = StepCounter()
    queued_at_step = []

    class Counted(_backends.Turn):
        def __init__(self, task, *args):
            super().__init__(task, *args)
            queued_at_step.append(counter.steps.get(task, 0))

    monkeypatch.setattr(_backends, "Turn", Counted)
    limiter = trio.CapacityLimiter(2)
    other = object()
    limiter.acquire_on_behalf_of_nowait(other)
    trio.lowlevel.add_instrument(counter)
    try:
        results = await burst(ctx, tmp_path, limiter, jobs=QUEUED)
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert results == {i: i for i in range(QUEUED)}
    assert len(queued_at_step) >= QUEUED - 2
    assert sum(step > 1 for step in queued_at_step) <= 1, queued_at_step
    limiter.release_on_behalf_of(other)
    assert_tokens_back(limiter)
