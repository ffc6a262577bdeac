#!/usr/bin/python3
"""Sweeps without Slurm (jobscripts/run_sweep_local.sh, tools/sweep.py, tools/aggregate.py,
tools/plotting.py), on real tiny runs:
  1. Validation: a spec with an invalid point (capacity factor -1) is refused as a whole before
     anything is written or run (`moesim validate` on every point), naming each bad point;
     `sweep.py expand --dry-run` writes nothing.
  2. seeds = 1,2,3: every point once per seed; summary.csv holds mean, std (n-1), min, max over
     the seeds, equal to the same statistics computed here from the result files themselves.
  3. --resume is a new attempt: the first attempt's logs are kept byte for byte, only the lost
     points rerun (logs/attempt-2/); a point that failed with exit code 2 is not rerun (a note says
     so) until --retry-invalid; its seed is listed as failed in summary.csv.
  4. Figures: PNG metadata carries the commit (= this checkout's), date, sweep name and command,
     and the failed points; tools/plotting.plain_ticks leaves no offset / scientific tick label.
Run:  sweep_local.py --moesim BUILD/moesim --mpiexec mpirun [--keep-tmp]"""
import csv
import hashlib
import os
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "regression"))
from regtest import Regression  # noqa: E402

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TINY = os.path.join(REPO, "tests", "slurm", "tiny.ini")
PY = "/usr/bin/python3"


def md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main():
    t = Regression(__doc__)
    os.environ.update(MOESIM_BUILD_DIR=os.path.dirname(t.moesim), MOESIM_LAUNCHER="mpirun")
    os.environ.pop("MOESIM_SITE_ENV", None)
    for var in [v for v in os.environ if v.startswith("SLURM_")]:
        os.environ.pop(var)
    local = os.path.join(REPO, "jobscripts", "run_sweep_local.sh")
    sweep_py = os.path.join(REPO, "tools", "sweep.py")

    t.section("validation: one bad point refuses the whole sweep before anything is written")
    bad_spec = t.write("bad.spec", f"[sweep]\nname = bad\nbase = {TINY}\nranks = 1,2\n"
                                   "routing.capacity_factor = 1.0, -1\n")
    r = t.run([local, bad_spec, t.path("bad")], timeout=300)
    t.check(r.rc == 2, "run_sweep_local.sh exits 2", r.describe)
    t.check("point 1 (ranks=1, routing.capacity_factor=-1)" in r.err and
            "point 3 (ranks=2, routing.capacity_factor=-1)" in r.err, "every bad point is named", r.describe)
    t.check("routing.capacity_factor" in r.err and "error" in r.err.lower(), "with moesim's message", r.describe)
    t.check(not os.path.exists(t.path("bad")), "nothing written (no sweep directory)")
    t.check(not [d for d in os.listdir(t.tmp) if "staging" in d], "no staging directory left behind")
    r = t.run([PY, sweep_py, "expand", bad_spec, "--out", t.path("bad"), "--moesim", t.moesim, "--dry-run"])
    t.check(r.rc == 2 and not os.path.exists(t.path("bad")), "expand --dry-run of the bad spec: exit 2, nothing written",
            r.describe)
    ok_spec = t.write("ok.spec", f"[sweep]\nname = ok\nbase = {TINY}\nranks = 1,2\nrouting.capacity_factor = 1.0\n")
    r = t.run([PY, sweep_py, "expand", ok_spec, "--out", t.path("ok"), "--moesim", t.moesim, "--dry-run"])
    t.check(r.rc == 0 and "would submit: array ranks=1 points=0" in r.out and "ranks=2 points=1" in r.out
            and not os.path.exists(t.path("ok")), "expand --dry-run of a valid spec: the plan, nothing written",
            r.describe)

    t.section("seeds = 1,2,3: mean and spread over seeds")
    spec = t.write("seeds.spec", f"[sweep]\nname = seeds-ci\nbase = {TINY}\nranks = 1\nseeds = 1,2,3\n"
                                 "routing.capacity_factor = 1.0, 2.0\n")
    d = t.path("sweep")
    # --no-validate here: part 1 covers validation (and this part must not depend on it).
    r = t.run([local, "--no-validate", spec, d], timeout=600)
    t.check(r.rc == 0, "6 runs (2 capacity factors x 3 seeds) succeed", r.describe)
    man = rows(os.path.join(d, "summary.csv")) if os.path.exists(os.path.join(d, "summary.csv")) else []
    t.check(len(man) == 2 and all(m["n"] == "3" and m["n_failed"] == "0" for m in man),
            "summary.csv: 2 points, n = 3 seeds each", str(man)[:500])
    res = rows(os.path.join(d, "results.csv"))
    t.check(sorted(r_["training.seed"] for r_ in res) == ["1", "1", "2", "2", "3", "3"], "results.csv: one row per seed")
    for m in man:
        acc = []
        for r_ in res:
            if r_["routing.capacity_factor"] == m["routing.capacity_factor"]:
                with h5py.File(os.path.join(d, r_["result"]), "r") as f:  # straight from the result files
                    acc.append(float(f["eval/accuracy"][-1]))
        acc = np.array(acc)
        got = [float(m[f"final_eval_accuracy_{s}"]) for s in ["mean", "std", "min", "max"]]
        want = [acc.mean(), acc.std(ddof=1), acc.min(), acc.max()]
        t.check(len(acc) == 3 and np.allclose(got, want, rtol=1e-12, atol=0),
                f"cf={m['routing.capacity_factor']}: accuracy mean/std/min/max over seeds = the result files'",
                f"summary {got} vs files {want}")
    t.check(len({float(m["final_eval_accuracy_std"]) for m in man}) == 2 and
            all(float(m["final_eval_accuracy_std"]) > 0 for m in man), "the seeds differ (non-zero spread)")

    t.section("--resume: a new attempt, earlier logs kept; exit-2 points skipped")
    first_logs = {f: md5(os.path.join(d, "logs", "attempt-1", f)) for f in os.listdir(os.path.join(d, "logs", "attempt-1"))}
    os.remove(os.path.join(d, "results", "point-0001.h5"))          # lost
    os.remove(os.path.join(d, "results", "point-0004.h5"))          # and made invalid:
    p4 = os.path.join(d, "point-0004.ini")
    with open(p4) as f:
        good4 = f.read()
    with open(p4, "w") as f:
        f.write(good4.replace("capacity_factor = 2.0", "capacity_factor = -1"))
    r = t.run([local, "--resume", "--no-validate", d], timeout=600)
    t.check(r.rc == 1, "the resumed sweep reports the failed point (exit 1)", r.describe)
    a2 = sorted(os.listdir(os.path.join(d, "logs", "attempt-2")))
    t.check(a2 == ["point-0001.out", "point-0001.status", "point-0004.out", "point-0004.status"],
            "attempt 2 ran exactly the 2 lost points", str(a2))
    t.check({f: md5(os.path.join(d, "logs", "attempt-1", f)) for f in first_logs} == first_logs,
            "attempt 1's logs and status files are unchanged")
    summ = {m["routing.capacity_factor"]: m for m in rows(os.path.join(d, "summary.csv"))}
    t.check(summ["2.0"]["n"] == "2" and summ["2.0"]["n_failed"] == "1" and summ["2.0"]["failed"].startswith("2 (point 4"),
            "summary.csv lists the failed seed (2) of cf=2.0 and averages the other 2", str(summ.get("2.0"))[:300])
    failed = rows(os.path.join(d, "failed.csv"))
    t.check(len(failed) == 1 and failed[0]["point"] == "4" and "exit code 2" in failed[0]["reason"]
            and failed[0]["attempts"] == "2", "failed.csv: point 4, exit code 2, 2 attempts", str(failed)[:400])
    r = t.run([local, "--resume", "--no-validate", d], timeout=300)
    t.check("point 4 not resubmitted" in r.err and "--retry-invalid" in r.err, "a third --resume skips point 4 with a note",
            r.describe)
    t.check(not os.path.exists(os.path.join(d, "logs", "attempt-3")), "  ... and runs nothing (no attempt 3)")
    with open(p4, "w") as f:
        f.write(good4)
    r = t.run([local, "--resume", "--retry-invalid", "--no-validate", d], timeout=300)
    t.check(r.rc == 0 and sorted(os.listdir(os.path.join(d, "logs", "attempt-3"))) == ["point-0004.out", "point-0004.status"],
            "fixed, --retry-invalid reruns point 4 (attempt 3) and the sweep is complete", r.describe)

    t.section("figures: provenance and failed points")
    os.remove(os.path.join(d, "results", "point-0002.h5"))
    r = t.run([PY, os.path.join(REPO, "tools", "aggregate.py"), "--allow-failed", "--quiet", d], timeout=120)
    png = os.path.join(d, "plots", "metrics_vs_routing_capacity_factor.png")
    t.check(r.rc == 0 and os.path.exists(png), "aggregate.py draws metrics_vs_routing_capacity_factor.png", r.describe)
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    from PIL import Image
    meta = Image.open(png).text if os.path.exists(png) else {}
    t.check(meta.get("MoESim-Commit", "").split("-")[0] == head and meta.get("Software", "").startswith("MoESim "),
            f"PNG metadata: commit {head}", str(meta))
    t.check(meta.get("MoESim-Sweep") == "seeds-ci" and "aggregate.py" in meta.get("MoESim-Command", "")
            and meta.get("Creation Time", "").startswith("20"), "PNG metadata: sweep name, command, date", str(meta))
    t.check(meta.get("MoESim-Failed-Points") == "2" and meta.get("MoESim-Replicate") == "training.seed",
            "PNG metadata: the failed point (2) is drawn, means over training.seed", str(meta))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import plotting
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1000000, 1000001, 1000002])
    fig.canvas.draw()
    before = ax.yaxis.get_offset_text().get_text()
    plotting.plain_ticks(ax)
    fig.canvas.draw()
    labels = [lab.get_text() for lab in ax.get_yticklabels()]
    t.check(before != "" and ax.yaxis.get_offset_text().get_text() == "" and any("1000001" in s for s in labels),
            "plain_ticks: 1000000..1000002 labelled in full, no offset (matplotlib's default had one)",
            f"default offset '{before}', labels {labels}")
    plt.close(fig)
    t.finish()


if __name__ == "__main__":
    main()
