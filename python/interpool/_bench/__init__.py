"""``python -m interpool bench``: every available worker type, and the peers, on the same work.

Run ``python -m interpool bench --help``; docs/bench-cli.md says what each figure means. This
package is never imported by ``import interpool``; it imports trio, interpool and the peers only
when it runs. Workers import ``jobs`` from it, so this ``__init__`` imports nothing.

The modules, by job:

* ``cli``: the command line (``main``, ``parse_args``);
* ``settings``: the figures (``METRICS``), the sample counts of each mode (``SETTINGS``), the
  jobs that are builtins;
* ``peers``: which backends exist here, or why not (``Candidate``);
* ``backends``: interpool's worker types and the peers behind one small async interface;
* ``runner``: the run (cold-start processes, then everything else in one ``trio.run``, round by
  round) and its raw samples (``Results``); ``scenarios``: what each in-process round measures;
* ``report``: statistics, the JSON document and the terminal table; ``plot``: the bar charts;
* ``jobs``: the CPU job the workers run.

Four modules run in the fresh process of each cold-start sample, which must not import interpool
(that import is part of interpool's cold start, not of a peer's): ``cold_start`` (the sample's
program), ``tree_memory`` (RSS and PSS from /proc), ``sync_pools`` (the executor-style pools, and
submit/shutdown across their APIs) and ``interpreter_baseline`` (the hand-written
``concurrent.interpreters`` baseline, and the stdlib's ``InterpreterPoolExecutor`` set up like
it). They use the standard library only and no relative imports: the cold-start process imports
them as top-level modules, with this folder on ``sys.path``.
"""
