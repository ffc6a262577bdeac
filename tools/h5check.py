#!/usr/bin/python3
"""Validates a MoESim HDF5 file against the outputs.md contract (names, shapes, dtypes, flags).

    h5check.py RUN.h5                  a `moesim run` result file (must be complete)
    h5check.py --allow-incomplete RUN.h5   also accept a file of a killed/running run
    h5check.py --route OUT.h5          a `moesim route` output file

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
    seed = c.attr_num("/", "seed", "i")
    if seed is not None and seed < 0:
        c.problem(f"/ attribute seed: {seed}, expected >= 0")
    complete = c.attr_num("/", "complete", "i")
    if complete is not None and complete != 1 and not (allow_incomplete and complete == 0):
        c.problem(f"/ attribute complete: {complete} (the run did not finish; "
                  "--allow-incomplete accepts that)")

    # /steps
    cols = {"step": c.dataset("/steps/step", "i", 8, 1),
            "bytes_alltoall": c.dataset("/steps/bytes_alltoall", "i", 8, 1)}
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
    check_loss_sum(c, cols)

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
        if "/steps/traffic_tokens" in c.f and len(step_ranks):
            tt = c.f["/steps/traffic_tokens"][:]
            for i, p in enumerate(step_ranks[:len(tt)]):
                blk = tt[i]
                if (blk[:p, :p] < 0).any() or (blk[p:, :] != -1).any() or (blk[:, p:] != -1).any():
                    c.problem(f"/steps/traffic_tokens row {i}: needs counts >= 0 for its {p} ranks and -1 beyond")
                    break

    # /attempts: one row per attempt (job, requeue, resubmission)
    if "attempts" in c.f and len(c.f["attempts"].keys()):
        att = {k: c.f[f"/attempts/{k}"][:] for k in c.f["attempts"].keys()}
        lens = {len(v) for v in att.values()}
        if len(lens) != 1:
            c.problem(f"/attempts: datasets differ in length {sorted(lens)}")
        elif complete == 1 and "end" in att and (not len(att["end"]) or bytes(att["end"][-1]) != b"complete"):
            c.problem("/attempts/end: a complete run's last attempt must be 'complete'")

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
        t = cols.get("time_step")
        if t is not None and len(t) and vals["step_time_median"] is not None:
            if abs(vals["step_time_median"] - float(np.median(t))) > 1e-12 * max(1.0, float(np.median(t))):
                c.problem("/summary step_time_median is not the median of /steps/time_step (all attempts)")
        if df is not None and len(df) and vals["dropped_fraction_mean"] is not None:
            if abs(vals["dropped_fraction_mean"] - float(np.mean(df))) > 1e-12:
                c.problem("/summary dropped_fraction_mean is not the mean of /steps/dropped_fraction")
    return f"{steps if steps is not None else '?'} steps, {experts if experts is not None else '?'} experts"


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--route", action="store_true", help="validate a `moesim route` output file")
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
        what = check_route(c) if args.route else check_run(c, args.allow_incomplete)
    if c.problems:
        print(f"FAIL {args.file}: {len(c.problems)} problem(s):", file=sys.stderr)
        for p in c.problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"OK {args.file}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
