"""The bar charts of a run (``--plot``): one panel per figure, one bar per backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import fmt
from .settings import NUMPY_PAYLOAD, PAYLOADS

_COLORS = {"interpool": "#1f77b4", "trio-parallel": "#ff7f0e", "peer": "#8c8c8c"}
_PANELS = (
    ("Warm round trip of a trivial call", "µs (median; bar: p10-p90)", ("warm_call_us",), False),
    ("Throughput, one worker per core", "trivial jobs/s (median)",
     ("throughput_jobs_per_s",), False),
    ("Start-up", "ms (median, log scale)", ("cold_start_ms", "new_worker_ms"), True),
    ("Memory per idle worker", "MiB of process-tree RSS", ("memory_per_worker_MiB",), False),
    ("Payload round trip", "MB/s (median, log scale)",
     (*(f"payload_{p}_MBps" for p in PAYLOADS), f"payload_{NUMPY_PAYLOAD[0]}_MBps"), True),
    ("CPU-bound speedup", "x, one worker per core vs one worker", ("cpu_speedup",), False),
)  # fmt: skip
_SERIES_LABELS = {
    "cold_start_ms": "cold start to first result",
    "new_worker_ms": "new worker, pool warm",
    **{f"payload_{p}_MBps": p for p in PAYLOADS},
    f"payload_{NUMPY_PAYLOAD[0]}_MBps": "numpy 16 MiB",
}


def write_plot(doc: dict[str, Any], path: Path) -> None:
    """Bar charts, one panel per figure, one bar per backend (interpool blue, trio-parallel
    orange, the other peers grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = [n for n, e in doc["backends"].items() if e["available"]]
    groups = [doc["backends"][n]["group"] for n in names]
    fig, axes = plt.subplots(3, 2, figsize=(14, 4 + 1.6 * len(names)), layout="constrained")
    for ax, (title, xlabel, keys, log) in zip(axes.flat, _PANELS, strict=True):
        height = 0.8 / len(keys)
        ys = list(range(len(names)))
        for k, key in enumerate(keys):
            for i, name in enumerate(names):
                s = doc["backends"][name]["figures"].get(key)
                y = i - 0.4 + height * (k + 0.5)
                if s is None:
                    ax.text(0.01, y, "n/a", va="center", fontsize=8, color="#666",
                            transform=ax.get_yaxis_transform())  # fmt: skip
                    continue
                color = _COLORS[groups[i]]
                err = None
                if key == "warm_call_us":
                    err = [[s["median"] - s["p10"]], [s["p90"] - s["median"]]]
                ax.barh(y, s["median"], height=height * 0.9, color=color, xerr=err,
                        alpha=1.0 - 0.22 * k, edgecolor="black", linewidth=0.4,
                        error_kw={"elinewidth": 0.8, "capsize": 2})  # fmt: skip
                label = fmt(s["median"]) + ("*" if s["wide_spread"] else "")
                at = s["p90"] if err is not None else s["median"]
                ax.annotate(label, (at, y), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=8)  # fmt: skip
        ax.set_yticks(ys, names, fontsize=9)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_xlabel(xlabel, fontsize=9)
        if log:
            ax.set_xscale("log")
        ax.margins(x=0.18)
        if len(keys) > 1:
            shades = [Patch(facecolor="#999", alpha=1.0 - 0.22 * k, label=_SERIES_LABELS[key])
                      for k, key in enumerate(keys)]  # fmt: skip
            ax.legend(handles=shades, fontsize=8, loc="lower right", ncol=len(keys),
                      bbox_to_anchor=(1.0, 1.0), frameon=False)  # fmt: skip
        if keys == ("cpu_speedup",):
            ideal = doc["machine"]["workers"]
            ax.axvline(ideal, color="black", linestyle="--", linewidth=0.8)
            ax.set_xlim(0, max(ax.get_xlim()[1], ideal * 1.15))
    m = doc["machine"]
    fig.suptitle(
        f"interpool bench ({doc['mode']}): Python {m['python']}, {m['cpu_count']} CPUs, "
        f"{m['platform']}  —  blue: interpool, orange: trio-parallel, grey: other peers; "
        "* wide spread",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
