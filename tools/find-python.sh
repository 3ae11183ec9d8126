#!/usr/bin/env bash
# Prints the path of a CPython >= 3.13 that interpool's build and tests can use; with --all, one
# such CPython per minor version (3.13, 3.14, ...), oldest first, one path a line.
#
# Order: $PYTHON if set (then it must qualify, or this fails); python3.13 and newer on PATH;
# pyenv's installed versions, newest first; /usr/bin/python3.13 and newer. A candidate counts only
# if it actually runs: a pyenv shim for a version that is not selected exists on PATH but fails.
# --all takes the first that qualifies of each minor version, in that order; $PYTHONS, if set, is
# the list itself (each must qualify, and no two may share a minor version: they would share the
# cargo target directory target/pyXY); else $PYTHON alone, if set. Without --all, $PYTHONS' first
# entry stands for $PYTHON when that is not set.
# The automatic search skips free-threaded builds: see docs/installation.md ("Free-threaded
# builds"). Named in PYTHON or PYTHONS, one is accepted, and the build refuses it clearly.
set -euo pipefail

all=false
if [[ ${1:-} == --all ]]; then all=true; fi

# Prints "MINOR PATH" (PATH: the interpreter's real path) if it is a CPython >= 3.13 (with a GIL,
# unless $2 is "any").
check() {
    "$1" - "${2:-gil}" 2>/dev/null <<'PY'
import sys, sysconfig
ok = sys.implementation.name == "cpython" and sys.version_info >= (3, 13)
if sys.argv[1] != "any" and sysconfig.get_config_var("Py_GIL_DISABLED"):
    ok = False
if not ok:
    sys.exit(1)
print(sys.version_info[1], sys.executable)
PY
}

# Checks each named interpreter; prints their paths, or fails naming the one that does not qualify.
named() { # VARIABLE PYTHON...
    local var=$1 py out
    shift
    declare -A seen=()
    for py in "$@"; do
        if ! out=$(check "$py" any); then
            echo "find-python: $py (in $var) is not a working CPython >= 3.13" >&2
            exit 1
        fi
        if [[ -n ${seen[${out%% *}]:-} ]]; then
            echo "find-python: $var names two 3.${out%% *}s: ${seen[${out%% *}]} and $py" >&2
            exit 1
        fi
        seen[${out%% *}]=$py
        echo "${out#* }"
    done
}

if $all && [[ -n ${PYTHONS:-} ]]; then
    read -ra list <<<"$PYTHONS"
    named PYTHONS "${list[@]}"
    exit 0
fi
if [[ -n ${PYTHON:-} ]]; then
    named PYTHON "$PYTHON"
    exit 0
fi
if [[ -n ${PYTHONS:-} ]]; then
    read -ra list <<<"$PYTHONS"
    named PYTHONS "${list[0]}"
    exit 0
fi

candidates=()
for minor in 13 14 15 16 17 18 19; do
    if cand=$(command -v "python3.$minor"); then candidates+=("$cand"); fi
done
pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
while IFS= read -r dir; do
    candidates+=("$dir/bin/python3")
done < <(compgen -G "$pyenv_root/versions/3.1[3-9]*" | sort -rV)
while IFS= read -r cand; do
    candidates+=("$cand")
done < <(compgen -G "/usr/bin/python3.1[3-9]" | sort -rV)

declare -A found=()
for cand in "${candidates[@]}"; do
    if out=$(check "$cand"); then
        if ! $all; then
            echo "${out#* }"
            exit 0
        fi
        if [[ -z ${found[${out%% *}]:-} ]]; then found[${out%% *}]=${out#* }; fi
    fi
done
if ((${#found[@]})); then
    for minor in $(printf '%s\n' "${!found[@]}" | sort -n); do echo "${found[$minor]}"; done
    exit 0
fi

cat >&2 <<MSG
find-python: no working CPython >= 3.13 found (tried: ${candidates[*]:-nothing}).
Install one (e.g. 'pyenv install 3.13') or point PYTHON at it: make test PYTHON=/path/to/python3.13
MSG
exit 1
