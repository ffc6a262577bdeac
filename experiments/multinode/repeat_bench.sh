#!/usr/bin/env bash
# Three repeats of the 4-node unshaped small-message bench, flat vs hierarchical (README.md).
set -e
cd "$(dirname "$(realpath "$0")")/../.."
export MOESIM_CLUSTER_NAME=mrep MOESIM_CLUSTER_DIR=/tmp/moesim-cluster-rep
trap 'scripts/cluster/emulate.sh stop >/dev/null 2>&1 || true' EXIT
eval "$(scripts/cluster/emulate.sh start 4)"
for rep in 1 2 3; do
  for d in alltoallv hierarchical; do
    echo "rep $rep $d load $(cut -d' ' -f1 /proc/loadavg)"
    timeout 300 mpirun -n 8 --map-by ppr:2:node build/moesim bench experiments/multinode/bench_small.ini --routing.dispatch=$d | grep -E "^bench layer|^bench phases"
  done
done
