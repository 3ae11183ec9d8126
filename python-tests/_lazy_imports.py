"""Job functions that import a module refusing subinterpreters in their body, not at the top:
the module itself loads anywhere; the refusal comes while the function runs."""

import os


def numpy_total(n):
    import numpy

    return int(numpy.arange(n).sum()), os.getpid()


def singlephase_name():
    import importlib

    return importlib.import_module("_testsinglephase").__name__, os.getpid()


def append_then_import_numpy(path):
    """A side effect before the refusal: AUTO's re-run on a process repeats it."""
    with open(path, "a") as f:
        f.write("x")
    import numpy

    return int(numpy.int64(7)), os.getpid()
