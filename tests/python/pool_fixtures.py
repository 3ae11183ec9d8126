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


def sleep_then(seconds, value):
    import time

    time.sleep(seconds)
    return value


def record(name, count, ratio, tags):
    return {"name": name.upper(), "count": count * 2, "ratio": ratio / 2, "tags": sorted(tags)}


def spin_until_interrupted(fd):
    """Writes b"s" to fd once running, loops forever, writes b"i" when interrupted (wherever
    the interrupt lands: the signal is inside the try too)."""
    try:
        os.write(fd, b"s")
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


def report_and_block(path):
    """Connects to the Unix socket at path, sends this process's pid and a newline, then blocks
    in C (time.sleep) for an hour: only killing the process ends it early."""
    import socket
    import time

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(b"%d\n" % os.getpid())
    time.sleep(3600)


def exit_with(code):
    """Ends the worker's process at once, as a crashing plugin would."""
    os._exit(code)


def segfault():
    """Dereferences NULL: SIGSEGV."""
    import ctypes

    return ctypes.string_at(0)


def raise_refusal():
    """Raises, from the function itself, the message of a module refusing subinterpreters: a
    user's exception, which AUTO must not retry on a process."""
    raise ImportError(
        f"module fake does not support loading in subinterpreters (pid {os.getpid()})"
    )


def executable_and_version():
    import sys

    return sys.executable, tuple(sys.version_info[:2])


def can_import(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def numpy_total_lazily(n):
    """Imports numpy in its body: the refusal comes while the function runs."""
    import numpy

    return [int(numpy.arange(n).sum()), os.getpid()]


def single_phase_lazily():
    """Imports CPython's single-phase-init test module in its body."""
    import _testsinglephase  # noqa: F401

    return os.getpid()


def bytes_summary(*blobs):
    """``call`` with ``serde_bytes`` arguments: each arrives as a ``bytes`` (large ones out of
    band), whose type, size and last byte come back."""
    return [(type(blob).__name__, len(blob), blob[-1]) for blob in blobs]


def reverse(view):
    """``call_pickled_with_buffers``: the argument arrives as a buffer; a large value leaves as
    one. Also says how the argument arrived (its exporter's type)."""
    return bytes(view)[::-1], type(view.obj).__name__
