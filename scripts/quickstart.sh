#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a finished MoESim run: installs what is
# missing, builds, and trains experiments/quickstart.ini on 2 MPI ranks, writing
# quickstart.h5 in the current directory (RANKS=n to change the rank count).
set -euo pipefail
root=$(cd "$(dirname "$(realpath "$0")")/.." && pwd)
"$root/scripts/install_deps.sh"
BUILD_TARGET=moesim "$root/scripts/build.sh"   # the program only; scripts/test.sh builds the tests
ranks=${RANKS:-2}
mpi_flags=(--oversubscribe --bind-to none)
[[ $(id -u) -eq 0 ]] && mpi_flags+=(--allow-run-as-root)
mpirun -n "$ranks" "${mpi_flags[@]}" "$root/build/moesim" run "$root/experiments/quickstart.ini" "$@"
/usr/bin/python3 "$root/tools/h5check.py" quickstart.h5
