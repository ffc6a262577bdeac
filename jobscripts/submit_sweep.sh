#!/usr/bin/env bash
# Submits a MoESim parameter sweep to Slurm: expands SPEC into SWEEP_DIR (tools/sweep.py), submits
# one job array per rank count (jobscripts/sweep_array.sbatch; array task i = point i of
# SWEEP_DIR/manifest.tsv) and an aggregation job (jobscripts/aggregate.sbatch) that starts when all
# arrays have ended, then prints the job ids:
#   array <job id> ranks=<R> points=<ids>
#   aggregate <job id>
#
#   jobscripts/submit_sweep.sh [options] SPEC SWEEP_DIR
#   jobscripts/submit_sweep.sh [options] --resubmit SWEEP_DIR   # again, only points not complete
# Options:
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
positional=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --overcommit) overcommit=1 ;;
    --exclusive) exclusive=1 ;;
    --wait) wait=1 ;;
    --force) force=1 ;;
    --resubmit) resubmit=1 ;;
    --dependency=afterany|--dependency=afterok) dependency=${1#--dependency=} ;;
    --dependency=*) moesim_die "$1: allowed: --dependency=afterany | --dependency=afterok" ;;
    --sbatch-option=*) extra+=("${1#--sbatch-option=}") ;;
    -h|--help) usage ;;
    -*) moesim_die "unknown option '$1' (see --help)" ;;
    *) positional+=("$1") ;;
  esac
  shift
done
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
command -v sbatch >/dev/null || moesim_die "sbatch not found: no Slurm here. Without Slurm: jobscripts/run_sweep_local.sh; a local Slurm for testing: scripts/slurm/local_slurm.sh start"
python=$(moesim_python json)

if [[ $resubmit == 0 ]]; then
  flags=(--moesim "$MOESIM_BIN")
  [[ $force == 1 ]] && flags+=(--force)
  "$python" "$MOESIM_REPO/tools/sweep.py" expand "$spec" --out "$sweep" "${flags[@]}" >&2
fi
sweep=$(realpath "$sweep")
name=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["name"])' "$sweep/sweep.json")

# Points to submit: all, or (--resubmit) those without a complete result file.
if [[ $resubmit == 1 ]]; then
  todo=$("$(moesim_python h5py)" "$MOESIM_REPO/tools/sweep.py" pending "$sweep" | paste --serial --delimiters=,)
  [[ -n $todo ]] || { moesim_say "every point of $sweep has a complete result; nothing to submit"; exit 0; }
  rm -f "$sweep/failed.csv"
else
  todo=all
fi
# One line per rank count: "<ranks> <array index list, consecutive ids as ranges>".
groups=$(awk -F'\t' -v todo="$todo" '
  BEGIN { n = split(todo, t, ","); for (i = 1; i <= n; i++) want[t[i]] = 1 }
  NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  todo == "all" || ($col["point"] in want) { ids[$col["ranks"]] = ids[$col["ranks"]] " " $col["point"] }
  END {
    for (r in ids) {
      m = split(substr(ids[r], 2), p, " "); out = ""; start = p[1]
      for (i = 1; i <= m; i++)
        if (i == m || p[i + 1] != p[i] + 1) {
          out = out (out == "" ? "" : ",") (start == p[i] ? start : start "-" p[i]); start = p[i + 1]
        }
      print r, out
    }
  }' "$sweep/manifest.tsv" | sort --numeric-sort)

common=(--parsable --export="ALL,MOESIM_REPO=$MOESIM_REPO" --chdir="$sweep")
[[ $overcommit == 1 ]] && common+=(--overcommit)
array_ids=()
: > "$sweep/jobs.tsv.tmp"
while read -r ranks ids; do
  point_flags=(--job-name="moesim-$name" --ntasks="$ranks" --time="$MOESIM_POINT_TIME"
               --array="$ids${MOESIM_ARRAY_LIMIT:+%$MOESIM_ARRAY_LIMIT}"
               --output="$sweep/logs/point-%4a.out")
  [[ $exclusive == 1 ]] && point_flags+=(--exclusive)
  id=$(sbatch "${common[@]}" "${point_flags[@]}" "${extra[@]}" \
              "$MOESIM_REPO/jobscripts/sweep_array.sbatch" "$sweep")
  id=${id%%;*}
  array_ids+=("$id")
  echo "array $id ranks=$ranks points=$ids"
  printf 'array\t%s\t%s\t%s\n' "$id" "$ranks" "$ids" >> "$sweep/jobs.tsv.tmp"
done <<< "$groups"

deps=$(IFS=:; echo "${array_ids[*]}")
agg=(--job-name="moesim-$name-aggregate" --ntasks=1 --time="$MOESIM_AGGREGATE_TIME"
     --dependency="$dependency:$deps" --kill-on-invalid-dep=yes
     --output="$sweep/logs/aggregate-%j.out")
agg_cmd=(sbatch "${common[@]}" "${agg[@]}")
[[ $wait == 1 ]] && agg_cmd+=(--wait)
agg_cmd+=("$MOESIM_REPO/jobscripts/aggregate.sbatch" "$sweep")

finish_jobs_file() {
  printf 'aggregate\t%s\t\t\n' "$1" >> "$sweep/jobs.tsv.tmp"
  { printf 'kind\tjob_id\tranks\tpoints\n'; cat "$sweep/jobs.tsv.tmp"; } > "$sweep/jobs.tsv"
  rm -f "$sweep/jobs.tsv.tmp"
}
if [[ $wait == 0 ]]; then
  id=$("${agg_cmd[@]}"); id=${id%%;*}
  echo "aggregate $id"
  finish_jobs_file "$id"
  moesim_say "monitor: squeue --jobs=$(IFS=,; echo "${array_ids[*]}"),$id   logs: $sweep/logs/"
  moesim_say "results: $sweep/results.csv (failed points: $sweep/failed.csv)"
  exit 0
fi

# --wait: sbatch prints the id at submission, then blocks until the job ended and exits with the
# job's exit code.
out="$sweep/logs/.aggregate-submit"
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
if [[ ! -e $sweep/logs/aggregate-$id.out ]]; then
  moesim_say "aggregation job $id never ran (cancelled$([[ $dependency == afterok ]] && echo ": with --dependency=afterok a failed point cancels it"))."
  moesim_say "see what failed:  $(moesim_python 2>/dev/null || echo python3) $MOESIM_REPO/tools/aggregate.py $sweep"
  exit 1
fi
if [[ $rc -eq 0 ]]; then
  moesim_say "done: $sweep/results.csv"
else
  moesim_say "aggregation job $id ended with exit code $rc: see $sweep/failed.csv and $sweep/logs/"
fi
exit "$rc"
