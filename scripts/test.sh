#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to the whole test suite: installs what is
# missing, builds (warnings are errors) and runs CTest; then builds again with
# AddressSanitizer + UndefinedBehaviorSanitizer and runs the suite once more.
# SKIP_SANITIZERS=1 skips the second build (quick local iterations).
set -euo pipefail
root=$(cd "$(dirname "$(realpath "$0")")/.." && pwd)
"$root/scripts/install_deps.sh"
jobs=$(nproc)

echo "== format (clang-format --dry-run --Werror, the repository's .clang-format) =="
(cd "$root" && git ls-files -z -- '*.cpp' '*.hpp' | xargs -0 clang-format --dry-run --Werror)

echo "== build (Release, -Werror) =="
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DMOESIM_WERROR=ON >/dev/null
cmake --build "$root/build" -j "$jobs"
echo "== tests (Release) =="
ctest --test-dir "$root/build" --output-on-failure -j "$jobs"

if [[ "${SKIP_SANITIZERS:-0}" != 1 ]]; then
  echo "== build (ASan + UBSan) =="
  cmake -S "$root" -B "$root/build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOESIM_SANITIZE=ON -DMOESIM_NATIVE=OFF \
        -DMOESIM_WERROR=ON >/dev/null
  cmake --build "$root/build-asan" -j "$jobs"
  echo "== tests (ASan + UBSan) =="
  # The slurm, cluster and scale tiers ran above: they drive the job scripts and many ranks
  # (64 sanitized processes on 2 cores would only measure the sanitizer).
  ctest --test-dir "$root/build-asan" --output-on-failure -j "$jobs" -LE "slurm|cluster|scale"
fi
