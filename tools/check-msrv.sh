#!/usr/bin/env bash
# Checks the MSRV that Cargo.toml declares (`rust-version` of [workspace.package]):
# 1. it is at least the highest `rust-version` among the locked dependencies (from
#    `cargo metadata`): those crates refuse an older compiler, so nothing lower can be true;
# 2. the workspace builds with that toolchain (`cargo +MSRV check --all-targets`), installing it
#    with rustup's minimal profile when it is missing. Where it cannot be installed (no network),
#    the check says so loudly and rests on 1 and on clippy's `incompatible_msrv` lint (on in
#    `make lint`), which flags standard-library items newer than the declared version.
#
# usage: tools/check-msrv.sh VENV   (run through tools/in-venv.sh, which points PyO3 at VENV)
set -euo pipefail

venv=$1
declared=$(sed -n '/^\[workspace.package\]/,/^\[/s/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
[[ -n $declared ]] || { echo "check-msrv: no rust-version in [workspace.package] of Cargo.toml" >&2; exit 1; }

# The highest rust-version of any dependency in Cargo.lock (the workspace's own crates excluded).
read -r needed needed_by < <(cargo metadata --format-version 1 --locked |
    "$venv/bin/python" -c '
import json, sys
meta = json.load(sys.stdin)
own = set(meta["workspace_members"])
versions = [(tuple(int(x) for x in p["rust_version"].split(".")), p["name"])
            for p in meta["packages"] if p["id"] not in own and p.get("rust_version")]
best = max(v for v, _ in versions)
print(".".join(map(str, best)), ",".join(sorted({n for v, n in versions if v == best})))')
older() { [[ $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1) == "$1" && $1 != "$2" ]]; }
if older "$declared" "$needed"; then
    echo "check-msrv: Cargo.toml declares rust-version $declared, but $needed_by need $needed" >&2
    exit 1
fi
echo "check-msrv: declared $declared; the most demanding dependencies ($needed_by) need $needed"

if ! rustup run "$declared" rustc --version >/dev/null 2>&1; then
    rustup toolchain install "$declared" --profile minimal >/dev/null 2>&1 || {
        echo "check-msrv: WARNING: could not install Rust $declared: the build with it is NOT checked" >&2
        exit 0
    }
fi
# Its own target dir: another compiler's artifacts would evict the main build's.
CARGO_TARGET_DIR=$PWD/target/msrv tools/in-venv.sh "$venv" \
    cargo "+$declared" check --workspace --all-targets --features python --locked --quiet
echo "check-msrv: the workspace builds with Rust $declared"
