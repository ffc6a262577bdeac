#!/usr/bin/python3
"""Regression: `moesim route` reproduces routing.md's L1 reference case and an independent numpy model.

1. L1 (routing.md "Reference numbers"): float64 /logits [4, 4], k = 2, cf = 1, min_capacity = 1,
   drop policies `probs` and `position`: the kept (token, expert, slot) rows, capacity 2,
   aux_loss 1.0334199, dropped rows = complement of the kept ones among all top-2 assignments,
   weights = softmax probabilities (numpy), load/routed and load/kept, tools/h5check.py --route.
2. A float32 trace of 400 tokens in 2 groups of 200, E = 8, k = 2, cf = 1.1 (C = ceil(50 * 1.1)
   = 55 exactly, 56 in float64 arithmetic), with skewed logits so that experts overflow, compared
   with a numpy implementation of routing.md's definitions (top-k, position and probs policies,
   capacity, slots, aux and z losses, load counts).
3. Bad input exits with 2 and names the key: missing trace, 1-D /logits, group_size not dividing
   T, k > E; no output file is written.
"""
import math
import os
import sys
from fractions import Fraction

import h5py
import numpy as np

sys.dont_write_bytecode = True  # keep tests/regression free of __pycache__

from regtest import Regression, as_text

R = Regression(__doc__.splitlines()[0])

L1 = np.array([[.11, .2, .1, .3], [.3, .4, .11, .1], [.11, .1, .6, .5], [.1, .11, .7, .8]], dtype=np.float64)
L1_KEPT = {
    "probs": [(0, 1, 0), (1, 0, 0), (1, 1, 1), (2, 2, 0), (2, 3, 0), (3, 2, 1), (3, 3, 1)],
    "position": [(0, 1, 0), (0, 3, 0), (1, 0, 0), (1, 1, 1), (2, 2, 0), (2, 3, 1), (3, 2, 1)],
}
L1_AUX = 1.0334199


def softmax(h):
    h = np.asarray(h, dtype=np.float64)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def logsumexp(h):
    h = np.asarray(h, dtype=np.float64)
    m = h.max(axis=1)
    return m + np.log(np.exp(h - m[:, None]).sum(axis=1))


def reference_route(logits, k, cf, min_capacity, group_size, policy):
    """routing.md, independently: top-k of softmax (ties -> lower expert), capacity
    C = max(ceil(k*S/E*cf), min_capacity) in exact arithmetic, `position` keeps in token order,
    `probs` keeps the C largest p per expert (ties -> lower token); slot = rank among the kept
    assignments of that (group, expert) in token order; aux = E/k * sum_e f_e P_e per group,
    z = mean (logsumexp h)^2; both averaged over groups."""
    T, E = logits.shape
    S = group_size or T
    C = max(math.ceil(Fraction(k * S, E) * Fraction(cf)), min_capacity)
    p = softmax(logits)
    kept, dropped, aux, z = [], [], [], []
    routed = np.zeros(E, np.int64)
    for g0 in range(0, T, S):
        pg, hg = p[g0:g0 + S], logits[g0:g0 + S]
        choice = np.argsort(-pg, axis=1, kind="stable")[:, :k]           # [S, k] expert ids
        cnt = np.bincount(choice.ravel(), minlength=E)
        routed += cnt
        aux.append(E / k * np.sum(cnt / S * pg.mean(axis=0)))
        z.append(np.mean(logsumexp(hg) ** 2))
        for e in range(E):
            toks = np.sort(np.nonzero((choice == e).any(axis=1))[0])      # token order
            if policy == "probs":
                order = sorted(toks, key=lambda t: (-pg[t, e], t))
                keep = set(order[:C])
            else:
                keep = set(toks[:C])
            slot = 0
            for t in toks:
                if t in keep:
                    kept.append((g0 + t, e, slot, p[g0 + t, e]))
                    slot += 1
                else:
                    dropped.append((g0 + t, e))
    kept.sort()
    return dict(C=C, kept=kept, dropped=sorted(dropped), routed=routed, aux=float(np.mean(aux)),
                z=float(np.mean(z)))


def read_route(path):
    with h5py.File(path, "r") as f:
        d = {name: f[name][()] for name in ["/routing/token", "/routing/expert", "/routing/slot", "/routing/weight",
                                            "/routing/dropped_token", "/routing/dropped_expert",
                                            "/load/routed", "/load/kept"]}
        d.update({a: f.attrs[a] for a in f.attrs})
    d["rows"] = list(zip(d["/routing/token"].tolist(), d["/routing/expert"].tolist(), d["/routing/slot"].tolist()))
    d["drows"] = list(zip(d["/routing/dropped_token"].tolist(), d["/routing/dropped_expert"].tolist()))
    return d


def route(trace, out, *extra, ranks=None):
    args = ["route", f"--trace.input={trace}", f"--trace.output={out}"] + list(extra)
    return R.mpirun(ranks, args) if ranks else R.serial(args)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


# ---------------------------------------------------------------------------------------------
l1 = R.path("l1.h5")
with h5py.File(l1, "w") as f:
    f["/logits"] = L1
p1 = softmax(L1)
top2 = {(t, int(e)) for t in range(4) for e in np.argsort(-p1[t], kind="stable")[:2]}
L1_ARGS = ["--routing.num_experts=4", "--routing.k=2", "--routing.capacity_factor=1", "--routing.min_capacity=1"]

for policy in ["probs", "position"]:
    R.section(f"L1 reference case, drop_policy={policy}")
    out = R.path(f"l1_{policy}.h5")
    res = route(l1, out, *L1_ARGS, f"--routing.drop_policy={policy}")
    if not R.check(res.rc == 0 and os.path.isfile(out), f"moesim route exits 0 and writes the file (rc {res.rc})",
                   res.describe):
        continue
    chk = R.h5check(out, route=True)
    R.check(chk.rc == 0, "tools/h5check.py --route accepts it", chk.describe)
    d = read_route(out)
    R.check(d["rows"] == L1_KEPT[policy], "kept (token, expert, slot) rows equal routing.md's list",
            f"got      {d['rows']}\nexpected {L1_KEPT[policy]}")
    R.check(int(d["capacity"]) == 2, f"capacity attribute == 2 (got {d['capacity']})")
    R.check(abs(float(d["aux_loss"]) - L1_AUX) < 1e-6, f"aux_loss {float(d['aux_loss']):.9f} == {L1_AUX} within 1e-6")
    want_drop = sorted(top2 - {(t, e) for t, e, _ in L1_KEPT[policy]})
    R.check(sorted(d["drows"]) == want_drop and len(set(d["drows"])) == len(d["drows"]),
            f"dropped rows are exactly the complement {want_drop}", f"got {d['drows']}")
    w_want = np.array([p1[t, e] for t, e, _ in d["rows"]])
    err = float(np.max(np.abs(d["/routing/weight"] - w_want))) if len(w_want) else 0.0
    R.check(len(w_want) == len(d["/routing/weight"]) and err < 1e-12,
            f"weights equal the softmax probabilities (max |diff| {err:.2e})")
    routed = np.bincount([e for _, e in top2], minlength=4)
    keptc = np.bincount([e for _, e, _ in L1_KEPT[policy]], minlength=4)
    R.check(np.array_equal(d["/load/routed"], routed) and np.array_equal(d["/load/kept"], keptc),
            f"load/routed {routed.tolist()} and load/kept {keptc.tolist()}",
            f"got routed {d['/load/routed'].tolist()} kept {d['/load/kept'].tolist()}")
    z_want = float(np.mean(logsumexp(L1) ** 2))
    R.check(rel(float(d["z_loss"]), z_want) < 1e-12, f"z_loss {float(d['z_loss']):.9f} == numpy {z_want:.9f}")
    R.check(abs(float(d["dropped_fraction"]) - 1 / 8) < 1e-15, f"dropped_fraction == 1/8 (got {d['dropped_fraction']})")
    R.check("drop_policy = " + policy in as_text(d["config"]), "config attribute records the drop policy")

R.section("L1 position case on 2 MPI ranks: same output as the serial run")
out2 = R.path("l1_position_np2.h5")
res = route(l1, out2, *L1_ARGS, "--routing.drop_policy=position", ranks=2)
if R.check(res.rc == 0 and os.path.isfile(out2), f"mpiexec -n 2 moesim route exits 0 (rc {res.rc})", res.describe):
    a, b = read_route(R.path("l1_position.h5")), read_route(out2)
    R.check(a["rows"] == b["rows"] and a["drows"] == b["drows"]
            and np.array_equal(a["/routing/weight"], b["/routing/weight"]), "identical routing rows and weights")

# ---------------------------------------------------------------------------------------------
T, E, K, S, CF = 400, 8, 2, 200, "1.1"
rng = np.random.default_rng(20240611)
logits32 = (rng.normal(size=(T, E)) + np.linspace(1.0, -1.0, E)).astype(np.float32)   # experts 0..2 overflow
trace32 = R.path("skewed_f32.h5")
with h5py.File(trace32, "w") as f:
    f["/logits"] = logits32
R.section("float32 trace: the case itself discriminates")
refs = {pol: reference_route(logits32.astype(np.float64), K, CF, 0, S, pol) for pol in ["position", "probs"]}
R.check(math.ceil(K * S / E * float(CF)) == 56 and refs["position"]["C"] == 55,
        "float64 arithmetic would give C = 56, exact arithmetic 55 (routing.md's rounding rule is exercised)")
R.check(refs["position"]["kept"] != refs["probs"]["kept"], "numpy's position and probs policies keep different rows")
for policy in ["position", "probs"]:
    R.section(f"float32 trace, T={T}, E={E}, k={K}, 2 groups of {S}, cf={CF}, drop_policy={policy} vs numpy")
    ref = refs[policy]
    out = R.path(f"skewed_{policy}.h5")
    res = route(trace32, out, f"--routing.num_experts={E}", f"--routing.k={K}", f"--routing.capacity_factor={CF}",
                "--routing.min_capacity=0", f"--routing.group_size={S}", f"--routing.drop_policy={policy}")
    if not R.check(res.rc == 0 and os.path.isfile(out), f"moesim route exits 0 (rc {res.rc})", res.describe):
        continue
    chk = R.h5check(out, route=True)
    R.check(chk.rc == 0, "tools/h5check.py --route accepts it", chk.describe)
    d = read_route(out)
    R.check(int(d["capacity"]) == ref["C"], f"capacity attribute == {ref['C']} (got {d['capacity']})")
    R.check(len(ref["dropped"]) > 0, f"the case drops assignments ({len(ref['dropped'])} in numpy)")
    want_rows = [(t, e, s) for t, e, s, _ in ref["kept"]]
    R.check(d["rows"] == want_rows, f"{len(want_rows)} kept (token, expert, slot) rows equal numpy's",
            lambda: f"first difference at row "
            f"{next((i for i, (x, y) in enumerate(zip(d['rows'], want_rows)) if x != y), min(len(d['rows']), len(want_rows)))}"
            f": got {len(d['rows'])} rows, expected {len(want_rows)}")
    R.check(sorted(d["drows"]) == ref["dropped"], f"{len(ref['dropped'])} dropped (token, expert) rows equal numpy's",
            f"got {len(d['drows'])}")
    w_want = np.array([w for *_, w in ref["kept"]])
    ok = len(w_want) == len(d["/routing/weight"])
    err = float(np.max(np.abs(d["/routing/weight"] - w_want))) if ok else float("inf")
    R.check(ok and err < 1e-12, f"weights equal numpy softmax (max |diff| {err:.2e})")
    kept_cnt = np.bincount([e for _, e, _, _ in ref["kept"]], minlength=E)
    R.check(np.array_equal(d["/load/routed"], ref["routed"]), f"load/routed == {ref['routed'].tolist()}",
            f"got {d['/load/routed'].tolist()}")
    R.check(np.array_equal(d["/load/kept"], kept_cnt), f"load/kept == {kept_cnt.tolist()}",
            f"got {d['/load/kept'].tolist()}")
    R.check(rel(float(d["aux_loss"]), ref["aux"]) < 1e-9, f"aux_loss {float(d['aux_loss']):.10f} == numpy {ref['aux']:.10f}")
    R.check(rel(float(d["z_loss"]), ref["z"]) < 1e-9, f"z_loss {float(d['z_loss']):.10f} == numpy {ref['z']:.10f}")
    df = len(ref["dropped"]) / (T * K)
    R.check(abs(float(d["dropped_fraction"]) - df) < 1e-12, f"dropped_fraction == {df:.6f} (got {d['dropped_fraction']})")

# ---------------------------------------------------------------------------------------------
bad1d = R.path("bad_1d.h5")
with h5py.File(bad1d, "w") as f:
    f["/logits"] = np.arange(8, dtype=np.float64)
ERRORS = [
    ("missing trace file", R.path("no_such_trace.h5"), [], ["trace.input", "no_such_trace.h5"]),
    ("1-D /logits", bad1d, [], ["trace.input", "bad_1d.h5"]),
    ("group_size does not divide T", l1, ["--routing.group_size=3"], ["routing.group_size", "3", "4"]),
    ("k > E", l1, ["--routing.k=5"], ["routing.k", "5"]),
]
for title, trace, extra, needles in ERRORS:
    R.section(f"error: {title}")
    out = R.path("err_out.h5")
    res = route(trace, out, "--routing.num_experts=4", *extra)
    R.check(not res.timed_out and res.rc == 2, f"exit code 2 (got {res.rc})", res.describe)
    for n in needles:
        R.check(n in res.err, f"stderr names {n!r}", res.describe)
    R.check(not os.path.exists(out), "no output file written")

R.finish()
