"""A job module that imports CPython's single-phase-init test module, which refuses every
isolated subinterpreter with CPython's own "module _testsinglephase does not support loading in
subinterpreters"."""

import os

import _testsinglephase


def pid_and_name():
    return os.getpid(), _testsinglephase.__name__
