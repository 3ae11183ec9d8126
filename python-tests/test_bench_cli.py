"""``python -m interpool bench``: its plumbing only (arguments, JSON schema, plot file).

No test asserts a timing: the figures depend on the machine. The end-to-end runs use the hidden
``--smoke`` mode (a handful of samples) so that the whole module takes seconds.
"""

import json
import math
import subprocess
import sys

import pytest

import interpool
from interpool._bench import cli, peers, plot, report, settings
from interpool._bench.results import Results

pytestmark = pytest.mark.needs_subinterpreters

HANG_GUARD = 120


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "interpool", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        cwd=cwd,
    )


def assert_finite_numbers(node, path="doc"):
    """Every number in the document is finite (JSON has no NaN or infinity)."""
    if isinstance(node, dict):
        for key, value in node.items():
            assert_finite_numbers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            assert_finite_numbers(value, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        assert math.isfinite(node), path


SUMMARY_KEYS = {"unit", "median", "p10", "p90", "p99", "n", "spread", "wide_spread", "spread_of"}


def assert_schema(doc):
    assert doc["schema"] == "interpool-bench/1"
    assert doc["mode"] in settings.SETTINGS
    machine = doc["machine"]
    for key in ("cpu_count", "workers", "python", "platform", "interpool", "commit", "peers"):
        assert key in machine, key
    assert set(doc["metrics"]) == set(settings.METRICS)
    assert doc["backends"], "no backend at all"
    for name, entry in doc["backends"].items():
        assert {"group", "available", "reason", "figures", "skipped"} <= set(entry), name
        if entry["available"]:
            # Every figure is either measured or skipped with a reason.
            assert set(settings.METRICS) <= set(entry["figures"]) | set(entry["skipped"]), name
        else:
            assert entry["reason"], name
        for key, summary in entry["figures"].items():
            assert SUMMARY_KEYS - {"spread_of"} <= set(summary), (name, key)
            assert summary["n"] >= 1
            assert summary["p10"] <= summary["median"] <= summary["p90"] <= summary["p99"]
        for key, why in entry["skipped"].items():
            assert isinstance(why, str) and why, (name, key)
    assert isinstance(doc["notes"], list)
    assert_finite_numbers(doc)


# --- arguments -------------------------------------------------------------------------------


def parse(*argv):
    return cli.parse_args(list(argv))[1]


def test_defaults():
    args = parse("bench")
    assert args.command == "bench"
    assert args.peers is True
    assert not args.quick and not args.smoke
    assert args.json is None and args.plot is None and args.types is None


def test_options_parse():
    args = parse("bench", "--quick", "--no-peers", "--types", "subinterpreter", "--json", "r.json")
    assert args.quick and args.peers is False
    assert args.types == ["subinterpreter"]
    assert str(args.json) == "r.json"
    assert parse("bench", "--peer", "loky", "--peer", "interpreters").peer == [
        "loky",
        "interpreters",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--types", "threads"], "unknown worker type 'threads'"),
        (["bench", "--plot", "out.svg"], "must end in .png"),
        (["bench", "--quick", "--smoke"], "not allowed with"),
        (["bench", "--peer", "dask"], "invalid choice: 'dask'"),
        (["bench", "--workers", "0"], "--workers must be at least 1"),
        (["bench", "--no-peers", "--peer", "loky"], "contradict"),
        (["bench", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "name a command"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_is_not_imported_by_interpool():
    code = "import sys, interpool; print('interpool._bench' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_unknown_command_from_the_command_line():
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    assert "invalid choice: 'frobnicate'" in proc.stderr


# --- the document, the table and the plot, from made-up samples ------------------------------


def made_up_document():
    candidates = [
        peers.Candidate("interpool subinterpreter", "interpool", backend=object()),
        peers.Candidate(settings.REFERENCE_PEER, "trio-parallel", backend=object()),
        peers.Candidate("loky", "peer", reason="loky is not installed"),
    ]
    results = Results()
    for name, scale in (("interpool subinterpreter", 1.0), (settings.REFERENCE_PEER, 5.0)):
        for key in settings.METRICS:
            if key == "map_jobs_per_s":
                results.skip(name, key, "interpool.amap is not in this build")
                continue
            for i in range(5):
                results.add(name, key, scale * (10 + i))
        results.rounds.setdefault(name, {})["warm_call_us"] = [scale * 10, scale * 100]
    return report.build_document(candidates, results, settings.SETTINGS["smoke"], 2)


def test_document_schema_ratios_and_table():
    doc = made_up_document()
    assert_schema(doc)
    assert doc["reference"] == settings.REFERENCE_PEER
    ratios = doc["ratios_vs_reference"]["interpool subinterpreter"]
    # Lower is better for times, higher for rates: 5x slower peer, 5x faster peer.
    assert ratios["cold_start_ms"] == pytest.approx(5.0)
    assert ratios["throughput_jobs_per_s"] == pytest.approx(0.2)
    # A wide spread of the round medians is flagged, and said in a note.
    assert doc["backends"][settings.REFERENCE_PEER]["figures"]["warm_call_us"]["wide_spread"]
    assert any("wide spread" in note for note in doc["notes"])
    table = report.render_table(doc)
    assert "interpool subinterpreter" in table
    assert "vs trio-parallel spawn" in table
    assert "skipped loky: loky is not installed" in table
    json.dumps(doc, allow_nan=False)


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    plot.write_plot(made_up_document(), path)
    assert path.read_bytes().startswith(b"\x89PNG")


# --- end to end, in smoke mode ---------------------------------------------------------------


def test_smoke_run_writes_json_and_plot(tmp_path):
    out = tmp_path / "results" / "latest.json"
    argv = ["bench", "--smoke", "--no-peers", "--no-progress", "--json", str(out)]
    has_matplotlib = peers.why_missing("matplotlib") is None
    if has_matplotlib:
        argv += ["--plot", str(tmp_path / "results" / "latest.png")]
    proc = run_cli(*argv, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "interpool subinterpreter" in proc.stdout
    doc = json.loads(out.read_text())
    assert_schema(doc)
    assert doc["mode"] == "smoke"
    assert set(doc["backends"]) == {
        f"interpool {info.worker_type.value}" for info in interpool.available_worker_types()
    } | {"interpool.Executor auto"}
    figures = doc["backends"]["interpool subinterpreter"]["figures"]
    for key in ("cold_start_ms", "warm_call_us", "throughput_jobs_per_s", "cpu_speedup"):
        assert key in figures, key
    # The synchronous executor: the same figures, and its map with chunks.
    figures = doc["backends"]["interpool.Executor auto"]["figures"]
    for key in ("warm_call_us", "throughput_jobs_per_s", "map_jobs_per_s"):
        assert key in figures, key
    if has_matplotlib:
        assert (tmp_path / "results" / "latest.png").read_bytes().startswith(b"\x89PNG")


def test_smoke_run_with_stdlib_peers(tmp_path):
    """The peers that need nothing installed: the executor-style code path. The hand-written
    baseline uses 3.13's private _interpreters API or, on 3.14+, concurrent.interpreters (whose
    InterpreterPoolExecutor is then a peer too); each version's path must give its figures."""
    proc = run_cli(
        "bench", "--smoke", "--no-progress", "--peer", "interpreters", "--peer", "process-pool",
        "--peer", "interpreter-pool", "--json", str(tmp_path / "r.json"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert_schema(doc)
    measured = ["_interpreters + threads", "ProcessPoolExecutor spawn"]
    executor = doc["backends"]["InterpreterPoolExecutor"]
    if sys.version_info >= (3, 14):
        measured.append("InterpreterPoolExecutor")
        assert "per-task worker retirement" in executor["skipped"]["new_worker_ms"]
    else:
        assert not executor["available"]
        assert "3.14" in executor["reason"]
    for name in measured:
        figures = doc["backends"][name]["figures"]
        assert {"warm_call_us", "throughput_jobs_per_s", "payload_1KiB_MBps"} <= set(figures), name
        if name != "InterpreterPoolExecutor":
            assert "new_worker_ms" in figures, name
