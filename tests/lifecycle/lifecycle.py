#!/usr/bin/python3
"""Lifecycle tier: a run that is killed, preempted, resumed, rerun, diverges, races another run
on the same output, or resumes from a checkpoint that is not its own ends either complete and
correct or clearly incomplete with the reason -- never a plausible file with wrong numbers.
Each case reproduces a defect of issue 7 (the item number is in the section title) through the
real program on 1-4 ranks."""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "regression"))
from regtest import Regression  # noqa: E402

QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "experiments", "quickstart.ini")
STEPS = 200
BASE = [QUICKSTART, "--training.eval_every=50", "--output.log_every=0",
          "--model.d_ff=64", "--data.tokens_per_step=512", "--data.eval_tokens=1024",
          "--output.echo_config=false", "--checkpoint.every=20"]
COMMON = BASE + [f"--training.steps={STEPS}"]
ROWS = ["steps/step", "steps/loss", "steps/task_loss", "steps/aux_loss", "steps/dropped_fraction",
        "steps/expert_load", "steps/expert_kept", "steps/bytes_alltoall", "eval/step", "eval/loss",
        "eval/accuracy"]


def rank_pids(marker):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"moesim") and any(marker.encode() in a for a in argv):
            pids.append(int(d))
    return sorted(pids)


def start(t, ranks, args):
    return subprocess.Popen(t.mpi_cmd(ranks, args), cwd=t.tmp, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path, p, seconds=120):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def finish(p, seconds=180):
    try:
        out, err = p.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
    return p.returncode, out, err


def same_rows(t, ref, out, what):
    with h5py.File(ref, "r") as a, h5py.File(out, "r") as b:
        for ds in ROWS:
            x, y = a[ds][:], b[ds][:]
            t.check(x.shape == y.shape and np.array_equal(x, y), f"{what}: {ds} equal to the uninterrupted run",
                    lambda: f"shapes {x.shape} vs {y.shape}")
        for key in ["dropped_fraction_mean", "steps"]:
            t.check(a["summary"].attrs[key] == b["summary"].attrs[key],
                    f"{what}: /summary {key} equal to the uninterrupted run's",
                    lambda: f"{a['summary'].attrs[key]} vs {b['summary'].attrs[key]}")
        t.check(np.array_equal(a["summary/traffic_tokens"][:], b["summary/traffic_tokens"][:]),
                f"{what}: /summary/traffic_tokens equal to the uninterrupted run's (whole run)")
        # Timing covers every step of every attempt: tokens/s = tokens * steps / sum(time_step).
        t_sum = float(np.sum(b["steps/time_step"][:]))
        tps = 512 * STEPS / t_sum
        t.check(abs(b["summary"].attrs["tokens_per_second"] - tps) <= 1e-9 * tps,
                f"{what}: tokens_per_second covers all {STEPS} steps")


def main():
    t = Regression(__doc__)

    t.section("reference: an uninterrupted run (2 ranks)")
    ref = t.path("ref.h5")
    r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={ref}"], timeout=180)
    t.check(r.rc == 0, "reference run exits 0", r.describe)
    if r.rc != 0:
        t.abort("no reference run")
    with h5py.File(ref, "r") as f:
        t.check("attempts/end" in f and list(f["attempts/end"][:]) == [b"complete"],
                "reference records one complete attempt")

    try:
        t.section("item 1: SIGKILL of one rank mid-run, then --resume: every row, whole-run summary")
        out = t.path("killed.h5")
        p = start(t, 2, ["run"] + COMMON + [f"--output.file={out}"])
        wait_for(out + ".ckpt", p)
        time.sleep(0.3)  # a few steps past the first checkpoint
        pids = rank_pids(out)
        t.check(len(pids) == 2 and p.poll() is None, f"run in flight with 2 ranks ({pids})")
        if pids:
            os.kill(pids[-1], signal.SIGKILL)
        rc, so, se = finish(p)
        t.check(rc != 0, f"the killed job exits non-zero ({rc})")
        with h5py.File(out, "r") as f:
            t.check(int(f.attrs["complete"]) == 0, "killed file reads complete = 0")
        r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={out}", "--resume"], timeout=180)
        t.check(r.rc == 0 and "resuming from checkpoint" in r.out, "resume after SIGKILL exits 0", r.describe)
        with h5py.File(out, "r") as f:
            t.check(int(f.attrs["complete"]) == 1, "resumed file is complete")
            t.check(len(f["steps/step"]) == STEPS, f"all {STEPS} step rows", lambda: str(len(f["steps/step"])))
            ends = [bytes(e) for e in f["attempts/end"][:]]
            t.check(ends == [b"interrupted", b"complete"], f"attempts: interrupted, complete ({ends})")
            t.check(int(f["attempts/first_step"][1]) > 0, "second attempt started from the checkpoint step")
        same_rows(t, ref, out, "SIGKILL+resume")

    except Exception as e:  # a missing dataset or attribute on a defective build
        t.check(False, "item 1: raised " + type(e).__name__ + ": " + str(e))
    try:
        t.section("item 2: preempted (SIGUSR1) and resumed with routing.overlap_degree = 2: /summary and attempts "
                  "describe the whole run, rows bitwise the uninterrupted run's")
        out = t.path("usr1.h5")
        p = start(t, 2, ["run"] + COMMON + [f"--output.file={out}"])
        wait_for(out + ".ckpt", p)
        pids = rank_pids(out)
        if pids:
            os.kill(pids[0], signal.SIGUSR1)
        rc, so, se = finish(p)
        t.check(rc == 75, f"preempted run exits 75 ({rc})", se[-500:])
        # The overlap degree only schedules the exchange (bitwise the same for every d), so a
        # resume may change it: 2 chunks of the 4 local experts.
        r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={out}", "--resume", "--routing.overlap_degree=2"],
                     timeout=180)
        t.check(r.rc == 0, "resume with overlap_degree = 2 exits 0", r.describe)
        with h5py.File(out, "r") as f:
            ends = [bytes(e) for e in f["attempts/end"][:]]
            t.check(ends == [b"preempted", b"complete"], f"attempts: preempted, complete ({ends})")
            t.check(int(f["summary"].attrs["attempts"]) == 2, "summary counts 2 attempts")
            w = f["attempts/wall_seconds"][:]
            t.check(abs(f["summary"].attrs["wall_seconds"] - w.sum()) < 1e-9, "summary wall_seconds sums the attempts")
        same_rows(t, ref, out, "USR1+resume")

    except Exception as e:  # a missing dataset or attribute on a defective build
        t.check(False, "item 2: raised " + type(e).__name__ + ": " + str(e))
    try:
        t.section("item 3: --resume of a finished run is a no-op that says so")
        before = open(ref, "rb").read()
        r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={ref}", "--resume"], timeout=120)
        t.check(r.rc == 0 and "already complete" in r.out, "exit 0, says already complete", r.describe)
        t.check(open(ref, "rb").read() == before, "the finished file is not touched (byte-identical)")
        r = t.mpirun(2, ["run"] + BASE + [f"--output.file={ref}", "--resume", f"--training.steps={STEPS // 2}"],
                     timeout=120)
        t.check(r.rc == 2 and "training.steps" in r.err and "given twice" not in r.err and str(STEPS) in r.err,
                "a checkpoint beyond training.steps is refused (exit 2, names training.steps)", r.describe)
        t.check(open(ref, "rb").read() == before, "the refused run did not touch the file")
        ext = t.path("extended.h5")
        with open(ext, "wb") as f:
            f.write(before)
        with open(ext + ".ckpt", "wb") as f:
            f.write(open(ref + ".ckpt", "rb").read())
        r = t.mpirun(2, ["run"] + BASE + [f"--output.file={ext}", "--resume", f"--training.steps={STEPS + 20}"],
                     timeout=120)
        t.check(r.rc == 0, "more training.steps continues a finished run", r.describe)
        with h5py.File(ext, "r") as f:
            t.check(len(f["steps/step"]) == STEPS + 20 and int(f.attrs["complete"]) == 1,
                    f"extended file has {STEPS + 20} rows and is complete")

    except Exception as e:  # a missing dataset or attribute on a defective build
        t.check(False, "item 3: raised " + type(e).__name__ + ": " + str(e))
    try:
        t.section("item 4: a diverging run stops with a clear error, complete = 0, last good checkpoint kept")
        out = t.path("diverged.h5")
        r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={out}", "--training.learning_rate=1e30",
                                            "--training.optimizer=sgd"], timeout=120)
        t.check(r.rc == 3, f"exit code 3 ({r.rc})", r.describe)
        t.check("diverged at step" in r.err, "stderr says where it diverged", r.describe)
        with h5py.File(out, "r") as f:
            t.check(int(f.attrs["complete"]) == 0, "complete = 0")
            reason = bytes(f.attrs.get("incomplete_reason", b"")).decode()
            t.check("diverged" in reason, f"incomplete_reason says why ({reason!r})")
            t.check(bytes(f["attempts/end"][-1]) == b"diverged", "attempt recorded as diverged")
            t.check(len(f["steps/step"]) < STEPS, "it stopped early")
        if os.path.exists(out + ".ckpt"):
            with h5py.File(out + ".ckpt", "r") as c:
                t.check(int(c.attrs["step"]) <= len(h5py.File(out, "r")["steps/step"]) - 1,
                        "the kept checkpoint predates the divergence")

    except Exception as e:  # a missing dataset or attribute on a defective build
        t.check(False, "item 4: raised " + type(e).__name__ + ": " + str(e))
    try:
        t.section("item 5: a second run on the same output.file is refused and the first is untouched")
        out = t.path("shared.h5")
        # A long first run, so the second starts while it is certainly still writing.
        p = start(t, 2, ["run"] + BASE + ["--training.steps=2000", f"--output.file={out}"])
        wait_for(out + ".ckpt", p)
        t.check(p.poll() is None, "the first run is still running when the second starts")
        r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={out}"], timeout=60)
        t.check(r.rc == 2 and "in use" in r.err, "the second run exits 2: output in use", r.describe)
        rc, so, se = finish(p, 600)
        t.check(rc == 0, "the first run completes (exit 0)", se[-800:])
        h = t.h5check(out)
        t.check(h.rc == 0, "the first run's file is valid", h.describe)

    except Exception as e:  # a missing dataset or attribute on a defective build
        t.check(False, "item 5: raised " + type(e).__name__ + ": " + str(e))
    try:
        t.section("item 7: a checkpoint from another configuration, or with flipped bytes, is refused")
        base = t.path("other.h5")
        for a in [base, base + ".ckpt"]:
            with open(a, "wb") as f:
                f.write(open(ref if a == base else ref + ".ckpt", "rb").read())
        with h5py.File(base, "r+") as f:  # make it look unfinished, so a resume would continue it
            f.attrs["complete"] = 0
        for key, value in [("training.seed", "7"), ("training.optimizer", "sgd"), ("model.precision", "float64"),
                           ("routing.rule", "switch"), ("model.layers", "3"), ("data.num_clusters", "3")]:
            extra = ["--routing.k=1"] if value == "switch" else []
            r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={base}", "--resume", f"--{key}={value}"] + extra,
                         timeout=60)
            t.check(r.rc == 2 and key in r.err and f"now {value}" in r.err,
                    f"changed {key} is refused with both values (exit 2)", r.describe)
        os.remove(base)
        r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={base}", "--resume", "--training.seed=7"], timeout=60)
        t.check(r.rc == 2 and "training.seed" in r.err, "...also when the result file is gone", r.describe)
        r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={base}", "--resume"], timeout=60)
        t.check(r.rc == 2 and "missing" in r.err, "a missing result file with a mid-run checkpoint is refused",
                r.describe)
        with open(base, "wb") as f:
            f.write(open(ref, "rb").read())
        with h5py.File(base, "r+") as f:
            f.attrs["complete"] = 0
        # The checkpoint is a manifest; the tensor lives in the shard the manifest names.
        with h5py.File(base + ".ckpt", "r") as c:
            names = [n.decode() for n in c["index/name"][:]]
            name = next(n for n in ["param/layer0.gate", "param/head.w", "param/proj.w"] if n in names)
            shard = os.path.join(os.path.dirname(base),
                                 c["shards/file"][int(c["index/shard"][names.index(name)])].decode())
        with h5py.File(shard, "r") as c:
            offset = c[name].id.get_offset()
        with open(shard, "r+b") as f:
            f.seek(offset + 13)
            b = f.read(1)
            f.seek(offset + 13)
            f.write(bytes([b[0] ^ 0x5A]))
        r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={base}", "--resume"], timeout=60)
        t.check(r.rc == 2 and "corrupt" in r.err, "a flipped byte in a checkpoint tensor is detected (exit 2)",
                r.describe)
        os.remove(shard)
        r = t.mpirun(2, ["run"] + COMMON + [f"--output.file={base}", "--resume"], timeout=60)
        t.check(r.rc == 2 and "shard" in r.err and os.path.basename(shard) in r.err,
                "a missing checkpoint shard is refused, naming it (exit 2)", r.describe)

    except Exception as e:  # a missing dataset or attribute on a defective build
        t.check(False, "item 7: raised " + type(e).__name__ + ": " + str(e))
    try:
        t.section("item 8: resume on another rank count (2 -> 4 -> 1), float64: rank-shaped data grows")
        f64 = ["--model.precision=float64", "--routing.group_size=128"]
        ref64 = t.path("ref64.h5")
        r = t.mpirun(2, ["run"] + COMMON + f64 + [f"--output.file={ref64}"], timeout=180)
        t.check(r.rc == 0, "float64 reference exits 0", r.describe)
        out = t.path("ranks.h5")
        p = start(t, 2, ["run"] + COMMON + f64 + [f"--output.file={out}"])
        wait_for(out + ".ckpt", p)
        pids = rank_pids(out)
        if pids:
            os.kill(pids[0], signal.SIGUSR1)
        rc, so, se = finish(p)
        t.check(rc == 75, "stopped at 2 ranks (75)")
        p = start(t, 4, ["run"] + COMMON + f64 + [f"--output.file={out}", "--resume"])
        time.sleep(1.0)
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            with h5py.File(out + ".ckpt", "r") as c:
                if int(c.attrs["ranks"]) == 4:
                    break
            time.sleep(0.05)
        pids = rank_pids(out)
        if pids:
            os.kill(pids[0], signal.SIGUSR1)
        rc, so, se = finish(p)
        t.check(rc in (0, 75), f"4-rank attempt ended ({rc})", se[-800:])
        r = t.mpirun(1, ["run"] + COMMON + f64 + [f"--output.file={out}", "--resume"], timeout=240)
        t.check(r.rc == 0, "finished on 1 rank", r.describe)
        with h5py.File(ref64, "r") as a, h5py.File(out, "r") as b:
            t.check(len(b["steps/step"]) == STEPS, f"{STEPS} rows")
            t.check(np.allclose(a["steps/loss"][:], b["steps/loss"][:], rtol=1e-9, atol=0),
                    "loss curve equals the 2-rank run to round-off (float64)")
            ranks = b["steps/ranks"][:]
            t.check(set(ranks.tolist()) >= {2, 1}, f"/steps/ranks records the rank counts ({sorted(set(ranks.tolist()))})")
            ts = b["steps/tokens_sent"]
            t.check(ts.shape[1] == max(ranks), f"tokens_sent grew to the largest rank count {ts.shape}")
            i2 = int(np.argmax(ranks == 2))
            t.check(np.all(ts[i2, 2:] == -1) if ts.shape[1] > 2 else True,
                    "cells of ranks a step did not have read -1")
            i1 = int(np.argmax(ranks == 1))
            t.check(ts[i1, 0] >= 0 and (ts.shape[1] == 1 or np.all(ts[i1, 1:] == -1)),
                    "1-rank rows fill only rank 0")
            tt = b["summary/traffic_tokens"]
            t.check(tt.shape == (max(ranks), max(ranks)) and int(tt.attrs["first_step"]) == 0
                    and int(tt.attrs["through_step"]) == STEPS,
                    f"the run's traffic sum covers every step over every rank count {tt.shape}")
        h = t.h5check(out)
        t.check(h.rc == 0, "h5check accepts the file", h.describe)

    except Exception as e:  # a missing dataset or attribute on a defective build
        t.check(False, "item 8: raised " + type(e).__name__ + ": " + str(e))
    t.finish()

if __name__ == "__main__":
    main()
