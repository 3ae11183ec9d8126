#!/usr/bin/env bash
# Makes VENV a virtual environment of PYTHON with the REQUIREMENTS files installed, doing only what
# is missing: the venv is (re)created when absent, broken or made from another interpreter, and a
# file is pip-installed only when its checksum differs from the one kept in VENV/.installed-FILE.
# --without NAME leaves the package NAME out: its lines in the files are skipped, and it is
# uninstalled if it is there (a venv for checking that interpool works without an optional extra).
#
# usage: tools/venv.sh [--without NAME] VENV PYTHON [REQUIREMENTS...]
set -euo pipefail

without=
if [[ ${1:-} == --without ]]; then
    without=$2
    shift 2
fi
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

# A requirement line names its package first: "name==1.2", "name[extra]>=1", "name; marker".
drop_without() {
    if [[ -z $without ]]; then cat; else grep -viE "^[[:space:]]*${without}([^A-Za-z0-9_.-]|$)" || true; fi
}

for req in "$@"; do
    stamp=$venv/.installed-$(basename "$req")
    sum="$(drop_without <"$req" | sha256sum)${without:+ without $without}"
    if [[ ! -f $stamp || $(<"$stamp") != "$sum" ]]; then
        echo "==> installing $req${without:+ (without $without)} into $venv"
        "$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
            -r <(drop_without <"$req")
        echo "$sum" >"$stamp"
    fi
done
if [[ -n $without ]] && "$venv/bin/python" -m pip show --quiet "$without" >/dev/null 2>&1; then
    echo "==> uninstalling $without from $venv"
    "$venv/bin/python" -m pip uninstall --disable-pip-version-check --quiet --yes "$without"
fi
