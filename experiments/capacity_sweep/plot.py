#!/usr/bin/python3
"""Aggregate and plot the capacity-factor sweep (experiments/capacity_sweep).

    /usr/bin/python3 experiments/capacity_sweep/plot.py [RESULTS_DIR]

Reads RESULTS_DIR/runs/*.h5 (default: results/ next to this script) and writes
  runs.csv      one row per run
  summary.csv   one row per (rule, cf, dispatch): mean and sample std over the seeds
  summary.md    the same as a Markdown table (pasted into README.md)
  drop_rate.png, accuracy.png, step_time.png
Each point is identified from the run's own `config` attribute, not from the file name.
"""
import configparser
import csv
import glob
import math
import os
import sys

import h5py
import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import plotting  # noqa: E402  (provenance footer + PNG metadata, plain tick labels)

_PROV = {}


def prov():
    """Provenance of this script's figures (commit, date, study, command), computed once."""
    if not _PROV:
        _PROV.update(plotting.provenance(sweep="experiments/capacity_sweep"))
    return _PROV

PHASES = ("gate", "dispatch", "expert", "combine", "backward", "sync")
DROPLESS_X = 2.5  # where the dropless reference sits on the cf axis of the figures
RULE_LABEL = {"switch": "top-1 (switch)", "topk": "top-2 (topk)"}
EARLY_STEP = 50


def read_run(path):
    with h5py.File(path, "r") as f:
        if int(f.attrs["complete"]) != 1:
            raise SystemExit(f"{path}: run not complete")
        cfg = configparser.ConfigParser()
        cfg.read_string(f.attrs["config"].decode() if isinstance(f.attrs["config"], bytes) else f.attrs["config"])
        r = cfg["routing"]
        dropless = r["dropless"] == "true" or float(r["capacity_factor"]) == 0
        st, ev, sm = f["steps"], f["eval"], f["summary"].attrs
        eval_step = ev["step"][:]
        early = np.flatnonzero(eval_step == EARLY_STEP)
        row = {
            "file": os.path.basename(path),
            "rule": r["rule"],
            "k": int(r["k"]),
            "cf": math.inf if dropless else float(r["capacity_factor"]),
            "eval_cf": float(r["eval_capacity_factor"]),
            "dispatch": r["dispatch"],
            "seed": int(cfg["training"]["seed"]),
            "ranks": int(f.attrs["ranks"]),
            "steps": int(st["step"].shape[0]),
            "train_drop": float(np.mean(st["dropped_fraction"][:])),
            "train_task_loss_last20": float(np.mean(st["task_loss"][-20:])),
            "eval_acc": float(ev["accuracy"][-1]),
            f"eval_acc_step{EARLY_STEP}": float(ev["accuracy"][early[0]]) if early.size else math.nan,
            "eval_f1": float(ev["macro_f1"][-1]),
            "eval_loss": float(ev["loss"][-1]),
            "eval_drop": float(ev["dropped_fraction"][-1]),
            "load_imbalance": float(np.mean(st["load_imbalance"][:])),
            "step_ms": 1e3 * float(np.median(st["time_step"][:])),
            # 10th percentile of the step times: the steps least disturbed by other processes.
            "step_ms_p10": 1e3 * float(np.percentile(st["time_step"][:], 10)),
            "bytes_per_step_MB": float(np.mean(st["bytes_alltoall"][:])) / 1e6,
            "tokens_per_s": float(sm["tokens_per_second"]),
            "wall_s": float(sm["wall_seconds"]) if "wall_seconds" in sm else math.nan,
            "summary_drop": float(sm["dropped_fraction_mean"]),
            "summary_step_ms": 1e3 * float(sm["step_time_median"]),
        }
        for p in PHASES:
            row[f"{p}_ms"] = 1e3 * float(np.median(st[f"time_{p}"][:]))
        row["_loss"] = st["loss"][:]  # for the padded == alltoallv check
    return row


def cf_text(cf):
    return "dropless" if math.isinf(cf) else f"{cf:g}"


def cf_x(cf):
    return DROPLESS_X if math.isinf(cf) else cf


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    paths = sorted(glob.glob(os.path.join(results, "runs", "*.h5")))
    if not paths:
        raise SystemExit(f"no result files in {results}/runs (run run.sh first)")
    rows = [read_run(p) for p in paths]

    # The capacity-padded all-to-all must give bitwise the same run as alltoallv.
    base = {(r["rule"], r["cf"], r["seed"]): r for r in rows if r["dispatch"] == "alltoallv"}
    for r in rows:
        if r["dispatch"] != "alltoallv":
            twin = base.get((r["rule"], r["cf"], r["seed"]))
            r["same_loss_as_alltoallv"] = "" if twin is None else int(np.array_equal(twin["_loss"], r["_loss"]))
            if twin is not None and not np.array_equal(twin["_loss"], r["_loss"]):
                print(f"WARNING: {r['file']} loss curve differs from {twin['file']}", file=sys.stderr)
        else:
            r["same_loss_as_alltoallv"] = ""

    # Paired with the same seed's dropless run (same data, same init): differences are far less
    # noisy than the absolute numbers, which vary with the seed.
    ref = {(r["rule"], r["seed"]): r for r in rows if r["dispatch"] == "alltoallv" and math.isinf(r["cf"])}
    for r in rows:
        d = ref.get((r["rule"], r["seed"]))
        r["d_eval_acc_vs_dropless"] = r["eval_acc"] - d["eval_acc"] if d else math.nan
        r["d_eval_loss_vs_dropless"] = r["eval_loss"] - d["eval_loss"] if d else math.nan
        r["d_acc_step50_vs_dropless"] = (r[f"eval_acc_step{EARLY_STEP}"] - d[f"eval_acc_step{EARLY_STEP}"]) if d else math.nan

    cols = [c for c in rows[0] if not c.startswith("_")] + ["same_loss_as_alltoallv"]
    cols = list(dict.fromkeys(cols))
    rows.sort(key=lambda r: (r["rule"], r["dispatch"], r["cf"], r["seed"]))
    with open(os.path.join(results, "runs.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow([cf_text(r[c]) if c == "cf" else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]) for c in cols])

    # Aggregate over seeds.
    metrics = ["train_drop", "train_task_loss_last20", "eval_acc", f"eval_acc_step{EARLY_STEP}", "eval_f1", "eval_loss",
               "eval_drop", "load_imbalance", "d_eval_acc_vs_dropless", "d_eval_loss_vs_dropless",
               "d_acc_step50_vs_dropless", "step_ms", "step_ms_p10"] + [f"{p}_ms" for p in PHASES] + ["bytes_per_step_MB", "tokens_per_s"]
    groups = {}
    for r in rows:
        groups.setdefault((r["rule"], r["dispatch"], r["cf"]), []).append(r)
    summary = []
    for (rule, dispatch, cf), rs in sorted(groups.items()):
        s = {"rule": rule, "k": rs[0]["k"], "dispatch": dispatch, "cf": cf, "n_seeds": len(rs)}
        for m in metrics:
            v = np.array([r[m] for r in rs], dtype=float)
            s[m] = float(np.mean(v))
            s[m + "_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        summary.append(s)
    scols = list(summary[0].keys())
    with open(os.path.join(results, "summary.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(scols)
        for s in summary:
            w.writerow([cf_text(s[c]) if c == "cf" else (f"{s[c]:.6g}" if isinstance(s[c], float) else s[c]) for c in scols])

    def pm(s, m, scale=1.0, fmt="{:.2f}"):
        return (fmt + " ± " + fmt.replace("+", "")).format(s[m] * scale, s[m + "_std"] * scale)

    lines = ["Quality (eval at cf = 2.0 on 4096 held-out tokens after 200 steps; Δ = minus the same seed's dropless run):", "",
             "| rule | cf (train) | capacity / group | seeds | train drop % | eval acc % | Δ acc (pts) | eval acc % at step 50 | "
             "Δ acc step 50 (pts) | eval loss | Δ eval loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        if s["dispatch"] != "alltoallv":
            continue
        cap = "–" if math.isinf(s["cf"]) else str(math.ceil(s["k"] * 128 * s["cf"] / 8 - 1e-9))
        lines.append(f"| {RULE_LABEL.get(s['rule'], s['rule'])} | {cf_text(s['cf'])} | {cap} | {s['n_seeds']} | "
                     f"{pm(s, 'train_drop', 100, '{:.1f}')} | {pm(s, 'eval_acc', 100)} | "
                     f"{pm(s, 'd_eval_acc_vs_dropless', 100, '{:+.2f}')} | {pm(s, f'eval_acc_step{EARLY_STEP}', 100)} | "
                     f"{pm(s, 'd_acc_step50_vs_dropless', 100, '{:+.2f}')} | {pm(s, 'eval_loss', 1, '{:.3f}')} | "
                     f"{pm(s, 'd_eval_loss_vs_dropless', 1, '{:+.4f}')} |")
    lines += ["", "Cost (per training step; times = median over the 200 steps of the max over ranks, then mean ± std over "
              "seeds; p10 = 10th percentile of the step times, the least disturbed steps):", "",
              "| rule | cf (train) | step ms (median) | step ms (p10) | expert fwd ms | dispatch+combine ms | "
              "backward ms | all-to-all MB/step | load max/mean |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        if s["dispatch"] != "alltoallv":
            continue
        dc = s["dispatch_ms"] + s["combine_ms"]
        lines.append(f"| {RULE_LABEL.get(s['rule'], s['rule'])} | {cf_text(s['cf'])} | "
                     f"{pm(s, 'step_ms', 1, '{:.1f}')} | {pm(s, 'step_ms_p10', 1, '{:.1f}')} | {pm(s, 'expert_ms', 1, '{:.2f}')} | {dc:.2f} | "
                     f"{pm(s, 'backward_ms', 1, '{:.1f}')} | {s['bytes_per_step_MB']:.2f} | {s['load_imbalance']:.2f} |")
    padded = [s for s in summary if s["dispatch"] != "alltoallv"]
    if padded:
        lines += ["", "Capacity-padded `MPI_Alltoall` (`routing.dispatch = alltoall_padded`), same runs (bitwise the same "
                  "loss curve: " + ("yes" if all(r["same_loss_as_alltoallv"] == 1 for r in rows if r["dispatch"] != "alltoallv")
                                    else "NO") + "):", "",
                  "| rule | cf (train) | seeds | step ms (median) | step ms (p10) | expert fwd ms | dispatch+combine ms | "
                  "all-to-all MB/step | alltoallv MB/step |", "|---|---|---|---|---|---|---|---|---|"]
        for s in padded:
            v = next((t for t in summary if t["dispatch"] == "alltoallv" and t["rule"] == s["rule"] and t["cf"] == s["cf"]), None)
            lines.append(f"| {RULE_LABEL.get(s['rule'], s['rule'])} | {cf_text(s['cf'])} | {s['n_seeds']} | "
                         f"{s['step_ms']:.1f} | {s['step_ms_p10']:.1f} | {s['expert_ms']:.2f} | "
                         f"{s['dispatch_ms'] + s['combine_ms']:.2f} | "
                         f"{s['bytes_per_step_MB']:.2f} | {v['bytes_per_step_MB'] if v else float('nan'):.2f} |")
    with open(os.path.join(results, "summary.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    # ---- figures ----
    rules = sorted({s["rule"] for s in summary})
    colors = {"switch": "tab:blue", "topk": "tab:orange"}
    ticks = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, DROPLESS_X]
    ticklabels = ["0.5", "0.75", "1", "1.25", "1.5", "2", "dropless"]

    def series(rule, dispatch, m, scale=1.0):
        ss = sorted((s for s in summary if s["rule"] == rule and s["dispatch"] == dispatch), key=lambda s: cf_x(s["cf"]))
        return (np.array([cf_x(s["cf"]) for s in ss]), np.array([s[m] * scale for s in ss]),
                np.array([s[m + "_std"] * scale for s in ss]))

    def decorate(ax, ylabel):
        ax.set_xticks(ticks)
        ax.set_xticklabels(ticklabels)
        ax.set_xlabel("training capacity factor")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.axvline(2.25, color="0.7", lw=0.8, ls=":")

    n = max(s["n_seeds"] for s in summary if s["dispatch"] == "alltoallv")
    note = f"mean ± std over {n} seeds; eval cf = 2.0"

    fig, axs = plt.subplots(1, 2, figsize=(9, 3.6))
    for rule in rules:
        x, y, e = series(rule, "alltoallv", "train_drop", 100)
        axs[0].errorbar(x, y, e, marker="o", capsize=3, color=colors.get(rule), label=RULE_LABEL.get(rule, rule))
        x, y, e = series(rule, "alltoallv", "load_imbalance")
        axs[1].errorbar(x, y, e, marker="o", capsize=3, color=colors.get(rule), label=RULE_LABEL.get(rule, rule))
    decorate(axs[0], "assignments dropped in training (%)")
    decorate(axs[1], "expert load max / mean (before capacity)")
    axs[0].set_title("Drop rate vs capacity factor (mean over 200 steps)", fontsize=9)
    axs[1].set_title("Router balance it trains into (mean over steps and layers)", fontsize=9)
    axs[0].legend(title=note, fontsize=8, title_fontsize=7)
    axs[1].legend(fontsize=8)
    fig.tight_layout()
    plotting.save(fig, os.path.join(results, "drop_rate.png"), prov(), title="drop_rate.png", dpi=90)
    plt.close(fig)

    fig, axs = plt.subplots(1, 2, figsize=(9, 3.6))
    for rule in rules:
        c, lab = colors.get(rule), RULE_LABEL.get(rule, rule)
        x, y, e = series(rule, "alltoallv", "eval_acc", 100)
        axs[0].errorbar(x, y, e, marker="o", capsize=3, color=c, label=f"{lab}, final (step 200)")
        x, y, e = series(rule, "alltoallv", f"eval_acc_step{EARLY_STEP}", 100)
        axs[0].errorbar(x, y, e, marker="s", ls="--", capsize=3, color=c, alpha=0.6, label=f"{lab}, step {EARLY_STEP}")
        x, y, e = series(rule, "alltoallv", "d_eval_loss_vs_dropless")
        axs[1].errorbar(x, y, e, marker="o", capsize=3, color=c, label=lab)
    decorate(axs[0], "held-out accuracy (%)")
    decorate(axs[1], "final eval loss minus dropless (same seed)")
    axs[1].axhline(0, color="k", lw=0.8)
    axs[0].set_title("Eval accuracy vs training capacity factor", fontsize=10)
    axs[1].set_title("Eval loss, paired with the dropless run", fontsize=10)
    lo = min(a.get_ylim()[0] for a in axs[:1])
    axs[0].set_ylim(lo, lo + 1.45 * (axs[0].get_ylim()[1] - lo))  # headroom for the legend
    axs[0].legend(fontsize=7, title=note, title_fontsize=7, loc="upper center", ncol=2)
    axs[1].legend(fontsize=7, title=note, title_fontsize=7)
    fig.tight_layout()
    plotting.save(fig, os.path.join(results, "accuracy.png"), prov(), title="accuracy.png", dpi=90)
    plt.close(fig)

    fig, axs = plt.subplots(1, 3, figsize=(13, 3.7))
    for rule in rules:
        c, lab = colors.get(rule), RULE_LABEL.get(rule, rule)
        x, y, e = series(rule, "alltoallv", "step_ms")
        axs[0].errorbar(x, y, e, marker="o", capsize=3, color=c, label=f"{lab}: median")
        x, y, e = series(rule, "alltoallv", "step_ms_p10")
        axs[0].errorbar(x, y, e, marker="s", ls="--", capsize=3, color=c, alpha=0.6, label=f"{lab}: p10")
        x, y, e = series(rule, "alltoallv", "expert_ms")
        axs[1].errorbar(x, y, e, marker="o", capsize=3, color=c, label=f"{lab}: expert fwd")
        x1, y1, _ = series(rule, "alltoallv", "dispatch_ms")
        _, y2, _ = series(rule, "alltoallv", "combine_ms")
        axs[1].plot(x1, y1 + y2, marker="v", ls=":", color=c, label=f"{lab}: dispatch+combine")
        x, y, _ = series(rule, "alltoallv", "bytes_per_step_MB")
        axs[2].plot(x, y, marker="o", color=c, label=f"{lab}: alltoallv")
        xp, yp, _ = series(rule, "alltoall_padded", "bytes_per_step_MB")
        if len(xp):
            axs[2].plot(xp, yp, marker="s", ls="--", color=c, label=f"{lab}: alltoall_padded")
    decorate(axs[0], "time per training step (ms)")
    decorate(axs[1], "median time per step (ms)")
    decorate(axs[2], "all-to-all bytes per step (MB)")
    axs[0].set_title(f"Step time (max over ranks), mean ± std of {n} seeds\nshared 2-core host: noisy", fontsize=9)
    axs[1].set_title("Phases (forward): expert FFNs, token exchange", fontsize=9)
    axs[2].set_title("All-to-all volume (fwd + bwd, all ranks)", fontsize=9)
    for ax in axs:
        ax.legend(fontsize=7)
    axs[1].set_yscale("log")
    fig.tight_layout()
    plotting.save(fig, os.path.join(results, "step_time.png"), prov(), title="step_time.png", dpi=90)
    plt.close(fig)
    print(f"wrote {results}/runs.csv, summary.csv, summary.md, drop_rate.png, accuracy.png, step_time.png")


if __name__ == "__main__":
    main()
