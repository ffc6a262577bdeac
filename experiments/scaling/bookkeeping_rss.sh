#!/usr/bin/env bash
# Peak RSS of every rank (and the result/checkpoint bytes) of the scale tier's configuration, for
# any moesim build — how docs/scale.md's before/after table was measured:
#   experiments/scaling/bookkeeping_rss.sh BUILD/moesim RANKS TAG
# Runs in $TMPDIR (default /tmp), prints file and checkpoint bytes and rank 0 / median / max peak
# RSS (KiB, from /usr/bin/time -f %M around each rank).
set -euo pipefail
moesim=$(realpath "$1"); ranks=$2; tag=$3
root=$(cd "$(dirname "$(realpath "$0")")/../.." && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/moesim_rss.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cat > "$dir/wrap.sh" <<'W'
#!/usr/bin/env bash
exec /usr/bin/time -f "%M" -o "$RSS_DIR/rss.$OMPI_COMM_WORLD_RANK" "$@"
W
chmod +x "$dir/wrap.sh"
cd "$dir"
mpirun --allow-run-as-root --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 \
  -x RSS_DIR="$dir" -n "$ranks" "$dir/wrap.sh" "$moesim" run "$root/experiments/quickstart.ini" \
  --model.d_model=64 --model.d_ff=512 --model.layers=1 --model.precision=float64 \
  --routing.num_experts=64 --routing.k=2 --routing.capacity_factor=1.25 --routing.group_size=16 \
  --data.tokens_per_step=1024 --data.eval_tokens=1024 --training.eval_every=10 \
  --training.optimizer=adam --output.log_every=0 --output.echo_config=false --checkpoint.every=5 \
  --output.loads_every=5 --training.steps=10 --output.file="$tag.h5" >/dev/null
echo "$tag ranks=$ranks file_bytes=$(stat -c %s "$tag.h5") ckpt_bytes=$(du -sb "$tag".h5.ckpt* | awk '{s += $1} END {print s}')"
sort -n rss.* | awk -v r0="$(cat rss.0)" '{a[NR] = $1} END {print "peak RSS KiB: rank0=" r0 " median=" a[int((NR + 1) / 2)] " max=" a[NR]}'
