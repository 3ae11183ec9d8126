"""A plugin that uses numpy if it is installed, and otherwise says it is skipped.

numpy does not support subinterpreters with their own GIL: there the import itself fails
(ImportError, not ModuleNotFoundError), so loading this plugin fails and the host reports a load
error; process worker types, and AUTO's per-call fallback to them, run it.
"""

try:
    import numpy
except ModuleNotFoundError:
    numpy = None


def run():
    if numpy is None:
        return "skipped: numpy is not installed"
    values = numpy.arange(1_000_000, dtype=numpy.float64)
    return f"numpy {numpy.__version__}: mean {values.mean():.1f}, std {values.std():.1f}"
