#!/usr/bin/python3
"""Regression: `moesim route` replays a Megatron-Core router trace (JSONL) with capacity and drop policy.

1. A random trace of 2 ranks x 3 steps x 2 layers x 48 tokens, top-2 of E = 8 (skewed, so experts
   overflow), plus an "mtp" record and a blank line: exit 0 on 2 ranks; per (step, layer) and in
   total the routed and kept loads equal an independent numpy replay of routing.md's `position` and
   `choice_position` policies with C = ceil(k * S * cf / E) per record (group_size = 0) and per
   group of 16 tokens; the output passes h5check --route.
2. Bad input exits 2 on every rank naming the key: a malformed line (file:line in the message), an
   expert index >= routing.num_experts, drop_policy = probs (needs probabilities), a group size
   that does not divide a record.
"""
import json
import math
import sys
from fractions import Fraction

import h5py
import numpy as np

sys.dont_write_bytecode = True  # keep tests/regression free of __pycache__

from regtest import Regression

R = Regression(__doc__.splitlines()[0])
E, K, TOK, CF = 8, 2, 48, "1.1"
rng = np.random.default_rng(7)
records = []
lines = []
for step in range(3):
    for layer in range(2):
        for rank in range(2):
            w = np.array([6, 3, 2, 1, 1, 1, 1, 1], float)
            w /= w.sum()
            top = np.array([rng.choice(E, size=K, replace=False, p=w) for _ in range(TOK)])
            records.append((step, layer, rank, top))
            lines.append(json.dumps({"step": step, "stage": "pre_dispatch", "block": "decoder",
                                     "layer": layer, "rank": rank, "num_tokens": TOK, "topk": K,
                                     "top_indices": top.tolist()}))
lines.insert(3, json.dumps({"step": 0, "block": "mtp", "mtp_idx": 0, "layer": 0, "rank": 0,
                            "num_tokens": 1, "topk": 2, "top_indices": [[0, 1]]}))
lines.insert(5, "")
trace = R.write("router_trace_rank0.jsonl", "\n".join(lines) + "\n")


def replay(policy, S):
    """Independent: per group of S tokens of one record, C = ceil(k S cf / E); position keeps in
    token order (choices mixed), choice_position all 1st choices (token order) then all 2nd."""
    C = math.ceil(Fraction(K * S, E) * Fraction(CF))
    per = {}
    for step, layer, rank, top in records:
        routed, kept = per.setdefault((step, layer), (np.zeros(E, int), np.zeros(E, int)))
        for g in range(0, TOK, S):
            grp = top[g:g + S]
            order = ([(t, c) for t in range(S) for c in range(K)] if policy == "position"
                     else [(t, c) for c in range(K) for t in range(S)])
            count = np.zeros(E, int)
            for t, c in order:
                e = grp[t, c]
                routed[e] += 1
                if count[e] < C:
                    count[e] += 1
                    kept[e] += 1
    return per


for policy in ["position", "choice_position"]:
    for S in [0, 16]:
        R.section(f"{policy}, group_size {S}")
        out = R.path(f"out_{policy}_{S}.h5")
        res = R.mpirun(2, ["route", f"--trace.input={trace}", f"--trace.output={out}",
                           f"--routing.num_experts={E}", f"--routing.capacity_factor={CF}",
                           f"--routing.drop_policy={policy}", f"--routing.group_size={S}",
                           "--output.echo_config=false"])
        if not R.check(res.rc == 0, "exits 0", res.describe):
            continue
        R.check("1 mtp records skipped" in res.out, "reports the skipped mtp record", res.out)
        want = replay(policy, S or TOK)
        with h5py.File(out, "r") as f:
            steps, layers = f["trace/step"][()], f["trace/layer"][()]
            lr, lk = f["trace/load_routed"][()], f["trace/load_kept"][()]
            ok = len(steps) == 6
            for i, (s, l) in enumerate(zip(steps, layers)):
                r, k = want[(int(s), int(l))]
                ok = ok and np.array_equal(lr[i], r) and np.array_equal(lk[i], k)
            R.check(ok, "per (step, layer) routed and kept loads equal the numpy replay",
                    f"{lk.tolist()} vs {[want[k][1].tolist() for k in sorted(want)]}")
            tot_k = sum(v[1] for v in want.values())
            R.check(np.array_equal(f["load/kept"][()], tot_k) and (tot_k < 6 * 2 * TOK * K / E * 2).all()
                    and tot_k.sum() < 6 * 2 * TOK * K, "total kept load matches and capacity dropped some",
                    f"{f['load/kept'][()].tolist()} vs {tot_k.tolist()}")
            R.check(len(f["routing/token"]) == tot_k.sum() and np.isnan(f["routing/weight"][()]).all(),
                    "one kept row per kept assignment; weights are NaN (not in the trace)")
        chk = R.h5check(out, route=True)
        R.check(chk.rc == 0, f"h5check --route accepts it: {chk.out.strip()}", chk.describe)

R.section("bad input: exit 2 naming the key, on every rank")
bad = R.write("bad.jsonl", lines[0] + "\n" + '{"step": 0, "layer": 0, "top_indices": [[1, 2], [3]]}\n')
for extra, key, text in [
        ([f"--trace.input={bad}"], "trace.input", "bad.jsonl:2: top_indices[1] has 1 entries"),
        ([f"--trace.input={trace}", "--routing.num_experts=4"], "routing.num_experts", "largest expert index"),
        ([f"--trace.input={trace}", f"--routing.num_experts={E}", "--routing.drop_policy=probs"],
         "routing.drop_policy", "probabilities"),
        ([f"--trace.input={trace}", f"--routing.num_experts={E}", "--routing.group_size=5"],
         "routing.group_size", "divisor of every record"),
]:
    out = R.path("bad_out.h5")
    res = R.mpirun(2, ["route", f"--trace.output={out}", "--output.echo_config=false"] + extra)
    R.check(res.rc == 2 and key in res.err and text in res.err, f"{key}: exit 2 with '{text}'", res.describe)

R.finish()
