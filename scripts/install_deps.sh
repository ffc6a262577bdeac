#!/usr/bin/env bash
# Installs the Debian 12 packages MoESim needs (only the missing ones) and makes sure the
# host name resolves (Open MPI otherwise waits ~5 s per extra rank on a DNS timeout).
# Idempotent: a machine that has everything is left untouched.
set -euo pipefail

PACKAGES=(build-essential cmake git clang-format openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools
          libeigen3-dev libboost-program-options-dev libgtest-dev libgmock-dev
          libdnnl-dev  # oneDNN 2.6: float32 / bfloat16 GEMMs (experts/gemm.cpp)
          python3-h5py python3-numpy python3-matplotlib
          # Slurm for the job scripts and the `slurm` test tier (scripts/slurm/local_slurm.sh);
          # srun --mpi=pmix dlopens libpmix.so, which only libpmix-dev ships.
          slurm-wlm munge libpmix-dev)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if dpkg-query -W -f='${Status}' libhdf5-dev 2>/dev/null | grep -q "install ok installed"; then
  echo "install_deps: note: the serial libhdf5-dev is installed; MoESim's CMake asks for the parallel" \
       "(Open MPI) HDF5 explicitly, but if configuration picks the serial one, remove libhdf5-dev." >&2
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    if [[ ${#missing[@]} -gt 0 ]]; then
      echo "install_deps: missing packages: ${missing[*]}" >&2
      echo "install_deps: run as root: apt-get install --no-install-recommends ${missing[*]}" >&2
      exit 1
    fi
  fi
fi

if [[ ${#missing[@]} -gt 0 ]]; then
  echo "install_deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install_deps: all ${#PACKAGES[@]} packages present"
fi

host=$(hostname)
if ! getent hosts "$host" >/dev/null 2>&1; then
  if [[ -w /etc/hosts ]]; then
    echo "install_deps: adding '127.0.0.1 $host' to /etc/hosts (Open MPI needs the host name to resolve)"
    echo "127.0.0.1 $host" >> /etc/hosts
  else
    echo "install_deps: warning: host name '$host' does not resolve; oversubscribed MPI runs will be slow" >&2
  fi
fi
