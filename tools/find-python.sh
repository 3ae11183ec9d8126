#!/usr/bin/env bash
# Prints the path of a CPython >= 3.13 that interpool's build and tests can use.
#
# Order: $PYTHON if set (then it must qualify, or this fails); python3.13 and newer on PATH;
# pyenv's installed versions, newest first; /usr/bin/python3.13 and newer. A candidate counts only
# if it actually runs: a pyenv shim for a version that is not selected exists on PATH but fails.
# The automatic search skips free-threaded builds (interpool runs subinterpreters with own GILs).
set -euo pipefail

# Prints the interpreter's real path if it is a CPython >= 3.13 (with a GIL, unless $2 is "any").
check() {
    "$1" - "${2:-gil}" 2>/dev/null <<'PY'
import sys, sysconfig
ok = sys.implementation.name == "cpython" and sys.version_info >= (3, 13)
if sys.argv[1] != "any" and sysconfig.get_config_var("Py_GIL_DISABLED"):
    ok = False
if not ok:
    sys.exit(1)
print(sys.executable)
PY
}

if [[ -n ${PYTHON:-} ]]; then
    if ! check "$PYTHON" any; then
        echo "find-python: PYTHON=$PYTHON is not a working CPython >= 3.13" >&2
        exit 1
    fi
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

for cand in "${candidates[@]}"; do
    if check "$cand"; then exit 0; fi
done

cat >&2 <<MSG
find-python: no working CPython >= 3.13 found (tried: ${candidates[*]:-nothing}).
Install one (e.g. 'pyenv install 3.13') or point PYTHON at it: make test PYTHON=/path/to/python3.13
MSG
exit 1
