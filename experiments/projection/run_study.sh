#!/bin/bash
# The projection study (README.md here): calibrate this machine, measure validation runs on 1-2
# ranks, predict them (hold-out: calibration never sees the runs), then project the reference
# layer to 16,384 ranks. Usage: experiments/projection/run_study.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}/moesim
D=experiments/projection
OUT=$D/results
mkdir -p "$OUT"
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none"

# 1. Calibrate (micro-benchmarks only) at the validation runs' expert shapes (the layer 256x1024,
#    its 2-layer variant 128x512, the quick-start 64x256).
#    SKIP_CALIBRATE=1 reuses the machine file of an earlier invocation.
if [ "${SKIP_CALIBRATE:-0}" != 1 ]; then
  $MPI -n 2 $B calibrate $D/validate_layer.ini --cluster.output=$D/machines/this_machine.ini \
    --cluster.calibrate_expert_shapes=128x512,64x256 \
    | tee $OUT/calibrate.log
fi

# 2. Measured runs (each its own result file; loads recorded every 5 steps).
#    SKIP_RUNS=1 reuses the result files of an earlier invocation.
runs=()
for ranks in 1 2; do
  for v in layer 2layer quickstart; do runs+=($OUT/val_${v}_np$ranks.h5); done
done
runs+=($OUT/val_layer_padded_np2.h5 $OUT/val_layer_bf16_np1.h5 $OUT/val_layer_bf16_np2.h5)
if [ "${SKIP_RUNS:-0}" != 1 ]; then
  for ranks in 1 2; do
    $MPI -n $ranks $B run $D/validate_layer.ini --output.file=$OUT/val_layer_np$ranks.h5
    $MPI -n $ranks $B run $D/validate_layer.ini --model.d_model=128 --model.d_ff=512 \
      --model.layers=2 --data.tokens_per_step=4096 --output.file=$OUT/val_2layer_np$ranks.h5
    $MPI -n $ranks $B run experiments/quickstart.ini --training.steps=60 --training.eval_every=0 \
      --output.log_every=0 --output.echo_config=false --output.file=$OUT/val_quickstart_np$ranks.h5
  done
  $MPI -n 2 $B run $D/validate_layer.ini --routing.dispatch=alltoall_padded \
    --output.file=$OUT/val_layer_padded_np2.h5
  # The layer in bfloat16 (mixed precision: bf16 GEMMs, bf16 rows on the wire), 1 and 2 ranks.
  for ranks in 1 2; do
    $MPI -n $ranks $B run $D/validate_layer.ini --model.precision=bfloat16 \
      --output.file=$OUT/val_layer_bf16_np$ranks.h5
  done
  # A recorded run of the reference layer for the run: workload (groups of 256 tokens).
  $MPI -n 2 $B run experiments/bench/reference_layer.ini --routing.group_size=256 --training.steps=20 \
    --training.eval_every=0 --output.log_every=0 --output.loads_every=5 --data.eval_tokens=512 \
    --output.file=$OUT/reference_np2.h5
fi

# 3. Validation: every measured run, none hidden.
$B simulate --cluster.file=$D/machines/this_machine.ini \
  --simulate.validate=$(IFS=,; echo "${runs[*]}") --simulate.output=$OUT/validation.h5 \
  | tee $OUT/validation.log

# 4. Projections of the reference layer to 16,384 ranks on the LUMI-C example machine.
REF="experiments/bench/reference_layer.ini --routing.group_size=256"
for w in uniform zipf:1.2 lognormal:1.0 run:$OUT/reference_np2.h5; do
  tag=$(echo "$w" | sed 's/[:\/]/_/g; s/\.h5//')
  tag=${tag##*_results_}
  /usr/bin/time -f "%e s wall, %M KB" $B simulate $REF --cluster.file=$D/machines/lumi_c.ini \
    --simulate.ranks=2,16,256,4096,16384 --simulate.scaling=weak --simulate.base_ranks=2 \
    --simulate.workload=$w --simulate.output=$OUT/weak_$tag.h5 | tee $OUT/weak_$tag.log
  /usr/bin/time -f "%e s wall, %M KB" $B simulate $REF --cluster.file=$D/machines/lumi_c.ini \
    --simulate.ranks=16,256,4096,16384 --simulate.scaling=strong --data.tokens_per_step=4194304 \
    --simulate.workload=$w --simulate.output=$OUT/strong_$tag.h5 | tee $OUT/strong_$tag.log
done
# Capacity-factor trade-off (strong, 4096 ranks, E = 8: C = 64 cf per group) and link-bandwidth
# what-if (weak, 4096 ranks, zipf:1.2).
for cf in 1.0 1.25 1.5 2.0 3.0; do
  $B simulate $REF --cluster.file=$D/machines/lumi_c.ini --simulate.ranks=4096 \
    --simulate.scaling=strong --data.tokens_per_step=4194304 --simulate.workload=zipf:1.2 \
    --routing.capacity_factor=$cf --simulate.output=$OUT/cf_$cf.h5 > $OUT/cf_$cf.log
done
for bw in 5 10 21 50 100; do
  $B simulate $REF --cluster.file=$D/machines/lumi_c.ini --simulate.ranks=4096 \
    --simulate.scaling=weak --simulate.base_ranks=2 --simulate.workload=zipf:1.2 \
    --cluster.inter_bandwidth_GBps=$bw --simulate.output=$OUT/bw_$bw.h5 > $OUT/bw_$bw.log
done
for a in flat hierarchical; do
  $B simulate $REF --cluster.file=$D/machines/lumi_c.ini --simulate.ranks=2,16,256,4096,16384 \
    --simulate.scaling=weak --simulate.base_ranks=2 --simulate.algorithm=$a \
    --simulate.output=$OUT/alg_$a.h5 > $OUT/alg_$a.log
done
/usr/bin/python3 $D/plot.py $OUT
