#!/usr/bin/python3
"""Collects the result files of a MoESim sweep into one table and plots.

    aggregate.py SWEEP_DIR [--allow-failed] [--no-plots] [--quiet]

SWEEP_DIR is what `tools/sweep.py expand` made (manifest.tsv, sweep.json) after its points ran
(jobscripts/submit_sweep.sh or jobscripts/run_sweep_local.sh). Writes into SWEEP_DIR:

    results.csv   one row per point whose result file is complete (root attribute complete == 1),
                  matches the manifest (ranks, swept values in the stored config) and whose run
                  exited 0: the point's values, then the metrics below
    failed.csv    every other point and why (no result file, complete == 0, moesim's exit code,
                  the last error line of its log); these are never averaged into results.csv
    summary.csv   with seeds = ... / repeats = N in the spec: one row per point over its seeds
                  (or repeats): n (complete runs), n_failed, failed (which seeds and why), and for
                  every metric its mean, std (sample, n-1), min, max over the complete runs
    results.md    the same tables in Markdown
    plots/        metric_vs_<key>.png: each metric against each swept key, one line per value of
                  the other swept keys; hollow markers = oversubscribed points (more ranks than
                  CPUs); with seeds: mean and error bars (min..max over seeds); failed points are an
                  x on the x axis ("failed: N" in the legend), never silently left out; provenance
                  (commit, date, sweep, command) in the footer and in the PNG metadata
                  (tools/plotting.py)

Each point's status and log come from its latest attempt (logs/attempt-N/point-NNNN.*; earlier
attempts are kept); `attempts` and `slurm_job_ids` (all attempts, oldest first) are in the tables.

Metrics: final_loss (last training step), final_eval_loss / final_eval_accuracy (last evaluation),
dropped_fraction_mean, tokens_per_second, step_time_median_s (from /summary), alltoall_bytes_per_step
(mean over steps; counts what each rank sends to itself too), remote_token_fraction (share of the
dispatched tokens that went to another rank, from /summary/traffic_tokens), expert_load_imbalance (max/mean of /steps/expert_load over experts, averaged over
steps and layers; 1 = perfectly balanced, before capacity), wall_seconds, time_<phase>_median_s
(median over steps of each phase's time, max over ranks: gate, dispatch, expert, combine, backward,
sync); plus slurm_job_id,
slurm_array_task, oversubscribed (ranks > nodes x cpus), cpus (CPUs the job could use per node), host
(from the point's logs/point-NNNN.status) and git_commit.

Exit code: 0 when every point is in results.csv; 1 when any point failed or is incomplete
(0 with --allow-failed); 2 when SWEEP_DIR is not a sweep. Needs h5py, numpy, matplotlib.
"""
import argparse
import configparser
import csv
import json
import math
import os
import sys

# Read while points may still be writing (they show up as incomplete), and on parallel file systems
# without flock: HDF5's file locking would refuse to open such files.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
import h5py  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plotting  # noqa: E402
from sweep import point_attempts  # noqa: E402

PHASES = ["gate", "dispatch", "expert", "combine", "backward", "sync"]
METRICS = ["final_loss", "final_eval_loss", "final_eval_accuracy", "dropped_fraction_mean",
           "tokens_per_second", "step_time_median_s", "alltoall_bytes_per_step",
           "remote_token_fraction", "expert_load_imbalance", "wall_seconds"] + \
    [f"time_{p}_median_s" for p in PHASES]
PLOTTED = [("final_eval_accuracy", "final eval accuracy"), ("final_loss", "final training loss"),
           ("dropped_fraction_mean", "dropped fraction (mean)"),
           ("tokens_per_second", "tokens / s"), ("step_time_median_s", "median step time [s]"),
           ("expert_load_imbalance", "expert load max/mean")]
EXIT_MEANING = {2: "bad parameters or input (moesim exit code 2)",
                75: "stopped on request (exit code 75: preempted or signalled): a checkpoint was written, "
                    "resubmit the point to resume it"}


class NotASweep(Exception):
    pass


def read_manifest(sweep):
    path = os.path.join(sweep, "manifest.tsv")
    try:
        with open(path, encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
            header = list(rows[0].keys()) if rows else []
    except OSError as e:
        raise NotASweep(f"{path}: {e.strerror}") from None
    if not rows or header[:5] != ["point", "ranks", "params", "result", "log"]:
        raise NotASweep(f"{path}: not a sweep manifest (tools/sweep.py expand writes one)")
    meta = {}
    try:
        with open(os.path.join(sweep, "sweep.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        pass
    spec_keys = header[5:]
    return rows, spec_keys, meta


def read_history(sweep, point):
    """(latest attempt's status dict, its log path, every attempt's job id oldest first)."""
    history = point_attempts(sweep, point)
    if not history:
        return {}, None, []
    return history[-1][1], history[-1][2], [h[1].get("slurm_job_id", "") or "-" for h in history]


def last_error_line(sweep, log):
    """The last error line of a point's log: moesim's own message (it names key, value and what is
    allowed) before the launcher's or Slurm's."""
    try:
        with open(os.path.join(sweep, log), encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    words = ("error", "abort", "killed", "cancelled", "terminated", "time limit")
    flagged = [ln for ln in lines if any(w in ln.lower() for w in words)]
    own = [ln for ln in flagged if ln.startswith("moesim")]
    pick = own or flagged or lines
    return pick[-1][:300] if pick else ""


def same_value(a, b):
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    except ValueError:
        return a.strip().lower() == b.strip().lower()


def to_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def remote_fraction(f):
    """Share of dispatched tokens that left their rank (off-diagonal of /summary/traffic_tokens)."""
    if "summary/traffic_tokens" not in f:
        return float("nan")
    t = np.asarray(f["summary/traffic_tokens"], dtype=np.float64)
    total = t.sum()
    return float((total - np.trace(t)) / total) if total > 0 else 0.0


def read_result(path, row, spec_keys):
    """(metrics dict, None) for a usable result file, or (None, reason)."""
    if not os.path.exists(path):
        return None, "no result file"
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return None, f"result file unreadable ({e}; still being written?)"
    with f:
        if int(f.attrs.get("complete", 0)) != 1:
            n = f["steps/step"].shape[0] if "steps/step" in f else 0
            return None, f"incomplete result file (complete=0 after {n} step(s): killed or still running)"
        ranks = int(f.attrs.get("ranks", -1))
        if ranks != int(row["ranks"]):
            return None, f"result file has ranks={ranks}, the manifest says {row['ranks']}"
        cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
        try:
            cp.read_string(to_str(f.attrs.get("config", "")))
        except configparser.Error as e:
            return None, f"stored config unreadable ({e})"
        for key in spec_keys:
            if "." not in key:
                continue  # `repeat`: not a parameter
            section, name = key.split(".", 1)
            stored = cp.get(section, name, fallback=None)
            if stored is None or not same_value(stored, row[key]):
                return None, (f"stored config has {key}={stored}, the manifest says {row[key]} "
                              "(a stale result from another sweep?)")
        steps = f["steps"]
        load = np.asarray(steps["expert_load"], dtype=np.float64)  # [S, L, E]
        mean = load.mean(axis=2)
        imbalance = float(np.mean(np.where(mean > 0, load.max(axis=2) / np.where(mean > 0, mean, 1), 1.0)))
        summary = f["summary"].attrs
        ev = f["eval"] if "eval" in f else None
        has_eval = ev is not None and "loss" in ev and ev["loss"].shape[0] > 0
        metrics = {
            "steps": int(steps["step"].shape[0]),
            "final_loss": float(steps["loss"][-1]),
            "final_eval_loss": float(ev["loss"][-1]) if has_eval else float("nan"),
            "final_eval_accuracy": float(ev["accuracy"][-1]) if has_eval and "accuracy" in ev else float("nan"),
            "dropped_fraction_mean": float(summary["dropped_fraction_mean"]),
            "tokens_per_second": float(summary["tokens_per_second"]),
            "step_time_median_s": float(summary["step_time_median"]),
            "alltoall_bytes_per_step": float(np.mean(steps["bytes_alltoall"])),
            "remote_token_fraction": remote_fraction(f),
            "expert_load_imbalance": imbalance,
            "wall_seconds": float(summary.get("wall_seconds", float("nan"))),  # not in the contract
            **{f"time_{p}_median_s": float(np.median(steps[f"time_{p}"])) for p in PHASES},
            "slurm_job_id": to_str(f.attrs.get("slurm_job_id", "")),
            "git_commit": to_str(f.attrs.get("git_commit", "")),
        }
    return metrics, None


def describe_failure(reason, status, sweep, log):
    parts = [reason]
    if not status:
        if reason == "no result file":
            parts.append("no status file either: the point never started")
    elif status.get("state") == "running":
        parts.append("its job never recorded an exit code (killed: time limit, cancel, node failure?)")
    elif status.get("exit_code", "0") != "0":
        code = int(status["exit_code"])
        parts.append(EXIT_MEANING.get(code, f"moesim exit code {code}"))
    message = last_error_line(sweep, log) if status and log else ""
    return "; ".join(parts), message


def fmt(v, digits=4):
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([repr(r[h]) if isinstance(r[h], float) else r[h] for h in header])


def summarize(rows, spec_keys, replicate, ok_rows, failed_rows):
    """One row per point over its replicates (seeds or repeats): n, n_failed, which failed, and for
    every metric mean, std (sample, n-1; nan for n < 2), min, max over the complete runs."""
    group_keys = ["ranks", *[k for k in spec_keys if k != replicate]]
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in group_keys), {"ok": [], "failed": []})
    for r in ok_rows:
        groups[tuple(r[k] for k in group_keys)]["ok"].append(r)
    for r in failed_rows:
        groups[tuple(r[k] for k in group_keys)]["failed"].append(r)
    header = group_keys + ["n", "n_failed", "failed", "points"]
    for m in METRICS:
        header += [f"{m}_mean", f"{m}_std", f"{m}_min", f"{m}_max"]
    out = []
    for key, g in groups.items():
        row = dict(zip(group_keys, key))
        row["n"], row["n_failed"] = len(g["ok"]), len(g["failed"])
        row["failed"] = "; ".join(f"{r[replicate]} (point {r['point']}: {r['reason'].split(';')[0]})"
                                  for r in g["failed"])
        row["points"] = " ".join(sorted([r["point"] for r in g["ok"] + g["failed"]], key=int))
        for m in METRICS:
            v = np.array([r[m] for r in g["ok"]], dtype=np.float64)
            v = v[np.isfinite(v)]
            row[f"{m}_mean"] = float(v.mean()) if v.size else float("nan")
            row[f"{m}_std"] = float(v.std(ddof=1)) if v.size >= 2 else float("nan")
            row[f"{m}_min"] = float(v.min()) if v.size else float("nan")
            row[f"{m}_max"] = float(v.max()) if v.size else float("nan")
        out.append(row)
    return header, out


def write_markdown(path, name, ok_header, ok_rows, failed_header, failed_rows, summary_rows=(), replicate=None):
    shown = [h for h in ok_header if h not in ("result", "git_commit", "host", "slurm_array_task",
                                              "final_eval_loss", "steps") and not h.startswith("time_")]
    lines = [f"# Sweep `{name}`", "",
             f"{len(ok_rows)} complete point(s), {len(failed_rows)} failed or incomplete.", ""]
    if ok_rows:
        lines += ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
        lines += ["| " + " | ".join(fmt(r[h]) for h in shown) + " |" for r in ok_rows]
    if summary_rows:
        keys = [k for k in summary_rows[0] if k in ok_header and k != replicate]
        ms = ["final_eval_accuracy", "final_loss", "dropped_fraction_mean", "tokens_per_second"]
        lines += ["", f"## Over `{replicate}`: mean ± std [min, max]", "",
                  "| " + " | ".join(keys + ["n", "failed"] + ms) + " |", "|" + "---|" * (len(keys) + 2 + len(ms))]
        for r in summary_rows:
            lines.append("| " + " | ".join([str(r[k]) for k in keys] + [f"{r['n']}/{r['n'] + r['n_failed']}",
                                            r["failed"].replace("|", "\\|") or "-"]
                                           + [f"{fmt(r[m + '_mean'])} ± {fmt(r[m + '_std'])} "
                                              f"[{fmt(r[m + '_min'])}, {fmt(r[m + '_max'])}]" for m in ms]) + " |")
    if failed_rows:
        lines += ["", "## Failed or incomplete points", "",
                  "| " + " | ".join(failed_header) + " |", "|" + "---|" * len(failed_header)]
        lines += ["| " + " | ".join(str(r[h]).replace("|", "\\|") for h in failed_header) + " |"
                  for r in failed_rows]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def numeric(values):
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def sort_key(values):
    """Numbers in numeric order, before text in text order."""
    return tuple((0, float(v), "") if numeric([v]) else (1, 0.0, v) for v in values)


def plot_all(sweep, name, dims, ok_rows, failed_rows, replicate, prov):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    os.makedirs(os.path.join(sweep, "plots"), exist_ok=True)
    written = []
    for dim in dims:
        others = [d for d in dims if d != dim]
        xs_all = sorted({r[dim] for r in ok_rows + failed_rows}, key=lambda v: sort_key((v,)))
        if len(xs_all) < 2:
            continue
        xnum = numeric(xs_all)
        xpos = {v: (float(v) if xnum else i) for i, v in enumerate(xs_all)}
        gkeys = sorted({tuple(r[o] for o in others) for r in ok_rows + failed_rows}, key=sort_key)
        fig, axes = plt.subplots(2, 3, figsize=(12, 6.8))
        any_over = False
        for (metric, label), ax in zip(PLOTTED, axes.flat):
            for gi, gkey in enumerate(gkeys):
                color = f"C{gi % 10}"
                glabel = ", ".join(f"{o.split('.')[-1]}={v}" for o, v in zip(others, gkey)) or None
                mine = [r for r in ok_rows if tuple(r[o] for o in others) == gkey]
                by_x = {}
                for r in mine:
                    by_x.setdefault(r[dim], []).append(r)
                xs = sorted(by_x, key=lambda v: xs_all.index(v))
                x = [xpos[v] for v in xs]
                vals = [np.array([r[metric] for r in by_x[v]], dtype=np.float64) for v in xs]
                y = [float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for v in vals]
                over = [any(r.get("oversubscribed") == "1" for r in by_x[v]) for v in xs]
                any_over |= any(over)
                if replicate:
                    err = [float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() >= 2 else 0.0 for v in vals]
                    ax.errorbar(x, y, yerr=err, fmt="-", color=color, capsize=3, label=glabel)
                else:
                    ax.plot(x, y, "-", color=color, label=glabel)
                ax.scatter([a for a, o in zip(x, over) if not o], [b for b, o in zip(y, over) if not o],
                           color=color, zorder=3, s=25)
                ax.scatter([a for a, o in zip(x, over) if o], [b for b, o in zip(y, over) if o],
                           facecolors="white", edgecolors=color, zorder=3, s=30)
                failed_x = [xpos[r[dim]] for r in failed_rows if tuple(r[o] for o in others) == gkey]
                plotting.mark_failed(ax, failed_x, color=color)
            ax.set_title(label, fontsize=10)
            ax.set_xlabel(dim, fontsize=9)
            if xnum:
                if min(xnum) > 0 and max(xnum) / min(xnum) >= 8:
                    ax.set_xscale("log", base=2)
                ax.set_xticks(xnum)
                ax.set_xticklabels(xs_all)
            else:
                ax.set_xticks(range(len(xs_all)))
                ax.set_xticklabels(xs_all)
            plotting.plain_ticks(ax)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        handles, labels = list(handles), list(labels)
        if failed_rows:
            handles.append(Line2D([], [], marker="x", color="0.2", linestyle="none"))
            labels.append(f"failed: {len(failed_rows)} (x on the axis; see failed.csv)")
        if labels:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8,
                       bbox_to_anchor=(0.5, 0.025))
        notes = []
        if replicate:
            notes.append(f"mean over {replicate}, error bars ±1 std (summary.csv)")
        if any_over:
            notes.append("hollow markers: oversubscribed, more ranks than CPUs: times not meaningful")
        title = f"sweep '{name}': metrics vs {dim}"
        fig.suptitle(title + (f"\n({'; '.join(notes)})" if notes else ""), fontsize=11)
        fig.tight_layout(rect=(0, 0.09 if labels else 0.03, 1, 0.94 if notes else 0.96))
        out = os.path.join(sweep, "plots", f"metrics_vs_{dim.replace('.', '_')}.png")
        # Machine-readable: which points are drawn as failed (x on the axis), and what is averaged.
        extra = {"MoESim-Failed-Points": " ".join(r["point"] for r in failed_rows),
                 "MoESim-Replicate": replicate or ""}
        plotting.save(fig, out, prov, title=title, dpi=80, extra=extra, reserve_footer=False)
        plt.close(fig)
        written.append(out)
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("sweep", help="sweep directory (holds manifest.tsv)")
    ap.add_argument("--allow-failed", action="store_true", help="exit 0 even when points failed")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    ap.add_argument("--quiet", action="store_true", help="print only the summary line and failures")
    args = ap.parse_args()
    sweep = os.path.abspath(args.sweep)
    try:
        rows, spec_keys, meta = read_manifest(sweep)
    except NotASweep as e:
        print(f"aggregate.py: error: {e}", file=sys.stderr)
        return 2
    name = meta.get("name", os.path.basename(sweep))
    dims = (["ranks"] if len({r["ranks"] for r in rows}) > 1 else []) + \
        [k for k in meta.get("swept", {}) if k in spec_keys]

    replicate = (meta.get("replicate") or {}).get("key")
    if replicate not in spec_keys:
        replicate = None
    ok_rows, failed_rows = [], []
    for row in rows:
        status, log, job_ids = read_history(sweep, row["point"])
        metrics, reason = read_result(os.path.join(sweep, row["result"]), row, spec_keys)
        if metrics is not None and status.get("exit_code", "0") != "0":
            metrics, reason = None, "result file complete but the run did not exit cleanly"
        base = {"point": row["point"], "ranks": row["ranks"], **{k: row[k] for k in spec_keys},
                "attempts": len(job_ids), "slurm_job_ids": ";".join(job_ids)}
        if metrics is None:
            why, message = describe_failure(reason, status, sweep, log)
            failed_rows.append({**base, "reason": why, "message": message,
                                "slurm_job_id": status.get("slurm_job_id", ""),
                                "slurm_array_task": status.get("slurm_array_job", ""),
                                "log": log or "", "params": row["params"]})
            continue
        ok_rows.append({**base, "oversubscribed": status.get("oversubscribed", ""),
                        "cpus": status.get("nproc", ""), **metrics,
                        "slurm_array_task": status.get("slurm_array_job", ""),
                        "host": status.get("host", ""), "result": row["result"]})

    ok_header = (["point", "ranks", *spec_keys, "oversubscribed", "cpus", "steps", *METRICS,
                  "slurm_job_id", "slurm_array_task", "host", "git_commit", "attempts", "slurm_job_ids", "result"])
    failed_header = ["point", "ranks", *spec_keys, "reason", "message", "slurm_job_id",
                     "slurm_array_task", "attempts", "slurm_job_ids", "log", "params"]
    write_csv(os.path.join(sweep, "results.csv"), ok_header, ok_rows)
    write_csv(os.path.join(sweep, "failed.csv"), failed_header, failed_rows)
    summary_header, summary_rows = [], []
    if replicate:
        summary_header, summary_rows = summarize(rows, spec_keys, replicate, ok_rows, failed_rows)
        write_csv(os.path.join(sweep, "summary.csv"), summary_header, summary_rows)
    write_markdown(os.path.join(sweep, "results.md"), name, ok_header, ok_rows, failed_header, failed_rows,
                   summary_rows, replicate)
    if args.no_plots or not rows:
        plots = []
    else:
        prov = plotting.provenance(sweep=name, command=f"tools/aggregate.py {sweep}",
                                   data_commits=[r["git_commit"] for r in ok_rows])
        plots = plot_all(sweep, name, dims, ok_rows, failed_rows, replicate, prov)

    print(f"aggregate: sweep '{name}' in {sweep}: {len(rows)} point(s), {len(ok_rows)} complete, "
          f"{len(failed_rows)} failed or incomplete")
    if ok_rows and not args.quiet:
        cols = ["point", "ranks", *[k for k in spec_keys if k in dims or k in meta.get("derived", {})],
                "final_eval_accuracy", "dropped_fraction_mean", "tokens_per_second", "step_time_median_s",
                "expert_load_imbalance", "slurm_job_id"]
        short = {c: c.split(".")[-1] for c in cols}
        widths = {c: max(len(short[c]), *(len(fmt(r[c])) for r in ok_rows)) for c in cols}
        print("  " + "  ".join(short[c].rjust(widths[c]) for c in cols))
        for r in ok_rows:
            flag = "  (oversubscribed)" if r["oversubscribed"] == "1" else ""
            print("  " + "  ".join(fmt(r[c]).rjust(widths[c]) for c in cols) + flag)
    if summary_rows and not args.quiet:
        print(f"over {replicate} (mean ± std [min, max], n complete of all):")
        keys = [k for k in ["ranks", *spec_keys] if k != replicate and (k in dims or k == "ranks")]
        for r in summary_rows:
            cells = []
            for m in ["final_eval_accuracy", "final_loss", "tokens_per_second"]:
                cells.append(f"{m.replace('final_', '')} {fmt(r[m + '_mean'])} ± {fmt(r[m + '_std'])} "
                             f"[{fmt(r[m + '_min'])}, {fmt(r[m + '_max'])}]")
            print("  " + ", ".join(f"{k.split('.')[-1]}={r[k]}" for k in keys)
                  + f": n={r['n']}/{r['n'] + r['n_failed']}  " + "; ".join(cells)
                  + (f"  FAILED {replicate}: {r['failed']}" if r["failed"] else ""))
    for r in failed_rows:
        values = ", ".join(f"{k}={r[k]}" for k in ["ranks", *spec_keys])
        print(f"FAILED point {r['point']} ({values}): {r['reason']}"
              + (f"\n    log {r['log']}: {r['message']}" if r["message"] else f"\n    log {r['log']}"))
    print(f"tables: {os.path.join(sweep, 'results.csv')}, {os.path.join(sweep, 'failed.csv')}"
          + (f", {os.path.join(sweep, 'summary.csv')}" if summary_rows else "")
          + (f"; plots: {', '.join(os.path.relpath(p, sweep) for p in plots)}" if plots else ""))
    if failed_rows and not args.allow_failed:
        print(f"aggregate: {len(failed_rows)} point(s) failed or incomplete (see failed.csv); "
              "exit code 1 (--allow-failed: 0)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
