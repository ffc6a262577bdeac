#!/usr/bin/env bash
# Runs the scaling studies of experiments/scaling (weak, strong, experts, capacity) and refreshes
# experiments/scaling/results/ (CSV + Markdown tables, figures, the environment they ran in).
#   experiments/scaling/run_studies.sh [--local] [--overcommit] [--studies=weak,strong,...] [WORK_DIR]
# Default: through Slurm (jobscripts/submit_sweep.sh --wait --exclusive: one point per node at a
# time, so points do not disturb each other's timings). --local: no Slurm, one point after the
# other with mpirun (jobscripts/run_sweep_local.sh).
# --overcommit: for a machine with fewer than 8 cores (the 4- and 8-rank points then share cores;
# the tables and figures mark them "oversubscribed"). Do not use it on a cluster: there it would
# pack ranks onto too few cores.
# WORK_DIR holds the sweep directories with the HDF5 results [experiments/scaling/runs]; on a
# cluster put it on a file system the compute nodes see.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
repo=$(dirname "$(dirname "$here")")
mode=slurm overcommit=() studies=(weak strong experts capacity) work=$here/runs
command_line="experiments/scaling/run_studies.sh $*"
while [[ $# -gt 0 ]]; do
  case $1 in
    --local) mode=local ;;
    --overcommit) overcommit=(--overcommit) ;;
    --studies=*) IFS=, read -r -a studies <<< "${1#--studies=}" ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run_studies.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) work=$1 ;;
  esac
  shift
done
results=$here/results
mkdir -p "$work" "$results"
# shellcheck disable=SC2034  # both are read by lib.sh
MOESIM_REPO=$repo MOESIM_SCRIPT=run_studies.sh
source "$repo/jobscripts/lib.sh"
moesim_setup  # site.env, MOESIM_BIN: the executable the points will run
python=/usr/bin/python3
[[ -x $python ]] || python=python3

# ENVIRONMENT.md: one row per study, replaced when that study runs again.
env_file=$results/ENVIRONMENT.md
machine="$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
version=$("$MOESIM_BIN" --version 2>&1 | head -n 1)
how="$mode${overcommit[*]:+ ${overcommit[*]}}$([[ $mode == slurm ]] && echo ", $(sbatch --version 2>/dev/null)")"
env_row() {  # env_row STUDY CELLS... : replace STUDY's row
  local study=$1 row cell old=()
  shift
  row="| $study |"
  for cell in "$@"; do row+=" $cell |"; done
  [[ -r $env_file ]] && mapfile -t old < <(grep '^| [a-z]' "$env_file" | grep -v "^| study |" | grep -v "^| $study |" || true)
  {
    echo "# Environment of the committed results"
    echo
    echo "Written by run_studies.sh; one row per study. Load averages (1/5/15 min) of the machine"
    echo "before and after the study: this 2-core machine is shared, so timings taken under a load"
    echo "above ~1 are slowed by other processes."
    echo
    echo "| study | date (UTC) | moesim | how | machine | load before | load after | seconds | command |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${old[@]}" "$row" | grep -v '^$' | sort
  } > "$env_file.tmp" && mv "$env_file.tmp" "$env_file"
}

status=0
for study in "${studies[@]}"; do
  spec=$here/$study.spec
  [[ -r $spec ]] || { echo "run_studies.sh: no study '$study' ($spec)" >&2; exit 2; }
  dir=$work/$study
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  start=$(date --utc +%Y-%m-%dT%H:%M:%S)
  t0=$SECONDS
  echo "== $study: $spec -> $dir"
  rc=0
  if [[ $mode == slurm ]]; then
    "$repo/jobscripts/submit_sweep.sh" --wait --exclusive --force "${overcommit[@]}" "$spec" "$dir" || rc=$?
    # this submission's aggregation job (jobs.tsv: kind, job id, ...)
    agg=$(awk -F'\t' '$1 == "aggregate" { print $2 }' "$dir/jobs.tsv" 2>/dev/null || true)
    [[ -n $agg && -r $dir/logs/aggregate-$agg.out ]] && cat "$dir/logs/aggregate-$agg.out"
  else
    "$repo/jobscripts/run_sweep_local.sh" --force "$spec" "$dir" || rc=$?
  fi
  [[ $rc -eq 0 ]] || { echo "run_studies.sh: study $study: some points failed (exit $rc), see $dir/failed.csv" >&2; status=1; }
  env_row "$study" "$start" "$version" "$how" "$machine" "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)" \
          "$((SECONDS - t0))" "\`$command_line\`"
  cp "$dir/results.csv" "$results/$study.csv"
  if [[ $(wc -l < "$dir/failed.csv") -gt 1 ]]; then cp "$dir/failed.csv" "$results/$study-failed.csv"; else rm -f "$results/$study-failed.csv"; fi
  # report.py draws weak and strong scaling itself; the other studies keep aggregate.py's figures.
  if [[ $study != weak && $study != strong ]]; then
    for png in "$dir"/plots/*.png; do
      [[ -e $png ]] && cp "$png" "$results/$study-$(basename "$png")"
    done
  fi
done
"$python" "$here/report.py" "$results"
echo "results: $results"
exit "$status"
