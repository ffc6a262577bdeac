#!/usr/bin/env bash
# Cluster tier: a REAL multi-node Slurm on 2 emulated nodes (scripts/slurm/local_slurm.sh start
# --nodes 2: one slurmd per network namespace of scripts/cluster/emulate.sh, slurmctld on node 0),
# driven through the real job scripts (jobscripts/) and the real program:
#   1. `srun -N 2 hostname` prints both node names;
#   2. `sbatch -N 2 --ntasks=4 jobscripts/run.sbatch` with MOESIM_LAUNCHER=mpirun (Open MPI starts
#      its daemons through Slurm's srun): result nodes = 2, /steps/bytes_inter_node > 0, losses
#      bitwise those of the same run on one machine (mpirun -n 4 outside Slurm);
#   3. a sweep of 2 points (ranks = 2, one rank per node, srun --mpi=pmix) with
#      jobscripts/submit_sweep.sh --wait: results.csv, nodes = 2 and inter-node bytes per point,
#      losses bitwise those of the point run on one machine;
#   4. preemption across nodes: `scancel --signal=USR1 --batch` -> checkpoint, the job requeues
#      itself (PENDING, 1 restart), is released after 2 s (scontrol update StartTime=now) and
#      resumes to a complete result, bitwise the uninterrupted run's losses;
#   5. `local_slurm.sh stop` leaves no namespace and no process of this cluster.
# Names cannot collide with other cluster or slurm tests: cluster msl<pid>, a private state dir.
# Bounded: a watchdog ends the test after 200 s (MOESIM_TEST_DEADLINE), cleanup included (typically
# 40-70 s; the margin keeps a loaded CI machine from failing it on time alone, before CTest's
# 240 s TIMEOUT, which would kill it without cleanup).
# Without root, network namespaces, slurm-wlm or munge this test FAILS (never skips).
#   tests/cluster/test_slurm_multinode.sh --moesim build/moesim [--keep-tmp]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
moesim="" keep=0
while (($#)); do
  case $1 in
    --moesim) moesim=${2:-}; shift 2 ;;
    --keep-tmp) keep=1; shift ;;
    *) echo "test_slurm_multinode.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -x $moesim ]] || { echo "FAIL: --moesim '$moesim' is not an executable" >&2; exit 1; }
moesim=$(cd "$(dirname "$moesim")" && pwd)/$(basename "$moesim")
py=/usr/bin/python3

t_start=$SECONDS
failures=()
check() {  # check "description" command...
  local what=$1; shift
  if "$@"; then echo "  ok    $what"; else echo "  FAIL  $what"; failures+=("$what"); fi
}

if [[ $(id -u) -ne 0 ]]; then
  echo "FAIL: this test needs root (network namespaces for the emulated nodes, slurmd, munged); it does not skip"
  exit 1
fi

# A clean client environment: nothing from an enclosing Slurm job, a user's site settings or an
# emulated cluster started by hand.
while read -r var; do unset "$var"; done < <(env | grep --only-matching --extended-regexp '^(SLURM|SBATCH|SALLOC|SRUN)_[A-Z_]+' || true)
unset MOESIM_REPO MOESIM_LAUNCHER MOESIM_SITE_ENV MOESIM_SLURM_BANDWIDTH OMPI_MCA_orte_default_hostfile OMPI_MCA_plm_rsh_agent
unset OMPI_MCA_oob_tcp_if_include OMPI_MCA_btl_tcp_if_include OMPI_MCA_plm_rsh_no_tree_spawn MOESIM_CLUSTER_DIR
# No emulate.sh mpirun wrapper (it would start mpirun in another cluster's node 0).
PATH=$(tr ':' '\n' <<<"$PATH" | grep --invert-match --extended-regexp '^/tmp/moesim-cluster-[^/]*/bin$' | paste --serial --delimiters=:)
export MOESIM_CLUSTER_NAME=msl$$
export MOESIM_CLUSTER_NAME=${MOESIM_CLUSTER_NAME:0:10}
tmp=$(mktemp --directory /tmp/moesim-slurm-mn-test.XXXXXX)
chmod 0755 "$tmp"
export MOESIM_SLURM_DIR=$tmp/slurm MOESIM_SLURM_PORT=7817 MOESIM_SLURM_NODES=2
export MOESIM_BUILD_DIR
MOESIM_BUILD_DIR=$(dirname "$moesim")
{ cat "$repo/jobscripts/site.env"; echo 'unset SBATCH_PARTITION SBATCH_ACCOUNT SBATCH_QOS SBATCH_CONSTRAINT'; } > "$tmp/site.env"
export MOESIM_SITE_ENV=$tmp/site.env MOESIM_PYTHON=$py
local_slurm=$repo/scripts/slurm/local_slurm.sh

cleanup() {
  local rc=$?
  if [[ -n ${watchdog:-} ]]; then
    # The watchdog first (its sleep ending would make it fire), then its sleep.
    local sleeper
    sleeper=$(pgrep --parent "$watchdog" || true)
    kill "$watchdog" 2>/dev/null
    [[ -n $sleeper ]] && kill "$sleeper" 2>/dev/null
  fi
  "$local_slurm" stop >/dev/null 2>&1 || true
  if [[ ${#failures[@]} -gt 0 || $rc -ne 0 ]]; then
    echo "---- Slurm daemon logs (tails) ----"
    for f in "$MOESIM_SLURM_DIR"/log/*.log; do [[ -s $f ]] && { echo "== $f"; tail -n 15 "$f"; }; done
  fi
  if [[ $keep == 1 || ${#failures[@]} -gt 0 || $rc -ne 0 ]]; then
    echo "test_slurm_multinode: files kept in $tmp"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted or over the time limit after $((SECONDS - t_start)) s"; exit 1' INT TERM
# Watchdog: CTest's own timeout would kill the test without cleanup; this one lets the trap run.
# A trap waits for the running command, so the watchdog also signals the test's child processes.
# Its output goes nowhere: a sleep holding the test's stdout would keep CTest waiting.
(sleep "${MOESIM_TEST_DEADLINE:-200}"; kill -TERM $$ 2>/dev/null; pkill -TERM --parent $$ 2>/dev/null) >/dev/null 2>&1 &
watchdog=$!

# ---- 2 emulated nodes, one slurmd each -----------------------------------------------------------
t0=$SECONDS
if ! start_out=$(timeout 60 "$local_slurm" start --nodes 2); then
  echo "FAIL: the multi-node local Slurm did not start (its error is above): root, network namespaces (iproute2), slurm-wlm and munge are needed"
  failures+=("start")
  exit 1
fi
eval "$start_out"
node0=$MOESIM_CLUSTER_NAME-node0 node1=$MOESIM_CLUSTER_NAME-node1
echo "  ok    multi-node Slurm up in $((SECONDS - t0)) s ($node0, $node1)"
check "sinfo: 2 idle nodes" test "$(sinfo --noheader --Node --format='%N %T' | sort | tr '\n' ' ')" == "$node0 idle $node1 idle "
check "each slurmd runs inside its node's network namespace" bash -c "
  for i in 0 1; do
    pid=\$(cat '$MOESIM_SLURM_DIR/run/slurmd-$MOESIM_CLUSTER_NAME-node'\$i.pid) || exit 1
    [[ \$(ip netns identify \$pid) == '$MOESIM_CLUSTER_NAME-n'\$i ]] || exit 1
  done"

hosts=$(timeout 30 srun -N 2 hostname 2>&1 | sort | tr '\n' ' ')
check "srun -N 2 hostname prints both nodes (got '$hosts')" test "$hosts" == "$node0 $node1 "

cd "$tmp" || exit 1
# Same run on this machine, outside Slurm and the emulation: the reference for bitwise checks.
host_run() {  # host_run RANKS OUT.h5 ARGS...
  local n=$1 out=$2; shift 2
  env -u SLURM_CONF OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_mpi_yield_when_idle=1 \
    timeout 60 /usr/bin/mpirun --allow-run-as-root --oversubscribe --bind-to none -n "$n" \
    "$moesim" run "$@" --output.file="$out" --output.log_every=0 >/dev/null 2>"$out.err"
}
# same_losses A.h5 B.h5 [NODES_A]: /steps/loss bitwise equal, A has NODES_A nodes and, when 2,
# bytes_inter_node > 0 in every step.
same_losses() {
  "$py" - "$@" <<'EOF'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
nodes = int(sys.argv[3]) if len(sys.argv) > 3 else None
la, lb = a["steps/loss"][:], b["steps/loss"][:]
ok = la.shape == lb.shape and la.size > 0 and np.array_equal(la, lb)
if not ok:
    print(f"     losses differ: {la[:4]} ({la.shape}) vs {lb[:4]} ({lb.shape})")
if nodes is not None:
    inter = a["steps/bytes_inter_node"][:]
    if int(a.attrs["nodes"]) != nodes or int(b.attrs["nodes"]) != 1:
        print(f"     nodes {int(a.attrs['nodes'])} (expected {nodes}), reference {int(b.attrs['nodes'])} (expected 1)")
        ok = False
    if nodes > 1 and not (inter > 0).all():
        print(f"     bytes_inter_node {inter}")
        ok = False
sys.exit(0 if ok else 1)
EOF
}

# ---- run.sbatch on 2 nodes, ranks started by mpirun (through Slurm) --------------------------
t0=$SECONDS
rc=0
job=$(MOESIM_LAUNCHER=mpirun timeout 60 sbatch --parsable --wait -N 2 --ntasks=4 --output="$tmp/run-%j.out" \
      "$repo/jobscripts/run.sbatch" "$here/../slurm/tiny.ini" --output.file="$tmp/run.h5" </dev/null) || rc=$?
job=${job%%;*}
echo "     run.sbatch -N 2 --ntasks=4 (mpirun): $((SECONDS - t0)) s, job $job, exit $rc"
check "run.sbatch on 2 nodes with mpirun exits 0 (got $rc)" test "$rc" -eq 0
check "  ... launched by mpirun" grep --quiet "4 rank(s) via mpirun on $node0" "$tmp/run-$job.out"
check "  ... result passes h5check" "$py" "$repo/tools/h5check.py" "$tmp/run.h5"
check "  ... records slurm_job_id=$job, ranks = 4, nodes = 2" "$py" -c '
import sys, h5py
f = h5py.File(sys.argv[1], "r")
sys.exit(0 if f.attrs["slurm_job_id"].decode() == sys.argv[2] and int(f.attrs["ranks"]) == 4 and int(f.attrs["nodes"]) == 2 else 1)' "$tmp/run.h5" "$job"
host_run 4 "$tmp/run-host.h5" "$here/../slurm/tiny.ini"
check "  ... bytes_inter_node > 0; losses bitwise those of mpirun -n 4 on one machine" same_losses "$tmp/run.h5" "$tmp/run-host.h5" 2

# ---- a sweep across the 2 nodes (srun --mpi=pmix, one rank per node) ----------------------------
printf '[sweep]\nname = ci-multinode\nbase = %s\nranks = 2\nrouting.capacity_factor = 1.0, 2.0\n' \
  "$here/../slurm/tiny.ini" > "$tmp/mn.spec"
t0=$SECONDS
rc=0
timeout 60 "$repo/jobscripts/submit_sweep.sh" --wait --sbatch-option=--nodes=2 "$tmp/mn.spec" "$tmp/sweep" \
  > "$tmp/sweep.out" 2>&1 </dev/null || rc=$?
echo "     sweep (2 points x 2 nodes + aggregation): $((SECONDS - t0)) s, exit $rc"
check "submit_sweep.sh --wait --sbatch-option=--nodes=2 exits 0 (got $rc)" test "$rc" -eq 0
[[ $rc -eq 0 ]] || sed 's/^/     | /' "$tmp/sweep.out"
check "  ... results.csv has both points" test "$(wc -l < "$tmp/sweep/results.csv" 2>/dev/null)" == 3
for p in 0 1; do
  st=$(printf '%s/sweep/logs/attempt-1/point-%04d.status' "$tmp" "$p")
  check "  ... point $p ran on 2 nodes via srun (status: nodes=2, launcher=srun)" \
    bash -c "grep --quiet '^nodes=2\$' '$st' && grep --quiet '^launcher=srun\$' '$st' && grep --quiet '^exit_code=0\$' '$st'"
  ini=$(printf '%s/sweep/%s' "$tmp" "$(awk -F'\t' -v p="$p" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } $c["point"] == p { print $c["params"] }' "$tmp/sweep/manifest.tsv")")
  res=$(printf '%s/sweep/%s' "$tmp" "$(awk -F'\t' -v p="$p" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } $c["point"] == p { print $c["result"] }' "$tmp/sweep/manifest.tsv")")
  host_run 2 "$tmp/point$p-host.h5" "$ini"
  check "  ... point $p: nodes = 2, bytes_inter_node > 0, losses bitwise those of mpirun -n 2 on one machine" \
    same_losses "$res" "$tmp/point$p-host.h5" 2
done

# ---- preemption across nodes: USR1 -> checkpoint, requeue, resume, complete -----------------------
job_field() { scontrol show job --oneliner "$1" 2>/dev/null | grep --only-matching --perl-regexp "(?<= $2=)\S+" || true; }
steps=4000
t0=$SECONDS
job=$(sbatch --parsable -N 2 --ntasks=2 --output="$tmp/pre-%j.out" "$repo/jobscripts/run.sbatch" "$here/../slurm/tiny.ini" \
      --training.steps=$steps --training.eval_every=0 --output.log_every=0 --checkpoint.every=0 \
      --output.file="$tmp/pre.h5" </dev/null)
job=${job%%;*}
# The uninterrupted reference, on this machine, while the job runs.
host_run 2 "$tmp/pre-host.h5" "$here/../slurm/tiny.ini" --training.steps=$steps --training.eval_every=0 \
  --checkpoint.every=0 &
ref=$!
for _ in $(seq 1 200); do
  [[ $(job_field "$job" JobState) == RUNNING && ( -s $tmp/pre.h5.ckpt.tmp || -s $tmp/pre.h5 ) ]] && break
  sleep 0.1
done
sleep 0.3  # some steps done (~0.3-2 ms per step)
scancel --signal=USR1 --batch "$job"
for _ in $(seq 1 200); do
  [[ $(job_field "$job" JobState) == PENDING && $(job_field "$job" Restarts) == 1 ]] && break
  sleep 0.1
done
state=$(job_field "$job" JobState) restarts=$(job_field "$job" Restarts)
echo "     USR1: job $job state=$state restarts=$restarts ($((SECONDS - t0)) s)"
check "SIGUSR1 on a 2-node job: it requeues itself (state=$state restarts=$restarts)" test "$state" == PENDING -a "$restarts" == 1
# Slurm holds a requeued job back ~2 min (BeginTime); release it now -- but not within the same
# wall-clock second as the stop: the slurmd revoked the job's credential when it cancelled the first
# attempt, and a credential created in that same second counts as revoked (whole-second timestamps),
# so the relaunch would be killed ("Job credential revoked", CI 2026-11-30; Slurm's cred_revoked()
# compares ctime <= revoked). A real requeue waits its BeginTime and never meets this.
sleep 2
scontrol update JobId="$job" StartTime=now || true
for _ in $(seq 1 300); do
  state=$(job_field "$job" JobState)
  [[ $state == COMPLETED || $state == FAILED || $state == CANCELLED || $state == TIMEOUT || -z $state ]] && break
  sleep 0.2
done
echo "     requeued run ended: state=${state:-gone} ($((SECONDS - t0)) s)"
wait "$ref"
check "  ... the stop wrote a checkpoint and requeued" grep --quiet "stopped by SIGUSR1.*requeueing job $job" "$tmp/pre-$job.out"
check "  ... the second attempt resumed from it, mid-run" \
  grep --quiet --extended-regexp "resuming from checkpoint .* at step [1-9][0-9]*\$" "$tmp/pre-$job.out"
check "  ... and ended with exit code 0" test "$(grep -c 'run.sbatch: exit code 0' "$tmp/pre-$job.out")" -eq 1
check "  ... result complete = 1, $steps steps, nodes = 2" "$py" -c '
import sys, h5py
f = h5py.File(sys.argv[1], "r")
sys.exit(0 if int(f.attrs["complete"]) == 1 and len(f["steps/loss"]) == int(sys.argv[2]) and int(f.attrs["nodes"]) == 2 else 1)' "$tmp/pre.h5" "$steps"
check "  ... losses bitwise those of an uninterrupted run on one machine" same_losses "$tmp/pre.h5" "$tmp/pre-host.h5" 2

# ---- stop: nothing left -------------------------------------------------------------------------
t0=$SECONDS
"$local_slurm" stop >/dev/null 2>&1
echo "     stop: $((SECONDS - t0)) s"
check "stop removes the emulated nodes" bash -c "! ip netns list | grep --quiet --extended-regexp '^$MOESIM_CLUSTER_NAME-(sw|n[0-9]+)( |\$)'"
# (pgrep from this shell: a `bash -c` holding the pattern would find itself)
leftover=$(pgrep --list-full --full -- "$MOESIM_SLURM_DIR" || true)
check "stop ends every daemon of this cluster (left: '${leftover//$'\n'/; }')" test -z "$leftover"

echo "test_slurm_multinode: ${#failures[@]} failure(s), $((SECONDS - t_start)) s total"
[[ ${#failures[@]} -eq 0 ]]
