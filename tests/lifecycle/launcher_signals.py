#!/usr/bin/python3
"""Signals through the job scripts' launcher path (jobscripts/lib.sh: moesim_launch with mpirun,
as run.sbatch uses it when srun has no pmix, and as run_sweep_local.sh always does).

Open MPI 4.1's mpirun cannot forward SIGTERM (ess_base_forward_signals refuses it): a SIGTERM to
mpirun itself starts its abort sequence (SIGCONT, wait odls_base_sigkill_timeout, SIGTERM to the
ranks, wait again, SIGKILL) and mpirun exits 1 whatever the ranks did. Under Slurm a plain
`scancel` sends SIGTERM to every process of the batch step, mpirun included. Checked here:
  1. SIGTERM to the mpirun process mid-run: the launcher ends with 75 once the ranks have written
     their checkpoint; the result file keeps complete = 0; `--resume` finishes the run and its
     /steps rows are bitwise those of an uninterrupted run.
  2. SIGUSR1 to the launcher shell (Slurm's pre-timeout warning, --signal=B:USR1@60): 75, and the
     launcher records which signal asked for the stop (MOESIM_STOP_SIGNAL=USR1; run.sbatch
     requeues only then).
  3. SIGTERM to the launcher shell (scancel --batch): 75 and MOESIM_STOP_SIGNAL=TERM.
Run:  launcher_signals.py --moesim BUILD/moesim --mpiexec mpirun [--keep-tmp]"""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "regression"))
from regtest import Regression  # noqa: E402

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.ini")
STEPS = 300
GRACE = 3  # MOESIM_STOP_GRACE: seconds mpirun waits before SIGTERM, and again before SIGKILL


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def comm_of(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def main():
    global STEPS
    t = Regression(__doc__)
    small = [QUICKSTART, "--training.eval_every=50", "--output.log_every=0",
             "--model.d_ff=64", "--data.tokens_per_step=512", "--data.eval_tokens=1024",
             "--output.echo_config=false", "--checkpoint.every=25"]
    # mpirun forwards SIGTERM to the ranks only after GRACE seconds: the run must still be going
    # then, on an idle machine as on a loaded one. Time a step (two run lengths, so the start-up
    # cost cancels) and size the run to last at least 5 x GRACE after its first checkpoint.
    walls = []
    for n in (20, 120):
        r = t.mpirun(2, ["run"] + small + [f"--training.steps={n}", f"--output.file={t.path(f'probe{n}.h5')}"],
                     timeout=180)
        walls.append(r.seconds)
    step = max((walls[1] - walls[0]) / 100.0, 1e-4)
    STEPS = int(min(max(300, 25 + 5 * GRACE / step), 20000)) // 50 * 50
    print(f"  step {1e3 * step:.2f} ms -> {STEPS} steps per run", flush=True)
    common = small + [f"--training.steps={STEPS}"]
    os.environ.update(MOESIM_REPO=REPO, MOESIM_BIN=t.moesim, MOESIM_LAUNCHER="mpirun",
                      MOESIM_STOP_GRACE=str(GRACE), MOESIM_PREEMPTIBLE="1")
    for var in ["SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_MCA_odls_base_sigkill_timeout"]:
        os.environ.pop(var, None)
    # What a job script does: source lib.sh, launch in the background-with-traps (preemptible) mode,
    # then report moesim_launch's return code and the signal that asked for the stop.
    script = ('source "$MOESIM_REPO/jobscripts/lib.sh"; rc=0; moesim_launch 2 "$@" || rc=$?; '
              'echo "launcher rc=$rc stop_signal=${MOESIM_STOP_SIGNAL:-none}"; exit "$rc"')

    t.section("uninterrupted reference run (2 ranks, through the launcher)")
    ref = t.path("ref.h5")
    r = t.run(["bash", "-c", script, "launch", "run"] + common + [f"--output.file={ref}"], timeout=180)
    if not t.check(r.rc == 0 and os.path.exists(ref), "reference run through moesim_launch exits 0", r.describe):
        t.abort("no reference run")
    t.check("stop_signal=none" in r.out, "no stop signal recorded", r.describe)

    cases = [("SIGTERM to the mpirun process", "mpirun", signal.SIGTERM, None),
             ("SIGUSR1 to the launcher shell", "shell", signal.SIGUSR1, "USR1"),
             ("SIGTERM to the launcher shell", "shell", signal.SIGTERM, "TERM")]
    for title, target, sig, recorded in cases:
        t.section(title + " mid-run, then --resume")
        out = t.path(f"{target}-{sig.name}.h5")
        ckpt = out + ".ckpt"
        p = subprocess.Popen(["bash", "-c", script, "launch", "run"] + common + [f"--output.file={out}"],
                             cwd=t.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        deadline = time.monotonic() + 120
        while not os.path.exists(ckpt) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the first periodic checkpoint marks "mid-run"
        mpirun = [c for c in children(p.pid) if comm_of(c) in ("mpirun", "orterun", "mpiexec")]
        if not t.check(p.poll() is None and len(mpirun) == 1, f"run in flight under mpirun (pids {mpirun})"):
            p.kill()
            p.communicate()
            continue
        os.kill(mpirun[0] if target == "mpirun" else p.pid, sig)
        t0 = time.monotonic()
        try:
            stdout, stderr = p.communicate(timeout=60 + 2 * GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            stdout, stderr = p.communicate()
        detail = f"exit {p.returncode} after {time.monotonic() - t0:.1f} s\n{stdout[-1500:]}\n{stderr[-1500:]}"
        t.check(p.returncode == 75, f"{title}: the launcher exits 75 (stopped, checkpoint written)", detail)
        if recorded:
            t.check(f"stop_signal={recorded}" in stdout, f"{title}: MOESIM_STOP_SIGNAL={recorded}", detail)
        t.check("stopped on request after step" in stdout, f"{title}: moesim says where it stopped", detail)
        with h5py.File(out, "r") as f:
            done = len(f["steps/loss"])
            t.check(int(f.attrs["complete"]) == 0, f"{title}: interrupted result file has complete = 0")
            t.check(0 < done < STEPS, f"{title}: stopped mid-run ({done} of {STEPS} steps written)")
        t.check(os.path.exists(ckpt), f"{title}: checkpoint {os.path.basename(ckpt)} kept")
        r = t.mpirun(2, ["run"] + common + [f"--output.file={out}", "--resume"], timeout=180)
        t.check(r.rc == 0 and "resuming from checkpoint" in r.out, f"{title}: --resume continues and exits 0",
                r.describe)
        with h5py.File(ref, "r") as a, h5py.File(out, "r") as b:
            t.check(int(b.attrs["complete"]) == 1, f"{title}: resumed result file is complete")
            for ds in ["steps/step", "steps/loss", "eval/loss"]:
                x, y = a[ds][:], b[ds][:]
                t.check(x.shape == y.shape and np.array_equal(x, y),
                        f"{title}: {ds} bitwise equal to the uninterrupted run", f"shapes {x.shape} vs {y.shape}")
    t.finish()


if __name__ == "__main__":
    main()
