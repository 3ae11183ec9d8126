"""Settings of the FORKSERVER worker type's server process (one per host process)."""

from __future__ import annotations

from collections.abc import Iterable

from . import _interpool


def configure_forkserver(preload: Iterable[str] = ()) -> None:
    """Names the modules the forkserver imports once, before it forks any worker.

    FORKSERVER workers are forked from one server process per host process, started by the first
    FORKSERVER worker. The server imports the parent's main script (as ``__mp_main__``) and these
    modules, so every worker starts with them already imported. A module that fails to import
    there is reported on stderr and imported by each worker that needs it instead.

    Args:
        preload: Module names, e.g. ``["numpy", "mypackage.heavy"]``.

    Raises:
        TypeError: a name is not a string.
        RuntimeError: the forkserver is already running: call this before the first
            FORKSERVER worker starts.
    """
    names = list(preload) if not isinstance(preload, str) else [preload]
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"module names must be str, not {type(name).__name__}")
    if not _interpool.configure_forkserver(names):
        raise RuntimeError(
            "the forkserver is already running; call configure_forkserver() before the first "
            "FORKSERVER worker starts"
        )
