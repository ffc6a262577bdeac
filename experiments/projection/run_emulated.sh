#!/usr/bin/env bash
# The inter-node half of the projection study: on the emulated cluster (scripts/cluster/emulate.sh,
# NODES nodes x RPN ranks, default 2 x 2, links shaped to BW, default 1gbit), calibrate both levels
# (intra-node shared memory, inter-node TCP over the shaped link) into
# machines/emulated_<NODES>x<RPN>_<BW>.ini, measure validation runs (flat exchange; hierarchical
# when RPN > 1; overlap_degree = 2 when every rank holds >= 2 experts) across the nodes, stop the
# cluster, then predict every run with that machine file (hold-out: calibration never sees the runs).
#   [NODES=2] [RPN=2] [BW=1gbit] [BURST=bytes] experiments/projection/run_emulated.sh [BUILD_DIR]
# (root). BURST sets the links' token bucket (emulate.sh --burst; default one millisecond of BW,
# >= 64 KiB); results then go to ..._burst<BYTES>.
# With NODES x RPN > 2 the ranks share this machine's 2 cores (oversubscribed): every rank's time
# includes waiting for a core; NODES=2 RPN=1 is the one emulated layout without that.
set -euo pipefail
root=$(cd "$(dirname "$(realpath "$0")")/../.." && pwd)
cd "$root"
B=$(realpath "${1:-build}")/moesim
BW=${BW:-1gbit}
NODES=${NODES:-2}
RPN=${RPN:-2}
P=$((NODES * RPN))
D=experiments/projection
BURST=${BURST:-}
tag=${NODES}x${RPN}_$BW${BURST:+_burst$BURST}
OUT=$D/results/emulated_$tag
M=$D/machines/emulated_$tag.ini
mkdir -p "$OUT"
export MOESIM_CLUSTER_NAME=mproj MOESIM_CLUSTER_DIR=/tmp/moesim-cluster-proj
trap 'eval "$(scripts/cluster/emulate.sh stop 2>/dev/null)" || true' EXIT
eval "$(scripts/cluster/emulate.sh start "$NODES" --bandwidth "$BW" ${BURST:+--burst "$BURST"})"
{ date -u; cat /proc/loadavg; } > "$OUT/machine.txt"
MPI=(mpirun -n "$P" --map-by "ppr:$RPN:node")
if [ "${SKIP_CALIBRATE:-0}" != 1 ]; then  # SKIP_CALIBRATE=1 reuses the machine file
  "${MPI[@]}" "$B" calibrate $D/validate_layer.ini --cluster.output="$M" \
    --cluster.calibrate_expert_shapes=64x256 | tee "$OUT/calibrate.log"
fi
runs=()
dispatches=(alltoallv)
[[ $RPN -gt 1 ]] && dispatches+=(hierarchical)  # with one rank per node it is the flat exchange
for dispatch in "${dispatches[@]}"; do
  "${MPI[@]}" "$B" run $D/validate_layer.ini --routing.dispatch=$dispatch --data.eval_tokens=1024 \
    --output.file="$OUT/val_layer_${dispatch}_${NODES}x$RPN.h5"
  "${MPI[@]}" "$B" run experiments/quickstart.ini --training.steps=60 --training.eval_every=0 \
    --output.log_every=0 --output.echo_config=false --output.loads_every=5 \
    --routing.dispatch=$dispatch --output.file="$OUT/val_quickstart_${dispatch}_${NODES}x$RPN.h5"
  runs+=("$OUT/val_layer_${dispatch}_${NODES}x$RPN.h5" "$OUT/val_quickstart_${dispatch}_${NODES}x$RPN.h5")
done
# The overlapped exchange (routing.overlap_degree = 2: 2 chunks of the local experts) of the
# layer, to validate the pipeline term (simulate::pipelined_time); the layer has 8 experts.
if [[ $((8 / P)) -ge 2 ]]; then
  "${MPI[@]}" "$B" run $D/validate_layer.ini --routing.overlap_degree=2 --data.eval_tokens=1024 \
    --output.file="$OUT/val_layer_overlap2_${NODES}x$RPN.h5"
  runs+=("$OUT/val_layer_overlap2_${NODES}x$RPN.h5")
fi
echo "load after the runs: $(cat /proc/loadavg)" >> "$OUT/machine.txt"
eval "$(scripts/cluster/emulate.sh stop)"
trap - EXIT
"$B" simulate --cluster.file="$M" --simulate.validate="$(IFS=,; echo "${runs[*]}")" \
  --simulate.output="$OUT/validation.h5" | tee "$OUT/validation.log"
