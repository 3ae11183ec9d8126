"""``python -m interpool bench ...``: see docs/bench-cli.md.

Workers load the parent's main module to unpickle what it defines, so under ``-m interpool``
they import this file as ``__mp_main__``: it does nothing unless it is ``__main__``.
"""

if __name__ == "__main__":
    import sys

    from interpool._bench.cli import main

    sys.exit(main())
