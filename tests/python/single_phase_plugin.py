"""A plugin that imports CPython's single-phase-init test extension, which refuses to load in an
isolated subinterpreter: AUTO's fallback runs it on a process worker.

If a file ``attempts.txt`` exists next to this module (a test's private copy of it), each import
attempt appends this process's pid there, so that the test can tell where it was tried."""

import os

_LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attempts.txt")
if os.path.exists(_LOG):
    with open(_LOG, "a") as log:
        log.write(f"{os.getpid()}\n")

import _testsinglephase  # noqa: E402 -- the attempt is logged first


def run():
    return f"{_testsinglephase.__name__} loaded in process {os.getpid()}"


def pid():
    return os.getpid()


def report_and_block(path):
    import pool_fixtures

    pool_fixtures.report_and_block(path)
