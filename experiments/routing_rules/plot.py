#!/usr/bin/python3
"""Aggregate and plot the routing-rule comparison (experiments/routing_rules).

    /usr/bin/python3 experiments/routing_rules/plot.py [RESULTS_DIR]

Reads RESULTS_DIR/runs/<variant>_s<seed>.h5 (default: results/ next to this script) and writes
  runs.csv      one row per run
  summary.csv   one row per variant: mean, sample std, min and max over the seeds
  summary.md    the Markdown tables pasted into README.md
  accuracy.png, drop_rate.png, load_imbalance.png, specialization.png, step_time.png,
  learning_curves.png, cluster_expert.png
The variant is the file name without _s<seed>; rule, k, capacity factors and seed are read
from the run's own `config` attribute and checked against it.
"""
import configparser
import csv
import glob
import math
import os
import re
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
        _PROV.update(plotting.provenance(sweep="experiments/routing_rules"))
    return _PROV

# Display order and labels (run.sh's VARIANTS).
ORDER = ["dense", "topk", "topk_renorm", "topk_noaux", "topk_bias", "noisy_topk", "switch", "gshard",
         "expert_choice", "expert_choice_ev125", "expert_choice_cf2", "hash", "base",
         "topk_sigmoid_bias", "topk_shared", "topk_aux_batch"]
LABEL = {
    "dense": "dense (all 8)",
    "topk": "top-2",
    "topk_renorm": "top-2 renorm",
    "topk_noaux": "top-2, no aux",
    "topk_bias": "top-2 + bias (no aux)",
    "noisy_topk": "noisy top-2",
    "switch": "switch (top-1)",
    "gshard": "gshard (top-2 rand.)",
    "expert_choice": "expert choice cf1.25",
    "expert_choice_ev125": "expert choice cf1.25, eval 1.25",
    "expert_choice_cf2": "expert choice cf2",
    "hash": "hash",
    "base": "base (balanced, no aux)",
    "topk_sigmoid_bias": "top-2 sigmoid + bias",
    "topk_shared": "top-2 + 1 shared",
    "topk_aux_batch": "top-2, batch aux",
}
LAST = 50  # "end of training" window for the per-step router losses and imbalance
ROUTER_LOSSES = ("aux_loss", "aux_gshard_loss", "importance_loss", "load_loss", "z_loss")


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def read_run(path):
    m = re.fullmatch(r"(.+)_s(\d+)\.h5", os.path.basename(path))
    if not m:
        raise SystemExit(f"{path}: expected <variant>_s<seed>.h5")
    variant = m.group(1)
    with h5py.File(path, "r") as f:
        if int(f.attrs["complete"]) != 1:
            raise SystemExit(f"{path}: run not complete")
        cfg = configparser.ConfigParser()
        cfg.read_string(text(f.attrs["config"]))
        r, tr, d = cfg["routing"], cfg["training"], cfg["data"]
        seed = int(tr["seed"])
        if seed != int(m.group(2)):
            raise SystemExit(f"{path}: file name says seed {m.group(2)}, config says {seed}")
        expected_rule = {"topk_renorm": "topk", "topk_noaux": "topk", "topk_bias": "topk",
                         "topk_sigmoid_bias": "topk", "topk_shared": "topk", "topk_aux_batch": "topk",
                         "expert_choice_cf2": "expert_choice",
                         "expert_choice_ev125": "expert_choice"}.get(variant, variant)
        if r["rule"] != expected_rule:
            raise SystemExit(f"{path}: variant {variant} but routing.rule = {r['rule']}")
        st, ev, sm = f["steps"], f["eval"], f["summary"].attrs
        E = int(r["num_experts"])
        tokens = int(d["tokens_per_step"])
        eval_tokens = int(d["eval_tokens"])
        kept = st["expert_kept"][:]          # [S, L, E]
        table = ev["cluster_expert"][:]      # [n, L, K, E] first choices of held-out tokens
        first_load = table[-1].sum(axis=1)   # [L, E]
        row = {
            "variant": variant,
            "rule": r["rule"],
            "k": int(r["k"]),
            "renormalize": r["renormalize"],
            "cf": r["capacity_factor"],
            "eval_cf": r["eval_capacity_factor"],
            "seed": seed,
            "ranks": int(f.attrs["ranks"]),
            "steps": int(st["step"].shape[0]),
            "git_commit": text(f.attrs["git_commit"]),
            "eval_acc": float(ev["accuracy"][-1]),
            "eval_f1": float(ev["macro_f1"][-1]),
            "eval_loss": float(ev["loss"][-1]),
            "eval_acc_best": float(np.max(ev["accuracy"][:])),
            "train_task_loss_last": float(np.mean(st["task_loss"][-LAST:])),
            "train_drop": float(np.mean(st["dropped_fraction"][:])),
            f"train_drop_last{LAST}": float(np.mean(st["dropped_fraction"][-LAST:])),
            "eval_drop": float(ev["dropped_fraction"][-1]),
            # Held-out tokens that got no expert at all (only expert_choice can leave a token
            # out; dropped choices of the other rules still count as a first choice here).
            "eval_unrouted": 1.0 - float(table[-1].sum()) / (eval_tokens * table.shape[1]),
            "eval_unrouted_step0": 1.0 - float(table[0].sum()) / (eval_tokens * table.shape[1]),
            # Expert applications per token actually computed in training (kept assignments).
            "experts_per_token": float(kept.sum(axis=2).mean()) / tokens,
            "load_imbalance": float(np.mean(st["load_imbalance"][:])),
            f"load_imbalance_last{LAST}": float(np.mean(st["load_imbalance"][-LAST:])),
            # max/mean of the held-out tokens' first choices per expert (the router's own
            # preference; dense and expert_choice are balanced by construction otherwise).
            "eval_first_choice_imbalance": float(np.mean(first_load.max(axis=1) * E / first_load.sum(axis=1))),
            "specialization": float(np.mean(ev["specialization"][-1])),
            "specialization_step0": float(np.mean(ev["specialization"][0])),
            "cluster_expert_mi": float(np.mean(ev["cluster_expert_mi"][-1])),
            "cluster_expert_mi_step0": float(np.mean(ev["cluster_expert_mi"][0])),
            "step_ms": 1e3 * float(np.median(st["time_step"][:])),
            # 10th percentile: the steps least disturbed by other processes on the machine.
            "step_ms_p10": 1e3 * float(np.percentile(st["time_step"][:], 10)),
            "tokens_per_s": float(sm["tokens_per_second"]),
        }
        for name in ROUTER_LOSSES:
            row[f"{name}_last{LAST}"] = float(np.mean(st[name][-LAST:]))
        row["_eval_step"] = ev["step"][:]
        row["_eval_acc"] = ev["accuracy"][:]
        row["_task_loss"] = st["task_loss"][:]
        row["_loss"] = st["loss"][:]
        row["_unrouted"] = 1.0 - table.sum(axis=(1, 2, 3)) / (eval_tokens * table.shape[1])
        row["_table"] = table[-1, 0]
    return row


def fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    paths = sorted(glob.glob(os.path.join(results, "runs", "*.h5")))
    if not paths:
        raise SystemExit(f"no result files in {results}/runs (run run.sh first)")
    rows = [read_run(p) for p in paths]
    unknown = sorted({r["variant"] for r in rows} - set(ORDER))
    order = [v for v in ORDER if any(r["variant"] == v for r in rows)] + unknown
    rows.sort(key=lambda r: (order.index(r["variant"]), r["seed"]))

    cols = [c for c in rows[0] if not c.startswith("_")]
    with open(os.path.join(results, "runs.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow([fmt(r[c]) for c in cols])

    # expert_choice_ev125 differs from expert_choice only in evaluation: training must be bitwise equal.
    ec = {r["seed"]: r for r in rows if r["variant"] == "expert_choice"}
    for r in rows:
        if r["variant"] == "expert_choice_ev125" and r["seed"] in ec and not np.array_equal(r["_loss"], ec[r["seed"]]["_loss"]):
            print(f"WARNING: expert_choice_ev125 seed {r['seed']}: training loss differs from expert_choice", file=sys.stderr)

    metrics = [c for c in cols if isinstance(rows[0][c], float)]
    groups = {v: [r for r in rows if r["variant"] == v] for v in order}
    summary = []
    for v, rs in groups.items():
        s = {"variant": v, "rule": rs[0]["rule"], "k": rs[0]["k"], "renormalize": rs[0]["renormalize"],
             "cf": rs[0]["cf"], "eval_cf": rs[0]["eval_cf"], "n_seeds": len(rs),
             "seeds": " ".join(str(r["seed"]) for r in rs)}
        for m in metrics:
            x = np.array([r[m] for r in rs], dtype=float)
            s[m] = float(np.mean(x))
            s[m + "_std"] = float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
            s[m + "_min"] = float(np.min(x))
            s[m + "_max"] = float(np.max(x))
        summary.append(s)

    def pm(s, m, scale=1.0, f="{:.2f}"):
        return (f + " ± " + f).format(s[m] * scale, s[m + "_std"] * scale)

    n = summary[0]["n_seeds"]
    lines = [f"Mean ± sample std over {n} seeds (final evaluation at step {rows[0]['steps']}; per-step values "
             f"averaged over all training steps unless marked 'last {LAST}'):", "",
             "| rule | train / eval cf | eval acc % | eval macro-F1 % | train drop % | experts / token (train) | "
             f"load imbalance (max/mean) | aux loss (last {LAST}) | specialisation | MI (nats) | step ms (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {LABEL.get(s['variant'], s['variant'])} | {s['cf']} / {s['eval_cf']} | {pm(s, 'eval_acc', 100)} | "
            f"{pm(s, 'eval_f1', 100)} | {pm(s, 'train_drop', 100)} | {s['experts_per_token']:.2f} | "
            f"{pm(s, 'load_imbalance', 1, '{:.3f}')} | {pm(s, f'aux_loss_last{LAST}', 1, '{:.3f}')} | "
            f"{pm(s, 'specialization', 1, '{:.3f}')} | {pm(s, 'cluster_expert_mi', 1, '{:.3f}')} | "
            f"{pm(s, 'step_ms', 1, '{:.2f}')} |")
    lines += ["", f"Router losses (value before its coefficient, mean of the last {LAST} steps; the one each "
              "variant trains with is in bold), the router's own first-choice imbalance on held-out tokens, "
              "and specialisation / MI at step 0 (before training):", "",
              "| rule | aux (Switch) | aux_gshard | importance CV² | load CV² | z | eval first-choice imbalance | "
              "spec. step 0 | MI step 0 | eval drop % | eval unrouted % | step ms p10 |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    trained = {"aux_loss": {"dense", "topk", "topk_renorm", "switch", "expert_choice", "expert_choice_ev125",
                            "expert_choice_cf2", "topk_shared", "topk_aux_batch"},
               "aux_gshard_loss": {"gshard"}, "importance_loss": {"noisy_topk"}, "load_loss": {"noisy_topk"}}
    for s in summary:
        cells = []
        for name in ROUTER_LOSSES[:4]:
            c = f"{s[f'{name}_last{LAST}']:.3f}"
            cells.append(f"**{c}**" if s["variant"] in trained.get(name, ()) else c)
        lines.append(
            f"| {LABEL.get(s['variant'], s['variant'])} | " + " | ".join(cells) +
            f" | {s[f'z_loss_last{LAST}']:.2f} | {pm(s, 'eval_first_choice_imbalance', 1, '{:.3f}')} | "
            f"{s['specialization_step0']:.3f} | {s['cluster_expert_mi_step0']:.3f} | "
            f"{100 * s['eval_drop']:.2f} | {pm(s, 'eval_unrouted', 100)} | {s['step_ms_p10']:.2f} |")
    # Paired differences: every run shares its seed's data and initial weights with the top-2
    # run of that seed (step-0 routing is identical), so the per-seed difference is the cleaner
    # comparison.
    if "topk" in groups:
        base = {r["seed"]: r for r in groups["topk"]}
        lines += ["", "Paired difference to plain top-2 (same seed = same data and initial weights), "
                  "mean and min..max over seeds:", "",
                  "| rule | Δ eval acc (points) | min .. max | seeds better / worse |", "|---|---|---|---|"]
        for s in summary:
            v = s["variant"]
            if v == "topk":
                continue
            d = [100 * (r["eval_acc"] - base[r["seed"]]["eval_acc"]) for r in groups[v] if r["seed"] in base]
            if not d:
                continue
            s["delta_acc_vs_topk"] = float(np.mean(d))
            lines.append(f"| {LABEL.get(v, v)} | {np.mean(d):+.2f} | {min(d):+.2f} .. {max(d):+.2f} | "
                         f"{sum(x > 0 for x in d)} / {sum(x < 0 for x in d)} |")
    with open(os.path.join(results, "summary.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    scols = list(dict.fromkeys(c for s in summary for c in s))
    with open(os.path.join(results, "summary.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(scols)
        for s in summary:
            w.writerow([fmt(s.get(c, "")) for c in scols])

    plots(results, order, groups, summary)


def bar(results, fname, order, groups, summary, metric, xlabel, scale=1.0, title=None, xlim=None, ref=None):
    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=100)
    y = np.arange(len(order))[::-1]
    mean = np.array([s[metric] for s in summary]) * scale
    std = np.array([s[metric + "_std"] for s in summary]) * scale
    colors = [COLORS[v] for v in order]
    ax.barh(y, mean, xerr=std, color=colors, alpha=0.8, capsize=3)
    for yi, v in zip(y, order):
        pts = np.array([r[metric] for r in groups[v]]) * scale
        ax.plot(pts, np.full(pts.shape, yi), "k.", ms=4)
    if ref is not None:
        ax.axvline(ref, color="grey", ls=":", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels([LABEL.get(v, v) for v in order], fontsize=8)
    ax.set_xlabel(xlabel)
    if xlim:
        ax.set_xlim(*xlim)
    ax.set_title(title or xlabel, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    plotting.save(fig, os.path.join(results, fname), prov(), title=fname)
    plt.close(fig)


COLORS = {}


def plots(results, order, groups, summary):
    cmap = plt.get_cmap("tab20")
    for i, v in enumerate(order):
        COLORS[v] = cmap(i % 20)
    n = summary[0]["n_seeds"]
    note = f"mean ± std over {n} seeds (dots: seeds)"
    lo = min(min(r["eval_acc"] for r in groups[v]) for v in order) * 100
    bar(results, "accuracy.png", order, groups, summary, "eval_acc", "held-out accuracy (%)", 100,
        f"final held-out accuracy, {note}", xlim=(math.floor(lo / 2) * 2, 100))
    bar(results, "drop_rate.png", order, groups, summary, "train_drop", "dropped assignments in training (%)", 100,
        f"training drop rate, {note}\n(expert choice never drops; it may leave tokens with no expert)")
    bar(results, "load_imbalance.png", order, groups, summary, "load_imbalance",
        "load imbalance max/mean (pre-capacity, mean over steps)", 1.0, f"load imbalance, {note}", ref=1.0)
    bar(results, "step_time.png", order, groups, summary, "step_ms", "median step time (ms)", 1.0,
        f"median step time (noisy, shared 2-core machine), {note}")

    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.6), dpi=100, sharey=True)
    y = np.arange(len(order))[::-1]
    for ax, m, lab in ((axes[0], "specialization", "specialisation (share at top expert)"),
                       (axes[1], "cluster_expert_mi", "MI(cluster; expert) (nats)")):
        mean = np.array([s[m] for s in summary])
        std = np.array([s[m + "_std"] for s in summary])
        ax.barh(y, mean, xerr=std, color=[COLORS[v] for v in order], alpha=0.8, capsize=3)
        ax.plot([s[m + "_step0"] for s in summary], y, "k|", ms=10, label="step 0")
        for yi, v in zip(y, order):
            ax.plot([r[m] for r in groups[v]], [yi] * len(groups[v]), "k.", ms=4)
        ax.set_xlabel(lab)
        ax.grid(axis="x", alpha=0.3)
    axes[0].axvline(1.0 / 8, color="grey", ls=":", lw=1)
    axes[1].axvline(math.log(8), color="grey", ls=":", lw=1)
    axes[1].legend(fontsize=7, loc="lower right")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([LABEL.get(v, v) for v in order], fontsize=8)
    fig.suptitle("router vs cluster at the end (held-out first choices); | = step 0; dotted: 1/8 and ln 8",
                 fontsize=9)
    fig.tight_layout()
    plotting.save(fig, os.path.join(results, "specialization.png"), prov(), title="specialization.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), dpi=85)
    styles = ["-", "--", "-.", ":"]
    for i, v in enumerate(order):
        rs = groups[v]
        st = rs[0]["_eval_step"]
        acc = np.mean([r["_eval_acc"] for r in rs], axis=0) * 100
        loss = np.mean([r["_task_loss"] for r in rs], axis=0)
        w = 10
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        kw = dict(color=COLORS[v], ls=styles[i % len(styles)], lw=1.3, label=LABEL.get(v, v))
        axes[0].plot(st, acc, **kw)
        axes[1].plot(np.arange(w - 1, len(loss)), smooth, **kw)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("held-out accuracy (%)")
    axes[0].set_ylim(50, 100)
    axes[0].grid(alpha=0.3)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("training task loss (10-step mean)")
    axes[1].set_yscale("log")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"learning curves, mean over {n} seeds", fontsize=9)
    fig.tight_layout()
    plotting.save(fig, os.path.join(results, "learning_curves.png"), prov(), title="learning_curves.png")
    plt.close(fig)

    # Cluster x expert tables of the first seed (held-out first choices, last evaluation).
    cols = 4
    rows_n = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(2.2 * cols, 2.2 * rows_n), dpi=100)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, v in zip(np.ravel(axes), order):
        t = groups[v][0]["_table"].astype(float)
        t = t / np.maximum(t.sum(axis=1, keepdims=True), 1)
        ax.axis("on")
        ax.imshow(t, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{LABEL.get(v, v)}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"share of each cluster (rows) per first-choice expert (columns), seed {groups[order[0]][0]['seed']}",
                 fontsize=8)
    fig.tight_layout()
    plotting.save(fig, os.path.join(results, "cluster_expert.png"), prov(), title="cluster_expert.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
