#!/usr/bin/env bash
# A real Slurm on this machine (single-node, or N emulated nodes), for tests, CI and trying the
# job scripts:
#   scripts/slurm/local_slurm.sh start    # munged + slurmctld + slurmd; prints `export SLURM_CONF=...`
#   scripts/slurm/local_slurm.sh status   # which daemons run, sinfo
#   scripts/slurm/local_slurm.sh stop     # stops exactly the daemons it started (pid files)
#   eval "$(scripts/slurm/local_slurm.sh start)"   # start and point this shell's clients at it
#   eval "$(scripts/slurm/local_slurm.sh start --nodes 2)"   # multi-node, on emulated nodes (below)
#
# No systemd: the daemons are started by hand in the background, everything (config, state, spool,
# logs, pid files, its own munge socket) lives in one private directory, so it never touches a site
# Slurm or a system munged. Needs root (slurmd runs jobs as their users; munged runs as `munge`) and
# the Debian packages slurm-wlm and munge (scripts/install_deps.sh).
#
# Environment:
#   MOESIM_SLURM_DIR    state directory [/tmp/moesim-slurm]
#   MOESIM_SLURM_PORT   slurmctld port; slurmd uses PORT+1 [6817]. Give a second instance other ports.
#   MOESIM_SLURM_CPUS   CPUs of the node (multi-node: of every node) [nproc]
#   MOESIM_SLURM_WAIT   seconds to wait for the node to become idle [30]
#   MOESIM_SLURM_NODES  N: multi-node (same as `start --nodes N`); unset: the single-node Slurm
# Only the `export` lines go to stdout; progress and errors go to stderr.
#
# Multi-node (`start --nodes N`, docs/multinode_cluster.md): starts its own emulated cluster of N
# nodes with scripts/cluster/emulate.sh (network namespaces on a private bridge; MOESIM_CLUSTER_NAME
# [msl], MOESIM_SLURM_BANDWIDTH: --bandwidth of the links, e.g. 1gbit [unshaped]) and runs one
# slurmd per emulated node inside that node's namespace with the node's own host name
# (<name>-node<i>), slurmctld inside node 0 (the head node), one munged shared by all (a Unix
# socket, no network). The machine's own network namespace cannot reach the nodes, so the client
# commands (sbatch, srun, squeue, scancel, scontrol, sinfo, salloc, sacct) are wrappers in
# $MOESIM_SLURM_DIR/bin (first in PATH after the eval) that run the real command inside node 0;
# inside a node (job scripts, srun from mpirun) they run it directly. Jobs run on the emulated
# nodes; Open MPI's mpirun inside a job starts its daemons through Slurm (srun), so ranks on
# different nodes talk TCP over the emulated links. `stop` ends every process left in the nodes and
# removes the emulated cluster (emulate.sh stop). The daemons' ports are private to the nodes'
# namespaces, so MOESIM_SLURM_PORT cannot collide with anything outside them. Start also prints
# OMPI_MCA_hwloc_base_binding_policy=none and OMPI_MCA_mpi_yield_when_idle=1 (jobs inherit them):
# namespaces do not isolate CPUs.
set -euo pipefail

dir=${MOESIM_SLURM_DIR:-/tmp/moesim-slurm}
port=${MOESIM_SLURM_PORT:-6817}
cpus=${MOESIM_SLURM_CPUS:-$(nproc)}
wait_s=${MOESIM_SLURM_WAIT:-30}
conf=$dir/etc/slurm.conf
munge_socket=$dir/munge/munge.socket.2
# Multi-node: the number of emulated nodes (empty: single-node). `start` records it and the cluster
# name in $dir/multinode, so that status/stop (and a second start) find the cluster again.
nodes=${MOESIM_SLURM_NODES:-}
cluster_name=${MOESIM_CLUSTER_NAME:-msl}
bandwidth=${MOESIM_SLURM_BANDWIDTH:-}
emulate=$(cd "$(dirname "$(realpath "$0")")/../cluster" && pwd)/emulate.sh
clients=(sbatch srun salloc squeue scancel scontrol sinfo sacct sattach sstat sprio sshare sdiag)

say() { echo "local_slurm: $*" >&2; }
die() { say "error: $*"; exit 1; }
bad() { say "error: $*"; exit 2; }  # bad input (a parameter or argument): exit 2

# pid of a daemon from its pid file if that process is alive, else nothing.
alive_pid() {
  local pidfile=$1 pid
  [[ -r $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] && is_alive "$pid" && echo "$pid"
}

# A process that exists and is not a zombie: the daemons are children of PID 1 once they
# detached, and an exited one stays a zombie until PID 1 reaps it (on this machine that takes
# ~2 s), which `kill -0` does not tell from a running process.
is_alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

show_logs() {
  local f
  for f in "$dir/log/munged.log" "$dir/log/slurmctld.log" "$dir/log/slurmd.log" "$dir"/log/slurmd-*.log; do
    [[ -s $f ]] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 25 "$f" >&2
  done
}

# ---- multi-node helpers ---------------------------------------------------------------------------
node_ns() { echo "$cluster_name-n$1"; }
node_host() { echo "$cluster_name-node$1"; }
# Emulated cluster settings for emulate.sh: its state lives inside ours.
emu() { MOESIM_CLUSTER_NAME=$cluster_name MOESIM_CLUSTER_DIR=$dir/cluster "$emulate" "$@"; }
# in_node I COMMAND...: COMMAND inside emulated node I (its network namespace) with the node's host
# name (a UTS namespace of its own), as a daemon of that node sees it.
in_node() {
  local i=$1; shift
  ip netns exec "$(node_ns "$i")" unshare --uts /bin/sh -c 'hostname "$0"; shift; exec "$@"' \
    "$(node_host "$i")" x "$@"
}
# A Slurm client command against this cluster (multi-node: from inside node 0, where slurmctld is).
client() {
  if [[ -n $nodes ]]; then
    SLURM_CONF=$conf timeout 5 ip netns exec "$(node_ns 0)" "$@"
  else
    SLURM_CONF=$conf timeout 5 "$@"
  fi
}
# Reads what `start --nodes` recorded (status/stop, a second start).
load_multinode() {
  [[ -r $dir/multinode ]] || return 0
  local n c
  n=$(sed -n 's/^nodes=//p' "$dir/multinode") c=$(sed -n 's/^cluster=//p' "$dir/multinode")
  [[ $n =~ ^[0-9]+$ && -n $c ]] || return 0
  rec_nodes=$n rec_cluster=$c
}
rec_nodes="" rec_cluster=""

write_config() {
  mkdir -p "$dir"/{etc,state,spool,log,run,cgroup}
  # munged wants its socket directory owned by it, not writable by others, searchable by all.
  mkdir -p "$dir/munge"
  chown munge:munge "$dir/munge"
  chmod 0755 "$dir/munge"
  chmod 0755 "$dir"
  # slurmctld refuses a state directory that another ClusterName used: one per cluster.
  if [[ -n $nodes ]]; then
    state_dir=$dir/state/$cluster_name
    mkdir -p "$state_dir"
    write_config_multinode
  else
    state_dir=$dir/state
    write_config_single
  fi
  # slurmd always loads a cgroup plugin; a private mount point keeps it off the host's cgroups.
  cat > "$dir/etc/cgroup.conf" <<EOF
# Generated by scripts/slurm/local_slurm.sh (no cgroup enforcement; see slurm.conf).
CgroupPlugin=cgroup/v1
CgroupMountpoint=$dir/cgroup
EOF
}

# The parts both configurations share.
common_config() {
  cat <<EOF
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$munge_socket
StateSaveLocation=$state_dir
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups needed: processes are tracked through /proc, tasks are not pinned.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# srun --mpi=pmix works with Debian's Open MPI (pmi2 and none do not).
MpiDefault=pmix
# Start batch jobs at once; forget finished jobs after a few seconds so that sbatch --wait returns fast.
SchedulerParameters=batch_sched_delay=0
MinJobAge=4
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MailProg=/bin/true
EOF
}

write_config_single() {
  cat > "$conf" <<EOF
# Generated by scripts/slurm/local_slurm.sh: a single-node Slurm for MoESim's tests.
ClusterName=moesim-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
SlurmdSpoolDir=$dir/spool
SlurmdPidFile=$dir/run/slurmd.pid
SlurmdLogFile=$dir/log/slurmd.log
$(common_config)
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

# One slurmd per emulated node: each node has its own address (its namespace), so every slurmd
# listens on the same port, like on a real cluster; spool, pid and log files are per node (%n).
write_config_multinode() {
  local i ip lines=""
  for ((i = 0; i < nodes; ++i)); do
    ip=$(ip -n "$(node_ns "$i")" -4 -o addr show dev eth0 | awk '{sub(/\/.*/, "", $4); print $4}')
    [[ -n $ip ]] || die "emulated node $i ($(node_ns "$i")) has no address"
    node_ips[i]=$ip
    lines+="NodeName=$(node_host "$i") NodeAddr=$ip NodeHostname=$(node_host "$i") CPUs=$cpus State=UNKNOWN"$'\n'
    mkdir -p "$dir/spool/$(node_host "$i")" "$dir/tmp/$(node_host "$i")"
  done
  chmod 1777 "$dir/tmp" "$dir"/tmp/*
  cat > "$conf" <<EOF
# Generated by scripts/slurm/local_slurm.sh --nodes $nodes: one slurmd per emulated node
# (scripts/cluster/emulate.sh cluster '$cluster_name'), slurmctld on node 0.
ClusterName=moesim-$cluster_name
SlurmctldHost=$(node_host 0)(${node_ips[0]})
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
SlurmdSpoolDir=$dir/spool/%n
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmdLogFile=$dir/log/slurmd-%n.log
# The nodes share one /tmp: srun --mpi=pmix's per-step directories (TmpFS/spmix_appdir_*) would
# collide, so every node gets a TmpFS of its own.
TmpFS=$dir/tmp/%n
$(common_config)
${lines}PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}
node_ips=() state_dir=""

# Single-node: the node's state. Multi-node: "idle" when every node is idle, else the states.
node_state() {
  if [[ -z $nodes ]]; then
    SLURM_CONF=$conf timeout 5 sinfo --noheader --nodes=localhost --format=%T 2>/dev/null | head -n 1 || true
    return
  fi
  local states
  states=$(client sinfo --noheader --Node --format=%T 2>/dev/null | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}') || true
  if [[ $states == "idle x$nodes" ]]; then echo idle; else echo "${states:-}"; fi
}

# The pid files of the slurmds (one, or one per emulated node).
slurmd_pidfiles() {
  if [[ -n $nodes ]]; then
    local i
    for ((i = 0; i < nodes; ++i)); do echo "$dir/run/slurmd-$(node_host "$i").pid"; done
  else
    echo "$dir/run/slurmd.pid"
  fi
}

all_alive() {
  local f
  [[ -n $(alive_pid "$dir/run/slurmctld.pid") ]] || return 1
  for f in $(slurmd_pidfiles); do [[ -n $(alive_pid "$f") ]] || return 1; done
}

# Wrappers for the client commands (multi-node): outside the emulated nodes they run the real
# command inside node 0; inside one of the cluster's namespaces (a job script, mpirun's srun)
# they run it directly, in the node they are called from.
write_client_wrappers() {
  mkdir -p "$dir/bin"
  local c real
  for c in "${clients[@]}"; do
    real=$(command -v "$c") || continue
    cat > "$dir/bin/$c" <<EOF
#!/bin/sh
# Generated by scripts/slurm/local_slurm.sh --nodes: $c of the emulated multi-node Slurm.
case \$(ip netns identify \$\$ 2>/dev/null) in
  $cluster_name-n[0-9]*) exec $real "\$@" ;;
esac
exec ip netns exec $(node_ns 0) $real "\$@"
EOF
    chmod 0755 "$dir/bin/$c"
  done
}

print_exports() {
  echo "export SLURM_CONF=$conf"
  if [[ -n $nodes ]]; then
    # Namespaces do not isolate CPUs: without this, Open MPI binds each node's first rank to core 0
    # (docs/multinode.md); the jobs inherit these from the submitting shell (sbatch --export=ALL).
    echo "export PATH=$dir/bin:\$PATH"
    echo "export OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_mpi_yield_when_idle=1"
  fi
}

start() {
  [[ $(id -u) -eq 0 ]] || die "needs root (slurmd runs jobs as their users, munged runs as 'munge')"
  local tool
  for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || die "'$tool' not found: install the Debian packages slurm-wlm and munge (scripts/install_deps.sh)"
  done
  id munge >/dev/null 2>&1 || die "user 'munge' missing: install the Debian package munge"
  if [[ -n $nodes ]]; then
    [[ $nodes =~ ^[0-9]+$ ]] && ((nodes >= 1 && nodes <= 64)) ||
      bad "--nodes / MOESIM_SLURM_NODES = '$nodes' is not allowed: an integer from 1 to 64"
    [[ $cluster_name =~ ^[A-Za-z][A-Za-z0-9]{0,9}$ ]] ||
      bad "MOESIM_CLUSTER_NAME = '$cluster_name' is not allowed: a letter, then up to 9 letters or digits (it names namespaces and hosts)"
    [[ -x $emulate ]] || die "$emulate not found (the emulated cluster)"
    for tool in ip unshare; do
      command -v "$tool" >/dev/null || die "'$tool' not found (Debian packages iproute2, util-linux)"
    done
  fi

  load_multinode
  if [[ -n $rec_nodes && ( $nodes != "$rec_nodes" || $cluster_name != "$rec_cluster" ) ]]; then
    say "note: $dir holds a $rec_nodes-node Slurm on cluster '$rec_cluster'; it is stopped first"
  fi
  if [[ -n $rec_nodes && $rec_nodes == "$nodes" && $rec_cluster == "$cluster_name" ]] && all_alive \
     && [[ $(node_state) == idle* || $(node_state) == mix* || $(node_state) == alloc* ]]; then
    say "already running in $dir"
    print_exports
    return 0
  fi
  if [[ -z $nodes && -z $rec_nodes ]] && all_alive \
     && [[ $(node_state) == idle* || $(node_state) == mix* || $(node_state) == alloc* ]]; then
    say "already running in $dir"
    print_exports
    return 0
  fi
  # Half-started or stale (or another node count): clean up our own daemons (and the emulated
  # cluster we made), then start afresh.
  stop_all quiet
  local t0=$SECONDS
  if [[ -n $nodes ]]; then
    local emu_args=("$nodes" --slots "$cpus")
    [[ -n $bandwidth ]] && emu_args+=(--bandwidth "$bandwidth")
    mkdir -p "$dir"
    # Recorded before the cluster exists: a failed start is cleaned up by stop.
    printf 'nodes=%s\ncluster=%s\n' "$nodes" "$cluster_name" > "$dir/multinode"
    emu start "${emu_args[@]}" > "$dir/cluster.env" ||
      { rm -f "$dir/multinode"; die "the emulated cluster did not start (emulate.sh's error is above)"; }
  fi
  write_config

  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  rm -f "$munge_socket" "$munge_socket.lock"
  : > "$dir/log/munged.log"
  chown munge:munge "$dir/log/munged.log"
  runuser -u munge -- munged --socket="$munge_socket" --pid-file="$dir/munge/munged.pid" \
      --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" \
      || { show_logs; fail_start "munged did not start"; }
  cp "$dir/munge/munged.pid" "$dir/run/munged.pid"
  if ! munge --socket="$munge_socket" --no-input | unmunge --socket="$munge_socket" >/dev/null 2>&1; then
    show_logs; fail_start "munge credentials do not round-trip through $munge_socket"
  fi

  # -c: a fresh controller state each start (no jobs or node states left from an old run).
  if [[ -n $nodes ]]; then
    local i
    SLURM_CONF=$conf in_node 0 slurmctld -c -f "$conf" || { show_logs; fail_start "slurmctld did not start in node 0"; }
    for ((i = 0; i < nodes; ++i)); do
      SLURM_CONF=$conf in_node "$i" slurmd -f "$conf" -N "$(node_host "$i")" ||
        { show_logs; fail_start "slurmd did not start in node $i ($(node_host "$i"))"; }
    done
  else
    SLURM_CONF=$conf slurmctld -c -f "$conf" || { show_logs; fail_start "slurmctld did not start"; }
    SLURM_CONF=$conf slurmd -f "$conf" -N localhost || { show_logs; fail_start "slurmd did not start"; }
  fi

  local deadline=$((SECONDS + wait_s)) state=""
  local f dead=""
  while (( SECONDS < deadline )); do
    state=$(node_state)
    [[ $state == idle* ]] && break
    for f in "$dir/run/slurmctld.pid" $(slurmd_pidfiles); do  # a daemon that wrote its pid file and died: stop waiting
      [[ -s $f && -z $(alive_pid "$f") ]] && dead=$(basename "$f" .pid)
    done
    [[ -n $dead ]] && { state="$dead exited"; break; }
    sleep 0.3
  done
  if [[ $state != idle* ]]; then
    say "$([[ -n $nodes ]] && echo "nodes" || echo "node") not idle after $((SECONDS - t0))s (state: '${state:-no answer}'); daemon logs follow"
    show_logs
    stop_all quiet
    exit 1
  fi
  if [[ -n $nodes ]]; then
    write_client_wrappers
    say "up in $((SECONDS - t0))s: $nodes emulated nodes $(node_host 0)..$(node_host $((nodes - 1))) idle with $cpus CPUs each (slurmctld on $(node_host 0)), state in $dir"
  else
    say "up in $((SECONDS - t0))s: node localhost idle with $cpus CPUs, state in $dir"
  fi
  print_exports
}

# A failed start stops what it started (daemons; the emulated cluster of a multi-node start).
fail_start() {
  say "error: $*"
  stop_all quiet
  exit 1
}

# Cancels the jobs of this (private) cluster, then stops slurmd(s), slurmctld and munged by their
# pid files (only ours), waiting up to 10 s each.
stop_daemons() {
  local quiet=${1:-} i jobs slurmds
  if [[ -n $(alive_pid "$dir/run/slurmctld.pid") ]]; then
    jobs=$(client squeue --noheader --format=%A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      [[ -n $quiet ]] || say "cancelling jobs ${jobs//$'\n'/ }"
      # shellcheck disable=SC2086  # one word per job id
      client scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        [[ -z $(client squeue --noheader --format=%A 2>/dev/null) ]] && break
        sleep 0.2
      done
    fi
  fi
  # The slurmds (one per node) and slurmctld together (each needs ~2 s to exit), then munged.
  mapfile -t slurmds < <(slurmd_pidfiles)
  stop_pidfiles "$quiet" "${slurmds[@]}" "$dir/run/slurmctld.pid"
  stop_pidfiles "$quiet" "$dir/run/munged.pid"
}

# stop_pidfiles QUIET PIDFILE...: SIGTERM to the live daemons of these pid files, up to 10 s for
# all of them to exit, then SIGKILL; removes the pid files.
stop_pidfiles() {
  local quiet=$1 f pid i name
  shift
  local pids=() names=()
  for f in "$@"; do
    name=$(basename "$f" .pid)
    pid=$(alive_pid "$f") || { rm -f "$f"; continue; }
    [[ -n $quiet ]] || say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid") names+=("$name")
  done
  for ((i = 0; i < 100; i++)); do
    local alive=0
    for pid in "${pids[@]}"; do is_alive "$pid" && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if is_alive "${pids[i]}"; then
      say "${names[i]} (pid ${pids[i]}) ignored SIGTERM for 10 s; killing it"
      kill -KILL "${pids[i]}" 2>/dev/null || true
    fi
  done
  rm -f "$@"
}

# Multi-node: ends every process still inside the emulated nodes (job steps, slurmstepd, orted:
# all started through this Slurm), then removes the cluster with emulate.sh.
stop_cluster() {
  local quiet=${1:-} ns pids i sig
  local nss=()
  for ((i = 0; i < nodes; ++i)); do
    ns=$(node_ns "$i")
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns" && nss+=("$ns")
  done
  for sig in TERM KILL; do
    pids=""
    for ns in "${nss[@]}"; do pids+=" $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"; done
    [[ -z ${pids// /} ]] && break
    [[ -n $quiet ]] || say "sending SIG$sig to processes left in the nodes:$pids"
    # shellcheck disable=SC2086
    kill -$sig $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      local alive=0 p
      for p in $pids; do is_alive "$p" && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
  done
  if [[ -d $dir/cluster ]] || ip netns list 2>/dev/null | grep -qE "^$cluster_name-(sw|n[0-9]+)( |\$)"; then
    emu stop >/dev/null || say "warning: emulate.sh stop failed for cluster '$cluster_name'"
  fi
  rm -rf "${dir:?}/bin" "$dir/multinode" "$dir/cluster.env"
}

# Stops whatever this directory holds: the daemons, and for a multi-node Slurm the processes in
# its nodes and its emulated cluster (as recorded by start).
stop_all() {
  local quiet=${1:-} want_nodes=$nodes want_cluster=$cluster_name
  load_multinode
  if [[ -n $rec_nodes ]]; then
    nodes=$rec_nodes cluster_name=$rec_cluster
    stop_daemons "$quiet"
    stop_cluster "$quiet"
  else
    local saved=$nodes
    nodes=""
    stop_daemons "$quiet"
    nodes=$saved
  fi
  nodes=$want_nodes cluster_name=$want_cluster rec_nodes="" rec_cluster=""
}

status() {
  local name pid rc=0 f
  load_multinode
  if [[ -n $rec_nodes ]]; then
    nodes=$rec_nodes cluster_name=$rec_cluster
    say "multi-node: $nodes emulated nodes of cluster '$cluster_name'"
  fi
  for f in "$dir/run/munged.pid" "$dir/run/slurmctld.pid" $(slurmd_pidfiles); do
    name=$(basename "$f" .pid)
    if pid=$(alive_pid "$f"); then
      say "$name running (pid $pid)"
    else
      say "$name not running"; rc=1
    fi
  done
  if [[ $rc -eq 0 ]]; then
    client sinfo >&2 || rc=1
    print_exports
  fi
  return $rc
}

cmd=${1:-}
shift || true
while (($#)); do
  case $1 in
    --nodes) [[ $cmd == start ]] || bad "--nodes goes with start"; nodes=${2:-}; shift 2 || bad "--nodes needs a value" ;;
    --nodes=*) [[ $cmd == start ]] || bad "--nodes goes with start"; nodes=${1#*=}; shift ;;
    *) bad "unknown argument '$1' (allowed: start [--nodes N] | status | stop)" ;;
  esac
done
case $cmd in
  start) start ;;
  stop) stop_all; say "stopped (state kept in $dir)" ;;
  status) status ;;
  *) echo "usage: $0 start [--nodes N]|stop|status   (MOESIM_SLURM_DIR=$dir, MOESIM_SLURM_PORT=$port)" >&2; exit 2 ;;
esac
