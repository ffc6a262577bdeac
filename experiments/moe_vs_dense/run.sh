#!/usr/bin/env bash
# MoE vs dense on the cluster task: reproduces the whole study (every run, the checks, the CSV
# and the figures).
#   experiments/moe_vs_dense/run.sh
# Environment (all optional):
#   MOESIM=path      the moesim executable            [build/moesim of this repository]
#   RANKS=n          MPI ranks per run (divides 8)    [2]
#   SEEDS="1 2 3"    training seeds                   [1 2 3]
#   PYTHON=path      python with h5py/numpy/matplotlib [/usr/bin/python3]
#   MPIRUN=mpirun    MPI launcher; MPIRUN_FLAGS extra launcher flags
#   PLOT_ONLY=1      skip the runs, re-aggregate results/runs/*.h5
#   EXTRA="--training.steps=20 ..."  extra overrides for every run (e.g. a smoke test)
# Writes results/runs/*.h5 + *.log (not committed), results/summary.csv, results/runs.csv,
# results/summary.md, results/*.png and results/run_info.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
MOESIM=${MOESIM:-$repo/build/moesim}
RANKS=${RANKS:-2}
SEEDS=${SEEDS:-"1 2 3"}
PYTHON=${PYTHON:-/usr/bin/python3}
MPIRUN=${MPIRUN:-mpirun}

results=$here/results
runs=$results/runs
mkdir -p "$runs"

flags=()
[[ $(id -u) == 0 ]] && flags+=(--allow-run-as-root)
(( RANKS > $(nproc) )) && flags+=(--oversubscribe)
read -r -a more <<< "${MPIRUN_FLAGS:-}"
flags+=("${more[@]}")
read -r -a extra <<< "${EXTRA:-}"

# run_point NAME SEED OVERRIDES...
run_point() {
  local name=$1_s$2 seed=$2
  shift 2
  printf '%-28s ' "$name"
  if ! "$MPIRUN" "${flags[@]}" -n "$RANKS" "$MOESIM" run "$here/base.ini" "$@" \
      --training.seed="$seed" "${extra[@]}" --output.file="$runs/$name.h5" > "$runs/$name.log" 2>&1; then
    echo "FAILED (see $runs/$name.log)"; tail -n 20 "$runs/$name.log" >&2; exit 1
  fi
  "$PYTHON" "$repo/tools/h5check.py" "$runs/$name.h5" > "$runs/$name.check" 2>&1 \
    || { echo "h5check FAILED"; cat "$runs/$name.check" >&2; exit 1; }
  grep -o 'in [0-9.]* s wall.*accuracy [0-9.]*' "$runs/$name.log" | head -n 1 || echo
}
moe1=(--routing.num_experts=8 --routing.rule=switch --routing.k=1)   # 8 experts, top-1
moe2=(--routing.num_experts=8 --routing.rule=topk --routing.k=2)     # 8 experts, top-2
dense=(--routing.num_experts=1 --routing.rule=switch --routing.k=1)  # one expert = a dense FFN

if [[ -z ${PLOT_ONLY:-} ]]; then
  [[ -x $MOESIM ]] || { echo "run.sh: no moesim executable at '$MOESIM' (set MOESIM=...)" >&2; exit 2; }
  rm -f "$runs"/*.h5 "$runs"/*.log "$runs"/*.check
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  start=$(date +%s)
  for seed in $SEEDS; do
    # (a) expert width sweep at gamma = alpha: top-1 MoE of 8 x F vs dense F (same per-token FLOPs).
    for F in 4 8 16 32; do
      run_point "moe1_F${F}_g1.0" "$seed" "${moe1[@]}" --model.d_ff=$F
      run_point "dense_F${F}_g1.0" "$seed" "${dense[@]}" --model.d_ff=$F
    done
    # (b) top-2 MoE of 8 x 8 (compare with dense F = 16 of (a)); dense 64 = the MoE's total size.
    run_point "moe2_F8_g1.0" "$seed" "${moe2[@]}" --model.d_ff=8
    run_point "dense_F64_g1.0" "$seed" "${dense[@]}" --model.d_ff=64
    # (c) weaker / stronger misleading patch at F = 8.
    for g in 0.5 1.5; do
      run_point "moe1_F8_g$g" "$seed" "${moe1[@]}" --model.d_ff=8 --data.feature_noise=$g
      run_point "dense_F8_g$g" "$seed" "${dense[@]}" --model.d_ff=8 --data.feature_noise=$g
    done
    # (d) cluster centres twice as strong (beta = 2) at F = 8, gamma = 1.
    run_point "moe1_F8_g1.0_b2" "$seed" "${moe1[@]}" --model.d_ff=8 --data.center_strength=2
    run_point "dense_F8_g1.0_b2" "$seed" "${dense[@]}" --model.d_ff=8 --data.center_strength=2
  done
  seconds=$(( $(date +%s) - start ))
  {
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "moesim: $("$MOESIM" --version 2>&1 | head -n 1)"
    echo "command: RANKS=$RANKS SEEDS=\"$SEEDS\" experiments/moe_vs_dense/run.sh"
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    echo "load_average_before: $load_before"
    echo "load_average_after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "runs_seconds: $seconds"
  } > "$results/run_info.txt"
  echo "all runs done in ${seconds} s"
fi
"$PYTHON" "$here/plot.py" "$results"
