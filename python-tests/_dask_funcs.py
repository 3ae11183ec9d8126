"""Functions that ``client.run`` runs in the Dask worker processes of test_dask.py (never in an
interpool worker): they read the worker's executors and processes."""

import os


def executor_names(dask_worker):
    return sorted(dask_worker.executors)


def running_calls(dask_worker, name="interpool"):
    return dask_worker.executors[name].statistics().running_workers


def process_tree():
    """This process's pid and those of its descendants (interpool's forkserver and process
    workers)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier += children
    return sorted(tree)


def wait_idle(dask_worker, name="interpool"):
    """Waits until the calls running on this worker's executor ``name`` have ended."""
    import concurrent.futures

    executor = dask_worker.executors[name]
    concurrent.futures.wait(list(executor._engine.running), timeout=120)
