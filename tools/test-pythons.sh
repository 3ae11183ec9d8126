#!/usr/bin/env bash
# `make test`'s per-version part: the Rust tests (`make test-rust`) and pytest (`make test-python`)
# on every CPython >= 3.13 that `tools/find-python.sh --all` gives ($PYTHONS chooses them), each in
# its own venv and cargo target dir: the default Python (`tools/find-python.sh`) in DEFAULT_VENV,
# every other one in .venv-pyXY; cargo uses target/pyXY (tools/in-venv.sh). A failing version does
# not stop the others. At the end: one line per version with the test counts and the seconds each
# part took; the exit status is non-zero if any part failed. Full logs: target/test-logs/pyXY.log.
#
# usage: tools/test-pythons.sh DEFAULT_VENV
set -euo pipefail

default_venv=$1
make=${MAKE:-make}
mapfile -t pythons < <(tools/find-python.sh --all)
default=$(tools/find-python.sh)
tag() { "$1" -c 'import sys; print("py%d%d" % sys.version_info[:2])'; }
default_tag=$(tag "$default")
mkdir -p target/test-logs

# Counts from a log: cargo's "test result:" lines summed, and pytest's closing line.
cargo_counts() {
    awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^(passed|failed|ignored);?$/) \
        n[substr($i, 1, length($i) - ($i ~ /;$/))] += $(i - 1) } \
        END { printf "%d passed, %d failed, %d ignored", n["passed"], n["failed"], n["ignored"] }' "$1"
}
pytest_counts() {
    grep -E '^=*\s*[0-9]+ (passed|failed|error)' "$1" | tail -1 | sed -E 's/^=+ //; s/ in [0-9.]+s.*//' || true
}

declare -A label=([rust]="cargo test" [python]=pytest)
summary=() failed=()
for py in "${pythons[@]}"; do
    t=$(tag "$py")
    venv=.venv-$t
    if [[ $t == "$default_tag" ]]; then venv=$default_venv; fi
    version=$("$py" -c 'import platform; print(platform.python_version())')
    line="$t ($version, $venv):"
    for part in rust python; do
        log=target/test-logs/$t-$part.log
        start=$SECONDS
        if "$make" "test-$part" VENV="$venv" PYTHON="$py" 2>&1 | tee "$log"; then
            result=ok
        else
            result=FAILED
            failed+=("$t test-$part")
        fi
        if [[ $part == rust ]]; then counts=$(cargo_counts "$log"); else counts=$(pytest_counts "$log"); fi
        line+=" ${label[$part]} $result [${counts:-no counts}] $((SECONDS - start)) s;"
    done
    summary+=("${line%;}")
done

printf '\n==> tested on %d Python version(s)\n' "${#pythons[@]}"
printf '    %s\n' "${summary[@]}"
if ((${#failed[@]})); then
    printf '==> FAILED: %s\n' "${failed[*]}"
    exit 1
fi
