#!/usr/bin/python3
"""Aggregate and plot the MoE-vs-dense study (experiments/moe_vs_dense).

    /usr/bin/python3 experiments/moe_vs_dense/plot.py [RESULTS_DIR]

Reads RESULTS_DIR/runs/*.h5 (default: results/ next to this script) and writes
  runs.csv        one row per run
  summary.csv     one row per (model, d_ff, gamma): mean and sample std over the seeds
  summary.md      the tables of README.md
  accuracy.png    learning curves MoE vs dense (gamma = 1) and final accuracy vs expert width
  specialization.png  router specialisation and cluster-expert mutual information over training,
                  with the chance level of an independent routing
  cluster_expert.png  cluster x expert heat maps of the last evaluation (top-1 MoE, F = 8, seed 1,
                  cluster-centre strength beta = 1 and 2)
Each point is identified from the run's own `config` attribute, not from the file name.

Chance level: for a cluster x expert table with the observed margins, routing independent of the
cluster gives (by simulation, multinomial rows with the observed expert shares) the specialisation
and mutual information printed as "chance"; a perfect one-expert-per-cluster router gives
specialisation 1 and MI = ln(min(K, E)).
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
        _PROV.update(plotting.provenance(sweep="experiments/moe_vs_dense"))
    return _PROV

MAIN_F, MAIN_G, MAIN_B = 8, 1.0, 1.0
NULL_SAMPLES = 200


def specialization(t):
    n = t.sum(axis=1)
    ok = n > 0
    return float(np.mean(t.max(axis=1)[ok] / n[ok]))


def coverage2(t):
    """Mean over clusters of the share of its tokens in its 2 most used experts."""
    n = t.sum(axis=1)
    ok = n > 0
    top2 = np.sort(t, axis=1)[:, -2:].sum(axis=1)
    return float(np.mean(top2[ok] / n[ok]))


def mutual_information(t):
    t = t.astype(float)
    n = t.sum()
    pk = t.sum(axis=1, keepdims=True) / n
    pe = t.sum(axis=0, keepdims=True) / n
    p = t / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / (pk * pe)), 0.0)
    return max(float(terms.sum()), 0.0)


def chance(t, rng):
    """Specialisation and MI of tables with t's margins but routing independent of the cluster."""
    n_k = t.sum(axis=1)
    q = t.sum(axis=0) / t.sum()
    spec, mi = [], []
    for _ in range(NULL_SAMPLES):
        s = np.stack([rng.multinomial(int(n), q) for n in n_k])
        spec.append(specialization(s))
        mi.append(mutual_information(s))
    return float(np.mean(spec)), float(np.percentile(spec, 95)), float(np.mean(mi)), float(np.percentile(mi, 95))


def read_run(path, rng):
    with h5py.File(path, "r") as f:
        if int(f.attrs["complete"]) != 1:
            raise SystemExit(f"{path}: run not complete")
        text = f.attrs["config"]
        cfg = configparser.ConfigParser()
        cfg.read_string(text.decode() if isinstance(text, bytes) else text)
        E = int(cfg["routing"]["num_experts"])
        k = int(cfg["routing"]["k"])
        ev, st = f["eval"], f["steps"]
        table = ev["cluster_expert"][-1, 0]  # [K, E] of layer 0 at the last evaluation
        r = {
            "file": os.path.basename(path),
            "model": "dense" if E == 1 else f"moe_top{k}",
            "E": E,
            "k": k,
            "d_ff": int(cfg["model"]["d_ff"]),
            "gamma": float(cfg["data"]["feature_noise"]),
            "beta": float(cfg["data"]["center_strength"]),
            "noise_std": float(cfg["data"]["noise_std"]),
            "seed": int(cfg["training"]["seed"]),
            "steps": int(st["step"].shape[0]),
            "eval_acc": float(ev["accuracy"][-1]),
            "eval_f1": float(ev["macro_f1"][-1]),
            "eval_loss": float(ev["loss"][-1]),
            "eval_acc_best": float(np.max(ev["accuracy"][:])),
            "train_drop": float(np.mean(st["dropped_fraction"][:])),
            "eval_drop": float(ev["dropped_fraction"][-1]),
            # per-token expert multiply-adds (2 matrices d_model x d_ff per chosen expert)
            "expert_macs_per_token": k * 2 * int(cfg["model"]["d_model"]) * int(cfg["model"]["d_ff"]),
            "expert_params": E * (2 * int(cfg["model"]["d_model"]) * int(cfg["model"]["d_ff"])
                                  + int(cfg["model"]["d_ff"]) + int(cfg["model"]["d_model"])),
            "step_ms": 1e3 * float(np.median(st["time_step"][:])),
            "_eval_step": ev["step"][:],
            "_eval_acc": ev["accuracy"][:],
            "_spec": ev["specialization"][:, 0],
            "_mi": ev["cluster_expert_mi"][:, 0],
            "_table": table,
        }
        if E > 1:
            r["spec_final"] = specialization(table)
            r["mi_final"] = mutual_information(table)
            r["cov2_final"] = coverage2(table)
            r["spec_step0"] = float(ev["specialization"][0, 0])
            r["mi_step0"] = float(ev["cluster_expert_mi"][0, 0])
            r["spec_chance"], r["spec_chance_p95"], r["mi_chance"], r["mi_chance_p95"] = chance(table, rng)
            # the program's own numbers must match this script's definitions
            if abs(r["spec_final"] - ev["specialization"][-1, 0]) > 1e-9 or abs(r["mi_final"] - ev["cluster_expert_mi"][-1, 0]) > 1e-9:
                print(f"WARNING: {path}: /eval/specialization or /eval/cluster_expert_mi differ from the table",
                      file=sys.stderr)
        else:
            for m in ("spec_final", "mi_final", "cov2_final", "spec_step0", "mi_step0", "spec_chance",
                      "spec_chance_p95", "mi_chance", "mi_chance_p95"):
                r[m] = math.nan
    return r


def label(model, F):
    return {"dense": f"dense, 1 x d_ff {F}", "moe_top1": f"MoE top-1, 8 x d_ff {F}",
            "moe_top2": f"MoE top-2, 8 x d_ff {F}"}[model]


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    paths = sorted(glob.glob(os.path.join(results, "runs", "*.h5")))
    if not paths:
        raise SystemExit(f"no result files in {results}/runs (run run.sh first)")
    rng = np.random.default_rng(12345)
    rows = [read_run(p, rng) for p in paths]
    rows.sort(key=lambda r: (r["beta"], r["gamma"], r["model"], r["d_ff"], r["seed"]))
    cols = [c for c in rows[0] if not c.startswith("_")]
    fmt = lambda v: f"{v:.6g}" if isinstance(v, float) else v  # noqa: E731
    with open(os.path.join(results, "runs.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow([fmt(r[c]) for c in cols])

    metrics = ["eval_acc", "eval_f1", "eval_loss", "eval_acc_best", "spec_final", "mi_final", "cov2_final", "spec_step0",
               "mi_step0", "spec_chance", "mi_chance", "step_ms"]
    groups = {}
    for r in rows:
        groups.setdefault((r["beta"], r["gamma"], r["model"], r["d_ff"]), []).append(r)
    summary = []
    for (b, g, model, F), rs in sorted(groups.items()):
        s = {"beta": b, "gamma": g, "model": model, "E": rs[0]["E"], "k": rs[0]["k"], "d_ff": F,
             "expert_macs_per_token": rs[0]["expert_macs_per_token"], "expert_params": rs[0]["expert_params"],
             "n_seeds": len(rs)}
        for m in metrics:
            v = np.array([r[m] for r in rs], dtype=float)
            s[m] = float(np.mean(v))
            s[m + "_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
            s[m + "_min"] = float(np.min(v))
            s[m + "_max"] = float(np.max(v))
        summary.append(s)
    scols = list(summary[0].keys())
    with open(os.path.join(results, "summary.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(scols)
        for s in summary:
            w.writerow([fmt(s[c]) for c in scols])

    def pm(s, m, scale=1.0, f="{:.2f}"):
        if math.isnan(s[m]):
            return "–"
        return (f + " ± " + f).format(s[m] * scale, s[m + "_std"] * scale)

    def find(b, g, model, F):
        return next((s for s in summary if s["beta"] == b and s["gamma"] == g and s["model"] == model and s["d_ff"] == F),
                    None)

    n = max(s["n_seeds"] for s in summary)
    lines = [f"Final held-out accuracy / macro-F1 (%, mean ± sample std over {n} seeds), "
             "by cluster-centre strength beta, feature noise gamma (signal alpha = 1) and expert width:", "",
             "| beta | gamma | model | expert MACs / token | expert params | eval acc % | eval macro-F1 % | eval loss | "
             "best acc % over training | specialisation | MI (nats) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(summary, key=lambda s: (s["beta"], s["gamma"], s["expert_macs_per_token"], s["model"] != "dense")):
        lines.append(f"| {s['beta']:g} | {s['gamma']:g} | {label(s['model'], s['d_ff'])} | {s['expert_macs_per_token']} | "
                     f"{s['expert_params']} | {pm(s, 'eval_acc', 100)} | {pm(s, 'eval_f1', 100)} | "
                     f"{pm(s, 'eval_loss', 1, '{:.3f}')} | {pm(s, 'eval_acc_best', 100)} | "
                     f"{pm(s, 'spec_final', 1, '{:.3f}')} | {pm(s, 'mi_final', 1, '{:.3f}')} |")
    lines += ["", "MoE minus dense of the same per-token expert compute (accuracy points, mean over seeds; "
              "range = min..max of the per-seed differences, seeds paired):", "",
              "| beta | gamma | MoE | dense | Δ acc (pts) | range |", "|---|---|---|---|---|---|"]
    for s in sorted(summary, key=lambda s: (s["beta"], s["gamma"], s["d_ff"], s["k"])):
        if s["model"] == "dense":
            continue
        Fd = s["d_ff"] * s["k"]
        d = find(s["beta"], s["gamma"], "dense", Fd)
        if d is None:
            continue
        moe_runs = {r["seed"]: r["eval_acc"] for r in groups[(s["beta"], s["gamma"], s["model"], s["d_ff"])]}
        den_runs = {r["seed"]: r["eval_acc"] for r in groups[(s["beta"], s["gamma"], "dense", Fd)]}
        diffs = [100 * (moe_runs[x] - den_runs[x]) for x in moe_runs if x in den_runs]
        lines.append(f"| {s['beta']:g} | {s['gamma']:g} | {label(s['model'], s['d_ff'])} | {label('dense', Fd)} | "
                     f"{np.mean(diffs):+.2f} | {min(diffs):+.2f} .. {max(diffs):+.2f} |")
    lines += ["", "Router of the MoE runs (layer 0, held-out tokens' first choices, last evaluation): "
              "specialisation = mean over clusters of the share of the cluster's tokens at its most used expert; "
              "top-2 share = the same for its 2 most used experts; MI between cluster and expert in nats "
              f"(perfect: 1 and ln 8 = {math.log(8):.3f}); chance = independent routing with the same margins "
              f"({NULL_SAMPLES} simulated tables):", "",
              "| beta | gamma | model | spec. at step 0 | spec. final | chance | top-2 share | MI at step 0 | MI final | "
              "chance MI |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(summary, key=lambda s: (s["beta"], s["gamma"], s["model"], s["d_ff"])):
        if s["model"] == "dense":
            continue
        lines.append(f"| {s['beta']:g} | {s['gamma']:g} | {label(s['model'], s['d_ff'])} | {pm(s, 'spec_step0', 1, '{:.3f}')} | "
                     f"{pm(s, 'spec_final', 1, '{:.3f}')} | {s['spec_chance']:.3f} | {pm(s, 'cov2_final', 1, '{:.3f}')} | "
                     f"{pm(s, 'mi_step0', 1, '{:.3f}')} | {pm(s, 'mi_final', 1, '{:.3f}')} | {s['mi_chance']:.4f} |")
    with open(os.path.join(results, "summary.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    def runs_of(g, model, F, b=MAIN_B):
        return [r for r in rows if r["beta"] == b and r["gamma"] == g and r["model"] == model and r["d_ff"] == F]

    def curve(ax, rs, key, color, lab, ls="-"):
        if not rs:
            return
        x = rs[0]["_eval_step"]
        y = np.stack([r[key] for r in rs])
        ax.plot(x, y.mean(axis=0), ls=ls, color=color, label=f"{lab} ({len(rs)} seeds)")
        ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=color, alpha=0.15, lw=0)

    # ---- accuracy: learning curves at the main setting + final accuracy vs expert width ----
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.8))
    arms = [("moe_top1", MAIN_F, "tab:blue", "-"), ("dense", MAIN_F, "tab:red", "-"),
            ("moe_top2", MAIN_F, "tab:green", "-"), ("dense", 2 * MAIN_F, "tab:orange", "--"),
            ("dense", 8 * MAIN_F, "tab:gray", ":")]
    for model, F, c, ls in arms:
        curve(axs[0], runs_of(MAIN_G, model, F), "_eval_acc", c, label(model, F), ls)
    axs[0].set_xlabel("training step")
    axs[0].set_ylabel("held-out accuracy")
    axs[0].set_ylim(0.45, 1.0)
    axs[0].set_title(f"Learning curves (gamma = {MAIN_G:g}; band = min..max over seeds)", fontsize=9)
    axs[0].grid(alpha=0.3)
    axs[0].legend(fontsize=7, loc="lower right")
    for model, c, mk in (("moe_top1", "tab:blue", "o"), ("dense", "tab:red", "s")):
        ss = sorted((s for s in summary if s["beta"] == MAIN_B and s["gamma"] == MAIN_G and s["model"] == model
                     and s["d_ff"] <= 32),
                    key=lambda s: s["d_ff"])
        if ss:
            axs[1].errorbar([s["d_ff"] for s in ss], [100 * s["eval_acc"] for s in ss],
                            [100 * s["eval_acc_std"] for s in ss], marker=mk, capsize=3, color=c,
                            label="MoE top-1, 8 experts of d_ff" if model != "dense" else "dense, 1 expert of d_ff")
    axs[1].set_xscale("log", base=2)
    axs[1].set_xlabel("d_ff of each expert (= per-token expert compute)")
    axs[1].set_ylabel("final held-out accuracy (%)")
    axs[1].set_title(f"Same per-token compute, gamma = {MAIN_G:g} (mean ± std)", fontsize=9)
    axs[1].grid(alpha=0.3)
    axs[1].legend(fontsize=7)
    fig.tight_layout()
    plotting.save(fig, os.path.join(results, "accuracy.png"), prov(), title="accuracy.png", dpi=90)
    plt.close(fig)

    # ---- specialisation and mutual information over training ----
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {4: "tab:purple", 8: "tab:blue", 16: "tab:cyan", 32: "tab:olive"}
    chance_spec, chance_mi = [], []
    for F in (4, 8, 16, 32):
        rs = runs_of(MAIN_G, "moe_top1", F)
        curve(axs[0], rs, "_spec", colors[F], label("moe_top1", F))
        curve(axs[1], rs, "_mi", colors[F], label("moe_top1", F))
        chance_spec += [r["spec_chance"] for r in rs]
        chance_mi += [r["mi_chance_p95"] for r in rs]
    rs = runs_of(MAIN_G, "moe_top2", MAIN_F)
    curve(axs[0], rs, "_spec", "tab:green", label("moe_top2", MAIN_F) + ", 1st choice", "--")
    curve(axs[1], rs, "_mi", "tab:green", label("moe_top2", MAIN_F) + ", 1st choice", "--")
    rs = runs_of(MAIN_G, "moe_top1", MAIN_F, 2.0)
    curve(axs[0], rs, "_spec", "tab:red", label("moe_top1", MAIN_F) + ", beta = 2", "-.")
    curve(axs[1], rs, "_mi", "tab:red", label("moe_top1", MAIN_F) + ", beta = 2", "-.")
    if chance_spec:
        axs[0].axhline(np.mean(chance_spec), color="k", ls=":", lw=1, label="chance (independent routing)")
        axs[1].axhline(np.max(chance_mi), color="k", ls=":", lw=1, label="chance (95th pct.)")
    axs[0].axhline(1.0, color="0.5", lw=0.8)
    axs[1].axhline(math.log(8), color="0.5", lw=0.8, label="perfect: ln 8")
    axs[0].set_ylabel("specialisation (share at the top expert)")
    axs[1].set_ylabel("MI(cluster; expert) in nats")
    for ax in axs:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axs[0].set_ylim(0, 1.05)
    axs[1].set_ylim(0, 2.2)
    axs[0].set_title(f"Router specialisation (held-out, gamma = {MAIN_G:g}, beta = 1 unless noted)", fontsize=9)
    axs[1].set_title("Cluster-expert mutual information", fontsize=9)
    fig.tight_layout()
    plotting.save(fig, os.path.join(results, "specialization.png"), prov(), title="specialization.png", dpi=90)
    plt.close(fig)

    # ---- cluster x expert heat maps at the end (top-1 MoE, F = 8, gamma = 1, first seed; beta = 1 and 2) ----
    panels = [(b, runs_of(MAIN_G, "moe_top1", MAIN_F, b)) for b in (MAIN_B, 2.0)]
    panels = [(b, rs) for b, rs in panels if rs]
    if panels:
        fig, axs = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
        for ax, (b, rs) in zip(axs[0], panels):
            r = min(rs, key=lambda r: r["seed"])
            t = r["_table"].astype(float)
            share = t / np.maximum(t.sum(axis=1, keepdims=True), 1)
            # Experts ordered by the cluster they serve most (then by that share): a diagonal-ish view.
            order = sorted(range(t.shape[1]), key=lambda e: (int(np.argmax(share[:, e])), -share[:, e].max()))
            im = ax.imshow(share[:, order], cmap="viridis", vmin=0, vmax=1)
            for i in range(share.shape[0]):
                for j, e in enumerate(order):
                    ax.text(j, i, f"{100 * share[i, e]:.0f}", ha="center", va="center", fontsize=7,
                            color="w" if share[i, e] < 0.6 else "k")
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels([str(e) for e in order])
            ax.set_yticks(range(share.shape[0]))
            ax.set_xlabel("expert (reordered by the cluster it serves most)")
            ax.set_ylabel("cluster")
            ax.set_title(f"{label('moe_top1', MAIN_F)}, beta = {b:g}, seed {r['seed']}, step {int(r['_eval_step'][-1])}\n"
                         f"% of each cluster's held-out tokens per expert\n(spec. {r['spec_final']:.2f}, "
                         f"MI {r['mi_final']:.2f} nats, held-out acc {100 * r['eval_acc']:.1f}%)", fontsize=8)
        fig.colorbar(im, ax=list(axs[0]), fraction=0.025, pad=0.03)
        plotting.save(fig, os.path.join(results, "cluster_expert.png"), prov(), title="cluster_expert.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
    print(f"wrote {results}/runs.csv, summary.csv, summary.md, accuracy.png, specialization.png, cluster_expert.png")


if __name__ == "__main__":
    main()
