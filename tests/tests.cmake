# Test registry. Each helper/module adds its lines here.
moesim_add_test(NAME test_config SOURCES unit/test_config.cpp)
moesim_add_test(NAME test_io SOURCES unit/test_io.cpp)
# test_io reads result files back with the raw HDF5 C API, but moesim_core keeps HDF5 PRIVATE.
target_include_directories(test_io SYSTEM PRIVATE ${HDF5_INCLUDE_DIRS})
target_link_libraries(test_io PRIVATE ${HDF5_C_LIBRARIES})
moesim_add_test(NAME test_routing SOURCES unit/test_routing.cpp)
moesim_add_test(NAME test_routing_rules SOURCES unit/test_routing_rules.cpp)
moesim_add_test(NAME test_routing_config SOURCES unit/test_routing_config.cpp)
moesim_add_test(NAME test_routing_base SOURCES unit/test_routing_base.cpp)
moesim_add_test(NAME test_routing_trace SOURCES unit/test_routing_trace.cpp)
moesim_add_test(NAME test_paths SOURCES unit/test_paths.cpp)

moesim_add_test(NAME test_dispatch SOURCES mpi/test_dispatch.cpp RANKS 1 2 4 TIMEOUT 60)
moesim_add_test(NAME test_model SOURCES mpi/test_model.cpp RANKS 1 2 4 TIMEOUT 300)
moesim_add_test(NAME test_alloc SOURCES mpi/test_alloc.cpp RANKS 1 2 TIMEOUT 60)

# Regression tier (tests/regression/*.py, Debian's python3 with h5py + numpy): end-to-end runs of
# the moesim program on 1-2 ranks, checked against docs/outputs.md and routing.md.
foreach(moesim_regression_script IN ITEMS cli_errors route_reference run_smoke signal_resume
                                            bf16_curve)
  add_test(NAME regression_${moesim_regression_script}
           COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/regression/${moesim_regression_script}.py
                   --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                   --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
  set_tests_properties(regression_${moesim_regression_script} PROPERTIES TIMEOUT 300 PROCESSORS 2
                       LABELS regression ENVIRONMENT "${MOESIM_TEST_ENV}")
endforeach()
moesim_add_test(NAME test_checkpoint SOURCES mpi/test_checkpoint.cpp RANKS 1 2 4 TIMEOUT 120)
moesim_add_test(NAME test_layouts SOURCES mpi/test_layouts.cpp RANKS 2 4 TIMEOUT 120)
moesim_add_test(NAME test_eplb SOURCES mpi/test_eplb.cpp RANKS 1 2 4 TIMEOUT 180)
moesim_add_test(NAME test_metrics SOURCES unit/test_metrics.cpp)
moesim_add_test(NAME test_resume SOURCES unit/test_resume.cpp)

# Slurm tier: the job scripts against a real single-node Slurm started by the test itself
# (scripts/slurm/local_slurm.sh; root, Debian's slurm-wlm + munge). Fails, never skips, without it.
add_test(NAME slurm_sweep
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/slurm/test_slurm_sweep.sh --moesim $<TARGET_FILE:moesim>)
# ~2 min on an idle 2-core machine; 5.5 min measured with load average ~12 (7 engineers sharing it).
set_tests_properties(slurm_sweep PROPERTIES TIMEOUT 600 LABELS slurm PROCESSORS 2 RUN_SERIAL TRUE)

# Routing toolkit end to end: every rule and drop policy through `moesim run` (routing_rules.py).
add_test(NAME regression_routing_rules
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/regression/routing_rules.py
                 --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
set_tests_properties(regression_routing_rules PROPERTIES TIMEOUT 180 PROCESSORS 2
                     LABELS regression ENVIRONMENT "${MOESIM_TEST_ENV}")

# Lifecycle tier (issue 7): kill / preempt / resume / rerun / divergence / concurrent output /
# foreign or corrupt checkpoint / rank-count change, through the real program (tests/lifecycle).
add_test(NAME lifecycle
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/lifecycle/lifecycle.py
                 --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
set_tests_properties(lifecycle PROPERTIES TIMEOUT 900 PROCESSORS 2 LABELS lifecycle
                     ENVIRONMENT "${MOESIM_TEST_ENV}")
# Lifecycle tier, job-script side (tests/lifecycle/*.py): signals through the launcher path of
# jobscripts/lib.sh (mpirun), sweeps (validation, dry run, resubmit, seeds, figures).
foreach(moesim_lifecycle_script IN ITEMS launcher_signals sweep_local)
  add_test(NAME lifecycle_${moesim_lifecycle_script}
           COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/lifecycle/${moesim_lifecycle_script}.py
                   --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                   --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
  set_tests_properties(lifecycle_${moesim_lifecycle_script} PROPERTIES TIMEOUT 400 PROCESSORS 2
                       LABELS lifecycle ENVIRONMENT "${MOESIM_TEST_ENV}")
endforeach()
# BASE auction cost per group size (a benchmark that prints figures; not a test).
add_executable(base_auction_bench bench/base_auction_bench.cpp)
target_link_libraries(base_auction_bench PRIVATE moesim_core moesim_warnings)

# Router-choice traces (Megatron-Core JSONL) through `moesim route` (route_trace_jsonl.py).
add_test(NAME regression_route_trace_jsonl
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/regression/route_trace_jsonl.py
                 --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
set_tests_properties(regression_route_trace_jsonl PROPERTIES TIMEOUT 180 PROCESSORS 2
                     LABELS regression ENVIRONMENT "${MOESIM_TEST_ENV}")
# Multi-node: the hierarchical exchange vs alltoallv (bitwise) on every cut of the ranks into
# nodes, the node map, the byte split by level (docs/multinode_cluster.md).
moesim_add_test(NAME test_hierarchical SOURCES mpi/test_hierarchical.cpp RANKS 1 2 4 TIMEOUT 120)
moesim_add_test(NAME test_overlap SOURCES mpi/test_overlap.cpp RANKS 1 2 4 TIMEOUT 180)
moesim_add_test(NAME test_group_limit SOURCES unit/test_group_limit.cpp)
# moesim simulate / calibrate: step-model terms vs closed forms, traffic, drops, workloads.
moesim_add_test(NAME test_simulate SOURCES unit/test_simulate.cpp)
add_test(NAME regression_simulate_cli
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/regression/simulate_cli.py
                 --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
set_tests_properties(regression_simulate_cli PROPERTIES TIMEOUT 600 PROCESSORS 2
                     LABELS regression ENVIRONMENT "${MOESIM_TEST_ENV}")
# Per-rank memory estimate vs the real allocation of small runs (issue 7 item 9).
moesim_add_test(NAME test_memory_estimate SOURCES mpi/test_memory_estimate.cpp RANKS 1 2 TIMEOUT 120)

# Cluster tier: 2 emulated nodes (network namespaces, scripts/cluster/emulate.sh), the hierarchical
# exchange and node-limited routing through the real program across them. Needs root; fails (never
# skips) when namespaces cannot be created. Also the same checks on one machine with fake nodes.
add_test(NAME cluster_multinode
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/cluster/test_cluster.sh --moesim $<TARGET_FILE:moesim>)
set_tests_properties(cluster_multinode PROPERTIES TIMEOUT 180 LABELS cluster PROCESSORS 2
                     RUN_SERIAL TRUE)
# Multi-node Slurm on 2 emulated nodes (local_slurm.sh start --nodes 2): srun across nodes,
# run.sbatch with mpirun, a 2-point sweep and a USR1 preemption (requeue, resume) through the job
# scripts, bitwise against single-machine runs. Needs root; fails (never skips) without it. The
# script's own watchdog stops it (with cleanup) after 88 s (MOESIM_TEST_DEADLINE=S for a loaded
# machine; CTest's TIMEOUT, which kills without cleanup, is only the last resort).
add_test(NAME cluster_slurm_multinode
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/cluster/test_slurm_multinode.sh --moesim $<TARGET_FILE:moesim>)
set_tests_properties(cluster_slurm_multinode PROPERTIES TIMEOUT 240 LABELS cluster PROCESSORS 2
                     RUN_SERIAL TRUE)
add_test(NAME regression_multinode
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/regression/multinode.py
                 --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
set_tests_properties(regression_multinode PROPERTIES TIMEOUT 300 PROCESSORS 2
                     LABELS regression ENVIRONMENT "${MOESIM_TEST_ENV}")
# GEMM interface (experts/gemm.hpp) vs a naive loop; float32/bf16 layers vs float64.
moesim_add_test(NAME test_gemm SOURCES unit/test_gemm.cpp)
# `moesim bench` prints consistent figures (medians, library rate, FMA peak) in both precisions.
add_test(NAME regression_bench_output
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/regression/bench_output.py
                 --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
set_tests_properties(regression_bench_output PROPERTIES TIMEOUT 300 PROCESSORS 2
                     LABELS regression ENVIRONMENT "${MOESIM_TEST_ENV}")
moesim_add_test(NAME test_precision SOURCES mpi/test_precision.cpp RANKS 1 2 4 TIMEOUT 120)

# Scale tier (issue 12): the real program at 1, 8, 16, 32 and 64 ranks oversubscribed on a tiny
# float64 model, against the 1-rank run, with the bookkeeping costs measured per rank count
# (result-file bytes, checkpoint shards, rank-0 vs median peak memory; tests/scale/scale.py).
add_test(NAME scale_ranks
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/scale/scale.py
                 --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
set_tests_properties(scale_ranks PROPERTIES TIMEOUT 900 PROCESSORS 2 LABELS scale
                     ENVIRONMENT "${MOESIM_TEST_ENV}")
