#!/usr/bin/env bash
# Configures and builds MoESim into build/ (Release). Extra arguments go to CMake, e.g.
#   scripts/build.sh -DMOESIM_NATIVE=OFF
# BUILD_DIR overrides the directory; BUILD_TARGET builds one target only (e.g. moesim).
set -euo pipefail
root=$(cd "$(dirname "$(realpath "$0")")/.." && pwd)
build=${BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build" -j "$(nproc)" ${BUILD_TARGET:+--target "$BUILD_TARGET"}
