#!/usr/bin/python3
"""Redundant experts (EPLB) study: rows per rank (max/mean) and step time vs the number of
redundant experts r on a skewed workload (skewed.ini) and a balanced one (the quick start's
top-2 with aux loss). Reproduces every run, the CSV and the figure:

    experiments/expert_replication/run.py [--moesim build/moesim] [--repeats 2] [--steps 200]

Writes results/runs/*.h5 (not committed), results/results.csv, results/rows_per_rank.png and
results/run_info.txt. Rows per rank come from /steps/rank_rows [S, L, P] (deterministic: they do
not depend on the machine); step times (/steps/time_step, max over ranks) do, so points are run
interleaved `--repeats` times and the median over repeats of each run's median step is reported.
"""
import argparse
import csv
import os
import subprocess
import sys
import time

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tools"))

# (workload, ranks, r, rebalance_every)
POINTS = [("skewed", 2, r, 20) for r in (0, 2, 4, 8)] + \
         [("skewed", 2, 4, n) for n in (0, 5, 100)] + \
         [("skewed", 4, r, 20) for r in (0, 4, 8)] + \
         [("balanced", 2, r, 20) for r in (0, 2, 4)]
BALANCED = ["--routing.rule=topk", "--routing.k=2", "--routing.capacity_factor=1.25",
            "--routing.eval_capacity_factor=2", "--routing.aux_loss_coef=0.01"]


def name(p):
    w, P, r, n = p
    return f"{w}_P{P}_r{r}_N{n}"


def run(args, p, rep, runs):
    w, P, r, n = p
    out = os.path.join(runs, f"{name(p)}_rep{rep}.h5")
    cmd = ["mpirun", "--bind-to", "none", "-n", str(P)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    if P > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    cmd += [args.moesim, "run", os.path.join(HERE, "skewed.ini"), f"--routing.redundant_experts={r}",
            f"--routing.rebalance_every={n}", f"--training.steps={args.steps}", f"--output.file={out}"]
    if w == "balanced":
        cmd += BALANCED
    if os.path.exists(out):
        os.remove(out)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"run failed: {' '.join(cmd)}\n{res.stdout}\n{res.stderr}")
    chk = subprocess.run([sys.executable, os.path.join(REPO, "tools", "h5check.py"), out],
                         capture_output=True, text=True)
    if chk.returncode != 0:
        sys.exit(f"h5check failed on {out}:\n{chk.stdout}{chk.stderr}")
    return out


def measure(path, skip):
    with h5py.File(path, "r") as f:
        s = f["steps"]
        rows = s["rank_rows"][:].astype(float)  # [S, L, P]
        ratio = rows.max(axis=2) / rows.mean(axis=2)  # [S, L]
        return {"max_over_mean": float(ratio[skip:].mean()),
                "max_over_mean_first": float(ratio[:min(skip, len(ratio))].mean()),
                "step_ms": 1e3 * float(np.median(s["time_step"][skip:])),
                "expert_ms": 1e3 * float(np.median(s["time_expert"][skip:])),
                "final_loss": float(s["loss"][-1]), "loss": s["loss"][:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moesim", default=os.path.join(REPO, "build", "moesim"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--skip", type=int, default=20, help="steps before the first rebalance (not averaged)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from results/results.csv")
    ap.add_argument("--timing-pairs", type=int, default=0,
                    help="only: K side-by-side pairs r = 0 / r = 4 (skewed, 2 ranks) -> results/timing.csv")
    args = ap.parse_args()
    results = os.path.join(HERE, "results")
    if args.timing_pairs:
        timing(args, results)
        return
    if args.plot_only:
        with open(os.path.join(results, "results.csv")) as f:
            rows = [{**r, "ranks": int(r["ranks"]), "redundant_experts": int(r["redundant_experts"]),
                     "rebalance_every": int(r["rebalance_every"])} for r in csv.DictReader(f)]
        plot(rows, results)
        return
    runs = os.path.join(results, "runs")
    os.makedirs(runs, exist_ok=True)
    load_before = open("/proc/loadavg").read().split()[:3]
    t0 = time.time()
    data = {}
    for rep in range(args.repeats):  # interleaved: every point once per repeat
        for p in POINTS:
            data.setdefault(p, []).append(measure(run(args, p, rep, runs), args.skip))
            print(f"rep {rep} {name(p):28s} max/mean {data[p][-1]['max_over_mean']:.3f} "
                  f"step {data[p][-1]['step_ms']:.1f} ms", flush=True)
    load_after = open("/proc/loadavg").read().split()[:3]
    rows = []
    for p in POINTS:
        w, P, r, n = p
        ms = data[p]
        base = data[(w, P, 0, 20)][0]["loss"]
        rel = float(np.max(np.abs(ms[0]["loss"] - base) / np.abs(base)))
        rows.append({"workload": w, "ranks": P, "redundant_experts": r, "rebalance_every": n,
                     "rows_max_over_mean": f"{ms[0]['max_over_mean']:.4f}",
                     "rows_max_over_mean_first_window": f"{ms[0]['max_over_mean_first']:.4f}",
                     "step_ms_median": f"{np.median([m['step_ms'] for m in ms]):.2f}",
                     "expert_ms_median": f"{np.median([m['expert_ms'] for m in ms]):.3f}",
                     "final_loss": f"{ms[0]['final_loss']:.6f}",
                     "max_rel_loss_diff_vs_r0": f"{rel:.2e}"})
    with open(os.path.join(results, "results.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    with open(os.path.join(results, "run_info.txt"), "w") as f:
        f.write(f"command: {' '.join(sys.argv)}\nrepeats: {args.repeats}, steps: {args.steps}\n"
                f"wall: {time.time() - t0:.0f} s\nload average before: {' '.join(load_before)}, "
                f"after: {' '.join(load_after)} (nproc {os.cpu_count()})\n")
    plot(rows, results)
    for r in rows:
        print(",".join(str(v) for v in r.values()))


def timing(args, results):
    """Step and expert times of r = 0 and r = 4 run alternately (same load for both), with the
    ratio of each adjacent pair: the only honest timing on a shared machine."""
    runs = os.path.join(results, "runs")
    os.makedirs(runs, exist_ok=True)
    load_before = open("/proc/loadavg").read().split()[:3]
    out = []
    for i in range(args.timing_pairs):
        m = {r: measure(run(args, ("skewed", 2, r, 20), i, runs), args.skip) for r in (0, 4)}
        out.append({"pair": i, "step_ms_r0": f"{m[0]['step_ms']:.2f}", "step_ms_r4": f"{m[4]['step_ms']:.2f}",
                    "step_ratio": f"{m[4]['step_ms'] / m[0]['step_ms']:.3f}",
                    "expert_ms_r0": f"{m[0]['expert_ms']:.3f}", "expert_ms_r4": f"{m[4]['expert_ms']:.3f}",
                    "expert_ratio": f"{m[4]['expert_ms'] / m[0]['expert_ms']:.3f}"})
        print(out[-1], flush=True)
    load_after = open("/proc/loadavg").read().split()[:3]
    with open(os.path.join(results, "timing.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(out[0]))
        wr.writeheader()
        wr.writerows(out)
        f.write(f"# {' '.join(sys.argv)}; steps {args.steps}; load average before "
                f"{' '.join(load_before)}, after {' '.join(load_after)} (nproc {os.cpu_count()})\n")
    for k in ("step_ratio", "expert_ratio"):
        print(k, "median over pairs:", np.median([float(o[k]) for o in out]))


def plot(rows, results):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import plotting
    except ImportError:
        print("matplotlib missing: no figure (results.csv has every number)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (w, P, marker) in [("skewed", 2, "o"), ("skewed", 4, "s"), ("balanced", 2, "^")]:
        pts = [r for r in rows if r["workload"] == w and r["ranks"] == P and r["rebalance_every"] == 20]
        x = [r["redundant_experts"] for r in pts]
        axes[0].plot(x, [float(r["rows_max_over_mean"]) for r in pts], marker=marker, label=f"{w}, P={P}")
        axes[1].plot(x, [float(r["step_ms_median"]) for r in pts], marker=marker, label=f"{w}, P={P}")
    axes[0].axhline(1.0, color="0.6", lw=0.8, ls="--")
    axes[0].set_xlabel("redundant experts r (rebalance every 20 steps)")
    axes[0].set_ylabel("rows per rank: max / mean (mean over steps 20..)")
    axes[1].set_xlabel("redundant experts r")
    axes[1].set_ylabel("median step time [ms] (loaded 2-core machine)")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("Redundant experts (EPLB), 8 experts. skewed: Switch top-1, dropless, no balance loss; "
                 "balanced: top-2, cf 1.25, aux 0.01", fontsize=9)
    fig.tight_layout()
    plotting.save(fig, os.path.join(results, "rows_per_rank.png"),
                  plotting.provenance(sweep="expert_replication"), title="EPLB rows per rank")


if __name__ == "__main__":
    main()
