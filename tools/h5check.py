#!/usr/bin/python3
"""Validates a MoESim HDF5 file against the outputs.md contract (names, shapes, dtypes, flags).

    h5check.py RUN.h5                  a `moesim run` result file (must be complete)
    h5check.py --allow-incomplete RUN.h5   also accept a file of a killed/running run
    h5check.py --route OUT.h5          a `moesim route` output file
    h5check.py --projection OUT.h5     a `moesim simulate` output file (simulate.md)

Prints "OK <file>: ..." and exits 0 when the file conforms; otherwise lists every problem found
and exits 1 (2 when the file cannot be opened). Uses Debian's /usr/bin/python3 with h5py+numpy.
"""
import argparse
import configparser
import sys

import h5py
import numpy as np

STEP_F64 = ["loss", "task_loss", "aux_loss", "z_loss", "dropped_fraction", "time_step", "time_gate",
            "time_dispatch", "time_expert", "time_combine", "time_backward", "time_sync"]
# Router losses written by MoESim beside the contract's aux_loss / z_loss, and the [routing]
# key of each loss's coefficient: loss = task_loss + sum coef * value must hold per row.
ROUTER_LOSS_COEF = {"aux_loss": "aux_loss_coef", "aux_gshard_loss": "aux_gshard_loss_coef",
                    "importance_loss": "importance_loss_coef", "load_loss": "load_loss_coef",
                    "z_loss": "z_loss_coef"}
STEP_F64_EXTRA = ["aux_gshard_loss", "importance_loss", "load_loss"]
ROOT_STRINGS = ["schema_version", "moesim_version", "git_commit", "config", "created_utc", "slurm_job_id"]


class Checker:
    """Collects problems instead of stopping at the first, so one run shows everything wrong."""

    def __init__(self, f):
        self.f = f
        self.problems = []

    def problem(self, text):
        self.problems.append(text)

    # -- typed access; each returns None (after recording a problem) when the check fails --

    def dataset(self, name, kind, itemsize, ndim):
        """Dataset `name` with dtype kind ('f', 'i', 'u') and item size, and `ndim` dimensions."""
        obj = self.f.get(name)
        if obj is None:
            self.problem(f"{name}: missing")
            return None
        if not isinstance(obj, h5py.Dataset):
            self.problem(f"{name}: is not a dataset")
            return None
        want = {"f": "float", "i": "int", "u": "uint"}[kind] + str(8 * itemsize)
        if obj.dtype.kind != kind or obj.dtype.itemsize != itemsize:
            self.problem(f"{name}: dtype {obj.dtype}, expected {want}")
            return None
        if obj.ndim != ndim:
            self.problem(f"{name}: shape {obj.shape}, expected {ndim}-D")
            return None
        return obj[()]

    def attr(self, obj_name, name):
        obj = self.f.get(obj_name)
        if obj is None:
            self.problem(f"{obj_name}: missing")
            return None
        if name not in obj.attrs:
            self.problem(f"{obj_name} attribute {name}: missing")
            return None
        return obj.attrs[name]

    def attr_str(self, obj_name, name):
        v = self.attr(obj_name, name)
        if v is None:
            return None
        if isinstance(v, (bytes, np.bytes_)):
            try:
                return bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                self.problem(f"{obj_name} attribute {name}: not UTF-8 text")
                return None
        if isinstance(v, str):
            return v
        self.problem(f"{obj_name} attribute {name}: {type(v).__name__}, expected a string")
        return None

    def attr_num(self, obj_name, name, kind):
        """A scalar numeric attribute; kind 'i' accepts any integer type, 'f' a float type."""
        v = self.attr(obj_name, name)
        if v is None:
            return None
        a = np.asarray(v)
        ok = a.ndim == 0 and (a.dtype.kind in "iu" if kind == "i" else a.dtype.kind == "f")
        if not ok:
            self.problem(f"{obj_name} attribute {name}: {a.dtype} {a.shape}, expected a scalar "
                         + ("integer" if kind == "i" else "float64"))
            return None
        return a.item()

    def same_length(self, group, arrays):
        lengths = {name: len(a) for name, a in arrays.items() if a is not None}
        if len(set(lengths.values())) > 1:
            self.problem(f"{group}: datasets differ in length: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(lengths.items())))
            return None
        return next(iter(lengths.values()), None)


def check_run(c, allow_incomplete):
    for name in ROOT_STRINGS:
        c.attr_str("/", name)
    if (v := c.attr_str("/", "schema_version")) is not None and v != "1":
        c.problem(f"/ attribute schema_version: '{v}', expected '1'")
    ranks = c.attr_num("/", "ranks", "i")
    if ranks is not None and ranks < 1:
        c.problem(f"/ attribute ranks: {ranks}, expected >= 1")
    nodes = c.attr_num("/", "nodes", "i")
    if nodes is not None and ranks is not None and not 1 <= nodes <= ranks:
        c.problem(f"/ attribute nodes: {nodes}, expected 1..ranks ({ranks})")
    seed = c.attr_num("/", "seed", "i")
    if seed is not None and seed < 0:
        c.problem(f"/ attribute seed: {seed}, expected >= 0")
    complete = c.attr_num("/", "complete", "i")
    if complete is not None and complete != 1 and not (allow_incomplete and complete == 0):
        c.problem(f"/ attribute complete: {complete} (the run did not finish; "
                  "--allow-incomplete accepts that)")

    # /steps
    cols = {"step": c.dataset("/steps/step", "i", 8, 1),
            "bytes_alltoall": c.dataset("/steps/bytes_alltoall", "i", 8, 1),
            "bytes_inter_node": c.dataset("/steps/bytes_inter_node", "i", 8, 1),
            "bytes_intra_node": c.dataset("/steps/bytes_intra_node", "i", 8, 1)}
    for name in STEP_F64:
        cols[name] = c.dataset(f"/steps/{name}", "f", 8, 1)
    for name in STEP_F64_EXTRA:  # written by MoESim, not required by the contract
        if f"/steps/{name}" in c.f:
            cols[name] = c.dataset(f"/steps/{name}", "f", 8, 1)
    load = c.dataset("/steps/expert_load", "i", 8, 3)
    kept = c.dataset("/steps/expert_kept", "i", 8, 3)
    steps = c.same_length("/steps", {**cols, "expert_load": load, "expert_kept": kept})
    experts = None
    if load is not None and kept is not None:
        if load.shape != kept.shape:
            c.problem(f"/steps: expert_load {load.shape} and expert_kept {kept.shape} differ in shape")
        else:
            experts = load.shape[2]
            if (load < 0).any() or (kept < 0).any():
                c.problem("/steps: negative expert_load or expert_kept values")
            if (kept > load).any():
                s, l, e = np.argwhere(kept > load)[0]
                c.problem(f"/steps: expert_kept > expert_load at row {s}, layer {l}, expert {e}")
    step = cols["step"]
    if step is not None and len(step) > 1 and not (np.diff(step) > 0).all():
        i = int(np.argmax(np.diff(step) <= 0))
        c.problem(f"/steps/step: not strictly increasing (row {i + 1}: {step[i]} -> {step[i + 1]})")
    df = cols["dropped_fraction"]
    if df is not None and ((df < 0) | (df > 1)).any():
        c.problem("/steps/dropped_fraction: values outside [0, 1]")
    for name in [n for n in STEP_F64 if n.startswith("time_")]:
        t = cols[name]
        if t is not None and (~np.isfinite(t) | (t < 0)).any():
            c.problem(f"/steps/{name}: negative or non-finite seconds")
    if cols["bytes_alltoall"] is not None and (cols["bytes_alltoall"] < 0).any():
        c.problem("/steps/bytes_alltoall: negative values")
    inter, intra = cols["bytes_inter_node"], cols["bytes_intra_node"]
    if inter is not None and intra is not None:
        if (inter < 0).any() or (intra < 0).any():
            c.problem("/steps/bytes_inter_node or bytes_intra_node: negative values")
        elif cols["bytes_alltoall"] is not None and len(inter) == len(cols["bytes_alltoall"]) \
                and not np.array_equal(inter + intra, cols["bytes_alltoall"]):
            c.problem("/steps: bytes_inter_node + bytes_intra_node != bytes_alltoall")
        elif nodes == 1 and (inter != 0).any():
            c.problem("/steps/bytes_inter_node: nonzero on a single node")
    check_loss_sum(c, cols)
    check_base_epsilon(c, steps, complete)
    if "/steps/rank_rows" in c.f:  # written by MoESim: rows each rank's experts computed
        rows = c.dataset("/steps/rank_rows", "i", 8, 3)
        # A run resumed on more ranks grows the rank axis; cells of absent ranks read -1.
        prow = int(c.f["/steps/ranks"][:].max()) if "/steps/ranks" in c.f and len(c.f["/steps/ranks"]) else ranks
        if rows is not None and kept is not None and prow is not None:
            rows = np.where(rows < 0, 0, rows)
            if rows.shape != (kept.shape[0], kept.shape[1], prow):
                c.problem(f"/steps/rank_rows: shape {rows.shape}, expected "
                          f"({kept.shape[0]}, {kept.shape[1]}, {prow}) [steps, layers, ranks]")
            elif not np.array_equal(rows.sum(axis=2), kept.sum(axis=2)):
                s, l = np.argwhere(rows.sum(axis=2) != kept.sum(axis=2))[0]
                c.problem(f"/steps/rank_rows: rows over ranks != kept assignments at row {s}, layer {l}")

    # /eval
    ev = {"step": c.dataset("/eval/step", "i", 8, 1),
          "loss": c.dataset("/eval/loss", "f", 8, 1),
          "accuracy": c.dataset("/eval/accuracy", "f", 8, 1)}
    for extra in ["macro_f1", "dropped_fraction"]:  # written by MoESim, not required by the contract
        if f"/eval/{extra}" in c.f:
            ev[extra] = c.dataset(f"/eval/{extra}", "f", 8, 1)
    c.same_length("/eval", ev)
    if ev["step"] is not None and len(ev["step"]) > 1 and (np.diff(ev["step"]) < 0).any():
        c.problem("/eval/step: decreasing")

    # /steps/ranks (rank count of each step; a resumed run may change it) and rank-shaped rows
    step_ranks = c.dataset("/steps/ranks", "i", 8, 1) if "/steps/ranks" in c.f else None
    pmax = ranks
    if step_ranks is not None:
        if steps is not None and len(step_ranks) != steps:
            c.problem(f"/steps/ranks: {len(step_ranks)} rows, /steps has {steps}")
        if len(step_ranks):
            pmax = int(step_ranks.max())
            if (step_ranks < 1).any():
                c.problem("/steps/ranks: values < 1")
        def rank_block_ok(blk, p):  # counts >= 0 for the step's p ranks, -1 beyond
            if blk.ndim == 1:
                return not ((blk[:p] < 0).any() or (blk[p:] != -1).any())
            return not ((blk[:p, :p] < 0).any() or (blk[p:, :] != -1).any() or (blk[:, p:] != -1).any())
        sent = c.f["/steps/tokens_sent"][:] if "/steps/tokens_sent" in c.f else None
        if sent is not None and len(step_ranks):
            for i, p in enumerate(step_ranks[:len(sent)]):
                if not rank_block_ok(sent[i], p):
                    c.problem(f"/steps/tokens_sent row {i}: needs counts >= 0 for its {p} ranks and -1 beyond")
                    break
        # /traffic/tokens: sampled [T, P, P] matrices (output.traffic_every); each sample's row
        # sums are that step's /steps/tokens_sent
        if "/traffic/tokens" in c.f:
            tt = c.f["/traffic/tokens"][:]
            tstep = c.f["/traffic/step"][:] if "/traffic/step" in c.f else None
            if tstep is None or len(tstep) != tt.shape[0]:
                c.problem("/traffic/step: missing or not one row per /traffic/tokens sample")
            elif cols.get("step") is not None:
                srow = {int(s): i for i, s in enumerate(cols["step"])}
                for j, s in enumerate(tstep):
                    i = srow.get(int(s))
                    if i is None:
                        continue  # a sample of a step whose row a kill lost (kept rows end earlier)
                    p = int(step_ranks[i])
                    if not rank_block_ok(tt[j], p):
                        c.problem(f"/traffic/tokens sample {j}: needs counts >= 0 for its {p} ranks and -1 beyond")
                        break
                    if sent is not None and not np.array_equal(tt[j][:p, :p].sum(axis=1), sent[i][:p]):
                        c.problem(f"/traffic/tokens sample {j} (step {s}): row sums differ from /steps/tokens_sent")
                        break

    # /attempts: one row per attempt (job, requeue, resubmission)
    if "attempts" in c.f and len(c.f["attempts"].keys()):
        att = {k: c.f[f"/attempts/{k}"][:] for k in c.f["attempts"].keys()}
        lens = {len(v) for v in att.values()}
        if len(lens) != 1:
            c.problem(f"/attempts: datasets differ in length {sorted(lens)}")
        elif complete == 1 and "end" in att and (not len(att["end"]) or bytes(att["end"][-1]) != b"complete"):
            c.problem("/attempts/end: a complete run's last attempt must be 'complete'")

    # /loads (sampled per-group loads for `moesim simulate`, output.loads_every): optional
    if "loads" in c.f:
        lstep = c.dataset("/loads/step", "i", 8, 1)
        routed = c.dataset("/loads/routed", "i", 8, 4)
        kept = c.dataset("/loads/kept", "i", 8, 4)
        if routed is not None and kept is not None:
            if routed.shape != kept.shape:
                c.problem(f"/loads: routed {routed.shape} and kept {kept.shape} differ in shape")
            elif (kept > routed).any() or (kept < 0).any():
                c.problem("/loads/kept: negative or above routed")
            if lstep is not None and len(lstep) != routed.shape[0]:
                c.problem(f"/loads/step: {len(lstep)} rows, /loads/routed {routed.shape[0]}")
            if experts is not None and routed.shape[3] != experts:
                c.problem(f"/loads/routed: {routed.shape[3]} experts, expected {experts}")
            el = load
            if lstep is not None and el is not None and steps is not None and len(lstep) == routed.shape[0]:
                # each sample's per-group loads sum to that step's expert_load
                srow = {int(s): i for i, s in enumerate(cols["step"])} if cols.get("step") is not None else {}
                for j, s in enumerate(lstep):
                    i = srow.get(int(s))
                    if i is not None and not np.array_equal(routed[j].sum(axis=1), el[i]):
                        c.problem(f"/loads/routed: sample {j} (step {s}) does not sum to /steps/expert_load")
                        break

    # /summary exists once the run finished; it covers every step of every attempt
    if complete == 1 or "summary" in c.f:
        vals = {}
        for name in ["tokens_per_second", "step_time_median", "dropped_fraction_mean"]:
            vals[name] = c.attr_num("/summary", name, "f")
        traffic = c.dataset("/summary/traffic_tokens", "i", 8, 2)
        if traffic is not None:
            if pmax is not None and traffic.shape != (pmax, pmax):
                c.problem(f"/summary/traffic_tokens: shape {traffic.shape}, expected ({pmax}, {pmax})")
            if (traffic < 0).any():
                c.problem("/summary/traffic_tokens: negative values")
            # its row sums are the tokens each rank sent over the steps it covers
            ds = c.f["/summary/traffic_tokens"]
            first, through = ds.attrs.get("first_step"), ds.attrs.get("through_step")
            if "/steps/tokens_sent" in c.f and first is not None and through is not None and cols.get("step") is not None:
                st = np.asarray(cols["step"])
                sel = (st >= int(first)) & (st < int(through))
                sent_all = np.where(c.f["/steps/tokens_sent"][:] < 0, 0, c.f["/steps/tokens_sent"][:])
                want = sent_all[sel].sum(axis=0) if sel.any() else np.zeros(traffic.shape[0], dtype=np.int64)
                if want.shape[0] == traffic.shape[0] and not np.array_equal(traffic.sum(axis=1), want):
                    c.problem("/summary/traffic_tokens: row sums differ from /steps/tokens_sent summed over [first_step, through_step)")
        t = cols.get("time_step")
        if t is not None and len(t) and vals["step_time_median"] is not None:
            if abs(vals["step_time_median"] - float(np.median(t))) > 1e-12 * max(1.0, float(np.median(t))):
                c.problem("/summary step_time_median is not the median of /steps/time_step (all attempts)")
        if df is not None and len(df) and vals["dropped_fraction_mean"] is not None:
            if abs(vals["dropped_fraction_mean"] - float(np.mean(df))) > 1e-12:
                c.problem("/summary dropped_fraction_mean is not the mean of /steps/dropped_fraction")
    return f"{steps if steps is not None else '?'} steps, {experts if experts is not None else '?'} experts"


def check_base_epsilon(c, steps, complete):
    """routing.rule = base: /steps/base_epsilon [S, L] (final auction epsilon, >= 0) and, once
    complete, the root attribute base_epsilon = its largest value."""
    text = c.attr_str("/", "config") or ""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
    try:
        parser.read_string(text)
        is_base = parser.get("routing", "rule", fallback="") == "base"
    except configparser.Error:
        is_base = False
    has = "/steps/base_epsilon" in c.f
    if not has:
        if is_base:
            c.problem("/steps/base_epsilon: missing (routing.rule = base)")
        return
    eps = c.dataset("/steps/base_epsilon", "f", 8, 2)
    if eps is None:
        return
    if steps is not None and len(eps) != steps:
        c.problem(f"/steps/base_epsilon: {len(eps)} rows, expected {steps}")
    if (~np.isfinite(eps) | (eps < 0)).any():
        c.problem("/steps/base_epsilon: negative or non-finite values")
    if complete == 1:
        root = c.attr_num("/", "base_epsilon", "f")
        # Written by finish() from the file's own rows (every attempt).
        if root is not None and eps.size and root != eps.max():
            c.problem(f"/ attribute base_epsilon: {root}, expected max(/steps/base_epsilon) = {eps.max()}")


def check_loss_sum(c, cols):
    """loss == task_loss + sum coef * router loss, with the coefficients of the config attribute."""
    text = c.attr_str("/", "config")
    if text is None or cols.get("loss") is None or cols.get("task_loss") is None:
        return
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
    try:
        parser.read_string(text)
    except configparser.Error as e:
        c.problem(f"/ attribute config: not parseable INI ({e})")
        return
    total = np.array(cols["task_loss"], dtype=float)
    for name, key in ROUTER_LOSS_COEF.items():
        try:
            coef = float(parser.get("routing", key, fallback="0"))
        except ValueError:
            c.problem(f"/ attribute config: routing.{key} is not a number")
            return
        if coef == 0:
            continue
        if cols.get(name) is None:
            c.problem(f"/steps/{name}: missing although routing.{key} = {coef}")
            return
        total = total + coef * cols[name]
    loss = cols["loss"]
    if len(loss) == len(total):
        bad = ~np.isclose(loss, total, rtol=1e-12, atol=1e-12)
        if bad.any():
            i = int(np.argmax(bad))
            c.problem(f"/steps/loss: row {i} is {loss[i]!r}, but task_loss + sum coef * router losses "
                      f"= {total[i]!r}")


def check_route(c):
    token = c.dataset("/routing/token", "i", 8, 1)
    expert = c.dataset("/routing/expert", "i", 4, 1)
    slot = c.dataset("/routing/slot", "i", 4, 1)
    weight = c.dataset("/routing/weight", "f", 8, 1)
    dtok = c.dataset("/routing/dropped_token", "i", 8, 1)
    dexp = c.dataset("/routing/dropped_expert", "i", 4, 1)
    routed = c.dataset("/load/routed", "i", 8, 1)
    kept = c.dataset("/load/kept", "i", 8, 1)
    n = c.same_length("/routing kept rows", {"token": token, "expert": expert, "slot": slot, "weight": weight})
    m = c.same_length("/routing dropped rows", {"dropped_token": dtok, "dropped_expert": dexp})
    e = c.same_length("/load", {"routed": routed, "kept": kept})
    capacity = c.attr_num("/", "capacity", "i")
    for name in ["aux_loss", "z_loss"]:
        c.attr_num("/", name, "f")
    dropped_fraction = c.attr_num("/", "dropped_fraction", "f")
    if dropped_fraction is not None and n is not None and m is not None:
        want = m / (n + m) if n + m > 0 else 0.0
        if abs(dropped_fraction - want) > 1e-9:
            c.problem(f"/ attribute dropped_fraction: {dropped_fraction}, but {m} of {n + m} "
                      f"assignments were dropped ({want})")
    c.attr_str("/", "config")

    if n is not None and token is not None and expert is not None and n > 1:
        # strictly increasing (token, expert) pairs: sorted, and no assignment listed twice
        pairs_ok = (np.diff(token) > 0) | ((np.diff(token) == 0) & (np.diff(expert) > 0))
        if not pairs_ok.all():
            i = int(np.argmin(pairs_ok))
            c.problem(f"/routing: rows not strictly sorted by (token, expert) at row {i + 1}")
    if e is not None and e > 0:
        if n is not None and expert is not None:
            if ((expert < 0) | (expert >= e)).any():
                c.problem(f"/routing/expert: values outside [0, {e})")
            elif kept is not None and not (np.bincount(expert, minlength=e) == kept).all():
                c.problem("/load/kept: differs from the number of kept rows per expert")
        if m is not None and dexp is not None and ((dexp < 0) | (dexp >= e)).any():
            c.problem(f"/routing/dropped_expert: values outside [0, {e})")
        elif (routed is not None and kept is not None and dexp is not None and
              not (routed == kept + np.bincount(dexp, minlength=e)).all()):
            c.problem("/load/routed: differs from kept + dropped assignments per expert")
    if capacity is not None and slot is not None:
        if (slot < 0).any():
            c.problem("/routing/slot: negative values")
        if capacity >= 0 and (slot >= capacity).any():
            c.problem(f"/routing/slot: values >= capacity {capacity}")
        if capacity < 0 and m:
            c.problem(f"/routing: {m} dropped assignments although capacity = {capacity} (dropless)")
    return (f"{n if n is not None else '?'} kept, {m if m is not None else '?'} dropped assignments, "
            f"{e if e is not None else '?'} experts")


PROJECTION_F64 = ["time_step", "time_gate", "time_dispatch", "time_expert", "time_combine",
                  "time_backward", "time_sync", "bytes_intra_node", "bytes_inter_node",
                  "load_imbalance", "dropped_fraction"]
VALIDATION_PHASES = ["step", "gate", "dispatch", "expert", "combine", "backward", "sync"]


def check_projection(c):
    for name in ["config", "machine", "workload", "moesim_version", "git_commit"]:
        c.attr_str("/", name)
    complete = c.attr_num("/", "complete", "i")
    if complete is not None and complete != 1:
        c.problem(f"complete = {complete}, expected 1")
    rows = None
    if "projection" in c.f:
        cols = {"ranks": c.dataset("/projection/ranks", "i", 8, 1),
                "nodes": c.dataset("/projection/nodes", "i", 8, 1)}
        for name in PROJECTION_F64:
            cols[name] = c.dataset(f"/projection/{name}", "f", 8, 1)
        c.same_length("/projection", cols)
        for name in PROJECTION_F64:
            v = cols[name]
            if v is not None and (~np.isfinite(v) | (v < 0)).any():
                c.problem(f"/projection/{name}: negative or non-finite values")
        if cols["time_step"] is not None:
            rows = len(cols["time_step"])
            parts = sum(cols[f"time_{p}"] for p in VALIDATION_PHASES[1:] if cols[f"time_{p}"] is not None)
            extra = {n: c.dataset(f"/projection/{n}", "f", 8, 1) for n in ["time_other", "time_combine_wait"]}
            if all(v is not None for v in extra.values()):
                # The step is one rank's path: the phases, the work outside them, minus the
                # combine's rank wait (in the combine phase, not on the path).
                want = parts + extra["time_other"] - extra["time_combine_wait"]
                if (np.abs(cols["time_step"] - want) > 1e-9 * np.maximum(1.0, np.abs(want))).any():
                    c.problem("/projection/time_step != phases + time_other - time_combine_wait")
                if (extra["time_combine_wait"] > cols["time_combine"] + 1e-12).any():
                    c.problem("/projection/time_combine_wait exceeds time_combine")
    if "validation" in c.f:
        v = {"ranks": c.dataset("/validation/ranks", "i", 8, 1)}
        if "/validation/run" not in c.f:
            c.problem("/validation/run: missing")
        for p in VALIDATION_PHASES:
            v[f"measured_time_{p}"] = c.dataset(f"/validation/measured_time_{p}", "f", 8, 1)
            v[f"predicted_time_{p}"] = c.dataset(f"/validation/predicted_time_{p}", "f", 8, 1)
        c.same_length("/validation", v)
    if "projection" not in c.f and "validation" not in c.f:
        c.problem("neither /projection nor /validation")
    return f"{rows if rows is not None else 0} projection rows"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--route", action="store_true", help="validate a `moesim route` output file")
    ap.add_argument("--projection", action="store_true",
                    help="validate a `moesim simulate` output file")
    ap.add_argument("--allow-incomplete", action="store_true",
                    help="accept complete = 0 (a run that was killed or is still running)")
    args = ap.parse_args()
    try:
        f = h5py.File(args.file, "r")
    except OSError as exc:
        print(f"FAIL {args.file}: cannot open: {exc}", file=sys.stderr)
        return 2
    with f:
        c = Checker(f)
        if args.projection:
            what = check_projection(c)
        elif args.route:
            what = check_route(c)
        else:
            what = check_run(c, args.allow_incomplete)
    if c.problems:
        print(f"FAIL {args.file}: {len(c.problems)} problem(s):", file=sys.stderr)
        for p in c.problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"OK {args.file}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
