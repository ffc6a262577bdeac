#!/usr/bin/env bash
# CTest `slurm` tier: MoESim's job scripts against a REAL Slurm (munged + slurmctld + slurmd
# started by scripts/slurm/local_slurm.sh in a private directory on free ports, stopped at the end).
#   tests/slurm/test_slurm_sweep.sh --moesim BUILD/moesim [--keep-tmp] [--only=run|signals|sweep]
# (--only: one part, for development; CTest runs all of them)
# 1. run.sbatch: fails clearly outside Slurm; a job with a missing parameter file fails (exit 2)
#    with a message; a real 2-rank job writes a complete result with its job id.
# 2. Signals: a plain scancel of a running run.sbatch job checkpoints (exit 75, complete = 0) and
#    ends it for good (CANCELLED, no requeue); scancel --signal=USR1 --batch (what Slurm's
#    pre-timeout --signal=B:USR1@60 does) requeues it (PENDING, 1 restart; the rerun itself is
#    not waited for: Slurm delays it ~2 min).
# 3. Sweeps: tiny_sweep.spec (capacity factors 1.0, 2.0 and an invalid -1, ranks 1,2) is refused
#    as a whole before any submission (moesim validate), --dry-run submits nothing; submitted with
#    --no-validate through jobscripts/submit_sweep.sh --wait: job arrays + the dependent
#    aggregation job. Checks results.csv (4 complete rows, job ids, plausible values), failed.csv
#    (the 2 invalid points, with moesim's message), the aggregation job's non-zero exit,
#    aggregate.py --allow-failed; --dependency=afterok (all valid: aggregates; a failed point:
#    aggregation cancelled, reported); --resubmit of a lost point: a new attempt, the first
#    attempt's logs unchanged, exit-2 points skipped with a note, both attempts' job ids kept.
# If Slurm cannot start, the test FAILS and prints the daemons' logs (never a silent skip).
set -euo pipefail
here=$(dirname "$(realpath "$0")")
repo=$(dirname "$(dirname "$here")")
moesim="" keep=0 only=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --moesim) moesim=$(realpath "$2"); shift ;;
    --moesim=*) moesim=$(realpath "${1#--moesim=}") ;;
    --keep-tmp) keep=1 ;;
    --only=run|--only=signals|--only=sweep) only=${1#--only=} ;;
    *) echo "usage: $0 --moesim BUILD/moesim [--keep-tmp] [--only=run|signals|sweep]" >&2; exit 2 ;;
  esac
  shift
done
want() { [[ -z $only || $only == "$1" ]] || { echo "SKIPPED part '$1' (--only=$only)"; false; }; }
[[ -x $moesim ]] || { echo "test_slurm_sweep: --moesim BUILD/moesim is required (got '$moesim')" >&2; exit 2; }

t_start=$SECONDS
failures=()
check() {  # check "description" command...
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; failures+=("$what"); fi
}
elapsed() { echo "$((SECONDS - t_start))s"; }

# A clean client environment: nothing from an enclosing Slurm job or a user's site settings.
while read -r var; do unset "$var"; done < <(env | grep --only-matching --extended-regexp '^(SLURM|SBATCH|SALLOC|SRUN)_[A-Z_]+' || true)
unset MOESIM_REPO MOESIM_LAUNCHER MOESIM_SITE_ENV
unset MOESIM_SLURM_NODES  # this tier's Slurm is the single-node one (multi-node: tests/cluster/)
tmp=$(mktemp --directory "${TMPDIR:-/tmp}/moesim-slurm-test.XXXXXX")
chmod 0755 "$tmp"
export MOESIM_SLURM_DIR=$tmp/slurm
MOESIM_BUILD_DIR=$(dirname "$moesim")
export MOESIM_BUILD_DIR
# The repository's site.env, with any site partition/account neutralised for the local cluster.
{ cat "$repo/jobscripts/site.env"; echo 'unset SBATCH_PARTITION SBATCH_ACCOUNT SBATCH_QOS SBATCH_CONSTRAINT'; } > "$tmp/site.env"
export MOESIM_SITE_ENV=$tmp/site.env

# Two free consecutive TCP ports (slurmctld, slurmd), so a developer's local Slurm is not disturbed.
MOESIM_SLURM_PORT=$(/usr/bin/python3 - <<'EOF'
import random, socket
for _ in range(200):
    p = random.randrange(20000, 40000, 2)
    try:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", p)); b.bind(("127.0.0.1", p + 1))
        print(p); break
    except OSError:
        pass
EOF
)
export MOESIM_SLURM_PORT

cleanup() {
  local rc=$?
  "$repo/scripts/slurm/local_slurm.sh" stop >/dev/null 2>&1 || true
  if [[ ${#failures[@]} -gt 0 || $rc -ne 0 ]]; then
    echo "---- Slurm daemon logs (tails) ----"
    for f in "$MOESIM_SLURM_DIR"/log/*.log; do [[ -s $f ]] && { echo "== $f"; tail -n 20 "$f"; }; done
  fi
  if [[ $keep == 1 || ${#failures[@]} -gt 0 || $rc -ne 0 ]]; then
    echo "test_slurm_sweep: files kept in $tmp"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT

# ---- Slurm up ------------------------------------------------------------------------------
t0=$SECONDS
if ! start_out=$("$repo/scripts/slurm/local_slurm.sh" start); then
  echo "FAIL the local Slurm did not start (its logs are above): this test needs a real Slurm"
  failures+=("local Slurm start")
  exit 1
fi
eval "$start_out"
echo "ok   local Slurm up in $((SECONDS - t0))s (port $MOESIM_SLURM_PORT, $SLURM_CONF)"
overcommit=()
(( $(nproc) >= 2 )) || overcommit=(--overcommit)  # a 1-CPU machine still runs the 2-rank points

# ---- run.sbatch ----------------------------------------------------------------------------
cd "$tmp"
if want run; then
out=$(bash "$repo/jobscripts/run.sbatch" "$here/tiny.ini" 2>&1 </dev/null) && rc=0 || rc=$?
check "run.sbatch outside Slurm exits 2 (got $rc)" test "$rc" -eq 2
check "run.sbatch outside Slurm says so" grep --quiet "not inside a Slurm job" <<< "$out"

rc=0
timeout 60 sbatch --wait --ntasks=1 --output="$tmp/missing-%j.out" "$repo/jobscripts/run.sbatch" \
  "$tmp/no-such-file.ini" >/dev/null </dev/null || rc=$?
check "run.sbatch job with a missing parameter file exits 2 (got $rc)" test "$rc" -eq 2
check "run.sbatch names the missing file" grep --quiet "no-such-file.ini' does not exist" "$tmp"/missing-*.out

t0=$SECONDS
rc=0
job=$(timeout 60 sbatch --parsable --wait "${overcommit[@]}" --ntasks=2 --output="$tmp/run-%j.out" \
      "$repo/jobscripts/run.sbatch" "$here/tiny.ini" --output.file="$tmp/run.h5" </dev/null) || rc=$?
job=${job%%;*}
echo "     run.sbatch: sbatch -> completion $((SECONDS - t0))s (job $job, exit $rc)"
check "run.sbatch 2-rank job succeeds" test "$rc" -eq 0
check "run.sbatch result passes h5check" /usr/bin/python3 "$repo/tools/h5check.py" "$tmp/run.h5"
check "run.sbatch result records slurm_job_id=$job and ranks=2" /usr/bin/python3 -c '
import sys, h5py
f = h5py.File(sys.argv[1], "r")
sys.exit(0 if f.attrs["slurm_job_id"].decode() == sys.argv[2] and int(f.attrs["ranks"]) == 2 else 1)' "$tmp/run.h5" "$job"

fi

if want signals; then
# ---- run.sbatch and signals: scancel ends the job for good, USR1 requeues ---------------------
# A long run (tiny model, many steps) is stopped mid-run. Slurm delays a requeued job's start by
# ~2 min (begin time): the test checks the decision (requeued or not, exit code, job state, log)
# and cancels the requeued job instead of waiting for its rerun (the rerun's --resume is covered
# by tests/lifecycle/launcher_signals.py and regression_signal_resume).
job_field() { scontrol show job --oneliner "$1" 2>/dev/null | grep --only-matching --perl-regexp "(?<= $2=)\S+" || true; }
start_long_job() {  # start_long_job NAME -> job id once its run is writing results
  local name=$1 id
  id=$(sbatch --parsable --ntasks=1 --output="$tmp/$name-%j.out" "$repo/jobscripts/run.sbatch" "$here/tiny.ini" \
       --training.steps=5000000 --training.eval_every=0 --output.log_every=0 --checkpoint.every=0 \
       --output.file="$tmp/$name.h5" </dev/null)
  id=${id%%;*}
  for _ in $(seq 1 600); do
    [[ $(job_field "$id" JobState) == RUNNING && -s $tmp/$name.h5.ckpt.tmp || -s $tmp/$name.h5 ]] && break
    sleep 0.1
  done
  sleep 1  # some steps done
  echo "$id"
}
wait_job_left_running() {  # wait_job_left_running ID: until the job's first run has ended
  local st
  for _ in $(seq 1 300); do
    st=$(job_field "$1" JobState)
    [[ $st != RUNNING && $st != COMPLETING && $st != CONFIGURING ]] && break
    sleep 0.1
  done
}
t0=$SECONDS
job=$(start_long_job sig-term)
scancel "$job"
wait_job_left_running "$job"
sleep 2  # a requeue (the old behaviour) would show up as PENDING with Restarts=1 by now
state=$(job_field "$job" JobState) restarts=$(job_field "$job" Restarts) exitc=$(job_field "$job" ExitCode)
echo "     scancel: job $job state=$state restarts=$restarts exit=$exitc ($((SECONDS - t0))s)"
check "plain scancel: the job ends CANCELLED, not requeued (state=$state restarts=$restarts)" \
  test "$state" == CANCELLED -a "$restarts" == 0
check "  ... the script says it stopped on SIGTERM with a checkpoint and did not requeue" \
  grep --quiet "stopped by SIGTERM.*NOT requeued" "$tmp"/sig-term-"$job".out
check "  ... exit code 75 of the ranks" grep --quiet "exit code 75" "$tmp"/sig-term-"$job".out
check "  ... checkpoint written, result file complete = 0" /usr/bin/python3 -c '
import os, sys, h5py
f = h5py.File(sys.argv[1], "r")
sys.exit(0 if os.path.exists(sys.argv[1] + ".ckpt") and int(f.attrs["complete"]) == 0 and len(f["steps/loss"]) > 0 else 1)' "$tmp/sig-term.h5"
scancel "$job" 2>/dev/null || true

t0=$SECONDS
job=$(start_long_job sig-usr1)
scancel --signal=USR1 --batch "$job"
wait_job_left_running "$job"
for _ in $(seq 1 50); do [[ $(job_field "$job" Restarts) == 1 ]] && break; sleep 0.1; done
state=$(job_field "$job" JobState) restarts=$(job_field "$job" Restarts)
echo "     USR1: job $job state=$state restarts=$restarts ($((SECONDS - t0))s)"
check "SIGUSR1 (the pre-timeout warning): the job requeues itself (state=$state restarts=$restarts)" \
  test "$state" == PENDING -a "$restarts" == 1
check "  ... and says so" grep --quiet "stopped by SIGUSR1.*requeueing job $job" "$tmp"/sig-usr1-"$job".out
check "  ... checkpoint written, result file complete = 0" /usr/bin/python3 -c '
import os, sys, h5py
f = h5py.File(sys.argv[1], "r")
sys.exit(0 if os.path.exists(sys.argv[1] + ".ckpt") and int(f.attrs["complete"]) == 0 else 1)' "$tmp/sig-usr1.h5"
scancel "$job" 2>/dev/null || true  # do not wait ~2 min for the requeued attempt

fi

if want sweep; then
# ---- validation before submission, dry run -------------------------------------------------------
queue_empty() { [[ -z $(squeue --noheader 2>/dev/null) ]]; }
check "(the queue is empty before the sweep tests)" queue_empty
rc=0
timeout 120 "$repo/jobscripts/submit_sweep.sh" "${overcommit[@]}" "$here/tiny_sweep.spec" "$tmp/refused" \
  > "$tmp/refused.out" 2>&1 </dev/null || rc=$?
check "a sweep with invalid points is refused as a whole: exit 2 (got $rc)" test "$rc" -eq 2
check "  ... naming every bad point (2 and 5) with moesim's message" bash -c \
  "grep --quiet 'point 2 (ranks=1, routing.capacity_factor=-1)' '$tmp/refused.out' &&
   grep --quiet 'point 5 (ranks=2, routing.capacity_factor=-1)' '$tmp/refused.out' &&
   grep --quiet 'moesim: error: .*routing.capacity_factor' '$tmp/refused.out'"
check "  ... nothing submitted (queue empty), nothing written" bash -c "[[ -z \$(squeue --noheader) && ! -e '$tmp/refused' ]]"
printf '[sweep]\nname = ci-afterok\nbase = %s\nranks = 2\nrouting.capacity_factor = 1.25\n' \
  "$here/tiny.ini" > "$tmp/ok.spec"
rc=0
timeout 120 "$repo/jobscripts/submit_sweep.sh" --dry-run "${overcommit[@]}" "$tmp/ok.spec" "$tmp/dry" \
  > "$tmp/dry.out" 2>&1 </dev/null || rc=$?
check "--dry-run: exit 0 and the plan (got $rc)" grep --quiet "would submit: array ranks=2 points=0" "$tmp/dry.out"
check "  ... nothing submitted (queue empty), nothing written" bash -c "[[ -z \$(squeue --noheader) && ! -e '$tmp/dry' ]]"

# ---- the sweep: arrays + dependent aggregation -------------------------------------------------
# --no-validate: points that fail at run time (exit 2) are what aggregation must report.
t0=$SECONDS
rc=0
timeout 240 "$repo/jobscripts/submit_sweep.sh" --wait --no-validate "${overcommit[@]}" "$here/tiny_sweep.spec" \
  "$tmp/sweep" > "$tmp/submit.out" 2> "$tmp/submit.err" </dev/null || rc=$?
echo "     sweep: submit -> aggregated $((SECONDS - t0))s (submit_sweep.sh exit $rc)"
sed 's/^/     | /' "$tmp/submit.out"
check "submit_sweep.sh exits 1: the aggregation job reports failed points (got $rc)" test "$rc" -eq 1
check "submit_sweep.sh printed 2 arrays (ranks 1 and 2) and the aggregation job" \
  grep --quiet --extended-regexp '^array [0-9]+ ranks=1 points=0-2$' "$tmp/submit.out"
check "  ... ranks=2 array" grep --quiet --extended-regexp '^array [0-9]+ ranks=2 points=3-5$' "$tmp/submit.out"
check "  ... aggregate job id" grep --quiet --extended-regexp '^aggregate [0-9]+$' "$tmp/submit.out"
agg_log=$(find "$tmp/sweep/logs" -name 'aggregate-*.out' | head -n 1)
check "the aggregation job ran (its log exists)" test -s "$agg_log"

check "results.csv / failed.csv hold what the sweep did" /usr/bin/python3 - "$tmp/sweep" <<'EOF'
import csv, math, os, sys
d = sys.argv[1]
ok = list(csv.DictReader(open(os.path.join(d, "results.csv"))))
bad = list(csv.DictReader(open(os.path.join(d, "failed.csv"))))
status = {}
for r in ok:
    with open(os.path.join(d, "logs", "attempt-1", "point-%04d.status" % int(r["point"]))) as f:
        status[r["point"]] = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
problems = []
def expect(cond, what):
    if not cond:
        problems.append(what)
expect(len(ok) == 4, f"results.csv: 4 rows expected, got {len(ok)}")
expect(sorted((r["ranks"], r["routing.capacity_factor"]) for r in ok)
       == [("1", "1.0"), ("1", "2.0"), ("2", "1.0"), ("2", "2.0")], "results.csv: wrong points")
for r in ok:
    p = r["point"]
    expect(r["slurm_job_id"].isdigit(), f"point {p}: slurm_job_id '{r['slurm_job_id']}' not a job id")
    expect(r["slurm_job_id"] == status[p].get("slurm_job_id"), f"point {p}: job id differs from its status file")
    expect("_" in r["slurm_array_task"], f"point {p}: no array task id")
    expect(r["steps"] == "3", f"point {p}: {r['steps']} steps, expected 3")
    acc, loss = float(r["final_eval_accuracy"]), float(r["final_loss"])
    expect(0.0 < acc <= 1.0, f"point {p}: accuracy {acc}")
    expect(0.0 < loss < 5.0 and math.isfinite(loss), f"point {p}: loss {loss}")
    expect(float(r["tokens_per_second"]) > 0 and float(r["step_time_median_s"]) > 0, f"point {p}: timings")
    expect(float(r["expert_load_imbalance"]) >= 1.0, f"point {p}: imbalance < 1")
    drop = float(r["dropped_fraction_mean"])
    # capacity factor 2 with k=2 of 4 experts: capacity 64 = the group size, nothing can drop
    if r["routing.capacity_factor"] == "2.0":
        expect(drop == 0.0, f"point {p}: cf=2.0 dropped {drop}")
    else:
        expect(0.0 < drop < 0.5, f"point {p}: cf=1.0 dropped {drop}")
# A fixed routing.group_size makes the run independent of the rank count.
by = {(r["ranks"], r["routing.capacity_factor"]): float(r["final_loss"]) for r in ok}
for cf in ["1.0", "2.0"]:
    if ("1", cf) in by and ("2", cf) in by:
        expect(math.isclose(by[("1", cf)], by[("2", cf)], rel_tol=1e-4),
               f"cf={cf}: final loss {by[('1', cf)]} on 1 rank vs {by[('2', cf)]} on 2")
expect(len(bad) == 2, f"failed.csv: 2 rows expected, got {len(bad)}")
for r in bad:
    expect(r["routing.capacity_factor"] == "-1", f"failed.csv: point {r['point']} should not have failed")
    expect("exit code 2" in r["reason"], f"failed.csv: point {r['point']} reason '{r['reason']}'")
    expect("routing.capacity_factor" in r["message"], f"failed.csv: point {r['point']} message '{r['message']}'")
for p in problems:
    print("     " + p)
sys.exit(1 if problems else 0)
EOF
check "the aggregation log lists the failed points" grep --quiet "FAILED point 2" "$agg_log"
check "plots were written" test -s "$tmp/sweep/plots/metrics_vs_routing_capacity_factor.png"
rc=0; /usr/bin/python3 "$repo/tools/aggregate.py" --quiet --no-plots "$tmp/sweep" >/dev/null 2>&1 || rc=$?
check "aggregate.py exits 1 with failed points (got $rc)" test "$rc" -eq 1
rc=0; /usr/bin/python3 "$repo/tools/aggregate.py" --quiet --no-plots --allow-failed "$tmp/sweep" >/dev/null 2>&1 || rc=$?
check "aggregate.py --allow-failed exits 0 (got $rc)" test "$rc" -eq 0

# ---- afterok; --resubmit: a new attempt, earlier logs kept, exit-2 points skipped ------------------
t0=$SECONDS
rc=0
timeout 120 "$repo/jobscripts/submit_sweep.sh" --wait --dependency=afterok --no-validate "${overcommit[@]}" \
  "$tmp/ok.spec" "$tmp/ok" > "$tmp/ok.out" 2>&1 </dev/null || rc=$?
echo "     afterok sweep: $((SECONDS - t0))s (exit $rc)"
check "an all-valid sweep with --dependency=afterok aggregates and exits 0 (got $rc)" test "$rc" -eq 0
check "  ... results.csv has its point" test "$(wc -l < "$tmp/ok/results.csv")" -eq 2
printf '[sweep]\nname = ci-afterok-bad\nbase = %s\nranks = 1\nrouting.capacity_factor = 1.25, -1\n' \
  "$here/tiny.ini" > "$tmp/bad.spec"
rc=0
timeout 120 "$repo/jobscripts/submit_sweep.sh" --wait --dependency=afterok --no-validate "$tmp/bad.spec" "$tmp/bad" \
  > "$tmp/bad.out" 2>&1 </dev/null || rc=$?
check "afterok + a failed point: the aggregation is cancelled, submit_sweep.sh exits 1 (got $rc)" test "$rc" -eq 1
check "  ... and says so" grep --quiet "never ran" "$tmp/bad.out"

# The first sweep again: point 0's result lost, points 2 and 5 failed with exit 2.
first_log=$(md5sum < "$tmp/sweep/logs/attempt-1/point-0000.out")
first_status=$(md5sum < "$tmp/sweep/logs/attempt-1/point-0000.status")
rm -f "$tmp/sweep/results/point-0000.h5"
t0=$SECONDS
rc=0
timeout 120 "$repo/jobscripts/submit_sweep.sh" --wait --resubmit --no-validate "${overcommit[@]}" "$tmp/sweep" \
  > "$tmp/resubmit.out" 2>&1 </dev/null || rc=$?
echo "     resubmit: $((SECONDS - t0))s (exit $rc)"
sed 's/^/     | /' "$tmp/resubmit.out"
check "--resubmit submits only the lost point 0 as attempt 2" \
  grep --quiet --extended-regexp '^array [0-9]+ ranks=1 points=0$' "$tmp/resubmit.out"
check "  ... skips points 2 and 5 (exit code 2) with a note" bash -c \
  "grep --quiet 'point 2 not resubmitted: its last attempt failed with exit code 2' '$tmp/resubmit.out' &&
   grep --quiet 'point 5 not resubmitted' '$tmp/resubmit.out'"
check "  ... the aggregation still reports them (exit 1, got $rc)" test "$rc" -eq 1
check "  ... the point's result is back" test -s "$tmp/sweep/results/point-0000.h5"
check "  ... attempt 1's log and status of point 0 are unchanged" \
  test "$(md5sum < "$tmp/sweep/logs/attempt-1/point-0000.out")$(md5sum < "$tmp/sweep/logs/attempt-1/point-0000.status")" \
  == "$first_log$first_status"
check "  ... attempt 2's log and status exist" test -s "$tmp/sweep/logs/attempt-2/point-0000.out" -a \
  -s "$tmp/sweep/logs/attempt-2/point-0000.status"
check "  ... jobs.tsv keeps both attempts' job ids; results.csv shows 2 attempts for point 0" /usr/bin/python3 - "$tmp/sweep" <<'EOF'
import csv, os, sys
d = sys.argv[1]
jobs = list(csv.DictReader(open(os.path.join(d, "jobs.tsv")), delimiter="\t"))
ok = {r["point"]: r for r in csv.DictReader(open(os.path.join(d, "results.csv")))}
att = sorted({j["attempt"] for j in jobs})
ids = ok["0"]["slurm_job_ids"].split(";")
good = att == ["1", "2"] and ok["0"]["attempts"] == "2" and len(ids) == 2 and ids[0] != ids[1]
if not good:
    print("     attempts in jobs.tsv:", att, "point 0:", ok.get("0", {}).get("attempts"), ids)
sys.exit(0 if good else 1)
EOF
fi

echo "test_slurm_sweep: $((${#failures[@]})) failure(s), $(elapsed) total"
[[ ${#failures[@]} -eq 0 ]]
