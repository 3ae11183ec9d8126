"""What ``import interpool`` gives inside a worker: the names, none of the machinery.

Nested parallelism from a worker is not supported; calling any of these raises.
"""


def _not_in_a_worker(*args: object, **kwargs: object) -> None:
    raise RuntimeError("interpool's API cannot be used inside an interpool worker")


run_sync = open_worker_context = current_default_worker_limiter = _not_in_a_worker
default_context_statistics = available_worker_types = configure_forkserver = _not_in_a_worker
amap = astarmap = _not_in_a_worker
configure_default_context = cache_scope = atexit_shutdown_grace_period = pin = _not_in_a_worker
get_reusable_executor = _not_in_a_worker


class WorkerContext:
    """Not available inside a worker."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        _not_in_a_worker()


class MapResults(WorkerContext):
    """Not available inside a worker."""


class AsyncioCapacityLimiter(WorkerContext):
    """Not available inside a worker."""


class Executor(WorkerContext):
    """Not available inside a worker."""
