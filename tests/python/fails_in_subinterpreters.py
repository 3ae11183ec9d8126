"""A plugin that fails to load in a subinterpreter for a reason other than a refusal (as a
script importing tricycle does on 3.13): AUTO's fallback runs it on a process."""

import os

import _interpreters

if _interpreters.get_current()[0] != _interpreters.get_main()[0]:
    raise AttributeError("this module does not load in a subinterpreter, on purpose")


def pid():
    return os.getpid()
