#!/usr/bin/python3
"""Kill-and-resume through the moesim program: a signal (SIGUSR1 = Slurm's preemption
warning, SIGTERM = scancel) sent to ONE rank's process mid-run makes every rank write a
checkpoint at the next step boundary and exit with code 75; the result file stays
complete = 0; `moesim run ... --resume` then finishes the run, and its /steps and /eval
rows are bitwise identical to an uninterrupted run's."""
import os
import signal
import subprocess
import time

import h5py
import numpy as np

from regtest import Regression

QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "experiments", "quickstart.ini")
STEPS = 300


def rank_pids(marker):
    """PIDs of moesim rank processes whose command line contains `marker`."""
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


def main():
    t = Regression(__doc__)
    # The quick-start model, made smaller so the 5 runs stay fast under sanitizers.
    common = [QUICKSTART, f"--training.steps={STEPS}", "--training.eval_every=50", "--output.log_every=0",
              "--model.d_ff=64", "--data.tokens_per_step=512", "--data.eval_tokens=1024",
              "--output.echo_config=false", "--checkpoint.every=25"]

    t.section("uninterrupted reference run (2 ranks)")
    ref = t.path("ref.h5")
    r = t.mpirun(2, ["run"] + common + [f"--output.file={ref}"], timeout=120)
    t.check(r.rc == 0, "reference run exits 0", r.describe)

    for sig, victim in [(signal.SIGUSR1, "last"), (signal.SIGTERM, "first")]:
        name = signal.Signals(sig).name
        t.section(f"{name} to the {victim} rank's process mid-run, then --resume")
        out = t.path(f"{name}.h5")
        ckpt = out + ".ckpt"
        cmd = t.mpi_cmd(2, ["run"] + common + [f"--output.file={out}"])
        p = subprocess.Popen(cmd, cwd=t.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(ckpt) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the first periodic checkpoint marks "mid-run"
        pids = rank_pids(out)
        t.check(len(pids) == 2 and p.poll() is None, f"run is in flight with 2 rank processes ({pids})")
        if pids:
            os.kill(pids[-1] if victim == "last" else pids[0], sig)
        try:
            stdout, stderr = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            stdout, stderr = p.communicate()
            t.check(False, f"{name}: the job ended within 60 s (no rank left waiting)")
        t.check(p.returncode == 75, f"{name}: exit code 75 (stopped, checkpoint written)",
                f"exit {p.returncode}\n{stdout[-2000:]}\n{stderr[-2000:]}")
        t.check("stopped on request after step" in stdout, f"{name}: says where it stopped", stdout[-1000:])
        with h5py.File(out, "r") as f:
            done = len(f["steps/loss"])
            t.check(int(f.attrs["complete"]) == 0, f"{name}: interrupted result file has complete = 0")
            t.check(0 < done < STEPS, f"{name}: stopped mid-run ({done} of {STEPS} steps written)")

        r = t.mpirun(2, ["run"] + common + [f"--output.file={out}", "--resume"], timeout=120)
        t.check(r.rc == 0, f"{name}: resumed run exits 0", r.describe)
        t.check("resuming from checkpoint" in r.out, f"{name}: resumed from the checkpoint", r.describe)
        with h5py.File(ref, "r") as a, h5py.File(out, "r") as b:
            t.check(int(b.attrs["complete"]) == 1, f"{name}: resumed result file is complete")
            for ds in ["steps/step", "steps/loss", "steps/aux_loss", "steps/dropped_fraction", "steps/expert_load",
                       "eval/step", "eval/loss", "eval/accuracy"]:
                x, y = a[ds][:], b[ds][:]
                t.check(x.shape == y.shape and np.array_equal(x, y), f"{name}: {ds} bitwise equal to the uninterrupted run",
                        lambda: f"shapes {x.shape} vs {y.shape}")
        h = t.h5check(out)
        t.check(h.rc == 0, f"{name}: h5check accepts the resumed file", h.describe)
    t.finish()


if __name__ == "__main__":
    main()
