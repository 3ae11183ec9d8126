"""A job module that imports numpy at the top: it refuses to load in a subinterpreter (numpy
raises its own ImportError, "Original error was: ... does not support loading in
subinterpreters"), so AUTO runs its functions in a process."""

import os

import numpy


def total(n):
    return int(numpy.arange(n).sum()), os.getpid()


def make_array(n):
    return numpy.arange(n)
