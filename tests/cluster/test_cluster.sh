#!/usr/bin/env bash
# Cluster tier: starts 2 emulated nodes (scripts/cluster/emulate.sh, network namespaces on a
# private bridge, links shaped to 2 Gbit/s), checks that Open MPI places ranks on them and that
# MPI_Comm_split_type(SHARED) groups the ranks per node (the program's `nodes` attribute), then runs
# tests/regression/multinode.py through the real program on them: hierarchical vs alltoallv bitwise
# (float32/float64, 1 and 2 ranks per node) and node-limited routing. The emulation is always
# stopped (trap). Without the permissions or tools to create namespaces this test FAILS.
#   tests/cluster/test_cluster.sh --moesim build/moesim
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
moesim=""
while (($#)); do
  case $1 in
    --moesim) moesim=$2; shift 2 ;;
    *) echo "test_cluster.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -x $moesim ]] || { echo "FAIL: --moesim '$moesim' is not an executable" >&2; exit 1; }
moesim=$(cd "$(dirname "$moesim")" && pwd)/$(basename "$moesim")

# A cluster of its own (name and state dir), so a cluster someone started by hand is not touched.
export MOESIM_CLUSTER_NAME=mstest$$
export MOESIM_CLUSTER_NAME=${MOESIM_CLUSTER_NAME:0:10}
export MOESIM_CLUSTER_DIR=/tmp/moesim-cluster-test-$$
emulate=$root/scripts/cluster/emulate.sh
cleanup() { "$emulate" stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 1' INT TERM

t0=$SECONDS
env_file=$(mktemp)
if ! "$emulate" start 2 --bandwidth 2gbit >"$env_file"; then
  echo "FAIL: could not start the emulated cluster (see the error above)" >&2
  exit 1
fi
# shellcheck disable=SC1090
. "$env_file"
rm -f "$env_file"
echo "cluster up in $((SECONDS - t0)) s"
"$emulate" status

fail=0
# Placement: 4 ranks, consecutive ranks fill a node; each rank reports its host name.
hosts=$(timeout 60 mpirun -n 4 hostname 2>&1)
expected=$(printf '%s\n' "${MOESIM_CLUSTER_NAME}-node0" "${MOESIM_CLUSTER_NAME}-node0" \
  "${MOESIM_CLUSTER_NAME}-node1" "${MOESIM_CLUSTER_NAME}-node1")
if [[ $(sort <<<"$hosts") == "$(sort <<<"$expected")" ]]; then
  echo "  ok    mpirun -n 4 places 2 ranks on each emulated node"
else
  echo "  FAIL  mpirun -n 4 placement: got '$hosts'"
  fail=1
fi

# Bad input from the node layout: 3 ranks on 2 nodes (2 + 1) cannot use the hierarchical exchange:
# exit 2 on every rank, a message naming the key, and no result file.
work=$(mktemp -d)
msg=$(cd "$work" && timeout 120 mpirun -n 3 "$moesim" run "$root/experiments/quickstart.ini" \
  --routing.dispatch=hierarchical --routing.num_experts=6 --data.tokens_per_step=768 \
  --data.eval_tokens=768 --routing.group_size=128 --training.steps=2 --output.file=uneq.h5 2>&1)
rc=$?
if [[ $rc -eq 2 && $msg == *"routing.dispatch = hierarchical"*"same number of ranks on every node"* && ! -e $work/uneq.h5 ]]; then
  echo "  ok    unequal nodes: exit 2, message names routing.dispatch, no result file"
else
  echo "  FAIL  unequal nodes: rc=$rc, result file $(ls "$work")"
  echo "$msg" | head -5
  fail=1
fi
rm -rf "$work"

# Calibration across nodes: the inter level comes from an alltoallv across the 2 nodes, and its
# per-node bandwidth must be the shaped link's (2 Gbit/s = 0.25 GB/s per direction; TCP headers
# and the token bucket allow 0.15-0.30), not the shared memory's.
work=$(mktemp -d)
if (cd "$work" && timeout 150 mpirun -n 4 "$moesim" calibrate "$root/experiments/quickstart.ini" \
  --model.d_model=32 --model.d_ff=64 --cluster.output=m.ini >cal.log 2>&1); then
  beta=$(sed -n 's/^inter_bandwidth_GBps = //p' "$work/m.ini")
  # the 2 emulated nodes are network namespaces of one kernel: the ranks share its CPUs
  cores=$(sed -n 's/^shared_cores = //p' "$work/m.ini")
  if [[ $cores == "$(nproc)" ]]; then
    echo "  ok    calibrate on 2 emulated nodes: shared_cores = $cores (one boot id)"
  else
    echo "  FAIL  calibrate on 2 emulated nodes: shared_cores = '$cores' (want $(nproc))"
    fail=1
  fi
  if grep --quiet "^# alltoallv inter fit" "$work/m.ini" &&
    /usr/bin/python3 -c 'import sys; b = float(sys.argv[1]); sys.exit(0 if 0.15 <= b <= 0.30 else 1)' "${beta:-0}"; then
    echo "  ok    calibrate on 2 nodes: inter level from alltoallv across nodes, beta $beta GB/s per node (link 0.25)"
  else
    echo "  FAIL  calibrate on 2 nodes: inter beta '${beta}' GB/s (want 0.15-0.30, from the alltoallv fit)"
    grep "inter" "$work/m.ini" | head -20
    fail=1
  fi
else
  echo "  FAIL  calibrate on 2 nodes exited non-zero"
  tail -20 "$work/cal.log"
  fail=1
fi
rm -rf "$work"

# The links' token bucket (emulate.sh: tc tbf with a burst of 1 ms of the rate, 250000 B at
# 2 Gbit/s): calibrate times the exchange back-to-back and after 30 ms of idle link, one rank per
# node (with ranks sharing the 2 cores the idle-link timings are too erratic to fit), and must
# find a bucket of that order (the fit measured 186-212 kB for the 250 kB bucket) that sends
# faster than the link.
work=$(mktemp -d)
if (cd "$work" && timeout 120 mpirun -n 2 --map-by ppr:1:node "$moesim" calibrate \
  "$root/experiments/quickstart.ini" --model.d_model=32 --model.d_ff=64 --cluster.output=m.ini \
  >cal.log 2>&1); then
  bb=$(sed -n 's/^inter_burst_bytes = //p' "$work/m.ini")
  br=$(sed -n 's/^inter_burst_GBps = //p' "$work/m.ini")
  beta=$(sed -n 's/^inter_bandwidth_GBps = //p' "$work/m.ini")
  if /usr/bin/python3 -c 'import sys; b, r, beta = map(float, sys.argv[1:]); sys.exit(0 if 125000 <= b <= 375000 and r > beta else 1)' "${bb:-0}" "${br:-0}" "${beta:-0}"; then
    echo "  ok    calibrate finds the links' token bucket: $bb B per node at $br GB/s (tbf: 250000 B, link $beta GB/s)"
  else
    echo "  FAIL  calibrate token bucket: inter_burst_bytes '$bb' (want 125000-375000), inter_burst_GBps '$br' (want > beta $beta)"
    grep -E "idle|bucket" "$work/m.ini" | head -20
    fail=1
  fi
else
  echo "  FAIL  calibrate with one rank per node exited non-zero"
  tail -20 "$work/cal.log"
  fail=1
fi
rm -rf "$work"

/usr/bin/python3 "$root/tests/regression/multinode.py" --moesim "$moesim" --mpiexec mpirun \
  --h5check "$root/tools/h5check.py" -- --bind-to none || fail=1
echo "cluster tier: $((SECONDS - t0)) s"
exit $fail
