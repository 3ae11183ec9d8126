"""Retire hooks that run inside workers.

Workers unpickle these by reference (``interpool._retire``), so this module must import nothing
but the standard library: inside a worker ``import interpool`` gives the stub of
``_in_worker.py``, with neither trio nor the extension module.
"""

from __future__ import annotations


class RetireAfter:
    """A ``retire`` hook that ends its worker after ``tasks`` jobs. Each worker unpickles its own
    copy, so the count is per worker (:class:`interpool.Executor`'s ``max_tasks_per_child``)."""

    __slots__ = ("done", "tasks")

    def __init__(self, tasks: int) -> None:
        self.tasks, self.done = tasks, 0

    def __call__(self) -> bool:
        self.done += 1
        return self.done >= self.tasks

    def __reduce__(self) -> tuple[type[RetireAfter], tuple[int]]:
        return RetireAfter, (self.tasks,)
