# shellcheck shell=bash
# Shared functions of MoESim's job scripts (sourced, never run). The caller sets MOESIM_REPO
# to the checkout; moesim_setup then reads jobscripts/site.env and finds the executable.
# Messages go to stderr and start with the calling script's name.

moesim_say() { echo "${MOESIM_SCRIPT:-moesim}: $*" >&2; }
moesim_die() { moesim_say "error: $*"; exit "${2:-2}"; }

# Reads site.env (MOESIM_SITE_ENV overrides its path) and sets MOESIM_BIN.
moesim_setup() {
  local site=${MOESIM_SITE_ENV:-$MOESIM_REPO/jobscripts/site.env}
  [[ -r $site ]] || moesim_die "site settings '$site' not found"
  # shellcheck source=/dev/null
  source "$site"
  MOESIM_BIN=${MOESIM_BUILD_DIR:-$MOESIM_REPO/build}/moesim
  [[ -x $MOESIM_BIN ]] || moesim_die "$MOESIM_BIN is not built (scripts/build.sh, or set MOESIM_BUILD_DIR in $site)"
}

# moesim_python [MODULES] : the first Python that imports MODULES (default: what aggregation needs).
moesim_python() {
  local modules=${1:-h5py,numpy,matplotlib} py
  for py in ${MOESIM_PYTHON:-} python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c "import $modules" 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  moesim_die "no Python that imports $modules (set MOESIM_PYTHON in jobscripts/site.env)"
}

# 1 when NTASKS ranks share fewer CPUs than ranks (nproc sees the CPUs this job may use).
moesim_oversubscribed() {
  local ntasks=$1 nodes=${SLURM_JOB_NUM_NODES:-1}
  (( ntasks > nodes * $(nproc) )) && echo 1 || echo 0
}

# srun or mpirun, from MOESIM_LAUNCHER (auto: srun inside Slurm when its MPI plugin exists).
moesim_launcher() {
  case ${MOESIM_LAUNCHER:-auto} in
    srun|mpirun) echo "$MOESIM_LAUNCHER" ;;
    auto)
      if [[ -n ${SLURM_JOB_ID:-} ]] && command -v srun >/dev/null \
         && srun --mpi=list 2>&1 | grep --quiet --word-regexp "${MOESIM_SRUN_MPI:-pmix}"; then
        echo srun
      else
        echo mpirun
      fi ;;
    *) moesim_die "MOESIM_LAUNCHER='$MOESIM_LAUNCHER' (allowed: auto, srun, mpirun)" ;;
  esac
}

# moesim_launch NTASKS ARGS... : runs `moesim ARGS...` on NTASKS ranks; returns its exit code
# (75: stopped on request, every rank's state is in the checkpoint). With MOESIM_PREEMPTIBLE=1
# it also sets MOESIM_STOP_SIGNAL to the first stop signal this shell received (USR1 or TERM;
# empty: none), so that the caller can decide whether to requeue (run.sbatch: only on USR1).
moesim_launch() {
  local ntasks=$1; shift
  local launcher; launcher=$(moesim_launcher)
  if [[ $(moesim_oversubscribed "$ntasks") == 1 ]]; then
    # Busy-polling ranks that share a core slow each other down ~7x (measured: 4 ranks on 2 cores,
    # 320 ms -> 40 ms per step); Open MPI's degraded mode yields the CPU while waiting.
    export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
  fi
  local cmd status_file=""
  if [[ $launcher == srun ]]; then
    # --overcommit is inherited from the allocation (SLURM_OVERCOMMIT) when the job asked for it.
    cmd=(srun --mpi="${MOESIM_SRUN_MPI:-pmix}" --ntasks="$ntasks" "$MOESIM_BIN" "$@")
  else
    local flags=()
    [[ $(id -u) -eq 0 ]] && flags+=(--allow-run-as-root)
    if [[ ${SLURM_OVERCOMMIT:-0} == 1 || $(moesim_oversubscribed "$ntasks") == 1 ]]; then
      flags+=(--oversubscribe)
    fi
    # shellcheck disable=SC2206  # MOESIM_MPIRUN_FLAGS is a word list by design
    flags+=(${MOESIM_MPIRUN_FLAGS:-})
    cmd=(mpirun --np "$ntasks" "${flags[@]}" "$MOESIM_BIN" "$@")
    # Open MPI 4.1's mpirun cannot forward SIGTERM (ess_base_forward_signals refuses it; it
    # forwards USR1/USR2/TSTP/CONT/ABRT/ALRM). A SIGTERM to mpirun itself (a plain scancel sends
    # one to every process of the job) makes it send SIGCONT to the ranks, wait
    # odls_base_sigkill_timeout seconds, send SIGTERM, wait as long again, then SIGKILL, and exit
    # 1 whatever the ranks returned. So: a grace long enough for the ranks to reach the next step
    # boundary and write their checkpoint, and rank 0's own exit code through
    # MOESIM_EXIT_STATUS_FILE (written only after the collective checkpoint is complete).
    export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-${MOESIM_STOP_GRACE:-10}}
    status_file="$PWD/.moesim-exit-status.$$.$RANDOM"
    rm -f "$status_file"
  fi
  local rc=0
  if [[ ${MOESIM_PREEMPTIBLE:-0} != 1 ]]; then
    MOESIM_EXIT_STATUS_FILE=$status_file "${cmd[@]}" || rc=$?
  else
    # Preemptible: the launcher runs in the background so that this shell can catch Slurm's
    # warning signal (#SBATCH --signal=B:USR1@60, or scancel --signal=USR1 --batch) or a
    # SIGTERM (scancel) and pass SIGUSR1 on to srun / mpirun, which forward it to every rank;
    # moesim then writes a checkpoint at the next step boundary and exits with 75. SIGTERM is
    # translated to USR1 (a TERM to mpirun would start its abort sequence, see above).
    MOESIM_STOP_SIGNAL=""
    MOESIM_EXIT_STATUS_FILE=$status_file "${cmd[@]}" &
    local child=$!
    trap 'MOESIM_STOP_SIGNAL=${MOESIM_STOP_SIGNAL:-USR1}; kill -USR1 "$child" 2>/dev/null || true' USR1
    trap 'MOESIM_STOP_SIGNAL=${MOESIM_STOP_SIGNAL:-TERM}; kill -USR1 "$child" 2>/dev/null || true' TERM
    while true; do
      rc=0
      wait "$child" || rc=$?
      kill -0 "$child" 2>/dev/null || break  # still alive: `wait` returned for a trapped signal
    done
    trap - USR1 TERM
  fi
  if [[ -n $status_file ]]; then
    local own=""
    [[ -r $status_file ]] && own=$(head -c 16 "$status_file")
    rm -f "$status_file" "$status_file.tmp"
    if [[ $rc -ne 0 && $rc -ne 75 && $own == 75 ]]; then
      moesim_say "mpirun exit code $rc, but the ranks stopped on request after writing their checkpoint: exit code 75"
      rc=75
    fi
  fi
  return "$rc"
}

# Field FIELD of the manifest row of point POINT (manifest.tsv: tab-separated, a header line).
moesim_manifest_field() {
  local manifest=$1 point=$2 field=$3
  awk -F'\t' -v p="$point" -v f="$field" '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; if (!(f in col)) exit 3; next }
    $col["point"] == p { print $col[f]; found = 1; exit }
    END { if (!found) exit 4 }' "$manifest"
}

# moesim_run_point SWEEP_DIR POINT [ATTEMPT] : one sweep point, run from SWEEP_DIR (the parameter
# files name their results relative to it), resuming from the point's checkpoint if it has one.
# Writes logs/attempt-ATTEMPT/point-NNNN.status (key=value: exit code, stop signal, job ids, host,
# ranks, oversubscription, seconds) atomically before and after the run; earlier attempts' files
# are never touched. Returns moesim's exit code.
moesim_run_point() {
  local dir=$1 point=$2 attempt=${3:-1} ranks params result status t0 rc
  cd "$dir" || moesim_die "sweep directory '$dir' not found"
  [[ -r manifest.tsv ]] || moesim_die "$dir/manifest.tsv not found (tools/sweep.py expand writes it)"
  ranks=$(moesim_manifest_field manifest.tsv "$point" ranks) \
    || moesim_die "point $point is not in $dir/manifest.tsv"
  params=$(moesim_manifest_field manifest.tsv "$point" params)
  result=$(moesim_manifest_field manifest.tsv "$point" result)
  [[ -r $params ]] || moesim_die "parameter file $dir/$params of point $point not found"
  if [[ -n ${SLURM_NTASKS:-} && $SLURM_NTASKS -ne $ranks ]]; then
    moesim_die "point $point needs $ranks rank(s) but this job has $SLURM_NTASKS task(s): submit each rank count as its own array (submit_sweep.sh does)"
  fi
  [[ $attempt =~ ^[0-9]+$ ]] || moesim_die "attempt '$attempt' is not a number"
  status=$(printf 'logs/attempt-%d/point-%04d.status' "$attempt" "$point")
  mkdir -p "logs/attempt-$attempt" "$(dirname "$result")"
  local launcher; launcher=$(moesim_launcher)
  local info
  info=$(printf '%s\n' "point=$point" "ranks=$ranks" "params=$params" "result=$result" \
    "attempt=$attempt" "slurm_job_id=${SLURM_JOB_ID:-}" \
    "slurm_array_job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}" \
    "host=$(hostname)" "nodes=${SLURM_JOB_NUM_NODES:-1}" "nproc=$(nproc)" \
    "oversubscribed=$(moesim_oversubscribed "$ranks")" "launcher=$launcher" \
    "started_utc=$(date --utc +%Y-%m-%dT%H:%M:%SZ)")
  printf '%s\nstate=running\n' "$info" > "$status.tmp" && mv "$status.tmp" "$status"
  moesim_say "point $point: $ranks rank(s) via $launcher, $params -> $result"
  t0=$(date +%s.%N)
  rc=0
  # --resume: a point stopped by a signal (preemption, time limit) left a checkpoint next to its
  # result; running it again continues from there. Without a checkpoint it starts afresh.
  # Preemptible: a scancel (SIGTERM) or USR1 makes the ranks checkpoint and exit 75, and the
  # status file records it (the point then resumes when resubmitted).
  MOESIM_PREEMPTIBLE=1 moesim_launch "$ranks" run "$params" --resume || rc=$?
  printf '%s\nstate=finished\nexit_code=%d\nstop_signal=%s\nseconds=%s\n' "$info" "$rc" "${MOESIM_STOP_SIGNAL:-}" \
    "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')" > "$status.tmp" \
    && mv "$status.tmp" "$status"
  moesim_say "point $point: exit code $rc"
  return "$rc"
}
