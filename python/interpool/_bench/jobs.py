"""The job of ``python -m interpool bench`` that is not a builtin: pure-Python CPU work.

The trivial job and the echo are builtins (``settings.NOOP``, ``settings.ECHO``). Every worker of
every peer imports this module to unpickle ``spin`` (subinterpreters, spawned processes, the
hand-written interpreter baseline), so it imports nothing, and neither does the package's
``__init__``: it loads without trio, without interpool's extension and fast.
"""


def spin(iterations: int) -> int:
    """Pure-Python CPU work (holds its interpreter's GIL throughout)."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total
