#!/usr/bin/python3
"""Tables and a figure from run_study.sh's raw outputs: OUT/results.md, OUT/results.csv, OUT/*.png."""
import csv
import glob
import os
import re
import sys

import h5py
import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
raw = os.path.join(out, "raw")
rows = []


def tag_parts(tag):
    m = re.match(r"n(\d+)_(\w+)", tag)
    return int(m.group(1)), m.group(2)


probe = {}
for path in sorted(glob.glob(os.path.join(raw, "probe_*.txt"))):
    tag = os.path.basename(path)[6:-4]
    text = open(path).read()
    t = dict((int(a), float(b)) for a, b in re.findall(r"alltoallv (\d+) bytes per rank: ([\d.]+) us", text))
    hosts = sorted(set(re.findall(r"host (\S+)", text)))
    probe[tag] = (t.get(1024), t.get(2097152), len(hosts))

bench = {}
for path in sorted(glob.glob(os.path.join(raw, "bench_*.txt"))):
    base = os.path.basename(path)[6:-4]
    tag, disp = base.rsplit("_", 1)
    text = open(path).read()
    m = re.search(r"fwd ([\d.]+) ms .*?\| fwd\+bwd ([\d.]+) ms", text)
    ph = re.search(r"gate ([\d.]+) dispatch ([\d.]+) expert ([\d.]+) combine ([\d.]+) backward ([\d.]+)", text)
    by = re.search(r"nodes (\d+) inter-node (\d+) intra-node (\d+) \(forward token dispatch inter-node (\d+)\)", text)
    if not (m and ph and by):
        print(f"incomplete bench output {path}", file=sys.stderr)
        continue
    bench[(tag, disp)] = dict(fwd=float(m.group(1)), fwdbwd=float(m.group(2)),
                              dispatch=float(ph.group(2)), expert=float(ph.group(3)),
                              combine=float(ph.group(4)), backward=float(ph.group(5)),
                              nodes=int(by.group(1)), inter=int(by.group(2)), intra=int(by.group(3)),
                              tok_inter=int(by.group(4)))

overlap = {}
for path in sorted(glob.glob(os.path.join(raw, "overlap_*.txt"))):
    m = re.match(r"overlap_(n\d+_\w+?)_ppn(\d+)_d(\d+)\.txt", os.path.basename(path))
    text = open(path).read()
    o = re.search(r"bench overlap d=(\d+) .*?step ([\d.]+) vs ([\d.]+) \| exchange ([\d.]+) of ([\d.]+) not "
                  r"hidden \| expert compute \(d=1\) ([\d.]+) \| hidden (-?\d+)% of the exchange \(step gain "
                  r"(-?\d+)%\) \| bitwise (\w+)", text)
    if not (m and o):
        print(f"incomplete overlap output {path}", file=sys.stderr)
        continue
    overlap[(m.group(1), int(m.group(2)), int(m.group(3)))] = dict(
        stepd=float(o.group(2)), step1=float(o.group(3)), exchd=float(o.group(4)),
        exch1=float(o.group(5)), expert1=float(o.group(6)), hidden=int(o.group(7)),
        gain=int(o.group(8)), bitwise=o.group(9))

train = {}
for path in sorted(glob.glob(os.path.join(raw, "train_*.h5"))):
    base = os.path.basename(path)[6:-3]
    tag, m = base.rsplit("_M", 1)
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs["complete"]) != 1:
                continue
            st = f["steps"]
            train[(tag, int(m))] = dict(
                nodes=int(f.attrs["nodes"]), step_ms=1e3 * float(np.median(st["time_step"][()])),
                exch_ms=1e3 * float(np.median(st["time_dispatch"][()] + st["time_combine"][()])),
                inter=float(np.mean(st["bytes_inter_node"][()])),
                intra=float(np.mean(st["bytes_intra_node"][()])),
                drop=float(np.mean(st["dropped_fraction"][()])),
                acc=float(f["eval/accuracy"][-1]), loss=float(f["eval/loss"][-1]))
    except (OSError, KeyError) as e:
        print(f"unreadable {path}: {e}", file=sys.stderr)

lines = ["# Multi-node study results", "",
         "Machine: " + " | ".join(open(os.path.join(raw, "machine.txt")).read().split("\n")).strip(" |"), "",
         "## 1. Raw MPI_Alltoallv between emulated nodes (1 rank per node)", "",
         "| nodes | link | hosts seen | 1 KiB per rank (µs) | 2 MiB per rank (µs) |", "|---|---|---|---|---|"]
for tag, (a, b, h) in sorted(probe.items(), key=lambda kv: tag_parts(kv[0])):
    n, bw = tag_parts(tag)
    lines.append(f"| {n} | {bw} | {h} | {a} | {b} |")
lines += ["", "## 2. `moesim bench` small-message layer (bench_small.ini), 2 ranks per node", "",
          "| nodes | link | exchange | fwd (ms) | fwd+bwd (ms) | dispatch+combine fwd (ms) | expert (ms) | "
          "inter-node bytes | intra-node bytes | token-dispatch inter-node bytes | flat/hier fwd+bwd |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
for (tag, disp), b in sorted(bench.items(), key=lambda kv: (tag_parts(kv[0][0]), kv[0][1])):
    n, bw = tag_parts(tag)
    ratio = ""
    if disp == "hierarchical" and (tag, "alltoallv") in bench:
        ratio = f"{bench[(tag, 'alltoallv')]['fwdbwd'] / b['fwdbwd']:.2f}"
    lines.append(f"| {n} | {bw} | {disp} | {b['fwd']:.2f} | {b['fwdbwd']:.2f} | "
                 f"{b['dispatch'] + b['combine']:.2f} | {b['expert']:.2f} | {b['inter']} | {b['intra']} | "
                 f"{b['tok_inter']} | {ratio} |")
    rows.append({**b, "kind": "bench", "nodes": n, "link": bw, "variant": disp})
lines += ["", "## 2b. Overlapped exchange (`routing.overlap_degree = d`, bench_overlap.ini) vs d = 1 in the same loop",
          "", "Per fwd+bwd iteration, max over ranks, medians. *Exchange*: time inside the exchange (d = 1: all "
          "of it; d: the part not hidden). *Hidden* = 1 − exchange(d) / exchange(1); *step gain* = (step(1) − "
          "step(d)) / exchange(1).", "",
          "| nodes | link | ranks per node | d | step d=1 (ms) | step d (ms) | exchange d=1 (ms) | exchange d (ms) | "
          "expert compute d=1 (ms) | hidden | step gain | bitwise |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for (tag, ppn, d), o in sorted(overlap.items(), key=lambda kv: (tag_parts(kv[0][0]), kv[0][1], kv[0][2])):
    n, bw = tag_parts(tag)
    lines.append(f"| {n} | {bw} | {ppn} | {d} | {o['step1']:.1f} | {o['stepd']:.1f} | {o['exch1']:.1f} | "
                 f"{o['exchd']:.1f} | {o['expert1']:.1f} | {o['hidden']} % | {o['gain']} % | {o['bitwise']} |")
    rows.append({**o, "kind": "overlap", "nodes": n, "link": bw, "variant": f"ppn{ppn}_d{d}"})
lines += ["", "## 3. Training (train.ini, hierarchical exchange), node-limited routing", "",
          "| nodes | link | group_limit M | median step (ms) | median exchange (ms) | inter-node bytes/step | "
          "intra-node bytes/step | drop rate | eval accuracy | eval loss |",
          "|---|---|---|---|---|---|---|---|---|---|"]
for (tag, m), t in sorted(train.items(), key=lambda kv: (tag_parts(kv[0][0]), kv[0][1])):
    n, bw = tag_parts(tag)
    lines.append(f"| {n} | {bw} | {m if m else 'unlimited'} | {t['step_ms']:.1f} | {t['exch_ms']:.1f} | "
                 f"{t['inter']:.0f} | {t['intra']:.0f} | {100 * t['drop']:.2f} % | {t['acc']:.4f} | {t['loss']:.4f} |")
    rows.append({**t, "kind": "train", "nodes": n, "link": bw, "variant": f"M{m}"})
open(os.path.join(out, "results.md"), "w").write("\n".join(lines) + "\n")
keys = sorted({k for r in rows for k in r})
with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    labels, flat, hier = [], [], []
    for (tag, disp), b in sorted(bench.items(), key=lambda kv: tag_parts(kv[0][0])):
        if disp != "alltoallv" or (tag, "hierarchical") not in bench:
            continue
        labels.append(tag)
        flat.append(b["fwdbwd"])
        hier.append(bench[(tag, "hierarchical")]["fwdbwd"])
    x = np.arange(len(labels))
    ax[0].bar(x - 0.2, flat, 0.4, label="alltoallv")
    ax[0].bar(x + 0.2, hier, 0.4, label="hierarchical")
    ax[0].set_xticks(x, labels, rotation=30)
    ax[0].set_ylabel("fwd+bwd ms (bench_small)")
    ax[0].legend()
    labels, vals = [], []
    for (tag, m), t in sorted(train.items(), key=lambda kv: (tag_parts(kv[0][0]), kv[0][1])):
        labels.append(f"{tag} M{m if m else '∞'}")
        vals.append(t["inter"] / 1e6)
    ax[1].bar(np.arange(len(vals)), vals)
    ax[1].set_xticks(np.arange(len(vals)), labels, rotation=60, fontsize=7)
    ax[1].set_ylabel("inter-node MB per training step")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "multinode.png"), dpi=110)
except ImportError:
    print("matplotlib missing: no figure", file=sys.stderr)
print(open(os.path.join(out, "results.md")).read())
