#!/usr/bin/python3
"""Regression: every routing rule and drop policy runs end to end through `moesim run`.

For each rule (dense, topk with the expert bias, noisy_topk, switch with jitter, gshard with random
routing, expert_choice, hash, base, topk with sigmoid scores and the bias, shared experts, the
global-batch aux loss) and each drop policy: a short float64 run on 2 ranks exits 0, its
result file passes tools/h5check.py (which checks loss == task_loss + sum coef * router loss over all
five losses), the new /steps datasets aux_gshard_loss, importance_loss, load_loss are there, and the
per-expert loads obey the rule (dense: every expert gets every token; expert_choice: exactly C
tokens per expert and group; base: exactly S/E; hash and switch: one per token; gshard: 1..2 per
token). noisy_topk, gshard, switch with jitter, base and aux_scope = batch give the same loss curve
on 1 and 2 ranks. Impossible combinations
exit 2 naming the key.
"""
import math
import sys

import h5py
import numpy as np

sys.dont_write_bytecode = True  # keep tests/regression free of __pycache__

from regtest import Regression

R = Regression(__doc__.splitlines()[0])
TOKENS, E, S, STEPS = 64, 4, 16, 6

BASE = f"""[model]
d_model = 8
d_ff = 16
layers = 2
precision = float64

[routing]
num_experts = {E}
group_size = {S}
capacity_factor = 1.0

[training]
steps = {STEPS}
eval_every = 3
learning_rate = 0.01

[data]
tokens_per_step = {TOKENS}
eval_tokens = 64
input_dim = 8
num_clusters = 4

[output]
log_every = 0
"""
base = R.write("base.ini", BASE)

RULES = {
    "dense": ["--routing.rule=dense", "--routing.aux_gshard_loss_coef=0.03", "--routing.importance_loss_coef=0.02"],
    "topk_bias": ["--routing.rule=topk", "--routing.k=2", "--routing.bias_update_rate=0.01",
                  "--routing.drop_policy=priority"],
    "noisy_topk": ["--routing.rule=noisy_topk", "--routing.k=2", "--routing.importance_loss_coef=0.05",
                   "--routing.load_loss_coef=0.05", "--routing.z_loss_coef=0.001"],
    "switch_jitter": ["--routing.rule=switch", "--routing.k=1", "--routing.jitter_eps=0.2",
                      "--routing.drop_policy=probs"],
    "gshard": ["--routing.rule=gshard", "--routing.k=2", "--routing.aux_gshard_loss_coef=0.02",
               "--routing.drop_policy=choice_position"],
    "expert_choice": ["--routing.rule=expert_choice", "--routing.capacity_factor=1.5"],
    "hash": ["--routing.rule=hash", "--routing.k=1", "--routing.aux_loss_coef=0", "--routing.z_loss_coef=0"],
    "base": ["--routing.rule=base", "--routing.k=1", "--routing.z_loss_coef=0.001"],
    "sigmoid_bias": ["--routing.rule=topk", "--routing.k=2", "--routing.score=sigmoid",
                     "--routing.bias_update_rate=0.01"],
    "shared": ["--routing.rule=topk", "--routing.k=2", "--routing.shared_experts=2"],
    "aux_batch": ["--routing.rule=topk", "--routing.k=2", "--routing.aux_scope=batch",
                  "--routing.aux_loss_coef=0.1"],
}


def run(name, ranks, extra):
    out = R.path(f"{name}_np{ranks}.h5")
    res = R.mpirun(ranks, ["run", base, f"--output.file={out}"] + extra, timeout=90)
    return out, res


def load(path):
    with h5py.File(path, "r") as f:
        return {k: f["steps"][k][()] for k in f["steps"]}


def per_step_layer_sum(a):
    return a.sum(axis=2)  # [steps, layers]


results = {}
for name, extra in RULES.items():
    R.section(name)
    out, res = run(name, 2, extra)
    if not R.check(res.rc == 0, f"{name}: moesim run on 2 ranks exits 0", res.describe):
        continue
    chk = R.h5check(out)
    R.check(chk.rc == 0, f"{name}: h5check accepts the file (incl. the loss identity): {chk.out.strip()}",
            chk.describe)
    d = load(out)
    results[name] = d
    R.check(all(k in d for k in ["aux_gshard_loss", "importance_loss", "load_loss"]),
            f"{name}: /steps has aux_gshard_loss, importance_loss, load_loss")
    R.check(all(np.isfinite(d[k]).all() for k in ["loss", "aux_loss", "aux_gshard_loss", "importance_loss",
                                                  "load_loss", "z_loss"]), f"{name}: all losses finite")
    load_sum = per_step_layer_sum(d["expert_load"])
    if name == "dense":
        R.check((load_sum == TOKENS * E).all() and (d["expert_kept"] == d["expert_load"]).all(),
                f"dense: every expert gets every token ({TOKENS * E} per layer), nothing dropped",
                f"{load_sum.tolist()}")
        R.check(np.allclose(d["aux_loss"], 1.0, atol=1e-12), "dense: aux loss is exactly 1", f"{d['aux_loss']}")
    elif name == "expert_choice":
        C = math.ceil(S * 1.5 / E)
        R.check((d["expert_load"] == (TOKENS // S) * C).all() and (d["dropped_fraction"] == 0).all(),
                f"expert_choice: every expert takes C = ceil(S * cf / E) = {C} tokens per group, no drops",
                f"{d['expert_load'].tolist()}")
    elif name in ("hash", "switch_jitter", "base"):
        R.check((load_sum == TOKENS).all(), f"{name}: one assignment per token", f"{load_sum.tolist()}")
    elif name == "gshard":
        R.check(((load_sum >= TOKENS) & (load_sum <= 2 * TOKENS)).all() and (load_sum < 2 * TOKENS).any(),
                "gshard: 1..2 assignments per token, random routing skips some 2nd experts", f"{load_sum.tolist()}")
    else:
        R.check((load_sum == 2 * TOKENS).all(), f"{name}: k = 2 assignments per token", f"{load_sum.tolist()}")
    if name == "base":
        R.check((d["expert_load"] == TOKENS // E).all() and (d["dropped_fraction"] == 0).all(),
                f"base: exactly S/E tokens per expert and group ({TOKENS // E} per layer), no drops",
                f"{d['expert_load'].tolist()}")
        R.check(np.allclose(d["aux_loss"], 1.0, atol=1e-12), "base: aux loss is exactly 1 (f_e = 1/E)")
        with h5py.File(out, "r") as f:
            eps = f["steps/base_epsilon"][()]
            R.check(eps.shape == (STEPS, 2) and (eps > 0).all() and f.attrs["base_epsilon"] == eps.max(),
                    f"base: /steps/base_epsilon [steps, layers] > 0 and root attribute base_epsilon = its max "
                    f"({f.attrs['base_epsilon']:.3e})")
    if name == "hash":
        R.check((d["aux_loss"] == 0).all() and (d["z_loss"] == 0).all(), "hash: no router, aux and z are 0")

R.section("random rules, base and the global-batch loss on 1 vs 2 ranks")
for name in ["noisy_topk", "gshard", "switch_jitter", "base", "aux_batch"]:
    if name not in results:
        continue
    out, res = run(name, 1, RULES[name])
    if not R.check(res.rc == 0, f"{name}: moesim run on 1 rank exits 0", res.describe):
        continue
    one, two = load(out), results[name]
    rel = float(np.max(np.abs(one["loss"] - two["loss"]) / np.abs(one["loss"])))
    R.check(rel < 1e-9 and np.array_equal(one["expert_load"], two["expert_load"]),
            f"{name}: same loss curve (max rel diff {rel:.1e}) and same expert loads on 1 and 2 ranks")

R.section("drop policies (topk, k = 2)")
for policy in ["position", "choice_position", "probs", "priority"]:
    out, res = run(f"policy_{policy}", 2, ["--routing.rule=topk", f"--routing.drop_policy={policy}",
                                             "--routing.capacity_factor=0.75"])
    if R.check(res.rc == 0, f"{policy}: exits 0", res.describe):
        d = load(out)
        R.check((d["dropped_fraction"] > 0).all() and (d["expert_kept"] <= d["expert_load"]).all(),
                f"{policy}: capacity 0.75 drops assignments; kept <= routed")

R.section("impossible combinations exit 2 naming the key")
for extra, key in [(["--routing.rule=gshard", "--routing.k=3"], "routing.k"),
                   (["--routing.rule=hash", "--routing.k=1"], "routing.aux_loss_coef"),
                   (["--routing.rule=topk", "--routing.jitter_eps=0.1"], "routing.jitter_eps"),
                   (["--routing.rule=expert_choice", "--routing.dropless=true"], "routing.dropless"),
                   (["--routing.rule=base", "--routing.k=1", "--routing.group_size=6"],
                    "routing.group_size")]:
    out = R.path("bad.h5")
    res = R.mpirun(1, ["run", base, f"--output.file={out}"] + extra, timeout=60)
    R.check(res.rc == 2 and key in res.err, f"{' '.join(extra)}: exit 2 naming {key}", res.describe)

R.finish()
