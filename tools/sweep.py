#!/usr/bin/python3
"""Expands a MoESim sweep spec into one parameter file per point plus a manifest.

    sweep.py expand SPEC --out DIR [--moesim BUILD/moesim] [--force]
    sweep.py pending DIR          point ids whose result file is missing or not complete (one a line)

A sweep spec is an INI file with one [sweep] section:

    [sweep]
    name = capacity-factor               # optional; default: the spec's file name
    base = ../params/small.ini           # parameter file the points start from (relative to the spec)
    ranks = 1,2                          # MPI ranks per point (a list is swept)
    routing.capacity_factor = 0.5, 1.0, 1.25, 2.0   # a list: swept (cartesian product)
    training.steps = 20                  # one value: a fixed override of every point
    routing.num_experts = 4*P            # an expression in P (= ranks): derived per point

Every `section.key` is a MoESim parameter name (docs/outputs.md); with --moesim, names are
checked against `moesim run --help` before anything is written. Values are not checked here:
`moesim run` rejects a bad value with exit code 2 before any work, and aggregation reports that
point as failed.

DIR receives:
    point-NNNN.ini        the base file with the point's keys replaced or added in their sections,
                          and output.file = results/point-NNNN.h5 (relative: runs start in DIR)
    manifest.tsv          point, ranks, params, result, log, then one column per spec key
    sweep.json            name, spec, base, swept / derived / fixed keys (used by aggregate.py)
    results/ logs/        empty, for the runs
Paths in the manifest are relative to DIR, so a sweep directory can be moved or copied to a cluster.
Uses only the Python standard library (pending needs h5py).
"""
import argparse
import ast
import configparser
import glob
import itertools
import json
import os
import re
import shutil
import subprocess
import sys

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
    swept, derived, fixed = {}, {}, {}
    for key, text in sec.items():
        if not KEY_RE.match(key):
            raise SpecError(f"{path}: '{key}' is not a 'section.key' parameter name "
                            "(allowed in [sweep]: name, base, ranks, section.key)")
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
            "swept": swept, "derived": derived, "fixed": fixed}


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


def expand(args):
    spec = read_spec(args.spec)
    if args.moesim:
        keys = known_keys(args.moesim)
        unknown = [k for k in [*spec["swept"], *spec["derived"], *spec["fixed"]] if k not in keys]
        if unknown:
            raise SpecError(f"{args.spec}: unknown parameter(s) {', '.join(unknown)}; "
                            f"`{args.moesim} run --help` lists every key")
    out = os.path.abspath(args.out)
    if os.path.exists(os.path.join(out, "manifest.tsv")):
        if not args.force:
            raise SpecError(f"{out} already holds a sweep (manifest.tsv); use another --out, or --force "
                            "to delete its parameter files, results (and checkpoints), logs and tables first")
        for pattern in ["point-*.ini", "results/point-*", "logs/*", "manifest.tsv", "sweep.json",
                        "results.csv", "failed.csv", "results.md", "jobs.tsv"]:
            for f in glob.glob(os.path.join(out, pattern)):
                os.remove(f)
        shutil.rmtree(os.path.join(out, "plots"), ignore_errors=True)
    os.makedirs(os.path.join(out, "results"), exist_ok=True)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    with open(spec["base"], encoding="utf-8") as f:
        base_text = f.read()

    spec_keys = [*spec["swept"], *spec["derived"], *spec["fixed"]]
    rows = []
    grid = list(itertools.product(spec["ranks"], *spec["swept"].values()))
    for point, combo in enumerate(grid):
        ranks, values = combo[0], dict(zip(spec["swept"], combo[1:]))
        values.update({k: eval_expression(e, ranks) for k, e in spec["derived"].items()})
        values.update(spec["fixed"])
        params, result, log = f"point-{point:04d}.ini", f"results/point-{point:04d}.h5", f"logs/point-{point:04d}.out"
        overrides = {k: values[k] for k in spec_keys}
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
    meta = {k: spec[k] for k in ["name", "spec", "base", "ranks", "swept", "derived", "fixed"]}
    meta["points"] = len(rows)
    with open(os.path.join(out, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    dims = (["ranks"] if len(spec["ranks"]) > 1 else []) + list(spec["swept"])
    print(f"sweep '{spec['name']}': {len(rows)} point(s) in {out}"
          + (f" (swept: {', '.join(dims)})" if dims else ""))
    return 0


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


def pending(args):
    import h5py  # only this subcommand needs it
    _, rows = read_manifest(args.dir)
    for row in rows:
        path = os.path.join(args.dir, row["result"])
        try:
            with h5py.File(path, "r") as f:
                done = int(f.attrs.get("complete", 0)) == 1
        except OSError:
            done = False
        if not done:
            print(row["point"])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("expand", help="write the parameter files and the manifest")
    e.add_argument("spec", help="sweep spec (INI with a [sweep] section)")
    e.add_argument("--out", required=True, help="sweep directory to create")
    e.add_argument("--moesim", help="moesim executable: check parameter names against `moesim run --help`")
    e.add_argument("--force", action="store_true", help="replace an existing sweep in --out")
    p = sub.add_parser("pending", help="list points without a complete result file")
    p.add_argument("dir", help="sweep directory (holds manifest.tsv)")
    args = ap.parse_args()
    try:
        return expand(args) if args.cmd == "expand" else pending(args)
    except SpecError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
