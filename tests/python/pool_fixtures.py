"""Python side of tests/pool_*.rs: found through the pool's python_path."""

import os
import uuid

# A fresh value in every worker (each imports this module once): tells workers apart.
WORKER_TOKEN = uuid.uuid4().hex
INITIALIZED = False


def init():
    global INITIALIZED
    INITIALIZED = True


def init_fails():
    raise OSError("the init hook failed on purpose")


def initialized():
    return INITIALIZED


def worker_token():
    return WORKER_TOKEN


def echo(*args):
    return list(args)


def record(name, count, ratio, tags):
    return {"name": name.upper(), "count": count * 2, "ratio": ratio / 2, "tags": sorted(tags)}


def spin_until_interrupted(fd):
    """Writes b"s" to fd once running, loops forever, writes b"i" when interrupted."""
    os.write(fd, b"s")
    try:
        while True:
            pass
    except KeyboardInterrupt:
        os.write(fd, b"i")
        raise


def chained():
    try:
        {}["missing"]
    except KeyError:
        raise ValueError("lookup failed")  # noqa: B904 -- the implicit context is the point
