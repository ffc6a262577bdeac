#!/usr/bin/python3
"""Figures and tables of the projection study from the files run_study.sh writes.

    plot.py RESULTS_DIR      writes RESULTS_DIR/../figures/*.png and prints the tables
"""
import glob
import os
import sys

import h5py
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

PHASES = ["gate", "dispatch", "expert", "combine", "backward", "sync", "other"]


def proj(path):
    with h5py.File(path, "r") as f:
        return {k: f["projection"][k][()] for k in f["projection"]}


def main():
    res = sys.argv[1]
    figs = os.path.join(os.path.dirname(os.path.abspath(res)), "figures")
    os.makedirs(figs, exist_ok=True)

    # Validation table: every measured run, this machine (validation.h5) and the emulated
    # cluster (emulated_*/validation.h5), none hidden; medians over all of them.
    print("| run | ranks | phase | measured ms | predicted ms | error % |")
    print("|---|---|---|---|---|---|")
    errs = {}
    gerrs = {}  # per group of runs: where the ranks ran
    points = {}
    for vpath in [os.path.join(res, "validation.h5")] + sorted(
            glob.glob(os.path.join(res, "emulated_*", "validation.h5"))):
        label = "emulated" if "emulated_" in vpath else "this machine"
        layout = os.path.basename(os.path.dirname(vpath)) if "emulated_" in vpath else ""
        group = ("this machine" if not layout else
                 "emulated, 16 KiB token bucket" if "_burst" in layout else
                 "emulated, a core per rank (2x1)" if layout.startswith("emulated_2x1") else
                 "emulated, 4 ranks on 2 cores")
        with h5py.File(vpath, "r") as f:
            v = f["validation"]
            runs = [r.decode() if isinstance(r, bytes) else r for r in v["run"][()]]
            for i, run in enumerate(runs):
                step = v["measured_time_step"][i]
                for ph in ["step", "gate", "dispatch", "expert", "combine", "backward", "sync"]:
                    m, p = v[f"measured_time_{ph}"][i], v[f"predicted_time_{ph}"][i]
                    e = 100.0 * (p - m) / m if m > 0 else float("nan")
                    big = ph == "step" or m >= 0.1 * step
                    if big:
                        errs.setdefault(ph, []).append(abs(e))
                        gerrs.setdefault(group, {}).setdefault(ph, []).append(abs(e))
                    print(f"| {os.path.basename(run)} | {v['ranks'][i]} | {ph}{'' if big else ' (<10%)'} "
                          f"| {1e3 * m:.3f} | {1e3 * p:.3f} | {e:+.1f} |")
                points.setdefault(label, []).append((step, v["predicted_time_step"][i]))
    print()
    print("median |error| over all runs (phases >= 10 % of the step):")
    for ph, e in errs.items():
        print(f"  {ph}: {np.median(e):.1f} % over {len(e)} runs")
    print("median |error| per group of runs:")
    for group, ge in gerrs.items():
        print(f"  {group}: " + ", ".join(f"{ph} {np.median(e):.1f} % ({len(e)})"
                                         for ph, e in ge.items()))
    # figure: measured vs predicted step time
    fig, ax = plt.subplots(figsize=(4.5, 4))
    allv = []
    for label, pts in points.items():
        ms, ps = np.array([q[0] for q in pts]), np.array([q[1] for q in pts])
        ax.loglog(1e3 * ms, 1e3 * ps, "o" if label == "this machine" else "s", label=label)
        allv += list(ms) + list(ps)
    lim = [1e3 * min(allv) / 1.5, 1e3 * max(allv) * 1.5]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("measured step (ms)")
    ax.set_ylabel("predicted step (ms)")
    ax.set_title("validation (1-2 ranks here; 2-4 emulated nodes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(figs, "validation.png"), dpi=120)

    # Phase breakdown per rank count (weak, uniform) and step time per workload
    for scaling in ["weak", "strong"]:
        files = sorted(glob.glob(os.path.join(res, f"{scaling}_*.h5")))
        if not files:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for path in files:
            d = proj(path)
            name = os.path.basename(path)[len(scaling) + 1:-3]
            axes[0].loglog(d["ranks"], 1e3 * d["time_step"], "o-", label=name)
        axes[0].set_xlabel("ranks")
        axes[0].set_ylabel("predicted step (ms)")
        axes[0].set_title(f"{scaling} scaling, reference layer, LUMI-C example")
        axes[0].legend(fontsize=8)
        d = proj(os.path.join(res, f"{scaling}_uniform.h5"))
        bottom = np.zeros(len(d["ranks"]))
        x = np.arange(len(d["ranks"]))
        for ph in PHASES:
            t = 1e3 * d[f"time_{ph}"]
            axes[1].bar(x, t, bottom=bottom, label=ph)
            bottom += t
        axes[1].set_xticks(x, [str(r) for r in d["ranks"]])
        axes[1].set_xlabel("ranks")
        axes[1].set_ylabel("ms")
        axes[1].set_title(f"phases ({scaling}, uniform)")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(figs, f"{scaling}_scaling.png"), dpi=120)
        print(f"\n{scaling} scaling (predicted step ms; imbalance; dropped %):")
        for path in files:
            d = proj(path)
            rows = ", ".join(f"{r}: {1e3 * t:.2f} ms ({im:.2f}, {100 * dr:.1f} %)" for r, t, im, dr in
                             zip(d["ranks"], d["time_step"], d["load_imbalance"], d["dropped_fraction"]))
            print(f"  {os.path.basename(path)}: {rows}; simulate took max {d['simulate_seconds'].max():.2f} s")

    # Step time vs load imbalance (every weak/strong row)
    fig, ax = plt.subplots(figsize=(5, 4))
    for path in sorted(glob.glob(os.path.join(res, "weak_*.h5"))):
        d = proj(path)
        ax.plot(d["load_imbalance"], 1e3 * d["time_step"], "o", label=os.path.basename(path)[5:-3])
    ax.set_xlabel("load imbalance (max/mean rows per rank)")
    ax.set_ylabel("predicted step (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(figs, "imbalance.png"), dpi=120)

    # Capacity factor trade-off and bandwidth what-if
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    cfs = sorted(glob.glob(os.path.join(res, "cf_*.h5")), key=lambda p: float(p.split("_")[-1][:-3]))
    if cfs:
        x = [float(p.split("_")[-1][:-3]) for p in cfs]
        d = [proj(p) for p in cfs]
        axes[0].plot([100 * q["dropped_fraction"][0] for q in d], [1e3 * q["time_step"][0] for q in d], "o-")
        for xi, q in zip(x, d):
            axes[0].annotate(f"cf {xi}", (100 * q["dropped_fraction"][0], 1e3 * q["time_step"][0]), fontsize=8)
        axes[0].set_xlabel("dropped assignments (%)")
        axes[0].set_ylabel("predicted step (ms)")
        axes[0].set_title("capacity factor, 4096 ranks (strong, E=8), zipf:1.2")
        print("\ncapacity factor: " + ", ".join(f"cf {xi}: {1e3 * q['time_step'][0]:.2f} ms, "
                                              f"{100 * q['dropped_fraction'][0]:.1f} % dropped" for xi, q in zip(x, d)))
    bws = sorted(glob.glob(os.path.join(res, "bw_*.h5")), key=lambda p: float(p.split("_")[-1][:-3]))
    if bws:
        x = [float(p.split("_")[-1][:-3]) for p in bws]
        d = [proj(p) for p in bws]
        axes[1].semilogx(x, [1e3 * q["time_step"][0] for q in d], "o-", label="step")
        axes[1].semilogx(x, [1e3 * (q["time_dispatch"][0] + q["time_combine"][0]) for q in d], "s-",
                         label="dispatch + combine")
        axes[1].set_xlabel("inter-node bandwidth per node (GB/s)")
        axes[1].set_ylabel("ms")
        axes[1].set_title("what-if: NIC bandwidth, 4096 ranks")
        axes[1].legend(fontsize=8)
        print("bandwidth what-if: " + ", ".join(f"{xi:g} GB/s: {1e3 * q['time_step'][0]:.2f} ms" for xi, q in zip(x, d)))
    fig.tight_layout()
    fig.savefig(os.path.join(figs, "tradeoffs.png"), dpi=120)

    for a in ["flat", "hierarchical"]:
        p = os.path.join(res, f"alg_{a}.h5")
        if os.path.exists(p):
            d = proj(p)
            print(f"{a}: " + ", ".join(f"{r}: dispatch {1e3 * t:.2f} ms" for r, t in zip(d["ranks"], d["time_dispatch"])))


if __name__ == "__main__":
    main()
