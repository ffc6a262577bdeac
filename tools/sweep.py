#!/usr/bin/python3
"""Expands a MoESim sweep spec into one parameter file per point plus a manifest.

    sweep.py expand SPEC --out DIR [--moesim BUILD/moesim] [--no-validate] [--dry-run] [--force]
    sweep.py validate DIR --moesim BUILD/moesim [--points 0,3,5]
    sweep.py pending DIR [--retry-invalid]
                                  point ids whose result file is missing or not complete (one a
                                  line); points whose last attempt failed with exit code 2 (bad
                                  parameters or input) are left out with a note on stderr unless
                                  --retry-invalid
    sweep.py plan DIR [--points 0,3,5]   one line per rank count: "<ranks> <array index list>"
    sweep.py next-attempt DIR     the number of the next attempt (1 + the highest logs/attempt-N)

A sweep spec is an INI file with one [sweep] section:

    [sweep]
    name = capacity-factor               # optional; default: the spec's file name
    base = ../params/small.ini           # parameter file the points start from (relative to the spec)
    ranks = 1,2                          # MPI ranks per point (a list is swept)
    routing.capacity_factor = 0.5, 1.0, 1.25, 2.0   # a list: swept (cartesian product)
    training.steps = 20                  # one value: a fixed override of every point
    routing.num_experts = 4*P            # an expression in P (= ranks): derived per point
    seeds = 1,2,3                        # optional: every point once per training.seed
    repeats = 3                          # optional (instead of seeds): every point 3 times, same
                                         # seed (timing spread); aggregate.py reports mean and
                                         # spread over the seeds / repeats of each point

Every `section.key` is a MoESim parameter name (docs/outputs.md); with --moesim, names are
checked against `moesim run --help` before anything is written. With --moesim, expand also
validates EVERY point (`moesim validate point-NNNN.ini --ranks=R`, docs/outputs.md) before it
writes anything into DIR: one bad point refuses the whole sweep (exit 2, every bad point listed
with moesim's messages). --no-validate skips that (a moesim without `validate`); --dry-run
expands and validates in a temporary directory, prints the plan and writes nothing.

DIR receives:
    point-NNNN.ini        the base file with the point's keys replaced or added in their sections,
                          and output.file = results/point-NNNN.h5 (relative: runs start in DIR)
    manifest.tsv          point, ranks, params, result, log, then one column per spec key
                          (and `repeat` with repeats = N)
    sweep.json            name, spec, base, swept / derived / fixed keys, replicate (the seed or
                          repeat key aggregate.py averages over) (used by aggregate.py)
    results/ logs/        empty, for the runs; logs/attempt-N/ per submission (never overwritten)
Paths in the manifest are relative to DIR, so a sweep directory can be moved or copied to a cluster.
Uses only the Python standard library (pending needs h5py).
"""
import argparse
import ast
import concurrent.futures
import configparser
import glob
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

MANIFEST_FIXED = ["point", "ranks", "params", "result", "log"]
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")


class SpecError(Exception):
    pass


def eval_expression(text, ranks):
    """Evaluates an arithmetic expression in P (integers, + - * // / ** and parentheses)."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id == "P":
            return ranks
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            v = ev(node.operand)
            return v if isinstance(node.op, ast.UAdd) else -v
        if isinstance(node, ast.BinOp):
            ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                   ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
                   ast.FloorDiv: lambda a, b: a // b, ast.Pow: lambda a, b: a ** b}
            for op_type, fn in ops.items():
                if isinstance(node.op, op_type):
                    return fn(ev(node.left), ev(node.right))
        raise SpecError(f"'{text}': only numbers, P, + - * / // ** and parentheses are allowed")
    try:
        value = ev(ast.parse(text, mode="eval"))
    except SyntaxError as e:
        raise SpecError(f"'{text}' is not an expression in P: {e.msg}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def split_list(text):
    items = [v.strip() for v in text.split(",")]
    if not items or any(v == "" for v in items):
        raise SpecError(f"'{text}': expected a comma-separated list of values without empty items")
    return items


def read_spec(path):
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",),
                                   comment_prefixes=("#",), delimiters=("=",))
    cp.optionxform = str  # keys are case-sensitive MoESim names
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f)
    except (OSError, configparser.Error) as e:
        raise SpecError(f"cannot read sweep spec: {e}") from None
    if cp.sections() != ["sweep"]:
        raise SpecError(f"{path}: expected exactly one section [sweep], found {cp.sections() or 'none'}")
    sec = dict(cp["sweep"])
    spec_dir = os.path.dirname(os.path.abspath(path))
    name = sec.pop("name", os.path.splitext(os.path.basename(path))[0])
    if "base" not in sec:
        raise SpecError(f"{path}: [sweep] needs 'base = PARAMS.ini' (relative to the spec)")
    base = os.path.normpath(os.path.join(spec_dir, sec.pop("base")))
    if not os.path.isfile(base):
        raise SpecError(f"{path}: base parameter file '{base}' does not exist")
    ranks = split_list(sec.pop("ranks", "1"))
    for r in ranks:
        if not r.isdigit() or int(r) < 1:
            raise SpecError(f"{path}: ranks = {','.join(ranks)}: each value must be an integer >= 1")
    ranks = [int(r) for r in ranks]
    replicate = None
    if "seeds" in sec and "repeats" in sec:
        raise SpecError(f"{path}: give either seeds = ... or repeats = N, not both")
    if "seeds" in sec:
        seeds = split_list(sec.pop("seeds"))
        if any(not v.isdigit() for v in seeds) or len(set(seeds)) != len(seeds):
            raise SpecError(f"{path}: seeds = {','.join(seeds)}: distinct integers >= 0 expected")
        if "training.seed" in sec:
            raise SpecError(f"{path}: seeds = ... sets training.seed per point; remove training.seed")
        replicate = {"key": "training.seed", "values": seeds}
    if "repeats" in sec:
        n = sec.pop("repeats").strip()
        if not n.isdigit() or int(n) < 1:
            raise SpecError(f"{path}: repeats = {n}: an integer >= 1 expected")
        replicate = {"key": "repeat", "values": [str(i) for i in range(int(n))]}
    swept, derived, fixed = {}, {}, {}
    for key, text in sec.items():
        if not KEY_RE.match(key):
            raise SpecError(f"{path}: '{key}' is not a 'section.key' parameter name "
                            "(allowed in [sweep]: name, base, ranks, seeds, repeats, section.key)")
        if key == "output.file":
            raise SpecError(f"{path}: output.file is set per point by the sweep; remove it from the spec")
        values = split_list(text)
        if len(values) > 1:
            if any(re.search(r"\bP\b", v) for v in values):
                raise SpecError(f"{path}: {key}: an expression in P must be a single value")
            swept[key] = values
        elif re.search(r"\bP\b", values[0]):
            eval_expression(values[0], 1)  # syntax check now, not at point 17
            derived[key] = values[0]
        else:
            fixed[key] = values[0]
    return {"name": name, "spec": os.path.abspath(path), "base": base, "ranks": ranks,
            "swept": swept, "derived": derived, "fixed": fixed, "replicate": replicate}


def known_keys(moesim):
    """Parameter names listed by `moesim run --help` (lines '  section.key = default')."""
    try:
        out = subprocess.run([moesim, "run", "--help"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise SpecError(f"cannot run '{moesim} run --help': {e}") from None
    keys = set(re.findall(r"^\s+([a-z_]+\.[a-z_0-9]+) = ", out.stdout, flags=re.M))
    if not keys:
        raise SpecError(f"'{moesim} run --help' listed no parameters (exit {out.returncode})")
    return keys


def apply_overrides(base_text, overrides, header):
    """The base INI text with each section.key set: replaced in place, added to its section, or
    added with a new section at the end. Keeps comments and order; never writes a key twice
    (Boost.Program_options rejects duplicates)."""
    lines = base_text.splitlines()
    section_of_line, current = [], None
    for line in lines:
        m = re.match(r"^\s*\[([^\]]+)\]\s*(#.*)?$", line)
        if m:
            current = m.group(1).strip()
        section_of_line.append(current)
    pending = dict(overrides)
    for i, line in enumerate(lines):
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if m and section_of_line[i] is not None:
            full = f"{section_of_line[i]}.{m.group(1)}"
            if full in pending:
                lines[i] = f"{m.group(1)} = {pending.pop(full)}"
    for full in list(pending):
        section, key = full.split(".", 1)
        idx = [i for i, s in enumerate(section_of_line) if s == section]
        if idx:
            # after the section's last key line (not after comments that lead into the next section)
            last = max(i for i in idx if i == idx[0] or (lines[i].strip() and not lines[i].lstrip().startswith("#")))
            lines.insert(last + 1, f"{key} = {pending.pop(full)}")
            section_of_line.insert(last + 1, section)
    for full, value in pending.items():
        section, key = full.split(".", 1)
        lines += ["", f"[{section}]", f"{key} = {value}"]
        section_of_line += [None, section, section]
    return "\n".join(header + lines) + "\n"


def manifest_keys(spec):
    """Spec keys that get a manifest column (the replicate key last)."""
    keys = [*spec["swept"], *spec["derived"], *spec["fixed"]]
    if spec.get("replicate"):
        keys.append(spec["replicate"]["key"])
    return keys


def expand(args):
    spec = read_spec(args.spec)
    if args.moesim:
        keys = known_keys(args.moesim)
        unknown = [k for k in [*spec["swept"], *spec["derived"], *spec["fixed"]] if k not in keys]
        if unknown:
            raise SpecError(f"{args.spec}: unknown parameter(s) {', '.join(unknown)}; "
                            f"`{args.moesim} run --help` lists every key")
    out = os.path.abspath(args.out)
    if not args.dry_run and os.path.exists(os.path.join(out, "manifest.tsv")) and not args.force:
        raise SpecError(f"{out} already holds a sweep (manifest.tsv); use another --out, or --force "
                        "to delete its parameter files, results (and checkpoints), logs and tables first")
    with open(spec["base"], encoding="utf-8") as f:
        base_text = f.read()

    # Everything is written into a staging directory next to DIR (same depth: relative paths in the
    # base file resolve alike), validated there, and moved into DIR only when every point is valid.
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.staging-", dir=parent)
    try:
        rows, spec_keys = write_points(spec, base_text, stage)
        if args.moesim and not args.no_validate:
            bad = validate_points(stage, rows, spec_keys, args.moesim)
            if bad:
                raise SpecError(f"{len(bad)} of {len(rows)} point(s) of sweep '{spec['name']}' are invalid; "
                                "nothing was written or submitted:\n" + "\n".join(bad))
            print(f"sweep '{spec['name']}': all {len(rows)} point(s) valid (moesim validate)", file=sys.stderr)
        elif not args.no_validate:
            print("sweep.py: note: no --moesim: point values were not validated", file=sys.stderr)
        dims = (["ranks"] if len(spec["ranks"]) > 1 else []) + list(spec["swept"])
        if args.dry_run:
            print(f"dry run: sweep '{spec['name']}': {len(rows)} point(s)"
                  + (f" (swept: {', '.join(dims)})" if dims else "")
                  + (f", {len(spec['replicate']['values'])} x {spec['replicate']['key']}" if spec["replicate"] else ""))
            print_plan(rows, None, prefix="would submit: ")
            for row in rows:
                print(f"  point {row[0]}: ranks={row[1]} " + " ".join(f"{k}={v}" for k, v in zip(spec_keys, row[5:])))
            print(f"dry run: nothing written to {out}, nothing submitted")
            return 0
        if os.path.exists(os.path.join(out, "manifest.tsv")):  # --force
            for pattern in ["point-*.ini", "results/point-*", "logs/*.out", "logs/*.status", "manifest.tsv",
                            "sweep.json", "results.csv", "failed.csv", "summary.csv", "results.md", "jobs.tsv"]:
                for f in glob.glob(os.path.join(out, pattern)):
                    os.remove(f)
            for d in ["plots", "logs"]:
                shutil.rmtree(os.path.join(out, d), ignore_errors=True)
        for d in ["", "results", "logs"]:
            os.makedirs(os.path.join(out, d), exist_ok=True)
        for name in os.listdir(stage):
            if os.path.isfile(os.path.join(stage, name)):
                os.replace(os.path.join(stage, name), os.path.join(out, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(f"sweep '{spec['name']}': {len(rows)} point(s) in {out}"
          + (f" (swept: {', '.join(dims)})" if dims else "")
          + (f", each {len(spec['replicate']['values'])} x {spec['replicate']['key']}" if spec["replicate"] else ""))
    return 0


def write_points(spec, base_text, out):
    """Writes point-NNNN.ini, manifest.tsv, sweep.json (and empty results/ logs/) into out."""
    for d in ["results", "logs"]:
        os.makedirs(os.path.join(out, d), exist_ok=True)
    spec_keys = manifest_keys(spec)
    rep = spec.get("replicate")
    rows = []
    grid = list(itertools.product(spec["ranks"], *spec["swept"].values(), *([rep["values"]] if rep else [])))
    for point, combo in enumerate(grid):
        ranks = combo[0]
        values = dict(zip(spec["swept"], combo[1:1 + len(spec["swept"])]))
        if rep:
            values[rep["key"]] = combo[-1]
        values.update({k: eval_expression(e, ranks) for k, e in spec["derived"].items()})
        values.update(spec["fixed"])
        params, result, log = f"point-{point:04d}.ini", f"results/point-{point:04d}.h5", f"logs/attempt-*/point-{point:04d}.out"
        overrides = {k: values[k] for k in spec_keys if "." in k}  # `repeat` is not a parameter
        overrides["output.file"] = result
        header = [f"# Generated by tools/sweep.py: sweep '{spec['name']}' point {point} of {len(grid)}, "
                  f"{ranks} rank(s)",
                  f"#   spec {spec['spec']}", f"#   base {spec['base']}",
                  "#   " + " ".join(f"{k}={values[k]}" for k in spec_keys),
                  "# output.file is relative: run from this directory.", ""]
        with open(os.path.join(out, params), "w", encoding="utf-8") as f:
            f.write(apply_overrides(base_text, overrides, header))
        rows.append([str(point), str(ranks), params, result, log] + [values[k] for k in spec_keys])

    with open(os.path.join(out, "manifest.tsv"), "w", encoding="utf-8") as f:
        f.write("\t".join(MANIFEST_FIXED + spec_keys) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")
    meta = {k: spec[k] for k in ["name", "spec", "base", "ranks", "swept", "derived", "fixed", "replicate"]}
    meta["points"] = len(rows)
    with open(os.path.join(out, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return rows, spec_keys


def validate_one(sweep_dir, params, ranks, moesim):
    try:
        r = subprocess.run([moesim, "validate", params, f"--ranks={ranks}"], cwd=sweep_dir,
                           capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, f"could not run `{moesim} validate`: {e}"
    # The report of problems is on stderr (stdout holds the resolved config and the memory estimate).
    return r.returncode, (r.stderr.strip() or r.stdout)


def validate_points(sweep_dir, rows, spec_keys, moesim, points=None):
    """`moesim validate` for every point (in parallel); a list of problem descriptions (empty: all valid).
    rows: manifest rows as lists (point, ranks, params, result, log, values...)."""
    todo = [r for r in rows if points is None or r[0] in points]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda r: validate_one(sweep_dir, r[2], r[1], moesim), todo))
    bad = []
    for row, (rc, text) in zip(todo, results):
        if rc == 0:
            continue
        if "unknown command 'validate'" in text:
            raise SpecError(f"{moesim} has no `validate` command (built before it existed?): rebuild it, or "
                            "pass --no-validate to submit without validating the points")
        values = ", ".join(f"{k}={v}" for k, v in zip(["ranks", *spec_keys], row[1:2] + row[5:]))
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        shown = lines[:20] + ([f"... ({len(lines) - 20} more lines)"] if len(lines) > 20 else [])
        what = "bad parameters (exit code 2)" if rc == 2 else f"moesim validate exit code {rc}"
        bad.append(f"  point {row[0]} ({values}), {row[2]}: {what}\n"
                   + "\n".join(f"      {ln}" for ln in shown))
    return bad


def print_plan(rows, points, prefix=""):
    """One job array per rank count: '<prefix>array ranks=R points=<ids, ranges>'."""
    for ranks, ids in plan_groups(rows, points):
        print(f"{prefix}array ranks={ranks} points={ids}")
    print(f"{prefix}aggregate (after the arrays)")


def plan_groups(rows, points=None):
    by = {}
    for r in rows:
        if points is None or r[0] in points:
            by.setdefault(int(r[1]), []).append(int(r[0]))
    out = []
    for ranks in sorted(by):
        ids, parts, start = sorted(by[ranks]), [], None
        for i, p in enumerate(ids):
            start = p if start is None else start
            if i == len(ids) - 1 or ids[i + 1] != p + 1:
                parts.append(str(start) if start == p else f"{start}-{p}")
                start = None
        out.append((ranks, ",".join(parts)))
    return out


def read_manifest(sweep_dir):
    path = os.path.join(sweep_dir, "manifest.tsv")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    except OSError as e:
        raise SpecError(f"cannot read the manifest: {e}") from None
    header = lines[0].split("\t")
    if header[:len(MANIFEST_FIXED)] != MANIFEST_FIXED:
        raise SpecError(f"{path}: header must start with {' '.join(MANIFEST_FIXED)}")
    return header, [dict(zip(header, ln.split("\t"))) for ln in lines[1:]]


def attempts(sweep_dir):
    """Attempt numbers that have a logs/attempt-N directory, ascending."""
    found = []
    for d in glob.glob(os.path.join(sweep_dir, "logs", "attempt-*")):
        tail = os.path.basename(d)[len("attempt-"):]
        if tail.isdigit() and os.path.isdir(d):
            found.append(int(tail))
    return sorted(found)


def point_attempts(sweep_dir, point):
    """[(attempt, status dict, log path relative to sweep_dir)] of one point, oldest first. A sweep
    from before attempt directories has its single attempt in logs/point-NNNN.{status,out} (attempt 0)."""
    out = []
    name = f"point-{int(point):04d}"
    legacy = os.path.join(sweep_dir, "logs", name + ".status")
    candidates = [(0, legacy, f"logs/{name}.out")] if os.path.exists(legacy) else []
    candidates += [(a, os.path.join(sweep_dir, "logs", f"attempt-{a}", name + ".status"),
                    f"logs/attempt-{a}/{name}.out") for a in attempts(sweep_dir)]
    for a, status_path, log in candidates:
        status = {}
        try:
            with open(status_path, encoding="utf-8") as f:
                for line in f:
                    if "=" in line:
                        k, v = line.rstrip("\n").split("=", 1)
                        status[k] = v
        except OSError:
            if not os.path.exists(os.path.join(sweep_dir, log)):
                continue  # not part of this attempt
        out.append((a, status, log))
    return out


def pending(args):
    import h5py  # only this subcommand needs it
    _, rows = read_manifest(args.dir)
    skipped = []
    for row in rows:
        path = os.path.join(args.dir, row["result"])
        try:
            with h5py.File(path, "r") as f:
                done = int(f.attrs.get("complete", 0)) == 1
        except OSError:
            done = False
        if done:
            continue
        history = point_attempts(args.dir, row["point"])
        last = history[-1][1] if history else {}
        if last.get("exit_code") == "2" and not args.retry_invalid:
            skipped.append((row["point"], history[-1][2]))
            continue
        print(row["point"])
    for point, log in skipped:
        print(f"sweep.py: note: point {point} not resubmitted: its last attempt failed with exit code 2 "
              f"(bad parameters or input; see {log}). Fix point-{int(point):04d}.ini, then resubmit with "
              "--retry-invalid", file=sys.stderr)
    return 0


def validate_cmd(args):
    header, rows = read_manifest(args.dir)
    spec_keys = header[len(MANIFEST_FIXED):]
    as_lists = [[r[h] for h in header] for r in rows]
    points = set(args.points.split(",")) if args.points else None
    bad = validate_points(os.path.abspath(args.dir), as_lists, spec_keys, args.moesim, points)
    n = len(points) if points is not None else len(rows)
    if bad:
        raise SpecError(f"{len(bad)} of {n} point(s) are invalid; nothing was submitted:\n" + "\n".join(bad))
    print(f"all {n} point(s) valid (moesim validate)", file=sys.stderr)
    return 0


def plan_cmd(args):
    header, rows = read_manifest(args.dir)
    points = set(args.points.split(",")) if args.points else None
    for ranks, ids in plan_groups([[r[h] for h in header] for r in rows], points):
        print(ranks, ids)
    return 0


def next_attempt(args):
    done = attempts(args.dir)
    print((done[-1] if done else 0) + 1)  # a sweep from before attempt directories: its run was attempt 0
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("expand", help="write the parameter files and the manifest")
    e.add_argument("spec", help="sweep spec (INI with a [sweep] section)")
    e.add_argument("--out", required=True, help="sweep directory to create")
    e.add_argument("--moesim", help="moesim executable: check parameter names against `moesim run --help` "
                   "and validate every point (`moesim validate`)")
    e.add_argument("--no-validate", action="store_true", help="do not run `moesim validate` on the points")
    e.add_argument("--dry-run", action="store_true", help="expand and validate, print the plan, write nothing")
    e.add_argument("--force", action="store_true", help="replace an existing sweep in --out")
    v = sub.add_parser("validate", help="`moesim validate` every point (or --points) of a sweep directory")
    v.add_argument("dir")
    v.add_argument("--moesim", required=True)
    v.add_argument("--points", help="comma-separated point ids (default: all)")
    p = sub.add_parser("pending", help="list points without a complete result file")
    p.add_argument("dir", help="sweep directory (holds manifest.tsv)")
    p.add_argument("--retry-invalid", action="store_true",
                   help="also list points whose last attempt failed with exit code 2")
    q = sub.add_parser("plan", help="'<ranks> <array index list>' per rank count")
    q.add_argument("dir")
    q.add_argument("--points", help="comma-separated point ids (default: all)")
    n = sub.add_parser("next-attempt", help="number of the next submission attempt")
    n.add_argument("dir")
    args = ap.parse_args()
    if getattr(args, "moesim", None):
        args.moesim = os.path.abspath(args.moesim)
    handlers = {"expand": expand, "validate": validate_cmd, "pending": pending, "plan": plan_cmd,
                "next-attempt": next_attempt}
    try:
        return handlers[args.cmd](args)
    except SpecError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
