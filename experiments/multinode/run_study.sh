#!/usr/bin/env bash
# The multi-node study (README.md here): on 2 and 4 emulated nodes (2 ranks each) and several
# link speeds, (1) the raw MPI_Alltoallv probe, (2) `moesim bench` of the small-message layer with
# the flat and the hierarchical exchange, (2b) the overlapped exchange against the blocking one
# (bench_overlap.ini, 1 and 2 ranks per node), (3) training runs with node-limited routing M = 1, 2 vs
# unlimited (hierarchical exchange). Raw outputs go to OUT/raw, then summarize.py writes the tables
# and the figure. Needs root (scripts/cluster/emulate.sh).
#   experiments/multinode/run_study.sh [OUT]      (default experiments/multinode/results)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/results}
moesim=${MOESIM:-$root/build/moesim}
nodes_list=${NODES_LIST:-"2 4"}
bw_list=${BW_LIST:-"10gbit 4gbit 1gbit"}
mkdir -p "$out/raw"
export MOESIM_CLUSTER_NAME=mstudy MOESIM_CLUSTER_DIR=/tmp/moesim-cluster-study
emulate=$root/scripts/cluster/emulate.sh
trap '"$emulate" stop >/dev/null 2>&1 || true' EXIT
mpicc -O2 -o "$out/raw/alltoallv_probe" "$here/alltoallv_probe.c"
{ date -u; uname -r; nproc; cat /proc/loadavg; } >"$out/raw/machine.txt"
for nodes in $nodes_list; do
  for bw in $bw_list; do
    tag=n${nodes}_$bw
    shape=()
    [[ $bw != unshaped ]] && shape=(--bandwidth "$bw")
    eval "$("$emulate" start "$nodes" "${shape[@]}")"
    echo "== $tag (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    timeout 120 mpirun -n "$nodes" --map-by ppr:1:node "$out/raw/alltoallv_probe" \
      >"$out/raw/probe_$tag.txt" 2>&1 || echo "probe $tag failed" >&2
    ranks=$((2 * nodes))
    for d in alltoallv hierarchical; do
      timeout 300 mpirun -n "$ranks" --map-by ppr:2:node "$moesim" bench "$here/bench_small.ini" \
        --routing.dispatch=$d >"$out/raw/bench_${tag}_$d.txt" 2>&1 || echo "bench $tag $d failed" >&2
    done
    # Overlap (routing.overlap_degree = d, bench_overlap.ini): the pipelined layer against d = 1
    # in the same loop, with 1 and 2 ranks per node (E = 16: 16 / ranks experts per rank).
    for ppn in 1 2; do
      for d in 2 4; do
        ((d * ppn * nodes > 16)) && continue  # d <= experts per rank (16 / ranks)
        timeout 300 mpirun -n $((ppn * nodes)) --map-by ppr:$ppn:node "$moesim" bench \
          "$here/bench_overlap.ini" --routing.overlap_degree=$d \
          >"$out/raw/overlap_${tag}_ppn${ppn}_d$d.txt" 2>&1 || echo "overlap $tag ppn $ppn d $d failed" >&2
      done
    done
    for m in 0 1 2; do
      ((m == nodes)) && continue  # M = G is unlimited
      timeout 600 mpirun -n "$ranks" --map-by ppr:2:node "$moesim" run "$here/train.ini" \
        --routing.expert_groups="$nodes" --routing.group_limit=$m \
        --output.file="$out/raw/train_${tag}_M$m.h5" >"$out/raw/train_${tag}_M$m.txt" 2>&1 ||
        echo "train $tag M=$m failed" >&2
    done
    eval "$("$emulate" stop)"
  done
done
cat /proc/loadavg >>"$out/raw/machine.txt"
/usr/bin/python3 "$here/summarize.py" "$out"
