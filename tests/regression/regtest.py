"""Shared helpers for the MoESim regression scripts (tests/regression/*.py).

Every script is called as

    /usr/bin/python3 SCRIPT.py --moesim PATH --mpiexec PATH [--h5check PATH] [--keep-tmp]
                              [-- MPIEXEC_FLAGS...]

Everything after a bare `--` is passed to mpiexec before the program (CTest passes
MOESIM_TEST_MPIEXEC_FLAGS there); without it, `--allow-run-as-root --oversubscribe --bind-to none`.
Each script works in its own fresh temporary directory, removed at the end (--keep-tmp keeps it).
Checks print one line each; any failed check makes the script exit 1 with a list of failures.
"""
import argparse
import configparser
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_H5CHECK = os.path.normpath(os.path.join(HERE, "..", "..", "tools", "h5check.py"))
DEFAULT_MPI_FLAGS = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]
PYTHON = "/usr/bin/python3"  # Debian's python with h5py + numpy (see tools/h5check.py)


class Result:
    def __init__(self, cmd, rc, out, err, seconds, timed_out):
        self.cmd, self.rc, self.out, self.err = cmd, rc, out, err
        self.seconds, self.timed_out = seconds, timed_out

    def describe(self):
        tail = lambda s: "\n".join(s.strip().splitlines()[-15:])  # noqa: E731
        return (f"command: {shlex.join(self.cmd)}\n  exit code: {self.rc}"
                + (" (TIMED OUT)" if self.timed_out else "")
                + f"\n  --- stdout (tail) ---\n{tail(self.out)}\n  --- stderr (tail) ---\n{tail(self.err)}")


class Regression:
    """Argument parsing, temp directory, subprocess runs and check bookkeeping."""

    def __init__(self, description):
        argv = sys.argv[1:]
        mpi_flags = None
        if "--" in argv:
            i = argv.index("--")
            argv, mpi_flags = argv[:i], argv[i + 1:]
        ap = argparse.ArgumentParser(description=description)
        ap.add_argument("--moesim", required=True, help="the moesim executable")
        ap.add_argument("--mpiexec", required=True, help="the MPI launcher")
        ap.add_argument("--h5check", default=DEFAULT_H5CHECK, help="tools/h5check.py")
        ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
        self.args = ap.parse_args(argv)
        self.moesim = os.path.abspath(self.args.moesim)
        self.mpiexec = self.args.mpiexec
        self.mpi_flags = mpi_flags if mpi_flags else list(DEFAULT_MPI_FLAGS)
        for path, what in [(self.moesim, "--moesim"), (self.args.h5check, "--h5check")]:
            if not os.path.isfile(path):
                sys.exit(f"ERROR: {what} {path} does not exist")
        # Allow running the script by hand as root as well (CTest sets these itself).
        os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        os.environ.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
        self.tmp = tempfile.mkdtemp(prefix="moesim_regression_")
        self.failures = []
        self.checks = 0
        self.t0 = time.monotonic()
        print(f"{os.path.basename(sys.argv[0])}: moesim={self.moesim} mpiexec={self.mpiexec} "
              f"flags={' '.join(self.mpi_flags)} tmp={self.tmp}", flush=True)

    # -- paths and files --
    def path(self, *names):
        return os.path.join(self.tmp, *names)

    def write(self, name, text):
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
        return p

    # -- processes --
    def run(self, cmd, timeout=60, cwd=None):
        """Runs cmd in its own session; on timeout mpiexec (or cmd) is terminated, then killed."""
        cmd = [str(c) for c in cmd]
        t = time.monotonic()
        p = subprocess.Popen(cmd, cwd=cwd or self.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        timed_out = False
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            # SIGTERM first: mpiexec then tears down its ranks (Open MPI puts them in their own
            # process groups, so killing our group alone would leave them running).
            p.terminate()
            try:
                out, err = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                out, err = p.communicate()
        return Result(cmd, p.returncode, out, err, time.monotonic() - t, timed_out)

    def mpi_cmd(self, ranks, program_args, program=None):
        return ([self.mpiexec, "-n", str(ranks)] + self.mpi_flags
                + (program if program is not None else [self.moesim]) + list(program_args))

    def mpirun(self, ranks, program_args, timeout=60, cwd=None):
        return self.run(self.mpi_cmd(ranks, program_args), timeout=timeout, cwd=cwd)

    def serial(self, program_args, timeout=60, cwd=None):
        """moesim started directly (an MPI singleton), as `moesim route` is meant to be used."""
        return self.run([self.moesim] + list(program_args), timeout=timeout, cwd=cwd)

    def h5check(self, path, route=False):
        return self.run([PYTHON, self.args.h5check] + (["--route"] if route else []) + [path])

    # -- checks --
    def check(self, cond, what, detail=""):
        """Records one check. `detail` (str or callable) is printed only when it fails."""
        self.checks += 1
        if cond:
            print(f"  ok    {what}", flush=True)
            return True
        d = detail() if callable(detail) else detail
        print(f"  FAIL  {what}" + (f"\n        {d}".replace("\n", "\n        ") if d else ""), flush=True)
        self.failures.append(what)
        return False

    def section(self, title):
        print(f"\n== {title}", flush=True)

    def finish(self):
        secs = time.monotonic() - self.t0
        if self.args.keep_tmp:
            print(f"(kept {self.tmp})")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.failures:
            print(f"\nFAILED: {len(self.failures)} of {self.checks} checks failed ({secs:.1f} s):", flush=True)
            for f in self.failures:
                print(f"  - {f}")
            sys.exit(1)
        print(f"\nPASSED: all {self.checks} checks ({secs:.1f} s)")
        sys.exit(0)

    def abort(self, msg):
        """A failure that makes the remaining checks meaningless."""
        self.failures.append(msg)
        print(f"  FAIL  {msg} (stopping here)", flush=True)
        self.finish()


def parse_ini(text):
    """The `config` attribute / a parameter file as {"section.key": "value"}."""
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None)
    cp.read_string(text)
    return {f"{s}.{k}": v for s in cp.sections() for k, v in cp[s].items()}


def as_text(v):
    return bytes(v).decode() if isinstance(v, (bytes, bytearray)) or type(v).__name__ == "bytes_" else str(v)
