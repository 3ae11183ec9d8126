#!/usr/bin/env bash
# Makes VENV a virtual environment of PYTHON with the REQUIREMENTS files installed, doing only what
# is missing: the venv is (re)created when absent, broken or made from another interpreter, and a
# file is pip-installed only when its checksum differs from the one kept in VENV/.installed-FILE.
#
# usage: tools/venv.sh VENV PYTHON [REQUIREMENTS...]
set -euo pipefail

venv=$1 python=$2
shift 2

# The same install prefix and build means the same interpreter, whether run directly or from a venv.
identity='import sys; print(sys.base_prefix, sys.version)'
want=$("$python" -c "$identity")
have=$("$venv/bin/python" -c "$identity" 2>/dev/null || true)
if [[ $have != "$want" ]]; then
    echo "==> creating $venv with $python ($("$python" -V))"
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi

for req in "$@"; do
    stamp=$venv/.installed-$(basename "$req")
    sum=$(sha256sum <"$req")
    if [[ ! -f $stamp || $(<"$stamp") != "$sum" ]]; then
        echo "==> installing $req into $venv"
        "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$req"
        echo "$sum" >"$stamp"
    fi
done
