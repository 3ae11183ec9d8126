"""The examples run: ``examples/hello.py`` and every Python block of README.md and docs/*.md.

A block's fence says what it is:

* ```` ```python ````: a whole program. It is written to a file and run with this Python, in a
  fresh process (workers load the script as ``__mp_main__``, as they would the user's); it must
  exit with status 0.
* ```` ```python fragment ````: a part of a program (names defined elsewhere, ``await`` at the top
  level, a cluster that is not there). It must compile (top-level ``await`` allowed), every
  ``interpool.NAME`` (and ``interpool.WorkerType.NAME``) it uses must exist, and every keyword
  argument of a call ``interpool.NAME(...)`` must be one that ``NAME`` takes.
* ```` ```python signature ````: a call signature shown as code (``f(a, *, b=1)``), not Python.
* ```` ```pycon ````: an interactive session (``>>>``), whose output varies from run to run.

Any other tag on a ``python`` fence is an error here, so that a typo does not skip a block.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import interpool

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KINDS = {"": "program", "fragment": "fragment", "signature": "signature"}
FENCE = re.compile(r"^```python(?P<tag>[^\n]*)\n(?P<code>.*?)^```\s*$", re.M | re.S)
HANG_GUARD = 120


def python_blocks():
    """(id, kind, code) of every ```python block of the docs."""
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            tag = match["tag"].strip()
            block_id = f"{path.relative_to(ROOT)}:{line}"
            if tag not in KINDS:
                raise ValueError(f"{block_id}: unknown python block tag {tag!r} (see {__file__})")
            yield block_id, KINDS[tag], match["code"]


BLOCKS = list(python_blocks())


def blocks_of(kind):
    return [pytest.param(code, id=block_id) for block_id, k, code in BLOCKS if k == kind]


def run_program(path, cwd):
    proc = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        cwd=cwd,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_every_doc_has_been_read():
    """The blocks were found: a broken pattern would make the tests below vacuous."""
    kinds = {kind for _, kind, _ in BLOCKS}
    assert kinds == {"program", "fragment", "signature"}, kinds


def test_hello_example_runs(tmp_path):
    proc = run_program(ROOT / "examples" / "hello.py", tmp_path)
    assert "fib(30) = 832040" in proc.stdout
    assert "fib(31) = 1346269" in proc.stdout


@pytest.mark.parametrize("code", blocks_of("program"))
def test_program_block_runs(code, tmp_path):
    script = tmp_path / "doc_example.py"
    script.write_text(code)
    run_program(script, tmp_path)


def interpool_names_used(tree):
    """Every ``interpool.NAME`` and ``interpool.WorkerType.NAME`` in ``tree``, as a dotted path."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "interpool":
                yield (node.attr,)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "interpool"
            and node.value.attr == "WorkerType"
        ):
            yield ("WorkerType", node.attr)


def interpool_calls(tree):
    """(NAME, keyword names) of every call ``interpool.NAME(...)`` in ``tree``."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "interpool"
        ):
            yield node.func.attr, [k.arg for k in node.keywords if k.arg is not None]


@pytest.mark.parametrize("code", blocks_of("fragment"))
def test_fragment_block_compiles_and_names_what_exists(code):
    tree = compile(code, "<fragment>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    for path in interpool_names_used(tree):
        if len(path) == 1 and importlib.util.find_spec(f"interpool.{path[0]}") is not None:
            continue  # a submodule (interpool.dask), imported by name
        target = interpool
        for name in path:
            assert hasattr(target, name), f"interpool.{'.'.join(path)} does not exist"
            target = getattr(target, name)
    for name, keywords in interpool_calls(tree):
        params = inspect.signature(getattr(interpool, name)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        unknown = set(keywords) - set(params)
        assert not unknown, f"interpool.{name}() takes no {', '.join(sorted(unknown))}"
