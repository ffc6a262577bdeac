#!/usr/bin/python3
"""Regression: `moesim simulate` and `moesim calibrate` end to end (docs/simulate.md).

Bad input stops with exit 2 naming key and value (no output file); a projection writes the HDF5
contract (tools/h5check.py --projection) and a CSV beside it; a 2-rank run records /loads, and
the rank x rank traffic the model derives from those loads equals the run's measured
the sampled /traffic/tokens; `--simulate.validate` writes /validation; the recorded run drives a
`run:` projection; `calibrate` on 2 ranks writes a machine file that `simulate` accepts.
"""
import csv
import os
import shutil
import sys

import h5py
import numpy as np

sys.dont_write_bytecode = True

from regtest import HERE, PYTHON, Regression

R = Regression(__doc__.splitlines()[0])
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
LAYER = os.path.join(ROOT, "experiments", "projection", "validate_layer.ini")
MACHINE = R.write("machine.ini", "# test machine\n[cluster]\nranks_per_node = 4\n"
                  "intra_latency_us = 1\nintra_bandwidth_GBps = 10\ninter_latency_us = 3\n"
                  "inter_bandwidth_GBps = 12\ngemm_GFLOPs = 50\nmemory_bandwidth_GBps = 10\n")
SMALL = ["--model.d_model=64", "--model.d_ff=128", "--data.tokens_per_step=1024",
         "--routing.group_size=64", "--data.eval_tokens=256", "--training.steps=6"]


def projection_check(path):
    return R.run([PYTHON, R.args.h5check, "--projection", path])


R.section("bad input: exit 2 with key and value, no output")
bad = [
    (["simulate", LAYER, "--simulate.output=x.h5"], "cluster.file"),
    (["simulate", LAYER, f"--cluster.file={MACHINE}", "--simulate.workload=zipf:-1",
      "--simulate.output=x.h5"], "simulate.workload"),
    (["simulate", LAYER, f"--cluster.file={MACHINE}", "--simulate.ranks=3", "--simulate.scaling=strong",
      "--simulate.output=x.h5"], "simulate.ranks = 3"),
    (["simulate", LAYER, f"--cluster.file={MACHINE}", "--simulate.ranks=16,abc",
      "--simulate.output=x.h5"], "simulate.ranks"),
    (["simulate", LAYER, "--cluster.file=/nonexistent.ini", "--simulate.output=x.h5"],
     "cluster.file"),
    (["simulate", LAYER, f"--cluster.file={MACHINE}", "--simulate.scaling=sideways",
      "--simulate.output=x.h5"], "simulate.scaling"),
    (["simulate", LAYER, f"--cluster.file={MACHINE}", "--cluster.gemm_GFLOPs=0",
      "--simulate.output=x.h5"], "cluster.gemm_GFLOPs"),
]
for args, key in bad:
    res = R.serial(args)
    R.check(res.rc == 2 and key in res.err and not os.path.exists(R.path("x.h5")),
            f"{' '.join(a for a in args[2:] if a.startswith('--simulate') or a.startswith('--cluster'))}"
            f" -> exit 2 naming {key}", res.describe)
res = R.mpirun(2, ["simulate", LAYER, f"--cluster.file={MACHINE}", "--simulate.output=x.h5"])
R.check(res.rc == 2 and "moesim simulate runs in one process" in res.err, "simulate under mpirun -n 2 -> exit 2",
        res.describe)
res = R.mpirun(1, ["calibrate", LAYER, "--cluster.output=m.ini"])
R.check(res.rc == 2 and ">= 2 ranks" in res.err, "calibrate on 1 rank -> exit 2", res.describe)
res = R.mpirun(2, ["calibrate", LAYER])
R.check(res.rc == 2 and "cluster.output" in res.err, "calibrate without cluster.output -> exit 2", res.describe)

R.section("projection: HDF5 contract + CSV, 16,384 ranks")
out = R.path("proj.h5")
res = R.serial(["simulate", LAYER, f"--cluster.file={MACHINE}", "--simulate.ranks=1,2,16,16384",
                "--simulate.scaling=weak", "--simulate.workload=zipf:1.2",
                f"--simulate.output={out}"], timeout=240)
R.check(res.rc == 0 and os.path.isfile(out), "simulate exits 0 and writes the file", res.describe)
chk = projection_check(out)
R.check(chk.rc == 0, "h5check --projection: " + chk.out.strip(), chk.describe)
with h5py.File(out, "r") as f:
    wait = f["/projection/time_combine_wait"][()]
    R.check(wait[-1] > 0, f"zipf:1.2 at 16,384 ranks: the combine's rank wait is positive ({wait[-1]:.4g} s)")
# Mutation: a step that counts the wait twice (the pre-2026-11-30 model) must be refused.
bad = R.path("proj_bad.h5")
shutil.copy(out, bad)
with h5py.File(bad, "r+") as f:
    f["/projection/time_step"][...] = f["/projection/time_step"][()] + f["/projection/time_combine_wait"][()]
chk = projection_check(bad)
R.check(chk.rc != 0 and "time_combine_wait" in chk.out + chk.err,
        "h5check --projection refuses a step that counts the combine wait twice", chk.describe)
with h5py.File(out, "r") as f:
    ranks = f["/projection/ranks"][()]
    R.check(list(ranks) == [1, 2, 16, 16384], f"/projection/ranks = {list(ranks)}")
    R.check(f.attrs["workload"] in (b"zipf:1.2", "zipf:1.2"), "root attribute workload")
    R.check("ranks_per_node = 4" in (f.attrs["machine"].decode() if isinstance(f.attrs["machine"], bytes)
                                      else f.attrs["machine"]), "root attribute machine is the machine file")
    R.check(f["/projection/bytes_inter_node"][0] == 0 and f["/projection/bytes_inter_node"][3] > 0,
            "no inter-node bytes on 1 rank, some on 4096 nodes")
with open(R.path("proj.csv")) as fh:
    rows = list(csv.DictReader(fh))
R.check(len(rows) == 4 and "time_step" in rows[0], f"CSV beside it: {len(rows)} rows")

R.section("a 2-rank run records /loads; traffic from them == measured /traffic/tokens")
run = R.path("run.h5")
res = R.mpirun(2, ["run", LAYER] + SMALL + ["--output.loads_every=2", f"--output.file={run}"], timeout=240)
R.check(res.rc == 0, "moesim run exits 0", res.describe)
chk = R.h5check(run)
R.check(chk.rc == 0, "h5check accepts the run file with /loads: " + chk.out.strip(), chk.describe)
with h5py.File(run, "r") as f:
    R.check(list(f["/loads/step"][()]) == [0, 2, 4], f"/loads/step = {list(f['/loads/step'][()])}")
    R.check(f["/loads/routed"].shape == (3, 1, 16, 8), f"/loads/routed shape {f['/loads/routed'].shape}")
val = R.path("val.h5")
res = R.serial(["simulate", f"--cluster.file={MACHINE}", f"--simulate.validate={run}",
                f"--simulate.output={val}"], timeout=120)
R.check(res.rc == 0 and "traffic_tokens: yes" in res.out, "validate: traffic from the loads == measured",
        res.describe)
chk = projection_check(val)
R.check(chk.rc == 0, "h5check --projection accepts /validation", chk.describe)
with h5py.File(val, "r") as f:
    R.check(int(f["/validation/traffic_matches_run"][0]) == 1, "/validation/traffic_matches_run = 1")
    R.check(f["/validation/predicted_time_step"][0] > 0 and f["/validation/measured_time_step"][0] > 0,
            "measured and predicted step times present")

# Every recorded loads sample after the first drives the prediction (the measured statistic is
# the median over steps after the first, and the loads drift while the router trains). A copy of
# the run whose later samples send every token to rank 0's experts (routed counts of experts 4..7
# moved onto 0..3; the first sample, which /traffic/tokens holds, untouched) must be predicted
# with rank 0 busier: more expert time, and rank 1 waiting in the combine. Until 2026-11-30 the
# validation used the first sample only and predicted both files alike.
skew = R.path("run_skew.h5")
shutil.copyfile(run, skew)
with h5py.File(skew, "r+") as f:
    routed = f["/loads/routed"][()]
    routed[1:, :, :, :4] += routed[1:, :, :, 4:]
    routed[1:, :, :, 4:] = 0
    f["/loads/routed"][...] = routed
val_skew = R.path("val_skew.h5")
res = R.serial(["simulate", f"--cluster.file={MACHINE}", f"--simulate.validate={skew}",
                f"--simulate.output={val_skew}"], timeout=120)
R.check(res.rc == 0 and "traffic_tokens: yes" in res.out, "validate the skewed copy", res.describe)
with h5py.File(val, "r") as f, h5py.File(val_skew, "r") as g:
    e0, e1 = f["/validation/predicted_time_expert"][0], g["/validation/predicted_time_expert"][0]
    c0, c1 = f["/validation/predicted_time_combine"][0], g["/validation/predicted_time_combine"][0]
    R.check(e1 > 1.1 * e0 and c1 > c0,
            f"later load samples drive the prediction: expert {1e3 * e0:.3f} -> {1e3 * e1:.3f} ms, "
            f"combine {1e3 * c0:.3f} -> {1e3 * c1:.3f} ms")

R.section("run: workload at other rank counts (strong scaling keeps groups whole)")
res = R.serial(["simulate", LAYER] + SMALL + [f"--cluster.file={MACHINE}", "--simulate.ranks=1,2,4,8,16",
                "--simulate.scaling=strong", f"--simulate.workload=run:{run}",
                f"--simulate.output={R.path('runw.h5')}"], timeout=120)
R.check(res.rc == 0, "simulate with the recorded loads exits 0", res.describe)
with h5py.File(R.path("runw.h5"), "r") as f, h5py.File(run, "r") as g:
    d = f["/projection/dropped_fraction"][()]
    kept = g["/loads/kept"][0].sum()
    routed = g["/loads/routed"][0].sum()
    R.check(np.allclose(d, 1 - kept / routed, rtol=0, atol=1e-15),
            f"dropped fraction = the run's first sample at every rank count ({d[0]:.4f})")
res = R.serial(["simulate", LAYER] + [a for a in SMALL if "group_size" not in a]
               + [f"--cluster.file={MACHINE}", "--simulate.ranks=2", "--simulate.scaling=strong",
                "--routing.group_size=128", f"--simulate.workload=run:{run}",
                "--simulate.output=x.h5"])
R.check(res.rc == 2 and "simulate.workload" in res.err, "a different group size is refused (exit 2)",
        res.describe)

R.section("trace: workload: the router's drops on a logits trace, at every rank count")
trace = R.path("trace.h5")
rng = np.random.default_rng(7)
with h5py.File(trace, "w") as f:
    f["logits"] = rng.normal(size=(2048, 8)) + np.linspace(0.0, 1.5, 8)  # skewed experts
res = R.serial(["route", f"--trace.input={trace}", f"--trace.output={R.path('routed.h5')}",
                "--routing.group_size=256", "--routing.k=2"])
R.check(res.rc == 0, "moesim route on the trace", res.describe)
res = R.serial(["simulate", LAYER, f"--cluster.file={MACHINE}", "--simulate.ranks=1,2,8",
                "--simulate.scaling=strong", f"--simulate.workload=trace:{trace}",
                f"--simulate.output={R.path('tr.h5')}"])
R.check(res.rc == 0, "simulate with trace: exits 0", res.describe)
if res.rc == 0:
    with h5py.File(R.path("tr.h5"), "r") as f, h5py.File(R.path("routed.h5"), "r") as g:
        d = f["/projection/dropped_fraction"][()]
        want = float(g.attrs["dropped_fraction"])
        R.check(want > 0 and np.all(d == want), f"dropped fraction {list(d)} == moesim route's {want:.6f}")

R.section("calibrate on 2 ranks writes a machine file simulate accepts")
m = R.path("measured.ini")
res = R.mpirun(2, ["calibrate", LAYER, "--model.d_model=64", "--model.d_ff=128", "--cluster.calibrate_expert_shapes=32x64",
                  f"--cluster.output={m}"], timeout=240)
R.check(res.rc == 0 and os.path.isfile(m), "calibrate exits 0 and writes the machine file", res.describe)
text = open(m).read() if os.path.isfile(m) else ""
for key in ["ranks_per_node", "intra_latency_us", "intra_bandwidth_GBps", "inter_latency_us",
            "inter_bandwidth_GBps", "gemm_GFLOPs", "memory_bandwidth_GBps", "intra_fit_rel_rms",
            "expert_table"]:
    R.check(f"\n{key} = " in text, f"machine file has {key}")
# Both ranks on one node of this machine (one boot id): they share its cores only when they
# outnumber them (the emulated cluster's case is checked by the cluster tier).
cpus = len(os.sched_getaffinity(0))
want = cpus if 2 > cpus else 0
R.check(f"\nshared_cores = {want}\n" in text, f"shared_cores = {want} (2 ranks, {cpus} usable CPUs)")
# The expert table: both shapes, both precisions, rows 8, 16, 32, ... with positive times.
table = {}
for line in text.splitlines():
    if line.startswith("expert_table = "):
        for entry in line[len("expert_table = "):].split(";"):
            prec, shape, rows, fwd, bwd = entry.split()
            table.setdefault((prec, shape), []).append((int(rows), float(fwd), float(bwd)))
R.check(sorted(table) == sorted((p, s) for p in ["float32", "float64", "bfloat16"] for s in ["32x64", "64x128"]),
        f"expert_table covers 64x128 (the config) and 32x64 (calibrate_expert_shapes) in float32, float64, bfloat16: {sorted(table)}")
R.check(all([r for r, _, _ in pts] == [8 << i for i in range(len(pts))] and len(pts) >= 3 and
            all(f > 0 and b > 0 for _, f, b in pts) for pts in table.values()),
        "each curve: rows 8, 16, 32, ... (>= 3 points), positive forward and backward times")
res = R.serial(["simulate", LAYER, "--model.d_model=64", "--model.d_ff=128", f"--cluster.file={m}",
                "--simulate.ranks=2", f"--simulate.output={R.path('m.h5')}"])
R.check(res.rc == 0, "simulate accepts the calibrated machine file", res.describe)
# The table is what the expert phase uses: without it (the roofline) the prediction differs.
m_roof = R.path("measured_no_table.ini")
with open(m_roof, "w") as out:
    out.write("".join(l + "\n" for l in text.splitlines() if not l.startswith("expert_table = ")))
res2 = R.serial(["simulate", LAYER, "--model.d_model=64", "--model.d_ff=128", f"--cluster.file={m_roof}",
                 "--simulate.ranks=2",
                 f"--simulate.output={R.path('m_roof.h5')}"])
if res.rc == 0 and res2.rc == 0:
    with h5py.File(R.path("m.h5"), "r") as f, h5py.File(R.path("m_roof.h5"), "r") as g:
        a, b = float(f["/projection/time_expert"][0]), float(g["/projection/time_expert"][0])
    R.check(a > 0 and b > 0 and abs(a - b) > 1e-3 * b, f"time_expert from the table {a:.6g} s != roofline {b:.6g} s")
else:
    R.check(False, "simulate without the expert table", res2.describe)
res = R.mpirun(2, ["calibrate", LAYER, "--cluster.calibrate_expert_shapes=64x0", f"--cluster.output={R.path('bad.ini')}"])
R.check(res.rc == 2 and "cluster.calibrate_expert_shapes" in res.err and not os.path.isfile(R.path("bad.ini")),
        "calibrate with a bad cluster.calibrate_expert_shapes -> exit 2 naming the key, no machine file", res.describe)

R.finish()
