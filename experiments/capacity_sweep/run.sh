#!/usr/bin/env bash
# Capacity-factor sweep: reproduces the whole study (every run, the checks, the CSV and figures).
#   experiments/capacity_sweep/run.sh
# Environment (all optional):
#   MOESIM=path      the moesim executable            [build/moesim of this repository]
#   RANKS=n          MPI ranks per run (divides 8)    [2]
#   SEEDS="1 2 3"    training seeds                   [1 2 3]
#   PADDED_SEEDS="1" seeds also run with routing.dispatch=alltoall_padded (finite cf only) [1]
#   PYTHON=path      python with h5py/numpy/matplotlib [/usr/bin/python3]
#   MPIRUN=mpirun    MPI launcher; MPIRUN_FLAGS extra launcher flags
#   PLOT_ONLY=1      skip the runs, re-aggregate results/runs/*.h5
#   EXTRA="--training.steps=20 ..."  extra overrides for every run (e.g. a smoke test)
# Writes results/runs/*.h5 + *.log (not committed), results/summary.csv, results/runs.csv,
# results/*.png and results/run_info.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
MOESIM=${MOESIM:-$repo/build/moesim}
RANKS=${RANKS:-2}
SEEDS=${SEEDS:-"1 2 3"}
PADDED_SEEDS=${PADDED_SEEDS:-1}
PYTHON=${PYTHON:-/usr/bin/python3}
MPIRUN=${MPIRUN:-mpirun}
RULES=(switch topk)            # top-1 Switch routing, top-2 topk routing
CFS=(0.5 0.75 1.0 1.25 1.5 2.0 dropless)

results=$here/results
runs=$results/runs
mkdir -p "$runs"

flags=()
[[ $(id -u) == 0 ]] && flags+=(--allow-run-as-root)
(( RANKS > $(nproc) )) && flags+=(--oversubscribe)
read -r -a more <<< "${MPIRUN_FLAGS:-}"
flags+=("${more[@]}")
read -r -a extra <<< "${EXTRA:-}"

run_point() {  # run_point RULE CF SEED DISPATCH
  local rule=$1 cf=$2 seed=$3 dispatch=$4 k=1 name ov=()
  [[ $rule == topk ]] && k=2
  name=${rule}_cf${cf}_s${seed}
  [[ $dispatch == alltoall_padded ]] && name=${rule}_cf${cf}_padded_s${seed}
  if [[ $cf == dropless ]]; then ov+=(--routing.dropless=true); else ov+=(--routing.capacity_factor="$cf"); fi
  printf '%-32s ' "$name"
  if ! "$MPIRUN" "${flags[@]}" -n "$RANKS" "$MOESIM" run "$here/base.ini" \
      --routing.rule="$rule" --routing.k="$k" "${ov[@]}" --routing.dispatch="$dispatch" \
      --training.seed="$seed" "${extra[@]}" --output.file="$runs/$name.h5" > "$runs/$name.log" 2>&1; then
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
  # Interleaved: seed-major, then cf, then rule (and the padded twin right after its alltoallv
  # run), so slow phases of this shared machine hit every cf roughly alike.
  for seed in $SEEDS; do
    for cf in "${CFS[@]}"; do
      for rule in "${RULES[@]}"; do
        run_point "$rule" "$cf" "$seed" alltoallv
        if [[ " $PADDED_SEEDS " == *" $seed "* && $cf != dropless ]]; then
          run_point "$rule" "$cf" "$seed" alltoall_padded
        fi
      done
    done
  done
  seconds=$(( $(date +%s) - start ))
  {
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "moesim: $("$MOESIM" --version 2>&1 | head -n 1)"
    echo "command: RANKS=$RANKS SEEDS=\"$SEEDS\" PADDED_SEEDS=\"$PADDED_SEEDS\" experiments/capacity_sweep/run.sh"
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    echo "load_average_before: $load_before"
    echo "load_average_after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "runs_seconds: $seconds"
  } > "$results/run_info.txt"
  echo "all runs done in ${seconds} s"
fi
"$PYTHON" "$here/plot.py" "$results"
