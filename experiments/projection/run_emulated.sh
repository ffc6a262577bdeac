#!/usr/bin/env bash
# The inter-node half of the projection study: on the emulated cluster (scripts/cluster/emulate.sh,
# 2 nodes x 2 ranks, links shaped to BW, default 1gbit), calibrate both levels (intra-node
# shared memory, inter-node TCP over the shaped link) into machines/emulated_2x2_<BW>.ini, measure
# validation runs (flat and hierarchical exchange) across the two nodes, stop the cluster, then
# predict every run with that machine file (hold-out: calibration never sees the runs).
#   experiments/projection/run_emulated.sh [BUILD_DIR]       (root: network namespaces)
set -euo pipefail
root=$(cd "$(dirname "$(realpath "$0")")/../.." && pwd)
cd "$root"
B=$(realpath "${1:-build}")/moesim
BW=${BW:-1gbit}
D=experiments/projection
OUT=$D/results/emulated_$BW
M=$D/machines/emulated_2x2_$BW.ini
mkdir -p "$OUT"
export MOESIM_CLUSTER_NAME=mproj MOESIM_CLUSTER_DIR=/tmp/moesim-cluster-proj
trap 'eval "$(scripts/cluster/emulate.sh stop 2>/dev/null)" || true' EXIT
eval "$(scripts/cluster/emulate.sh start 2 --bandwidth "$BW")"
{ date -u; cat /proc/loadavg; } > "$OUT/machine.txt"
MPI=(mpirun -n 4 --map-by ppr:2:node)
if [ "${SKIP_CALIBRATE:-0}" != 1 ]; then  # SKIP_CALIBRATE=1 reuses the machine file
  "${MPI[@]}" "$B" calibrate $D/validate_layer.ini --cluster.output="$M" \
    --cluster.calibrate_expert_shapes=64x256 | tee "$OUT/calibrate.log"
fi
runs=()
for dispatch in alltoallv hierarchical; do
  "${MPI[@]}" "$B" run $D/validate_layer.ini --routing.dispatch=$dispatch --data.eval_tokens=1024 \
    --output.file="$OUT/val_layer_${dispatch}_2x2.h5"
  "${MPI[@]}" "$B" run experiments/quickstart.ini --training.steps=60 --training.eval_every=0 \
    --output.log_every=0 --output.echo_config=false --output.loads_every=5 \
    --routing.dispatch=$dispatch --output.file="$OUT/val_quickstart_${dispatch}_2x2.h5"
  runs+=("$OUT/val_layer_${dispatch}_2x2.h5" "$OUT/val_quickstart_${dispatch}_2x2.h5")
done
# The overlapped exchange (routing.overlap_degree = 2: 2 chunks of the 2 local experts) of the
# layer, to validate the pipeline term (simulate::pipelined_time).
"${MPI[@]}" "$B" run $D/validate_layer.ini --routing.overlap_degree=2 --data.eval_tokens=1024 \
  --output.file="$OUT/val_layer_overlap2_2x2.h5"
runs+=("$OUT/val_layer_overlap2_2x2.h5")
echo "load after the runs: $(cat /proc/loadavg)" >> "$OUT/machine.txt"
eval "$(scripts/cluster/emulate.sh stop)"
trap - EXIT
"$B" simulate --cluster.file="$M" --simulate.validate="$(IFS=,; echo "${runs[*]}")" \
  --simulate.output="$OUT/validation.h5" | tee "$OUT/validation.log"
