#!/usr/bin/env bash
# Submits a MoESim parameter sweep to Slurm: expands SPEC into SWEEP_DIR (tools/sweep.py),
# validates EVERY point (`moesim validate point.ini --ranks=R`) before submitting anything, submits
# one job array per rank count (jobscripts/sweep_array.sbatch; array task i = point i of
# SWEEP_DIR/manifest.tsv) and an aggregation job (jobscripts/aggregate.sbatch) that starts when all
# arrays have ended, then prints the job ids:
#   array <job id> ranks=<R> points=<ids>
#   aggregate <job id>
# One invalid point refuses the whole sweep (exit 2, every bad point listed with moesim's
# messages; nothing written to SWEEP_DIR, nothing submitted).
#
#   jobscripts/submit_sweep.sh [options] SPEC SWEEP_DIR
#   jobscripts/submit_sweep.sh [options] --resubmit SWEEP_DIR   # again, only points not complete
# Options:
#   --dry-run           expand + validate + print the plan; write nothing, submit nothing
#   --resubmit          submit the points without a complete result again (they resume from their
#                       checkpoints), as attempt N+1: earlier attempts' logs and job ids stay in
#                       logs/attempt-N/ and jobs.tsv. Points whose last attempt failed with exit
#                       code 2 (bad parameters or input) are skipped with a note
#   --retry-invalid     with --resubmit: resubmit those too (after you fixed their point-NNNN.ini)
#   --no-validate       do not run `moesim validate` (a moesim built before it existed)
#   --overcommit        allow more ranks than CPUs (sbatch --overcommit): testing on a small machine;
#                       without it a point asking for more tasks than the nodes have waits forever
#   --exclusive         every point gets its nodes to itself (timing and scaling studies)
#   --wait              wait for the aggregation job and exit with its exit code
#   --dependency=TYPE   afterany (default: aggregation also runs, and reports, when points failed)
#                       or afterok (aggregation only after every point succeeded; a failed point
#                       then cancels it: --kill-on-invalid-dep)
#   --force             replace an existing sweep in SWEEP_DIR (deletes its results)
#   --sbatch-option=OPT an extra sbatch option for the point arrays, e.g. --sbatch-option=--mem=4G
#                       (repeatable; site-wide settings belong in jobscripts/site.env)
# Partition, account, modules, time limits: jobscripts/site.env only.
set -euo pipefail
MOESIM_SCRIPT=submit_sweep.sh
MOESIM_REPO=$(dirname "$(dirname "$(realpath "$0")")")
source "$MOESIM_REPO/jobscripts/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$(realpath "$0")" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
overcommit=0 exclusive=0 wait=0 force=0 resubmit=0 dependency=afterany extra=()
dry_run=0 validate=1 retry_invalid=0
positional=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --overcommit) overcommit=1 ;;
    --exclusive) exclusive=1 ;;
    --wait) wait=1 ;;
    --force) force=1 ;;
    --resubmit) resubmit=1 ;;
    --dry-run) dry_run=1 ;;
    --no-validate) validate=0 ;;
    --retry-invalid) retry_invalid=1 ;;
    --dependency=afterany|--dependency=afterok) dependency=${1#--dependency=} ;;
    --dependency=*) moesim_die "$1: allowed: --dependency=afterany | --dependency=afterok" ;;
    --sbatch-option=*) extra+=("${1#--sbatch-option=}") ;;
    -h|--help) usage ;;
    -*) moesim_die "unknown option '$1' (see --help)" ;;
    *) positional+=("$1") ;;
  esac
  shift
done
[[ $retry_invalid == 0 || $resubmit == 1 ]] || moesim_die "--retry-invalid goes with --resubmit"
if [[ $resubmit == 1 ]]; then
  [[ ${#positional[@]} -eq 1 ]] || usage
  sweep=${positional[0]}
  [[ -r $sweep/manifest.tsv ]] || moesim_die "'$sweep/manifest.tsv' not found: nothing to resubmit"
else
  [[ ${#positional[@]} -eq 2 ]] || usage
  spec=${positional[0]} sweep=${positional[1]}
  [[ -f $spec && -r $spec ]] || moesim_die "sweep spec '$spec' does not exist or is not readable"
fi

moesim_setup
python=$(moesim_python json)
sweep_py=("$python" "$MOESIM_REPO/tools/sweep.py")

if [[ $resubmit == 0 ]]; then
  flags=(--moesim "$MOESIM_BIN")
  [[ $force == 1 ]] && flags+=(--force)
  [[ $validate == 0 ]] && flags+=(--no-validate)
  [[ $dry_run == 1 ]] && flags+=(--dry-run)
  rc=0
  "${sweep_py[@]}" expand "$spec" --out "$sweep" "${flags[@]}" >&2 || rc=$?
  if [[ $rc -ne 0 ]]; then
    moesim_say "nothing submitted (tools/sweep.py expand exit code $rc)"
    exit "$rc"
  fi
  [[ $dry_run == 1 ]] && exit 0
fi
sweep=$(realpath "$sweep")
name=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["name"])' "$sweep/sweep.json")

# Points to submit: all, or (--resubmit) those without a complete result file.
if [[ $resubmit == 1 ]]; then
  pending_flags=()
  [[ $retry_invalid == 1 ]] && pending_flags+=(--retry-invalid)
  todo=$("$(moesim_python h5py)" "$MOESIM_REPO/tools/sweep.py" pending "$sweep" "${pending_flags[@]}" | paste --serial --delimiters=,)
  [[ -n $todo ]] || { moesim_say "no point of $sweep to resubmit (complete, or skipped above)"; exit 0; }
  if [[ $validate == 1 ]]; then
    rc=0
    "${sweep_py[@]}" validate "$sweep" --moesim "$MOESIM_BIN" --points "$todo" >&2 || rc=$?
    [[ $rc -eq 0 ]] || { moesim_say "nothing submitted"; exit "$rc"; }
  fi
  if [[ $dry_run == 1 ]]; then
    "${sweep_py[@]}" plan "$sweep" --points "$todo" | while read -r ranks ids; do
      echo "would submit: array ranks=$ranks points=$ids"
    done
    echo "would submit: aggregate (after the arrays)"
    moesim_say "dry run: nothing submitted"
    exit 0
  fi
  rm -f "$sweep/failed.csv"
  groups=$("${sweep_py[@]}" plan "$sweep" --points "$todo")
else
  groups=$("${sweep_py[@]}" plan "$sweep")
fi
command -v sbatch >/dev/null || moesim_die "sbatch not found: no Slurm here. Without Slurm: jobscripts/run_sweep_local.sh; a local Slurm for testing: scripts/slurm/local_slurm.sh start"
# This submission's attempt number: earlier attempts' logs (logs/attempt-N/) are never overwritten.
attempt=$("${sweep_py[@]}" next-attempt "$sweep")
logs="$sweep/logs/attempt-$attempt"
mkdir -p "$logs"
moesim_say "attempt $attempt: logs in $logs"

common=(--parsable --export="ALL,MOESIM_REPO=$MOESIM_REPO" --chdir="$sweep")
[[ $overcommit == 1 ]] && common+=(--overcommit)
array_ids=()
: > "$sweep/jobs.tsv.tmp"
while read -r ranks ids; do
  point_flags=(--job-name="moesim-$name" --ntasks="$ranks" --time="$MOESIM_POINT_TIME"
               --array="$ids${MOESIM_ARRAY_LIMIT:+%$MOESIM_ARRAY_LIMIT}"
               --output="$logs/point-%4a.out")
  [[ $exclusive == 1 ]] && point_flags+=(--exclusive)
  id=$(sbatch "${common[@]}" "${point_flags[@]}" "${extra[@]}" \
              "$MOESIM_REPO/jobscripts/sweep_array.sbatch" "$sweep" "$attempt")
  id=${id%%;*}
  array_ids+=("$id")
  echo "array $id ranks=$ranks points=$ids"
  printf '%s\tarray\t%s\t%s\t%s\n' "$attempt" "$id" "$ranks" "$ids" >> "$sweep/jobs.tsv.tmp"
done <<< "$groups"

deps=$(IFS=:; echo "${array_ids[*]}")
agg=(--job-name="moesim-$name-aggregate" --ntasks=1 --time="$MOESIM_AGGREGATE_TIME"
     --dependency="$dependency:$deps" --kill-on-invalid-dep=yes
     --output="$logs/aggregate-%j.out")
agg_cmd=(sbatch "${common[@]}" "${agg[@]}")
[[ $wait == 1 ]] && agg_cmd+=(--wait)
agg_cmd+=("$MOESIM_REPO/jobscripts/aggregate.sbatch" "$sweep")

# jobs.tsv: every submission's job ids, one attempt after the other (appended, never rewritten).
finish_jobs_file() {
  printf '%s\taggregate\t%s\t\t\n' "$attempt" "$1" >> "$sweep/jobs.tsv.tmp"
  [[ -s $sweep/jobs.tsv ]] || printf 'attempt\tkind\tjob_id\tranks\tpoints\n' > "$sweep/jobs.tsv"
  cat "$sweep/jobs.tsv.tmp" >> "$sweep/jobs.tsv"
  rm -f "$sweep/jobs.tsv.tmp"
}
if [[ $wait == 0 ]]; then
  id=$("${agg_cmd[@]}"); id=${id%%;*}
  echo "aggregate $id"
  finish_jobs_file "$id"
  moesim_say "monitor: squeue --jobs=$(IFS=,; echo "${array_ids[*]}"),$id   logs: $logs/"
  moesim_say "results: $sweep/results.csv (failed points: $sweep/failed.csv)"
  exit 0
fi

# --wait: sbatch prints the id at submission, then blocks until the job ended and exits with the
# job's exit code.
out="$logs/.aggregate-submit"
"${agg_cmd[@]}" > "$out" &
pid=$!
while [[ ! -s $out ]] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
id=$(head -n 1 "$out"); id=${id%%;*}
rc=0
if [[ -z $id ]]; then
  wait "$pid" || rc=$?
  moesim_die "could not submit the aggregation job (sbatch exit code $rc)" 1
fi
echo "aggregate $id"
finish_jobs_file "$id"
moesim_say "waiting for aggregation job $id (after arrays ${array_ids[*]}) ..."
wait "$pid" || rc=$?
rm -f "$out"
# A job cancelled before it started (afterok after a failed point, scancel) also ends sbatch --wait
# with 0: only its log proves that the aggregation ran.
if [[ ! -e $logs/aggregate-$id.out ]]; then
  moesim_say "aggregation job $id never ran (cancelled$([[ $dependency == afterok ]] && echo ": with --dependency=afterok a failed point cancels it"))."
  moesim_say "see what failed:  $(moesim_python 2>/dev/null || echo python3) $MOESIM_REPO/tools/aggregate.py $sweep"
  exit 1
fi
if [[ $rc -eq 0 ]]; then
  moesim_say "done: $sweep/results.csv"
else
  moesim_say "aggregation job $id ended with exit code $rc: see $sweep/failed.csv and $logs/"
fi
exit "$rc"
