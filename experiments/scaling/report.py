#!/usr/bin/python3
"""Figures and summary tables of experiments/scaling from the aggregated CSVs (tools/aggregate.py).

    report.py RESULTS_DIR     reads weak.csv, strong.csv, experts.csv, capacity.csv (those present);
                              writes weak_scaling.png, strong_scaling.png and SUMMARY.md

Scaling figures: left, the median step time split into phases (median over steps of each phase's
time, max over ranks; the phases need not add up exactly to the step median); right, weak-scaling
efficiency T(1)/T(P) or strong-scaling speedup T(1)/T(P) with the ideal line. Oversubscribed points
(more ranks than CPUs: the `oversubscribed` column) are hatched / hollow and labelled: their times
measure time-sharing of cores, not scaling. SUMMARY.md: one compact table per study, with the
same label.
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import plotting  # noqa: E402  (provenance footer + PNG metadata, plain tick labels)

_PROV = {}


def prov():
    """Provenance of this script's figures (commit, date, study, command), computed once."""
    if not _PROV:
        commits = []  # the commits that produced the data: git_commit of the aggregated result files
        for name in ["weak.csv", "strong.csv", "experts.csv", "capacity.csv"]:
            path = os.path.join(sys.argv[1], name) if len(sys.argv) > 1 else ""
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    commits += [r.get("git_commit", "") for r in csv.DictReader(f)]
        _PROV.update(plotting.provenance(sweep="experiments/scaling", data_commits=commits))
    return _PROV

PHASES = ["gate", "dispatch", "expert", "combine", "backward", "sync"]


def load(path):
    with open(path, encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["ranks"]))
    if not rows or rows[0]["ranks"] != "1":
        raise SystemExit(f"plot_scaling.py: {path} needs a 1-rank point as the baseline")
    return rows


def figure(rows, study, out):
    ranks = [int(r["ranks"]) for r in rows]
    t = [float(r["step_time_median_s"]) for r in rows]
    over = [r["oversubscribed"] == "1" for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    xs = range(len(ranks))
    bottom = [0.0] * len(rows)
    for i, p in enumerate(PHASES):
        h = [1e3 * float(r[f"time_{p}_median_s"]) for r in rows]
        a.bar(xs, h, bottom=bottom, color=f"C{i}", label=p,
              hatch=["//" if o else "" for o in over], edgecolor="white")
        bottom = [x + y for x, y in zip(bottom, h)]
    a.plot(xs, [1e3 * v for v in t], "k_", markersize=28, mew=2, label="step (median)")
    labels = []
    for r, o in zip(rows, over):
        extra = f"\nE={r['routing.num_experts']}" if "routing.num_experts" in r else ""
        labels.append(f"P={r['ranks']}{extra}" + ("\n(oversub.)" if o else ""))
    a.set_xticks(list(xs))
    a.set_xticklabels(labels, fontsize=8)
    a.set_ylabel("time per step [ms]")
    a.set_title("median phase times (max over ranks)", fontsize=10)
    a.legend(fontsize=7, ncol=2)
    if study == "weak":
        y, ideal, name = [t[0] / v for v in t], [1.0] * len(t), "weak-scaling efficiency T(1)/T(P)"
    else:
        y, ideal, name = [t[0] / v for v in t], [float(p) for p in ranks], "speedup T(1)/T(P)"
    b.plot(ranks, ideal, "--", color="gray", label="ideal")
    b.plot(ranks, y, "-", color="C0")
    b.scatter([p for p, o in zip(ranks, over) if not o], [v for v, o in zip(y, over) if not o],
              color="C0", zorder=3, label="measured")
    b.scatter([p for p, o in zip(ranks, over) if o], [v for v, o in zip(y, over) if o],
              facecolors="white", edgecolors="C0", zorder=3, label="measured, oversubscribed")
    for p, v in zip(ranks, y):
        b.annotate(f"{v:.2f}", (p, v), textcoords="offset points", xytext=(4, 4), fontsize=8)
    b.set_xscale("log", base=2)
    b.set_xticks(ranks)
    b.set_xticklabels([str(p) for p in ranks])
    b.set_xlabel("MPI ranks P")
    b.set_title(name, fontsize=10)
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    hosts = sorted({f"{r.get('host', '?')}, {r.get('cpus', '?')} CPUs" for r in rows})
    fig.suptitle(f"{study} scaling ({'; '.join(hosts)}; hatched / hollow: more ranks than CPUs, "
                 "oversubscribed)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    plotting.save(fig, out, prov(), title=os.path.basename(out), dpi=80)
    plt.close(fig)
    return out


def read(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ms(r, key="step_time_median_s"):
    return f"{1e3 * float(r[key]):.1f}"


def label(r):
    return f"{r['ranks']} (oversubscribed)" if r["oversubscribed"] == "1" else r["ranks"]


def table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)] + \
           ["| " + " | ".join(row) + " |" for row in rows]


def summary(d):
    out = ["# Scaling studies: summary tables", "",
           "Generated by report.py from the CSVs in this directory. Times are medians over steps "
           "(max over ranks). \"oversubscribed\": more ranks than CPUs, so the ranks time-share cores "
           "and the times say nothing about scaling.", ""]
    for study in ["weak", "strong"]:
        path = os.path.join(d, f"{study}.csv")
        if not os.path.exists(path):
            continue
        rows = load(path)
        t1 = float(rows[0]["step_time_median_s"])
        head = ["ranks P", "experts E", "tokens/step", "step [ms]", "dispatch+combine [ms]", "tokens/s",
                "efficiency T1/TP" if study == "weak" else "speedup T1/TP", "all-to-all MB/step",
                "to other ranks %", "dropped %", "load max/mean", "eval acc."]
        body = []
        for r in rows:
            t = float(r["step_time_median_s"])
            comm = 1e3 * (float(r["time_dispatch_median_s"]) + float(r["time_combine_median_s"]))
            body.append([label(r), r["routing.num_experts"], r["data.tokens_per_step"], ms(r), f"{comm:.1f}",
                         f"{float(r['tokens_per_second']):.0f}", f"{t1 / t:.2f}",
                         f"{float(r['alltoall_bytes_per_step']) / 1e6:.2f}",
                         f"{100 * float(r['remote_token_fraction']):.1f}",
                         f"{100 * float(r['dropped_fraction_mean']):.2f}",
                         f"{float(r['expert_load_imbalance']):.2f}", f"{float(r['final_eval_accuracy']):.4f}"])
        out += [f"## {study} scaling", ""] + table(head, body) + [""]
    path = os.path.join(d, "experts.csv")
    if os.path.exists(path):
        rows = sorted(read(path), key=lambda r: int(r["routing.num_experts"]))
        head = ["experts E", "ranks", "eval acc.", "final loss", "dropped %", "load max/mean", "step [ms]",
                "all-to-all MB/step"]
        body = [[r["routing.num_experts"], label(r), f"{float(r['final_eval_accuracy']):.4f}",
                 f"{float(r['final_loss']):.4f}", f"{100 * float(r['dropped_fraction_mean']):.2f}",
                 f"{float(r['expert_load_imbalance']):.2f}", ms(r),
                 f"{float(r['alltoall_bytes_per_step']) / 1e6:.2f}"] for r in rows]
        out += ["## expert count", ""] + table(head, body) + [""]
    path = os.path.join(d, "capacity.csv")
    if os.path.exists(path):
        rows = sorted(read(path), key=lambda r: (int(r["routing.num_experts"]), float(r["routing.capacity_factor"])))
        head = ["experts E", "capacity factor", "ranks", "eval acc.", "final loss", "dropped %",
                "load max/mean", "step [ms]"]
        body = [[r["routing.num_experts"], r["routing.capacity_factor"], label(r),
                 f"{float(r['final_eval_accuracy']):.4f}", f"{float(r['final_loss']):.4f}",
                 f"{100 * float(r['dropped_fraction_mean']):.2f}", f"{float(r['expert_load_imbalance']):.2f}",
                 ms(r)] for r in rows]
        out += ["## capacity factor", ""] + table(head, body) + [""]
    with open(os.path.join(d, "SUMMARY.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    return os.path.join(d, "SUMMARY.md")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = sys.argv[1]
    for study in ["weak", "strong"]:
        path = os.path.join(d, f"{study}.csv")
        if os.path.exists(path):
            print("wrote", figure(load(path), study, os.path.join(d, f"{study}_scaling.png")))
    print("wrote", summary(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
