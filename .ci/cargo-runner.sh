#!/bin/sh
# cargo's runner for the Rust test binaries in CI (.ci/run sets it). A binary built for a private
# CPython made by ../shared/tools/get-python.sh (its prefix holds a sysroot/ with a newer C library
# than this machine's) runs through that tool's runner, which points it at that C library; any
# other binary runs as it is. The Python is the venv's that tools/in-venv.sh activated: its
# pyvenv.cfg's `home` is PREFIX/usr/bin.
set -e
home=$(sed -n 's/^home *= *//p' "${VIRTUAL_ENV:?}/pyvenv.cfg")
prefix=${home%/usr/bin}
if [ "$prefix" != "$home" ] && [ -d "$prefix/sysroot" ]; then
    PRIVATE_PYTHON_PREFIX=$prefix exec "$(dirname "$0")/../../shared/tools/cargo-runner-private-python.sh" "$@"
fi
exec "$@"
