#!/usr/bin/env bash
# Routing-rule comparison on the cluster task: reproduces the whole study (every rule x seed,
# the h5check of every file, the CSVs and the figures).
#   experiments/routing_rules/run.sh
# Environment (all optional):
#   MOESIM=path      the moesim executable            [build/moesim of this repository]
#   RANKS=n          MPI ranks per run (divides 8)    [2]
#   SEEDS="1 2 3 4 5" training seeds                [1 2 3 4 5]
#   ONLY="topk hash" run only these variants (names below)  [all]
#   PYTHON=path      python with h5py/numpy/matplotlib [/usr/bin/python3]
#   MPIRUN=mpirun    MPI launcher; MPIRUN_FLAGS extra launcher flags
#   PLOT_ONLY=1      skip the runs, re-aggregate results/runs/*.h5
#   EXTRA="--training.steps=20 ..."  extra overrides for every run (e.g. a smoke test)
#   RESULTS=dir      where results go                  [experiments/routing_rules/results]
# Writes results/runs/*.h5 + *.log + *.check (not committed), results/summary.csv,
# results/runs.csv, results/summary.md, results/*.png and results/run_info.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
MOESIM=${MOESIM:-$repo/build/moesim}
RANKS=${RANKS:-2}
SEEDS=${SEEDS:-"1 2 3 4 5"}
PYTHON=${PYTHON:-/usr/bin/python3}
MPIRUN=${MPIRUN:-mpirun}

# Every variant: name, then its overrides of base.ini (same model, data, capacity factors,
# steps and seeds for all). Router-loss coefficients follow each rule's paper; the Switch-form
# aux loss (coef 0.01) and the z-loss (0.001) of base.ini apply unless a variant says otherwise.
# topk_noaux is the control for topk_bias; expert_choice_ev125 trains exactly like
# expert_choice (bitwise, checked by plot.py) but evaluates at the training capacity, to show
# how many tokens expert choice leaves without any expert; expert_choice_cf2 gives expert
# choice the 2 expert slots per token of top-2. 2025-26 recipes: base (BASE layers: balanced
# assignment, no aux loss, as Lewis et al.), topk_sigmoid_bias (DeepSeek-V3: sigmoid scores +
# expert bias, no aux loss), topk_shared (one always-on shared expert beside the routed top-2),
# topk_aux_batch (the Switch aux loss over the global batch instead of each group).
VARIANTS=(
  "dense             --routing.rule=dense"
  "topk              --routing.rule=topk --routing.k=2"
  "topk_renorm       --routing.rule=topk --routing.k=2 --routing.renormalize=true"
  "topk_noaux        --routing.rule=topk --routing.k=2 --routing.aux_loss_coef=0"
  "topk_bias         --routing.rule=topk --routing.k=2 --routing.aux_loss_coef=0 --routing.bias_update_rate=0.001"
  "noisy_topk        --routing.rule=noisy_topk --routing.k=2 --routing.aux_loss_coef=0 --routing.importance_loss_coef=0.1 --routing.load_loss_coef=0.1"
  "switch            --routing.rule=switch --routing.k=1 --routing.jitter_eps=0.01"
  "gshard            --routing.rule=gshard --routing.k=2 --routing.random_routing=true --routing.aux_loss_coef=0 --routing.aux_gshard_loss_coef=0.01"
  "expert_choice     --routing.rule=expert_choice"
  "expert_choice_ev125 --routing.rule=expert_choice --routing.eval_capacity_factor=1.25"
  "expert_choice_cf2 --routing.rule=expert_choice --routing.capacity_factor=2.0"
  "hash              --routing.rule=hash --routing.k=1 --routing.aux_loss_coef=0 --routing.z_loss_coef=0"
  "base              --routing.rule=base --routing.k=1 --routing.aux_loss_coef=0"
  "topk_sigmoid_bias --routing.rule=topk --routing.k=2 --routing.score=sigmoid --routing.aux_loss_coef=0 --routing.bias_update_rate=0.001"
  "topk_shared       --routing.rule=topk --routing.k=2 --routing.shared_experts=1"
  "topk_aux_batch    --routing.rule=topk --routing.k=2 --routing.aux_scope=batch"
)

results=${RESULTS:-$here/results}
runs=$results/runs
mkdir -p "$runs"

flags=()
[[ $(id -u) == 0 ]] && flags+=(--allow-run-as-root)
(( RANKS > $(nproc) )) && flags+=(--oversubscribe)
# shellcheck disable=SC2206
flags+=(${MPIRUN_FLAGS:-})

# run_point NAME SEED OVERRIDES...
run_point() {
  local name=$1_s$2 seed=$2
  shift 2
  printf '%-26s ' "$name"
  # shellcheck disable=SC2086
  if ! "$MPIRUN" "${flags[@]}" -n "$RANKS" "$MOESIM" run "$here/base.ini" "$@" \
      --training.seed="$seed" ${EXTRA:-} --output.file="$runs/$name.h5" > "$runs/$name.log" 2>&1; then
    echo "FAILED (see $runs/$name.log)"; tail -n 20 "$runs/$name.log" >&2; exit 1
  fi
  "$PYTHON" "$repo/tools/h5check.py" "$runs/$name.h5" > "$runs/$name.check" 2>&1 \
    || { echo "h5check FAILED"; cat "$runs/$name.check" >&2; exit 1; }
  grep -o 'in [0-9.]* s wall.*accuracy [0-9.]*' "$runs/$name.log" | head -n 1 || echo
}

if [[ -z ${PLOT_ONLY:-} ]]; then
  [[ -x $MOESIM ]] || { echo "run.sh: no moesim executable at '$MOESIM' (set MOESIM=...)" >&2; exit 2; }
  rm -f "$runs"/*.h5 "$runs"/*.log "$runs"/*.check
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  start=$(date +%s)
  # Seed-major, then rule: slow phases of this shared machine hit every rule roughly alike.
  for seed in $SEEDS; do
    for v in "${VARIANTS[@]}"; do
      # shellcheck disable=SC2086
      set -- $v
      name=$1
      shift
      [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]] && continue
      run_point "$name" "$seed" "$@"
    done
  done
  seconds=$(( $(date +%s) - start ))
  {
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "moesim: $("$MOESIM" --version 2>&1 | head -n 1)"
    echo "command: RANKS=$RANKS SEEDS=\"$SEEDS\"${ONLY:+ ONLY=\"$ONLY\"}${EXTRA:+ EXTRA=\"$EXTRA\"}${RESULTS:+ RESULTS=$RESULTS} experiments/routing_rules/run.sh"
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    echo "load_average_before: $load_before"
    echo "load_average_after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "runs_seconds: $seconds"
  } > "$results/run_info.txt"
  echo "all runs done in ${seconds} s"
fi
"$PYTHON" "$here/plot.py" "$results"
