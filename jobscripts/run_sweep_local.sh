#!/usr/bin/env bash
# Runs a MoESim sweep without Slurm, on this machine: expands SPEC into SWEEP_DIR (tools/sweep.py),
# runs every point one after the other with mpirun (same per-point logic, logs and status files
# as the Slurm array tasks), then aggregates (tools/aggregate.py). For a laptop or a workstation;
# on a cluster use submit_sweep.sh.
#   jobscripts/run_sweep_local.sh [--force] [--no-validate] SPEC SWEEP_DIR
#   jobscripts/run_sweep_local.sh --resume [--retry-invalid] SWEEP_DIR   # only points without a
#                                                         # complete result (next attempt)
# Every point is validated (`moesim validate`) before any runs; one bad point refuses the sweep.
# --resume skips points whose last attempt failed with exit code 2 unless --retry-invalid. Each
# run of this script is an attempt: logs in SWEEP_DIR/logs/attempt-N/, never overwritten.
# Points with more ranks than CPUs run oversubscribed (mpirun --oversubscribe) and are marked so
# in the tables. Exit code: aggregate.py's (1 when any point failed).
set -euo pipefail
MOESIM_SCRIPT=run_sweep_local.sh
MOESIM_REPO=$(dirname "$(dirname "$(realpath "$0")")")
source "$MOESIM_REPO/jobscripts/lib.sh"

force=0 resume=0 validate=1 retry_invalid=0 positional=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --force) force=1 ;;
    --resume) resume=1 ;;
    --no-validate) validate=0 ;;
    --retry-invalid) retry_invalid=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$(realpath "$0")" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    -*) moesim_die "unknown option '$1' (see --help)" ;;
    *) positional+=("$1") ;;
  esac
  shift
done
moesim_setup
MOESIM_LAUNCHER=mpirun  # no Slurm allocation to srun into
python=$(moesim_python "h5py,numpy,matplotlib")
if [[ $resume == 1 ]]; then
  [[ ${#positional[@]} -eq 1 ]] || moesim_die "usage: $0 --resume SWEEP_DIR"
  sweep=$(realpath "${positional[0]}")
  pending_flags=()
  [[ $retry_invalid == 1 ]] && pending_flags+=(--retry-invalid)
  points=$("$python" "$MOESIM_REPO/tools/sweep.py" pending "$sweep" "${pending_flags[@]}")
  if [[ -n $points && $validate == 1 ]]; then
    "$python" "$MOESIM_REPO/tools/sweep.py" validate "$sweep" --moesim "$MOESIM_BIN" \
      --points "$(paste --serial --delimiters=, <<< "$points")"
  fi
else
  [[ ${#positional[@]} -eq 2 ]] || moesim_die "usage: $0 [--force] SPEC SWEEP_DIR"
  flags=(--moesim "$MOESIM_BIN")
  [[ $force == 1 ]] && flags+=(--force)
  [[ $validate == 0 ]] && flags+=(--no-validate)
  "$python" "$MOESIM_REPO/tools/sweep.py" expand "${positional[0]}" --out "${positional[1]}" "${flags[@]}"
  sweep=$(realpath "${positional[1]}")
  points=$(awk -F'\t' 'NR > 1 { print $1 }' "$sweep/manifest.tsv")
fi

attempt=$("$python" "$MOESIM_REPO/tools/sweep.py" next-attempt "$sweep")
if [[ -n $points ]]; then
  mkdir -p "$sweep/logs/attempt-$attempt"
  moesim_say "attempt $attempt: logs in $sweep/logs/attempt-$attempt/"
fi
for point in $points; do
  log=$(printf '%s/logs/attempt-%d/point-%04d.out' "$sweep" "$attempt" "$point")
  # A subshell: moesim_run_point changes directory and exits on a broken manifest row.
  if ( moesim_run_point "$sweep" "$point" "$attempt" ) > "$log" 2>&1; then
    moesim_say "point $point done"
  else
    moesim_say "point $point FAILED (exit code $?): $log"
  fi
done
"$python" "$MOESIM_REPO/tools/aggregate.py" "$sweep"
