#!/usr/bin/python3
"""Regression: the node-aware exchange and node-limited routing through the real program.

Two ways to have nodes:
  * on one machine (regression tier): MOESIM_RANKS_PER_NODE=R declares blocks of R ranks to be
    nodes (the bookkeeping and the algorithms see nodes; the bytes still move through shared
    memory);
  * on the emulated cluster (cluster tier, tests/cluster/test_cluster.sh): when
    MOESIM_CLUSTER_NODES is set, the ranks really are on that many network-namespace nodes
    (MPI_Comm_split_type finds them) and --mpiexec is the cluster's mpirun.
Checks: routing.dispatch = hierarchical and routing.overlap_degree = 2 give bitwise the same
losses, drop rates and eval accuracy as alltoallv (float32 and float64, 1 and 2 ranks per node), the root attribute `nodes`,
bytes_inter_node + bytes_intra_node = bytes_alltoall (h5check), fewer inter-node bytes with the
hierarchical exchange (forward de-duplication); node-limited routing (expert_groups = nodes,
group_limit = 1) keeps every token's experts on one node and cuts the forward token-dispatch
inter-node bytes of the hierarchical exchange (moesim bench) against unlimited top-k.
"""
import os
import re
import sys

import h5py
import numpy as np

sys.dont_write_bytecode = True

from regtest import HERE, Regression

R = Regression(__doc__.splitlines()[0])
QUICKSTART = os.path.normpath(os.path.join(HERE, "..", "..", "experiments", "quickstart.ini"))
CLUSTER = int(os.environ.get("MOESIM_CLUSTER_NODES", "0"))
STEPS = 12
BASE = [f"--training.steps={STEPS}", "--training.eval_every=6", "--output.log_every=0",
        "--output.echo_config=false", "--data.tokens_per_step=512", "--data.eval_tokens=1024",
        "--routing.group_size=64"]


def run(name, ranks, per_node, extra=()):
    """A quick-start run on `ranks` ranks, `per_node` ranks per node."""
    out = R.path(name + ".h5")
    args = ["run", QUICKSTART] + BASE + [f"--output.file={out}"] + list(extra)
    if CLUSTER:
        # Consecutive ranks fill a node: ppr puts exactly per_node on each.
        cmd = [R.mpiexec, "-n", str(ranks), "--map-by", f"ppr:{per_node}:node"] + R.mpi_flags
    else:
        cmd = [R.mpiexec, "-n", str(ranks), "-x", f"MOESIM_RANKS_PER_NODE={per_node}"] + R.mpi_flags
    res = R.run(cmd + [R.moesim] + args, timeout=120)
    R.check(res.rc == 0, f"{name}: exit 0", res.describe)
    return out, res


def load(path):
    with h5py.File(path, "r") as f:
        d = {"nodes": int(f.attrs["nodes"])}
        for k in ["loss", "task_loss", "dropped_fraction", "bytes_alltoall", "bytes_inter_node",
                  "bytes_intra_node"]:
            d[k] = f["steps/" + k][()]
        d["accuracy"] = f["eval/accuracy"][()]
        d["kept"] = f["steps/expert_kept"][()]
    return d


def same(a, b, keys):
    return [k for k in keys if not np.array_equal(a[k], b[k])]


nodes = CLUSTER if CLUSTER else 2
layouts = [(nodes, 1), (2 * nodes, 2)]  # (ranks, ranks per node)
for precision in ["float64", "float32"]:
    for ranks, per in layouts:
        R.section(f"{precision}: {ranks} ranks on {nodes} nodes, alltoallv vs hierarchical")
        prec = [f"--model.precision={precision}", "--routing.num_experts=8"]
        tag = f"{precision}_{ranks}"
        flat, r1 = run(f"flat_{tag}", ranks, per, prec)
        hier, r2 = run(f"hier_{tag}", ranks, per, prec + ["--routing.dispatch=hierarchical"])
        if r1.rc or r2.rc:
            continue
        for path in (flat, hier):
            chk = R.h5check(path)
            R.check(chk.rc == 0, f"h5check {os.path.basename(path)}", chk.describe)
        a, b = load(flat), load(hier)
        R.check(a["nodes"] == nodes and b["nodes"] == nodes, f"root attribute nodes = {nodes}",
                f"{a['nodes']}, {b['nodes']}")
        diff = same(a, b, ["loss", "task_loss", "dropped_fraction", "accuracy", "kept"])
        R.check(not diff, "losses, drop rates, kept counts, eval accuracy bitwise equal",
                f"differ: {diff}")
        R.check((a["bytes_inter_node"] > 0).all(), "alltoallv: inter-node bytes > 0 every step")
        R.check((b["bytes_inter_node"] < a["bytes_inter_node"]).all(),
                "hierarchical: fewer inter-node bytes than alltoallv every step (de-duplication)",
                f"{b['bytes_inter_node'][:4]} vs {a['bytes_inter_node'][:4]}")
        # The overlapped exchange (2 chunks of the 8 / ranks local experts): the same run and
        # the same bytes per level as the blocking alltoallv.
        ovl, r3 = run(f"overlap_{tag}", ranks, per, prec + ["--routing.overlap_degree=2"])
        if r3.rc == 0:
            chk = R.h5check(ovl)
            R.check(chk.rc == 0, f"h5check {os.path.basename(ovl)}", chk.describe)
            c = load(ovl)
            diff = same(a, c, ["loss", "task_loss", "dropped_fraction", "accuracy", "kept",
                               "bytes_inter_node", "bytes_intra_node"])
            R.check(not diff, "overlap_degree = 2: losses, drops, kept, accuracy and bytes per "
                    "level bitwise equal to alltoallv", f"differ: {diff}")

# Node-limited routing: 4 nodes on one machine (1 rank each), the cluster's nodes otherwise.
nodes = CLUSTER if CLUSTER else 4
R.section(f"node-limited routing on {nodes} nodes (expert_groups = {nodes}, group_limit = 1)")
E = 4 * nodes
lim = ["--model.precision=float64", f"--routing.num_experts={E}", "--routing.k=4",
       f"--routing.expert_groups={nodes}"]
out, res = run("limited", nodes, 1, lim + ["--routing.group_limit=1"])
if res.rc == 0:
    kept = load(out)["kept"]  # [S, L, E]
    R.check(kept.sum() > 0, "node-limited run keeps assignments")
# Every token on one node: with group_limit = 1 a token's k experts share a group; checked on the
# routing decisions of `moesim bench` below through the bytes (and in test_group_limit by hand).


def bench(limit):
    args = ["bench", QUICKSTART, "--bench.warmup=1", "--bench.iterations=2",
            "--routing.dispatch=hierarchical", "--data.tokens_per_step=1024",
            "--routing.capacity_factor=0", "--routing.group_size=0"] + lim[1:]
    args += [f"--routing.group_limit={limit}"]
    if CLUSTER:
        cmd = [R.mpiexec, "-n", str(nodes), "--map-by", "ppr:1:node"] + R.mpi_flags
    else:
        cmd = [R.mpiexec, "-n", str(nodes), "-x", "MOESIM_RANKS_PER_NODE=1"] + R.mpi_flags
    res = R.run(cmd + [R.moesim] + args, timeout=120)
    R.check(res.rc == 0, f"bench group_limit={limit}: exit 0", res.describe)
    m = re.search(r"forward token dispatch inter-node (\d+)", res.out)
    R.check(m is not None, f"bench group_limit={limit} prints the token-dispatch bytes", res.out)
    return int(m.group(1)) if m else None


unlimited, limited = bench(0), bench(1)
if unlimited and limited is not None:
    cut = 1 - limited / unlimited
    print(f"  forward token dispatch inter-node bytes: unlimited {unlimited}, M = 1 {limited} "
          f"({100 * cut:.1f} % less)")
    # 1 of N nodes per token instead of ~all: at most (N-1)/N of the tokens cross, once.
    R.check(cut >= (0.3 if nodes == 2 else 0.6),
            f"group_limit = 1 cuts the token-dispatch inter-node bytes by >= "
            f"{30 if nodes == 2 else 60} % ({100 * cut:.1f} %)")
R.finish()
