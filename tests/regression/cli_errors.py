#!/usr/bin/python3
"""Regression: bad input exits with code 2 on every rank, names key/value/allowed, creates no file.

Contract (docs/outputs.md, "Command line"): exit 0 on success, 2 on bad parameters or input
files with a message naming the key, the value and what is allowed; every rank exits, none hangs.
Each error case runs twice on 2 ranks:
  1. plainly: mpiexec's exit code must be 2, stderr must hold the message, nothing may hang
     (60 s timeout) and no file may appear in the working directory;
  2. each rank wrapped in `sh -c 'moesim ...; echo $? > rc.RANK; exit 0'`: every rank must
     have exited by itself with code 2 (a rank killed by mpiexec or MPI_Abort leaves no rc file).
"""
import itertools
import os
import shlex
import sys

sys.dont_write_bytecode = True  # keep tests/regression free of __pycache__

from regtest import Regression, as_text

R = Regression(__doc__.splitlines()[0])
# Open MPI waits odls_base_sigkill_timeout (1 s) after a non-zero exit before it tears the job
# down; the ranks here have exited already, so skip that wait (it only costs time).
os.environ.setdefault("OMPI_MCA_odls_base_sigkill_timeout", "0")
RANKS = 2
_wrapped_runs = itertools.count()


def base_ini(output):
    return f"""# tiny valid parameter file for the error cases
[model]
d_model = 8
d_ff = 16
layers = 1

[routing]
num_experts = 4
k = 2

[training]
steps = 3

[data]
tokens_per_step = 64
eval_tokens = 64
input_dim = 8
num_clusters = 4

[output]
file = {output}
log_every = 1
"""


def listing():
    """Every file under the temp dir except the per-rank exit-code directory."""
    out = set()
    for root, dirs, files in os.walk(R.tmp):
        dirs[:] = [d for d in dirs if not d.startswith("rankrc")]
        out.update(os.path.relpath(os.path.join(root, f), R.tmp) for f in files)
    return out


def per_rank_exit_codes(args, tag):
    """Runs moesim on RANKS ranks, each in a shell that records its own exit code."""
    rcdir = R.path(f"rankrc_{tag}")
    os.makedirs(rcdir)
    rank_var = "${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${PMI_RANK:-unknown}}}"
    script = (f'{shlex.quote(R.moesim)} "$@" >/dev/null 2>&1; rc=$?; '
              f'echo $rc > {shlex.quote(rcdir)}/rc.{rank_var}; exit 0')
    res = R.run(R.mpi_cmd(RANKS, ["sh", "-c", script, "sh"] + list(args), program=[]))
    codes = {}
    for name in sorted(os.listdir(rcdir)):
        with open(os.path.join(rcdir, name)) as f:
            codes[name.split(".", 1)[1]] = int(f.read().strip())
    return res, codes


def error_case(title, args, needles, code=2, per_rank=True):
    """`needles`: substrings stderr must contain (case-insensitive); a tuple = any one of them."""
    R.section(f"{title}: moesim {' '.join(args)}")
    before = listing()
    res = R.mpirun(RANKS, args)
    R.check(not res.timed_out, "finishes within 60 s (no rank left waiting)", res.describe)
    R.check(res.rc == code, f"mpiexec exit code is {code} (got {res.rc})", res.describe)
    err = res.err.lower()
    for n in needles:
        alts = n if isinstance(n, tuple) else (n,)
        R.check(any(a.lower() in err for a in alts),
                "stderr names " + " or ".join(repr(a) for a in alts), res.describe)
    new = listing() - before
    R.check(not new, "no file created", lambda: f"new files: {sorted(new)}")
    R.check(not os.path.exists("/nonexistent_dir"), "/nonexistent_dir not created")
    if per_rank:
        res2, codes = per_rank_exit_codes(args, next(_wrapped_runs))
        R.check(not res2.timed_out, "wrapped run finishes within 60 s", res2.describe)
        R.check(sorted(codes) == [str(r) for r in range(RANKS)] and all(c == code for c in codes.values()),
                f"every rank exits with {code} by itself (per-rank codes {codes})", res2.describe)
        new = listing() - before
        R.check(not new, "no file created by the wrapped run", lambda: f"new files: {sorted(new)}")


# ---------------------------------------------------------------------------------------------
out_h5 = R.path("out.h5")
base = R.write("base.ini", base_ini(out_h5))

R.section("the valid base parameter file runs (so the error cases are not vacuous)")
res = R.mpirun(RANKS, ["run", base])
R.check(res.rc == 0 and not res.timed_out, f"exit code 0 (got {res.rc})", res.describe)
R.check(os.path.isfile(out_h5), f"result file {out_h5} written")
if os.path.isfile(out_h5):
    chk = R.h5check(out_h5)
    R.check(chk.rc == 0, "tools/h5check.py accepts it: " + chk.out.strip(), chk.describe)
    os.remove(out_h5)
res, codes = per_rank_exit_codes(["run", base], "valid")
R.check(codes == {"0": 0, "1": 0}, f"wrapped valid run: every rank exits 0 ({codes})", res.describe)
if os.path.isfile(out_h5):
    os.remove(out_h5)

# parameter files for the file-borne errors
R.write("typo.ini", base_ini(out_h5).replace("k = 2\n", "k = 2\ncapacity_factr = 1.5\n"))
R.write("dup.ini", base_ini(out_h5).replace("d_ff = 16\n", "d_ff = 16\nd_model = 16\n"))
R.write("experts3.ini", base_ini(out_h5).replace("num_experts = 4", "num_experts = 3"))

error_case("missing parameter file", ["run", R.path("no_such_params.ini")],
           ["no_such_params.ini", "parameter file", ("cannot be opened", "existing", "readable")])
error_case("unknown key in the INI file", ["run", R.path("typo.ini")],
           ["routing.capacity_factr", "1.5", "unknown key", "typo.ini"])
error_case("unknown key on the command line", ["run", base, "--routing.capacity_factr=1.5"],
           ["routing.capacity_factr", "1.5", "unknown key"])
error_case("bad enum value", ["run", base, "--routing.rule=bogus"],
           ["routing.rule", "bogus", "topk", "switch"])
error_case("k larger than the number of experts", ["run", base, "--routing.num_experts=8", "--routing.k=9"],
           ["routing.k", "9", "8"])
error_case("negative capacity factor", ["run", base, "--routing.capacity_factor=-1"],
           ["routing.capacity_factor", "-1", ">= 0"])
error_case("experts not divisible by the rank count", ["run", R.path("experts3.ini")],
           ["routing.num_experts", "3", "divisible"])
error_case("redundant experts: E + r slots not divisible by the rank count",
           ["run", base, "--routing.redundant_experts=1"],
           ["routing.redundant_experts", "1", "(4 + 1) divisible by the number of MPI ranks (2)"])
error_case("negative redundant experts", ["run", base, "--routing.redundant_experts=-2"],
           ["routing.redundant_experts", "-2", ">= 0"])
error_case("overlap degree above the experts per rank",
           ["run", base, "--routing.overlap_degree=3"],
           ["routing.overlap_degree", "3", "at most the experts per rank (2"])
error_case("overlap degree with the hierarchical exchange",
           ["run", base, "--routing.overlap_degree=2", "--routing.dispatch=hierarchical"],
           ["routing.overlap_degree", "2", "routing.dispatch = alltoallv"])
error_case("group size does not divide the rank's share",
           ["run", base, "--data.tokens_per_step=1000", "--routing.group_size=256"],
           ["routing.group_size", "256", "divide"])
error_case("non-numeric integer", ["run", base, "--model.d_model=abc"],
           ["model.d_model", "abc", "integer"])
error_case("duplicate key in the INI file", ["run", R.path("dup.ini")],
           ["model.d_model", "twice", "dup.ini"])
error_case("unwritable output path", ["run", base, "--output.file=/nonexistent_dir/x.h5"],
           ["output.file", "/nonexistent_dir/x.h5", "writable"])
error_case("unknown subcommand", ["frobnicate"], ["frobnicate", "run", "route"])
error_case("run without a parameter file", ["run"], ["parameter file"])

# issue 7 item 11: every problem in one report; a bad parameter file; rule-dependent defaults
R.write("three_bad.ini", base_ini(out_h5).replace("k = 2\n", "k = 9\ncapacity_factr = 1.5\n")
        .replace("d_model = 8", "d_model = 0"))
error_case("three problems in one report", ["run", R.path("three_bad.ini"), "--training.steps=-1"],
           ["4 bad parameters", "routing.k = 9", "routing.capacity_factr = 1.5", "model.d_model = 0",
            "training.steps = -1"])
os.makedirs(R.path("params_dir.ini"))
R.write("empty.ini", "")
error_case("a directory as the parameter file", ["run", R.path("params_dir.ini")],
           ["parameter file", "params_dir.ini", "is a directory"])
error_case("an empty parameter file", ["run", R.path("empty.ini")],
           ["parameter file", "empty.ini", "is empty"])
error_case("a non-regular parameter file", ["run", "/dev/null"],
           ["parameter file", "/dev/null", "not a regular file"])
error_case("an explicit k that conflicts with the rule", ["run", base, "--routing.rule=switch"],
           ["routing.k = 2", "must be 1", "given explicitly"])

R.section("routing.rule = switch without k takes k = 1 (and the result file records it)")
nok_ini = R.write("no_k.ini", base_ini(out_h5).replace("k = 2\n", ""))
res = R.mpirun(RANKS, ["run", nok_ini, "--routing.rule=switch"])
R.check(res.rc == 0, f"exit code 0 (got {res.rc})", res.describe)
if os.path.isfile(out_h5):
    import h5py
    with h5py.File(out_h5, "r") as f:
        cfg_text = as_text(f.attrs["config"])
    R.check("\nk = 1\n" in cfg_text and "\nrule = switch\n" in cfg_text,
            "the stored config shows the resolved k = 1", cfg_text)
    os.remove(out_h5)

# issue 7 item 6: paths naming the same file (by identity, not spelling); directories first
error_case("checkpoint.file names the result file",
           ["run", base, "--checkpoint.file=" + os.path.join(R.tmp, ".", "out.h5")],
           ["checkpoint.file", "output.file = " + out_h5, "same file"])
os.symlink(base, R.path("base_link.ini"))
error_case("checkpoint.file is the parameter file through a symlink",
           ["run", base, "--checkpoint.file=" + R.path("base_link.ini")],
           ["checkpoint.file", "parameter file", "same file"])
error_case("checkpoint.file in a missing directory fails before any step",
           ["run", base, "--checkpoint.file=" + R.path("no_such_dir", "ck.h5"), "--checkpoint.every=1"],
           ["checkpoint.file", "no_such_dir", "does not exist"])
import numpy as np
import h5py
with h5py.File(R.path("trace.h5"), "w") as f:
    f["logits"] = np.zeros((8, 6))
error_case("route: trace.output is trace.input spelled ./name",
           ["route", "--trace.input=" + R.path("trace.h5"),
            "--trace.output=" + os.path.join(R.tmp, ".", "trace.h5")],
           ["trace.output", "trace.input", "same file"])

# issue 7 item 9: sizes checked before allocating (memory estimate, overflow-safe arithmetic)
error_case("1e8 tokens per step: refused by the memory estimate before any allocation",
           ["run", base, "--data.tokens_per_step=100000000"],
           ["memory per rank", "data.tokens_per_step", "estimate", "available"])
error_case("routing.min_capacity near INT64_MAX with capacity padding",
           ["run", base, "--routing.min_capacity=9223372036854775000",
            "--routing.dispatch=alltoall_padded"],
           ["routing.min_capacity", "64-bit"])
error_case("routing.min_capacity near INT64_MAX (expert buffer rows)",
           ["run", base, "--routing.min_capacity=9223372036854775000"],
           ["routing.min_capacity", "64-bit"])
R.section("MOESIM_MEMORY_LIMIT: the estimate is compared with the given limit")
env_res = R.run(["env", "MOESIM_MEMORY_LIMIT=1000000", R.moesim, "validate", base])
R.check(env_res.rc == 2 and "MOESIM_MEMORY_LIMIT" in env_res.err and "memory per rank" in env_res.err,
        "a 1 MB limit refuses the tiny run (exit 2, names the limit)", env_res.describe)

# issue 7 items 9 + 11 in `moesim route`: the trace's shape is checked before reading it
with h5py.File(R.path("trace_huge.h5"), "w") as f:
    f.create_dataset("logits", shape=(2**62 + 1, 4), dtype="f8", chunks=(1024, 4))  # no data
with h5py.File(R.path("trace_wide.h5"), "w") as f:
    f.create_dataset("logits", shape=(2**30, 64), dtype="f4", chunks=(1024, 64))  # 512 GiB
error_case("route: a [2^62+1, 4] trace with group_size 1 (segfaulted before)",
           ["route", "--trace.input=" + R.path("trace_huge.h5"), "--trace.output=" + R.path("r.h5"),
            "--routing.group_size=1"],
           ["trace.input", "2^63", "4611686018427387905"])
error_case("route: a trace too large for memory",
           ["route", "--trace.input=" + R.path("trace_wide.h5"), "--trace.output=" + R.path("r.h5")],
           ["trace.input", "needs about", "available"])
error_case("route: an explicit routing.num_experts that contradicts the trace's width",
           ["route", "--trace.input=" + R.path("trace.h5"), "--trace.output=" + R.path("r.h5"),
            "--routing.num_experts=8"],
           ["routing.num_experts = 8", "width E = 6"])
R.section("route: routing.num_experts not given is taken from the trace, and said so")
res = R.serial(["route", "--trace.input=" + R.path("trace.h5"), "--trace.output=" + R.path("r.h5"),
                "--routing.k=1", "--routing.rule=switch"])
R.check(res.rc == 0, f"exit code 0 (got {res.rc})", res.describe)
R.check("routing.num_experts = 6 taken from the trace" in res.err, "stderr says E came from the trace",
        res.describe)
res = R.serial(["route", "--trace.input=" + R.path("trace.h5"), "--trace.output=" + R.path("r.h5"),
                "--routing.k=5"])
R.check(res.rc == 0, "k = 5 is checked against the trace's E = 6, not the default num_experts = 4",
        res.describe)
if os.path.exists(R.path("r.h5")):
    os.remove(R.path("r.h5"))
res = R.serial(["route", "--trace.input=" + R.path("trace.h5"), "--trace.output=" + R.path("r.h5"),
                "--routing.k=7"])
R.check(res.rc == 2 and "routing.k = 7" in res.err and "routing.num_experts = 6" in res.err,
        "k = 7 > the trace's E = 6 is refused naming both", res.describe)
if os.path.exists(R.path("r.h5")):
    os.remove(R.path("r.h5"))

# moesim validate: no MPI peers, exit 0 / 2, every problem, resolved file on stdout
R.section("moesim validate on a valid file (a single process, no mpiexec)")
before = listing()
res = R.serial(["validate", base, "--ranks=2", "--routing.rule=gshard"])
R.check(res.rc == 0 and not res.timed_out, f"exit code 0 (got {res.rc})", res.describe)
R.check("valid" in res.out and "2 MPI ranks" in res.out, "says it is valid for 2 ranks", res.describe)
resolved = R.write("resolved.ini", res.out)
R.check("\nrule = gshard\n" in res.out and "\nk = 2\n" in res.out,
        "stdout holds the resolved config (rule = gshard, k = 2)", res.describe)
res2 = R.serial(["validate", resolved, "--ranks=2"])
R.check(res2.rc == 0, "its stdout is itself a valid parameter file", res2.describe)
R.check(not (listing() - before - {"resolved.ini"}), "no file created by validate")
R.section("moesim validate on bad files: exit 2, every problem at once")
res = R.serial(["validate", R.path("three_bad.ini"), "--training.steps=-1"])
R.check(res.rc == 2, f"exit code 2 (got {res.rc})", res.describe)
for n in ["4 bad parameters", "routing.k = 9", "routing.capacity_factr", "model.d_model = 0",
          "training.steps = -1"]:
    R.check(n in res.err, f"stderr names {n!r}", res.describe)
res = R.serial(["validate", base, "--ranks=3"])
R.check(res.rc == 2 and "routing.num_experts" in res.err and "3" in res.err,
        "--ranks=3 runs the rank-dependent checks (num_experts = 4 on 3 ranks refused)", res.describe)
res = R.serial(["validate", base, "--ranks=zero"])
R.check(res.rc == 2 and "--ranks" in res.err and "zero" in res.err, "a bad --ranks is named", res.describe)
error_case("validate on a directory", ["validate", R.path("params_dir.ini")], ["is a directory"])
error_case("validate with a bad value, on 2 ranks", ["validate", base, "--routing.k=0"],
           ["routing.k = 0"])

# ---------------------------------------------------------------------------------------------
for args in (["--help"], ["run", "--help"]):
    R.section(f"moesim {' '.join(args)}")
    before = listing()
    res = R.mpirun(RANKS, args)
    R.check(res.rc == 0 and not res.timed_out, f"exit code 0 (got {res.rc})", res.describe)
    for key in ["routing.capacity_factor", "routing.drop_policy", "routing.group_size", "output.file",
                "model.d_model", "training.steps"]:
        R.check(key in res.out, f"stdout lists {key}", res.describe)
    R.check("allowed: dense | topk | noisy_topk | switch | gshard | expert_choice | hash | base\n"
            in res.out, "stdout lists the accepted routing rules exactly (base is built)", res.describe)
    R.check("allowed: position | choice_position | probs | priority\n" in res.out,
            "stdout lists the drop policies exactly", res.describe)
    R.check("moesim validate PARAMS.ini" in res.out, "stdout lists moesim validate", res.describe)
    R.check("shared/spec" not in res.out and "docs/routing.md" in res.out,
            "stdout points to docs/*.md, not shared/spec", res.describe)
    R.check("routing.capacity_factor = 1.25" in res.out, "stdout shows the default 'routing.capacity_factor = 1.25'",
            res.describe)
    R.check(res.out.count("routing.capacity_factor =") == 1, "printed once (rank 0 only), not once per rank",
            res.describe)
    R.check(not (listing() - before), "no file created")

R.finish()
