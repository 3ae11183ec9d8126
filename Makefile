# Developer tasks for interpool. `make help` lists them; `.ci/run` runs `make test`, which is
# everything the project checks (lint included).
#
# Python is found by tools/find-python.sh (override with `make test PYTHON=/path/to/python3.13`).
# `make test` runs the Rust tests and pytest on every CPython >= 3.13 it finds, one per minor
# version (choose them with `make test PYTHONS="/path/to/python3.13 /path/to/python3.14"`): the
# default one (PYTHON, else the first of PYTHONS, else the first found) in .venv, each other one in
# .venv-pyXY. Every cargo/maturin call goes through tools/in-venv.sh, which points PyO3 at the
# venv's Python, puts its libpython on LD_LIBRARY_PATH and picks target/pyXY as the cargo target dir.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory
.NOTPARALLEL:

VENV := .venv
# The default Python without cloudpickle, which interpool must work without (an optional extra).
NO_CLOUDPICKLE_VENV := .venv-no-cloudpickle
FIND_PYTHON := PYTHON="$(PYTHON)" PYTHONS="$(PYTHONS)" tools/find-python.sh
IN_VENV := tools/in-venv.sh $(VENV)
PY_SOURCES := $(wildcard python python-tests benches examples tests/python worker-types/src typings)
# Every doc link must resolve. The module docs are written for maintainers and link private items
# on purpose, so the private items are documented too and such links are allowed.
RUSTDOC_LINT := -D warnings -A rustdoc::private_intra_doc_links

section = @printf '\n==> %s [%s]\n' "$(1)" "$$(date +%T)"

.PHONY: help
help: ## Show this help
	@echo "usage: make TARGET [PYTHON=/path/to/python3.13] [PYTHONS=\"/path/to/python3.13 ...\"]"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-20s %s\n", $$1, $$2}'

.PHONY: venv
venv: ## Create .venv with CPython >= 3.13 and install the pinned dev tools
	@py=$$($(FIND_PYTHON)); tools/venv.sh $(VENV) "$$py" requirements-dev.txt

.PHONY: build
build: venv ## Build the extension (release) into .venv: maturin develop --release
	$(call section,maturin develop --release ($(VENV)))
	$(IN_VENV) maturin develop --release

.PHONY: test
test: lint test-pythons test-no-cloudpickle test-old ## Everything CI checks: lint; Rust tests and pytest on each CPython >= 3.13; pytest without cloudpickle; old Pythons

.PHONY: test-pythons
test-pythons: ## Run test-rust and test-python on each CPython >= 3.13 found (or in PYTHONS)
	PYTHON="$(PYTHON)" PYTHONS="$(PYTHONS)" MAKE="$(MAKE)" tools/test-pythons.sh $(VENV)

.PHONY: test-rust
test-rust: venv ## Run the Rust tests on .venv: cargo test --workspace
	$(call section,cargo test --workspace)
	$(IN_VENV) cargo test --workspace

# A run that collects no test exits with 5 and fails here, as it should.
.PHONY: test-python
test-python: build ## Run the Python tests on .venv
	$(call section,pytest python-tests ($(VENV)))
	$(VENV)/bin/python -m pytest python-tests -q

# The extension built for .venv, installed as it is there (editable: the .pth file and the
# metadata), so this pass costs no second build.
.PHONY: test-no-cloudpickle
test-no-cloudpickle: build ## Run the Python tests on the default Python without cloudpickle installed
	$(call section,pytest python-tests without cloudpickle ($(NO_CLOUDPICKLE_VENV)))
	@py=$$($(FIND_PYTHON)); set -x; \
	tools/venv.sh --without cloudpickle $(NO_CLOUDPICKLE_VENV) "$$py" requirements-dev.txt; \
	site=$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
	to=$$($(NO_CLOUDPICKLE_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
	rm -rf "$$to"/interpool*; cp -r "$$site"/interpool* "$$to"/; \
	! $(NO_CLOUDPICKLE_VENV)/bin/python -c 'import cloudpickle' 2>/dev/null; \
	$(NO_CLOUDPICKLE_VENV)/bin/python -m pytest python-tests -q

# Pythons older than 3.13 for test-old: OLD_PYTHONS, else plain python3 when it is older.
OLD_PYTHONS ?=

.PHONY: test-old
test-old: ## Run test_availability.py and test_process.py on each Python < 3.13 (OLD_PYTHONS, else python3)
	@olds="$(OLD_PYTHONS)"; \
	if [[ -z $$olds ]] && py=$$(command -v python3) && \
		"$$py" -c 'import sys; sys.exit(sys.version_info >= (3, 13))' 2>/dev/null; then olds=$$py; fi; \
	if [[ -z $$olds ]]; then \
		echo "skipped test-old: no OLD_PYTHONS, and plain python3 is missing or not older than 3.13"; \
		exit 0; \
	fi; \
	for py in $$olds; do \
		tag=$$("$$py" -c 'import sys; print("py%d%d" % sys.version_info[:2]); sys.exit(sys.version_info >= (3, 13))') || \
			{ echo "test-old: $$py is not a Python older than 3.13" >&2; exit 1; }; \
		printf '\n==> %s [%s]\n' "availability and process workers on $$py (.venv-$$tag)" "$$(date +%T)"; \
		(set -x; \
		tools/venv.sh .venv-$$tag "$$py" requirements-dev.txt; \
		tools/in-venv.sh .venv-$$tag maturin develop --release; \
		.venv-$$tag/bin/python -m pytest python-tests/test_availability.py python-tests/test_process.py -q); \
	done

# What each check is for: docs/contributing.md. It builds the extension first: stubtest checks
# _interpool.pyi against the built module.
.PHONY: lint
lint: build ## Lint: rustfmt, clippy, rustdoc, the MSRV, ruff, mypy, stubtest
	$(call section,lint)
	cargo fmt --all --check
	$(IN_VENV) cargo clippy --workspace --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(call section,cargo doc (warnings denied))
	RUSTDOCFLAGS="$(RUSTDOC_LINT)" $(IN_VENV) \
		cargo doc --workspace --no-deps --features python --document-private-items --quiet
	$(call section,MSRV (tools/check-msrv.sh))
	tools/check-msrv.sh $(VENV)
	$(call section,mypy --strict and stubtest)
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m mypy.stubtest interpool._interpool

.PHONY: format
format: venv ## Format Rust and Python code, and apply ruff's safe fixes
	cargo fmt --all
	$(VENV)/bin/ruff check --fix-only --quiet $(PY_SOURCES)
	$(VENV)/bin/ruff format $(PY_SOURCES)

# Extra arguments for `python -m interpool bench`, e.g. `make bench BENCH_ARGS=--quick`.
BENCH_ARGS ?=

.PHONY: bench
bench: build ## Build, then compare every worker type and the peers: python -m interpool bench
	@py=$$($(FIND_PYTHON)); tools/venv.sh $(VENV) "$$py" requirements-dev.txt requirements-bench.txt
	$(call section,python -m interpool bench $(BENCH_ARGS))
	$(VENV)/bin/python -m interpool bench --json bench-results/latest.json \
		--plot bench-results/latest.png $(BENCH_ARGS)

.PHONY: bench-run-sync
bench-run-sync: build ## Build, then run benches/bench_run_sync.py (warm run_sync vs trio-parallel)
	@py=$$($(FIND_PYTHON)); tools/venv.sh $(VENV) "$$py" requirements-dev.txt requirements-bench.txt
	$(call section,benches/bench_run_sync.py)
	$(VENV)/bin/python benches/bench_run_sync.py

.PHONY: plugin-host
plugin-host: venv ## Run the Rust example host on examples/plugins/*.py (cargo run --release)
	$(call section,examples/plugin_host.rs)
	$(IN_VENV) cargo run --release --example plugin_host

.PHONY: bench-rust
bench-rust: venv ## Run the criterion benches: the Rust-side paths and Pool::call
	$(call section,cargo bench)
	$(IN_VENV) cargo bench --bench completion --bench pool_call

.PHONY: demo
demo: build ## Build, then run examples/hello.py
	$(VENV)/bin/python examples/hello.py

.PHONY: clean
clean: ## Remove build outputs, caches and the virtual environments
	rm -rf target $(VENV) $(VENV)-py3* $(NO_CLOUDPICKLE_VENV) .pytest_cache .ruff_cache .mypy_cache
	find python -name '*.so' -delete
	find . -name __pycache__ -not -path './.git/*' -prune -exec rm -rf {} +
