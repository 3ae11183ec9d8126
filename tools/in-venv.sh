#!/usr/bin/env bash
# Runs COMMAND with VENV active and cargo/maturin/PyO3 pointed at its Python:
#   PYO3_PYTHON      the venv's python, so PyO3 builds for that interpreter;
#   LD_LIBRARY_PATH  + its LIBDIR: the Rust test binaries link libpython3.x.so (pyenv builds with
#                    --enable-shared), and must find it at run time;
#   CARGO_TARGET_DIR target/pyXY, one per Python version, so that switching between the 3.13 and the
#                    older venv does not rebuild everything each time.
# RUSTFLAGS is left alone: setting it would replace the rustflags in .cargo/config.toml.
#
# usage: tools/in-venv.sh VENV COMMAND [ARGS...]
set -euo pipefail

venv=$(cd "$1" && pwd)
shift
python=$venv/bin/python
tag=$("$python" -c 'import sys; print("py%d%d" % sys.version_info[:2])')
libdir=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')

export VIRTUAL_ENV=$venv
export PATH=$venv/bin:$PATH
export PYO3_PYTHON=$python
export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}/$tag
# maturin refuses to run with both a venv and a conda env active; PYTHONHOME would mislead Python.
unset CONDA_PREFIX PYTHONHOME
exec "$@"
