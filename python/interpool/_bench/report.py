"""The report of a run: statistics of the samples, the JSON document (schema
``interpool-bench/1``, docs/bench-cli.md) and the terminal table."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .peers import Candidate
from .results import Results
from .settings import METRICS, NUMPY_PAYLOAD, PAYLOADS, REFERENCE_PEER, WIDE_SPREAD, KiB, Settings


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if len(ordered) == 1:
        return float(ordered[0])
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def summarize(samples: Sequence[float], unit: str) -> dict[str, Any]:
    """Median, p10, p90, p99, n and the spread p90/p10 of positive samples."""
    ordered = sorted(samples)
    p10, p90 = _quantile(ordered, 0.10), _quantile(ordered, 0.90)
    spread = p90 / p10 if p10 > 0 else 1.0
    return {
        "unit": unit,
        "median": float(statistics.median(ordered)),
        "p10": p10,
        "p90": p90,
        "p99": _quantile(ordered, 0.99),
        "n": len(ordered),
        "spread": spread,
        "wide_spread": spread > WIDE_SPREAD,
    }


def _copies_note() -> str | None:
    """Which payloads travel beside the pickle (out of band) in this build, for the notes."""
    from .. import _outcome

    threshold = getattr(_outcome, "BUFFER_THRESHOLD", None)
    if threshold is None:
        return None
    out = [label for label, size in PAYLOADS.items() if size >= threshold]
    return (
        f"payloads of {threshold // KiB} KiB and more ({', '.join(out)}, {NUMPY_PAYLOAD[0]}) "
        "travel beside the pickle: interpool copies a bytes echo once on subinterpreters (into "
        "the worker's bytes, which comes back as yours) and 3 times on processes (into the "
        "worker's bytes, out of it into host memory, into yours), a numpy echo on processes "
        "twice (once each way), and never pickles their data (was 9 copies; docs/payloads.md)."
    )


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def machine_description(workers: int) -> dict[str, Any]:
    import importlib.metadata

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "workers": workers,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "interpool": version("interpool"),
        "commit": _git_commit(),
        "peers": {d: version(d) for d in ("trio-parallel", "loky", "trio")},
    }


def build_document(
    candidates: list[Candidate], results: Results, cfg: Settings, workers: int
) -> dict[str, Any]:
    """The JSON document: settings, machine, per-backend summaries, ratios and notes."""
    backends: dict[str, Any] = {}
    for c in candidates:
        figures: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        if c.backend is None:
            skipped = dict.fromkeys(METRICS, c.reason or "unavailable")
        else:
            got = results.samples.get(c.name, {})
            for key, metric in METRICS.items():
                if got.get(key):
                    figures[key] = summarize(got[key], metric.unit)
                    rounds = results.rounds.get(c.name, {}).get(key, [])
                    if len(rounds) > 1:
                        # Calls have a long tail by nature; the steadiness of the machine shows
                        # in how much the per-round medians move.
                        spread = summarize(rounds, metric.unit)["spread"]
                        figures[key]["spread"] = spread
                        figures[key]["wide_spread"] = spread > WIDE_SPREAD
                        figures[key]["spread_of"] = "round medians"
                    else:
                        figures[key]["spread_of"] = "samples"
                else:
                    skipped[key] = results.skipped.get(c.name, {}).get(key, "not measured")
            for key, values in results.extra.get(c.name, {}).items():
                figures[key] = summarize(values, "MiB")
        backends[c.name] = {
            "group": c.group,
            "available": c.backend is not None,
            "reason": c.reason,
            "figures": figures,
            "skipped": skipped,
        }

    reference = REFERENCE_PEER if REFERENCE_PEER in results.samples else None
    ratios: dict[str, dict[str, float]] = {}
    if reference is not None:
        theirs = backends[reference]["figures"]
        for name, entry in backends.items():
            if entry["group"] != "interpool":
                continue
            mine = entry["figures"]
            r: dict[str, float] = {}
            for key, metric in METRICS.items():
                if key in mine and key in theirs and mine[key]["median"] > 0:
                    a, b = mine[key]["median"], theirs[key]["median"]
                    if b > 0:
                        r[key] = a / b if metric.higher_is_better else b / a
            rounds_mine = results.rounds.get(name, {}).get("warm_call_us", [])
            rounds_theirs = results.rounds.get(reference, {}).get("warm_call_us", [])
            if rounds_mine and len(rounds_mine) == len(rounds_theirs):
                r["warm_call_us"] = statistics.median(
                    t / m for m, t in zip(rounds_mine, rounds_theirs, strict=True) if m > 0
                )
            ratios[name] = r

    wide = [
        f"{name} {key} ({summary['spread']:.1f})"
        for name, entry in backends.items()
        for key, summary in entry["figures"].items()
        if summary["wide_spread"]
    ]
    notes = []
    copies = _copies_note()
    if copies is not None:
        notes.append(copies)
    if wide:
        notes.append(
            f"wide spread (p90/p10 > {WIDE_SPREAD:g}) in: {'; '.join(wide)}. The machine was "
            "probably busy: rerun, or trust the ratios (same run, interleaved) more than the "
            "absolute figures."
        )
    return {
        "schema": "interpool-bench/1",
        "mode": cfg.mode,
        "settings": {k: v for k, v in vars(cfg).items() if k != "mode"},
        "machine": machine_description(workers),
        "metrics": {
            k: {"label": m.label, "unit": m.unit, "higher_is_better": m.higher_is_better}
            for k, m in METRICS.items()
        },
        "backends": backends,
        "reference": reference,
        "ratios_vs_reference": ratios,
        "notes": notes,
    }


def fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


TABLES = (
    (
        "latency and start-up",
        (
            ("cold start", "cold_start_ms", "median", "ms"),
            ("new worker", "new_worker_ms", "median", "ms"),
            ("warm call", "warm_call_us", "median", "µs"),
            ("p99", "warm_call_us", "p99", "µs"),
            ("throughput", "throughput_jobs_per_s", "median", "/s"),
            ("CPU speedup", "cpu_speedup", "median", "x"),
        ),
    ),
    (
        "payload and memory",
        (
            ("1 KiB", "payload_1KiB_MBps", "median", "MB/s"),
            ("1 MiB", "payload_1MiB_MBps", "median", "MB/s"),
            ("64 MiB", "payload_64MiB_MBps", "median", "MB/s"),
            ("numpy 16M", f"payload_{NUMPY_PAYLOAD[0]}_MBps", "median", "MB/s"),
            ("memory/worker", "memory_per_worker_MiB", "median", "MiB"),
            ("map", "map_jobs_per_s", "median", "/s"),
        ),
    ),
)


def render_table(doc: dict[str, Any]) -> str:
    """The terminal report: two tables, the ratios to trio-parallel, skipped figures, notes."""
    m = doc["machine"]
    lines = [
        f"interpool bench ({doc['mode']}): Python {m['python']}, {m['cpu_count']} CPUs, "
        f"{m['workers']} workers per pool, interpool {m['interpool']}"
        + (f" ({m['commit']})" if m["commit"] else ""),
    ]
    names = [n for n, e in doc["backends"].items() if e["available"]]
    width = max([len(n) for n in names] + [len("vs " + (doc["reference"] or ""))]) + 2
    for title, columns in TABLES:
        lines.append("")
        lines.append(title)
        header = f"{'':{width}}" + "".join(f"{label:>14}" for label, *_ in columns)
        units = f"{'':{width}}" + "".join(f"{'(' + unit + ')':>14}" for *_, unit in columns)
        lines += [header, units]
        for name in names:
            figures = doc["backends"][name]["figures"]
            cells = []
            for _, key, stat, _ in columns:
                s = figures.get(key)
                cells.append(
                    f"{fmt(s[stat]) + ('*' if s['wide_spread'] else ' '):>14}"
                    if s
                    else f"{'-':>14}"
                )
            lines.append(f"{name:{width}}" + "".join(cells))
            ratios = doc["ratios_vs_reference"].get(name)
            if ratios:
                cells = []
                for _, key, stat, _ in columns:
                    r = ratios.get(key) if stat == "median" else None
                    cells.append(f"{f'{r:.2f}x ' if r else '':>14}")
                lines.append(f"{'  vs ' + doc['reference']:{width}}" + "".join(cells))
    lines.append("")
    lines.append(
        "* wide spread (p90/p10 > 2). Ratios: how many times better interpool is than "
        f"{doc['reference'] or 'trio-parallel (not installed)'} (above 1: interpool is better)."
    )
    unavailable = [(n, e["reason"]) for n, e in doc["backends"].items() if not e["available"]]
    for name, reason in unavailable:
        lines.append(f"skipped {name}: {reason}")
    # Missing figures, grouped: "no KEYS for BACKENDS: WHY".
    by_reason: dict[str, dict[str, list[str]]] = {}
    for name in names:
        for key, why in doc["backends"][name]["skipped"].items():
            by_reason.setdefault(why, {}).setdefault(name, []).append(key)
    for why, who in by_reason.items():
        by_keys: dict[tuple[str, ...], list[str]] = {}
        for name, keys in who.items():
            by_keys.setdefault(tuple(keys), []).append(name)
        for grouped, backends in by_keys.items():
            what = "in-process figures" if len(grouped) > 5 else ", ".join(grouped)
            lines.append(f"no {what} for {', '.join(backends)}: {why}")
    for note in doc["notes"]:
        lines.append(textwrap.fill(f"note: {note}", 100, subsequent_indent="  "))
    return "\n".join(lines)
