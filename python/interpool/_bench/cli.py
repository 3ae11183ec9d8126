"""The command line: ``python -m interpool bench [options]`` (docs/bench-cli.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .peers import executor_candidates, interpool_candidates, peer_candidates, why_missing
from .plot import write_plot
from .report import build_document, render_table
from .runner import run_benchmark
from .settings import PEERS, SETTINGS


def _known_types() -> list[str]:
    from .._types import WorkerType

    return [t.value for t in WorkerType]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m interpool",
        description="interpool's command line.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench",
        help="compare every available worker type (and the installed peers)",
        description=(
            "Measure every available interpool worker type and, with --peers, trio-parallel, "
            "loky, ProcessPoolExecutor, multiprocessing.Pool, a hand-written _interpreters "
            "baseline and (3.14+) InterpreterPoolExecutor, on the same work in the same run. "
            "See docs/bench-cli.md."
        ),
    )
    speed = bench.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer samples: under a minute")
    speed.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    bench.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the peers that are installed (default: on)",
    )
    bench.add_argument(
        "--peer",
        action="append",
        choices=PEERS,
        metavar="PEER",
        help=f"measure only this peer (repeatable; one of: {', '.join(PEERS)})",
    )
    bench.add_argument(
        "--types",
        nargs="+",
        metavar="TYPE",
        help=f"interpool worker types (default: all; known: {', '.join(_known_types())})",
    )
    bench.add_argument("--json", metavar="PATH", type=Path, help="write the results as JSON")
    bench.add_argument("--plot", metavar="PATH.png", type=Path, help="write bar charts (PNG)")
    bench.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=None,
        help="workers per pool (default: the CPU count, at least 2)",
    )
    bench.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        parser.exit(2, "\npython -m interpool: error: name a command (bench)\n")
    known = _known_types()
    for t in args.types or ():
        if t not in known:
            parser.error(f"--types: unknown worker type {t!r} (choose from {', '.join(known)})")
    if args.plot is not None:
        if args.plot.suffix.lower() != ".png":
            parser.error(f"--plot: the file must end in .png, not {str(args.plot)!r}")
        if why_missing("matplotlib"):
            parser.error("--plot needs matplotlib: pip install -r requirements-bench.txt")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    if args.peer and not args.peers:
        parser.error("--peer and --no-peers contradict each other")
    return parser, args


def main(argv: Sequence[str] | None = None) -> int:
    _, args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "default"
    cfg = SETTINGS[mode]
    workers = args.workers or max(2, os.cpu_count() or 1)
    candidates = interpool_candidates(args.types)
    candidates += executor_candidates(args.types)
    if args.peers:
        candidates += peer_candidates(args.peer)
    if not any(c.backend for c in candidates):
        print("interpool bench: nothing to measure here:", file=sys.stderr)
        for c in candidates:
            print(f"  {c.name}: {c.reason}", file=sys.stderr)
        return 1
    results = run_benchmark(candidates, cfg, workers, not args.no_progress)
    doc = build_document(candidates, results, cfg, workers)
    print(render_table(doc))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        write_plot(doc, args.plot)
        print(f"wrote {args.plot}")
    return 0
