#!/usr/bin/python3
"""Scale tier (issue 12): the real program at 1, 8, 16, 32 and 64 ranks (oversubscribed) on a
tiny model, checked against the 1-rank run (float64), with what MoESim's own bookkeeping costs
measured at every rank count: result-file bytes (per step and in all), checkpoint bytes per
shard, rank-0 and median peak memory (/attempts/peak_rss_*).

    scale.py --moesim build/moesim --mpiexec mpiexec [--ranks 1,8,16,32,64] [--table OUT.md]
             [--keep-tmp] [-- MPIEXEC_FLAGS...]

Checks: loss curves equal to the 1-rank run (float64, rtol 1e-9); h5check accepts every file;
per-step result bytes and rank-0 peak memory grow at most linearly (8 -> 64 ranks: <= 8.5x the
per-step bytes; rank 0 within a fixed margin of the median rank, which a rank-0 gather of the
experts - 100 MB here - would break); every checkpoint shard holds only its rank's experts (rank 0
also the replicated tensors); a checkpoint written on 32 ranks resumes on 64.
"""
import os
import re
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "regression"))
from regtest import Regression  # noqa: E402

# Tiny layer, big enough experts that a gather of all of them to rank 0 would show:
# E = 64 experts x (2 x 64 x 512) float64 x 3 (value + Adam m, v) = 100 MB in all.
E, D, F = 64, 64, 512
STEPS = 10
COMMON = [
    "--model.d_model=%d" % D, "--model.d_ff=%d" % F, "--model.layers=1", "--model.precision=float64",
    "--routing.num_experts=%d" % E, "--routing.k=2", "--routing.capacity_factor=1.25",
    "--routing.group_size=16", "--data.tokens_per_step=1024", "--data.eval_tokens=1024",
    "--training.eval_every=%d" % STEPS, "--training.optimizer=adam", "--output.log_every=0",
    "--output.echo_config=false", "--checkpoint.every=5", "--output.traffic_every=5",
    "--output.loads_every=5",
]
MARGIN = 64 << 20  # rank 0 may exceed the median rank's peak RSS by this much (writer, HDF5)


def main():
    argv = sys.argv[1:]
    ranks_arg, table = "1,8,16,32,64", None
    for flag in ("--ranks", "--table"):
        if flag in argv and (("--" not in argv) or argv.index(flag) < argv.index("--")):
            i = argv.index(flag)
            if flag == "--ranks":
                ranks_arg = argv[i + 1]
            else:
                table = argv[i + 1]
            del argv[i:i + 2]
    sys.argv[1:] = argv
    t = Regression(__doc__)
    t.mpi_flags = t.mpi_flags + ["--mca", "mpi_yield_when_idle", "1"]
    ini = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "experiments", "quickstart.ini")
    counts = [int(x) for x in ranks_arg.split(",")]
    rows, loss = {}, {}
    for P in counts:
        t.section(f"{P} rank{'s' if P > 1 else ''}")
        out = t.path(f"p{P}.h5")
        r = t.mpirun(P, ["run", ini] + COMMON + [f"--training.steps={STEPS}", f"--output.file={out}"],
                     timeout=300)
        if not t.check(r.rc == 0, f"{P} ranks: exit 0 ({r.seconds:.1f} s)", r.describe):
            continue
        h = t.h5check(out)
        t.check(h.rc == 0, f"{P} ranks: h5check accepts the file", h.describe)
        with h5py.File(out, "r") as f:
            loss[P] = f["steps/loss"][:]
            # what rank 0 writes per step: the logical bytes of every /steps dataset
            per_step = sum(f["steps"][k].nbytes for k in f["steps"]) / STEPS
            rss0 = int(f["attempts/peak_rss_rank0"][-1])
            rssm = int(f["attempts/peak_rss_median"][-1])
        ck = out + ".ckpt"
        with h5py.File(ck, "r") as c:
            names = [n.decode() for n in c["index/name"][:]]
            shard = c["index/shard"][:]
            files = [os.path.join(t.tmp, x.decode()) for x in c["shards/file"][:]]
        shard_bytes = [os.path.getsize(x) for x in files]
        experts_in = [set() for _ in files]
        for n, s in zip(names, shard):
            m = re.search(r"\.expert(\d+)\.", n)
            if m:
                experts_in[s].add(int(m.group(1)))
        t.check(max(len(x) for x in experts_in) <= max(1, E // P) and sum(len(x) for x in experts_in) == E,
                f"{P} ranks: each shard holds its own experts only ({E // P if P <= E else 1} each)")
        replicated = [n for n in names if not re.search(r"\.expert\d+\.", n)]
        t.check(all(s == 0 for n, s in zip(names, shard) if n in replicated) and replicated,
                f"{P} ranks: replicated tensors in rank 0's shard only")
        formula = 8 * (20 + 2 * E + 1 * (1 + P) + P)  # docs/scale.md, L = 1
        t.check(per_step == formula, f"{P} ranks: {per_step:.0f} bytes per step = the formula of docs/scale.md ({formula})")
        rows[P] = dict(file=os.path.getsize(out), per_step=per_step, ckpt_manifest=os.path.getsize(ck),
                       shard0=shard_bytes[0], shard_max=max(shard_bytes), shards=len(files),
                       rss0=rss0, rssm=rssm, seconds=r.seconds)
        if P > 1:
            t.check(rss0 <= rssm + MARGIN,
                    f"{P} ranks: rank-0 peak RSS {rss0 / 2**20:.0f} MiB within {MARGIN >> 20} MiB of the "
                    f"median rank's {rssm / 2**20:.0f} MiB")
        if 1 in loss and P != 1:
            t.check(np.allclose(loss[P], loss[1], rtol=1e-9, atol=0),
                    f"{P} ranks: loss curve equals the 1-rank run (float64)",
                    lambda: f"max |diff| {np.abs(loss[P] - loss[1]).max():.3e}")
    if 8 in rows and 64 in rows:
        ratio = rows[64]["per_step"] / rows[8]["per_step"]
        t.check(ratio <= 8.5, f"per-step result bytes 8 -> 64 ranks: x{ratio:.2f} (<= 8.5)")
        ratio = rows[64]["file"] / rows[8]["file"]
        t.check(ratio <= 8.5, f"result-file bytes 8 -> 64 ranks: x{ratio:.2f} (<= 8.5)")
    lo, hi = (32, 64) if 32 in counts and 64 in counts else (counts[-2], counts[-1]) if len(counts) > 1 else (1, 1)
    if lo != hi and 1 in loss:
        t.section(f"a checkpoint of {lo} ranks resumes on {hi}")
        out = t.path("resume.h5")
        r = t.mpirun(lo, ["run", ini] + COMMON + ["--training.steps=5", f"--output.file={out}"], timeout=300)
        t.check(r.rc == 0, f"first half on {lo} ranks", r.describe)
        r = t.mpirun(hi, ["run", ini] + COMMON + [f"--training.steps={STEPS}", f"--output.file={out}", "--resume"],
                     timeout=300)
        t.check(r.rc == 0, f"second half on {hi} ranks", r.describe)
        if r.rc == 0:
            with h5py.File(out, "r") as f:
                t.check(np.allclose(f["steps/loss"][:], loss[1], rtol=1e-9, atol=0),
                        "the resumed run's loss curve equals the 1-rank run (float64)")
    print("\n| ranks | result file | per step (/steps) | ckpt manifest | rank-0 shard | largest shard | "
          "rank-0 peak RSS | median peak RSS | wall |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = []
    for P in sorted(rows):
        x = rows[P]
        lines.append(f"| {P} | {x['file'] / 1024:.0f} KiB | {x['per_step']:.0f} B | {x['ckpt_manifest'] / 1024:.0f} KiB | "
                     f"{x['shard0'] / 2**20:.2f} MiB | {x['shard_max'] / 2**20:.2f} MiB | {x['rss0'] / 2**20:.0f} MiB | "
                     f"{x['rssm'] / 2**20:.0f} MiB | {x['seconds']:.1f} s |")
        print(lines[-1])
    if table:
        with open(table, "w") as f:
            f.write("\n".join(lines) + "\n")
    t.finish()


if __name__ == "__main__":
    main()
