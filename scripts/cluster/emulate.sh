#!/usr/bin/env bash
# An emulated multi-node cluster on one machine (docs/multinode.md):
#   eval "$(scripts/cluster/emulate.sh start NODES [--bandwidth RATE] [--latency TIME] [--slots K]
#                                               [--burst BYTES])"
#   scripts/cluster/emulate.sh status
#   scripts/cluster/emulate.sh stop          # removes everything it made; safe to call twice
#
# Each node is a Linux network namespace (<name>-n<i>) with one interface eth0 (10.231.0.<i+1>/24)
# whose other end is a port of a bridge that lives in a namespace of its own (<name>-sw): the
# machine's own network namespace is never touched and only addresses inside these namespaces are
# used. RATE (tc units, e.g. 1gbit) shapes every node's link in both directions with a token
# bucket (tbf) on the node's eth0 (uplink) and on its bridge port (downlink): a non-blocking switch
# with one NIC of RATE per node. The bucket holds BYTES (default: one millisecond of RATE, at least
# 64 KiB); an exchange smaller than the bucket after an idle moment leaves at the veth's own speed,
# which a real NIC never does -- a small --burst (e.g. 16384) removes that, at the price of a
# sustained rate below RATE (tbf's timer granularity). TIME (tc units, e.g. 50us) is the one-way node-to-node delay,
# added by netem on each node's uplink; kernels without netem (CONFIG_NET_SCH_NETEM unset) get a
# clear error instead.
#
# `start` prints shell assignments (stdout; progress goes to stderr): Open MPI MCA settings in the
# environment, and a bin/ directory first in PATH with `mpirun`/`mpiexec` wrappers that start
# mpirun inside node 0 (hostname <name>-node0). Each other node's daemon (orted) is started by the
# launch agent bin/rsh_agent inside its namespace with its own UTS host name, so Open MPI sees
# NODES hosts: ranks of one node use shared memory (vader), ranks of different nodes TCP over the
# shaped link (btl/oob tcp restricted to the bridge subnet). Placement: by default consecutive
# ranks fill a node (K slots per node, default 2; more ranks than K*NODES wrap round-robin),
# `--map-by node` spreads round-robin, `--map-by ppr:R:node` puts R per node.
# Binding is off (--bind-to none) and mpi_yield_when_idle is on: namespaces do not isolate CPUs,
# and ranks of two nodes bound to the same core cost whole scheduler ticks per exchange.
#
# Environment: MOESIM_CLUSTER_NAME (namespace prefix, default msim), MOESIM_CLUSTER_DIR (state,
# default /tmp/moesim-cluster-<name>), MOESIM_CLUSTER_TIMEOUT (seconds per command, default 10).
# Needs root and iproute2 (ip, tc) and util-linux (unshare).
set -euo pipefail

name=${MOESIM_CLUSTER_NAME:-msim}
dir=${MOESIM_CLUSTER_DIR:-/tmp/moesim-cluster-$name}
tmo=${MOESIM_CLUSTER_TIMEOUT:-10}
subnet_prefix=10.231.0
subnet=$subnet_prefix.0/24
sw=$name-sw

say() { echo "emulate.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }
run() { timeout "$tmo" "$@"; }

usage() {
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

node_ns() { echo "$name-n$1"; }
node_host() { echo "$name-node$1"; }
node_ip() { echo "$subnet_prefix.$(($1 + 1))"; }

# Namespaces of this cluster that exist now (from ip netns, not only the state file: a half-made
# cluster is removed too).
our_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${name}-(sw|n[0-9]+)\$" || true
}

check_tools() {
  [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, tc); run as root or with sudo"
  local t
  for t in ip tc unshare timeout; do
    command -v "$t" >/dev/null || die "'$t' not found (Debian packages iproute2, util-linux, coreutils)"
  done
  command -v mpirun >/dev/null || die "'mpirun' not found (Debian package openmpi-bin)"
}

# RATE in tc units -> bytes per second (for the token bucket's burst size).
rate_bytes() {
  local r=${1,,} n u
  [[ $r =~ ^([0-9]+(\.[0-9]+)?)([a-z]*)$ ]] || return 1
  n=${BASH_REMATCH[1]} u=${BASH_REMATCH[3]}
  case $u in
    bit) awk -v n="$n" 'BEGIN{printf "%d", n/8}' ;;
    kbit) awk -v n="$n" 'BEGIN{printf "%d", n*1000/8}' ;;
    mbit) awk -v n="$n" 'BEGIN{printf "%d", n*1e6/8}' ;;
    gbit) awk -v n="$n" 'BEGIN{printf "%d", n*1e9/8}' ;;
    bps | "") awk -v n="$n" 'BEGIN{printf "%d", n}' ;;
    kbps) awk -v n="$n" 'BEGIN{printf "%d", n*1000}' ;;
    mbps) awk -v n="$n" 'BEGIN{printf "%d", n*1e6}' ;;
    gbps) awk -v n="$n" 'BEGIN{printf "%d", n*1e9}' ;;
    *) return 1 ;;
  esac
}

cleanup() {
  local ns
  for ns in $(our_namespaces); do
    run ip netns del "$ns" 2>/dev/null || say "warning: could not delete namespace $ns"
    rm -rf "/etc/netns/$ns"
  done
  # /etc/netns/<ns> directories whose namespace is already gone.
  for ns in /etc/netns/"$name"-sw /etc/netns/"$name"-n*; do
    [[ -e $ns ]] && rm -rf "$ns"
  done
  rmdir /etc/netns 2>/dev/null || true
  rm -rf "$dir"
}

cmd_stop() {
  check_tools
  cleanup
  [[ -z $(our_namespaces) ]] || die "namespaces left behind: $(our_namespaces | tr '\n' ' ')"
  say "stopped (no namespace, link or file of cluster '$name' left)"
  # For `eval "$(emulate.sh stop)"`: undo what start exported.
  cat <<OUT
PATH=\$(echo "\$PATH" | sed 's#$dir/bin:##'); export PATH
unset OMPI_MCA_orte_default_hostfile OMPI_MCA_plm_rsh_agent OMPI_MCA_plm_rsh_no_tree_spawn OMPI_MCA_oob_tcp_if_include OMPI_MCA_btl_tcp_if_include OMPI_MCA_btl OMPI_MCA_hwloc_base_binding_policy OMPI_MCA_mpi_yield_when_idle MOESIM_CLUSTER_NODES MOESIM_CLUSTER_DIR
OUT
}

cmd_status() {
  local ns
  if [[ -z $(our_namespaces) ]]; then
    echo "cluster '$name': not running"
    return 0
  fi
  echo "cluster '$name': $(cat "$dir/nodes" 2>/dev/null || echo '?') nodes, state in $dir"
  [[ -r $dir/shape ]] && echo "link: $(cat "$dir/shape")"
  for ns in $(our_namespaces); do
    [[ $ns == "$sw" ]] && continue
    echo "$ns: $(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')" \
      "qdisc: $(tc -n "$ns" qdisc show dev eth0 2>/dev/null | head -2 | tr '\n' ' ')"
  done
  [[ -r $dir/hostfile ]] && { echo "hostfile:"; sed 's/^/  /' "$dir/hostfile"; }
}

cmd_start() {
  local nodes=${1:-}
  shift || true
  [[ $nodes =~ ^[0-9]+$ ]] && ((nodes >= 1 && nodes <= 64)) ||
    die "NODES = '${nodes}' is not allowed: an integer from 1 to 64"
  local bandwidth="" latency="" slots=2 burst_opt=""
  while (($#)); do
    case $1 in
      --bandwidth) bandwidth=${2:-}; shift 2 || die "--bandwidth needs a value (e.g. 1gbit)" ;;
      --bandwidth=*) bandwidth=${1#*=}; shift ;;
      --latency) latency=${2:-}; shift 2 || die "--latency needs a value (e.g. 50us)" ;;
      --latency=*) latency=${1#*=}; shift ;;
      --slots) slots=${2:-}; shift 2 || die "--slots needs a value" ;;
      --slots=*) slots=${1#*=}; shift ;;
      --burst) burst_opt=${2:-}; shift 2 || die "--burst needs a value (bytes, e.g. 16384)" ;;
      --burst=*) burst_opt=${1#*=}; shift ;;
      *) die "unknown option '$1' (allowed: --bandwidth RATE, --latency TIME, --slots K, --burst BYTES)" ;;
    esac
  done
  local bw_bytes=0
  if [[ -n $bandwidth ]]; then
    bw_bytes=$(rate_bytes "$bandwidth") && ((bw_bytes > 0)) ||
      die "--bandwidth = '$bandwidth' is not allowed: a positive tc rate such as 500mbit, 1gbit, 10gbit"
  fi
  if [[ -n $latency ]]; then
    [[ ${latency,,} =~ ^[0-9]+(\.[0-9]+)?(us|usec|ms|msec|s|sec)$ ]] ||
      die "--latency = '$latency' is not allowed: a tc time such as 50us or 1ms"
  fi
  [[ $slots =~ ^[0-9]+$ ]] && ((slots >= 1)) || die "--slots = '$slots' is not allowed: an integer >= 1"
  if [[ -n $burst_opt ]]; then
    [[ $burst_opt =~ ^[0-9]+$ ]] && ((burst_opt >= 2048 && burst_opt <= 1073741824)) ||
      die "--burst = '$burst_opt' is not allowed: an integer number of bytes from 2048 to 1073741824"
    [[ -n $bandwidth ]] || die "--burst = '$burst_opt' needs --bandwidth (it sizes the bandwidth's token bucket)"
  fi
  check_tools
  [[ -z $(our_namespaces) ]] ||
    die "cluster '$name' is already running (namespaces: $(our_namespaces | tr '\n' ' ')); run 'emulate.sh stop' first"

  trap 'say "start failed; removing what was made"; cleanup' ERR
  trap 'cleanup; exit 1' INT TERM
  rm -rf "$dir"
  mkdir -p "$dir/bin"
  echo "$nodes" >"$dir/nodes"
  # The switch: a bridge in a namespace of its own.
  run ip netns add "$sw" 2>"$dir/err" || {
    cat "$dir/err" >&2
    cleanup
    die "cannot create a network namespace ('ip netns add $sw' failed): needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN"
  }
  run ip -n "$sw" link add br0 type bridge
  run ip -n "$sw" link set br0 up
  local burst=0
  if ((bw_bytes > 0)); then
    # One millisecond of traffic, at least 64 KiB (a GSO packet must fit in the bucket).
    burst=$((bw_bytes / 1000))
    ((burst < 65536)) && burst=65536
    [[ -n $burst_opt ]] && burst=$burst_opt
  fi
  local hosts_extra="" i ns ip
  for ((i = 0; i < nodes; ++i)); do hosts_extra+="$(node_ip "$i") $(node_host "$i")"$'\n'; done
  for ((i = 0; i < nodes; ++i)); do
    ns=$(node_ns "$i")
    ip=$(node_ip "$i")
    run ip netns add "$ns"
    run ip -n "$sw" link add "n$i" type veth peer name eth0 netns "$ns"
    run ip -n "$sw" link set "n$i" master br0
    run ip -n "$sw" link set "n$i" up
    run ip -n "$ns" addr add "$ip/24" dev eth0
    run ip -n "$ns" link set eth0 up
    run ip -n "$ns" link set lo up
    if [[ -n $latency ]]; then
      if ! run tc -n "$ns" qdisc add dev eth0 root handle 1: netem delay "$latency" limit 100000 2>"$dir/err"; then
        cat "$dir/err" >&2
        cleanup
        die "--latency needs the netem qdisc, which this kernel lacks (CONFIG_NET_SCH_NETEM); start without --latency"
      fi
      [[ -n $bandwidth ]] && run tc -n "$ns" qdisc add dev eth0 parent 1: handle 2: tbf rate "$bandwidth" burst "$burst" latency 100ms
    elif [[ -n $bandwidth ]]; then
      run tc -n "$ns" qdisc add dev eth0 root handle 1: tbf rate "$bandwidth" burst "$burst" latency 100ms
    fi
    [[ -n $bandwidth ]] && run tc -n "$sw" qdisc add dev "n$i" root handle 1: tbf rate "$bandwidth" burst "$burst" latency 100ms
    # /etc/netns/<ns>/hosts is bind-mounted over /etc/hosts by `ip netns exec`: every node name
    # resolves at once (no DNS timeouts).
    mkdir -p "/etc/netns/$ns"
    { cat /etc/hosts; printf '%s' "$hosts_extra"; } >"/etc/netns/$ns/hosts"
    echo "$(node_host "$i") slots=$slots" >>"$dir/hostfile"
  done
  echo "nodes=$nodes bandwidth=${bandwidth:-unshaped} latency=${latency:-none} slots=$slots burst=${burst}B subnet=$subnet" >"$dir/shape"

  # Launch agent: `rsh_agent [ssh-like options] HOST COMMAND...` runs COMMAND in HOST's namespace.
  cat >"$dir/bin/rsh_agent" <<AGENT
#!/usr/bin/env bash
# Generated by scripts/cluster/emulate.sh: runs an Open MPI daemon in an emulated node.
while [[ \${1:-} == -* ]]; do shift; done
host=\$1; shift
case \$host in
  $name-node[0-9]*) i=\${host#$name-node} ;;
  *) echo "rsh_agent: unknown host '\$host' (emulated nodes: $name-node0..$((nodes - 1)))" >&2; exit 1 ;;
esac
exec ip netns exec "$name-n\$i" unshare --uts /bin/sh -c 'hostname "\$0"; exec /bin/sh -c "\$1"' "\$host" "\$*"
AGENT
  local w
  for w in mpirun mpiexec; do
    cat >"$dir/bin/$w" <<WRAP
#!/usr/bin/env bash
# Generated by scripts/cluster/emulate.sh: $w inside emulated node 0.
exec ip netns exec "$(node_ns 0)" unshare --uts /bin/sh -c 'hostname "\$0"; shift; exec "\$@"' "$(node_host 0)" x "$(command -v $w)" "\$@"
WRAP
  done
  chmod +x "$dir/bin/"*
  trap - ERR INT TERM
  say "started $nodes emulated nodes ($(cat "$dir/shape"))"
  cat <<OUT
export PATH=$dir/bin:\$PATH
export OMPI_MCA_orte_default_hostfile=$dir/hostfile
export OMPI_MCA_plm_rsh_agent=$dir/bin/rsh_agent
export OMPI_MCA_plm_rsh_no_tree_spawn=1
export OMPI_MCA_oob_tcp_if_include=$subnet
export OMPI_MCA_btl_tcp_if_include=$subnet
export OMPI_MCA_btl=self,vader,tcp
export OMPI_MCA_hwloc_base_binding_policy=none
export OMPI_MCA_mpi_yield_when_idle=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export MOESIM_CLUSTER_NODES=$nodes MOESIM_CLUSTER_DIR=$dir
OUT
}

case ${1:-} in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
esac
