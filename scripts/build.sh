#!/usr/bin/env bash
# Configures and builds MoESim into build/ (Release). Extra arguments go to CMake, e.g.
#   scripts/build.sh -DMOESIM_NATIVE=OFF
# BUILD_DIR overrides the directory.
set -euo pipefail
root=$(cd "$(dirname "$(realpath "$0")")/.." && pwd)
build=${BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
