"""What interpool's workers import: the jobs the front end sends by reference (a map chunk, a
Dask task) and the stand-ins that ``import interpool`` gives inside a worker.

The layering, as trio-parallel's: this package imports nothing but the standard library and
itself, never the front end (``interpool._context``, ``_call``, ``_impl``, ``_map``,
``_executor``, …), trio, asyncio or the extension module ``interpool._interpool``, which refuses
to load in a subinterpreter. ``python-tests/test_imports.py`` checks it in a worker of each type.
The worker loop itself is not here: it is embedded in the Rust crate
(``worker-types/src/subinterpreter/worker_loop.py``) and imports no interpool module at all.
"""
