# Test registry. Each helper/module adds its lines here.
moesim_add_test(NAME test_config SOURCES unit/test_config.cpp)
moesim_add_test(NAME test_io SOURCES unit/test_io.cpp)
# test_io reads result files back with the raw HDF5 C API, but moesim_core keeps HDF5 PRIVATE.
target_include_directories(test_io SYSTEM PRIVATE ${HDF5_INCLUDE_DIRS})
target_link_libraries(test_io PRIVATE ${HDF5_C_LIBRARIES})
moesim_add_test(NAME test_routing SOURCES unit/test_routing.cpp)
moesim_add_test(NAME test_routing_rules SOURCES unit/test_routing_rules.cpp)
moesim_add_test(NAME test_routing_config SOURCES unit/test_routing_config.cpp)

moesim_add_test(NAME test_dispatch SOURCES mpi/test_dispatch.cpp RANKS 1 2 4 TIMEOUT 60)
moesim_add_test(NAME test_model SOURCES mpi/test_model.cpp RANKS 1 2 4 TIMEOUT 300)
moesim_add_test(NAME test_alloc SOURCES mpi/test_alloc.cpp RANKS 1 2 TIMEOUT 60)

# Regression tier (tests/regression/*.py, Debian's python3 with h5py + numpy): end-to-end runs of
# the moesim program on 1-2 ranks, checked against shared/spec/outputs.md and routing.md.
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
moesim_add_test(NAME test_metrics SOURCES unit/test_metrics.cpp)
moesim_add_test(NAME test_resume SOURCES unit/test_resume.cpp)

# Slurm tier: the job scripts against a real single-node Slurm started by the test itself
# (scripts/slurm/local_slurm.sh; root, Debian's slurm-wlm + munge). Fails, never skips, without it.
add_test(NAME slurm_sweep
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/slurm/test_slurm_sweep.sh --moesim $<TARGET_FILE:moesim>)
set_tests_properties(slurm_sweep PROPERTIES TIMEOUT 180 LABELS slurm PROCESSORS 2 RUN_SERIAL TRUE)

# Routing toolkit end to end: every rule and drop policy through `moesim run` (routing_rules.py).
add_test(NAME regression_routing_rules
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/regression/routing_rules.py
                 --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
set_tests_properties(regression_routing_rules PROPERTIES TIMEOUT 180 PROCESSORS 2
                     LABELS regression ENVIRONMENT "${MOESIM_TEST_ENV}")
# GEMM interface (experts/gemm.hpp) vs a naive loop; float32/bf16 layers vs float64.
moesim_add_test(NAME test_gemm SOURCES unit/test_gemm.cpp)
moesim_add_test(NAME test_precision SOURCES mpi/test_precision.cpp RANKS 1 2 4 TIMEOUT 120)

# Lifecycle tier (issue 7): kill / preempt / resume / rerun / divergence / concurrent output /
# foreign or corrupt checkpoint / rank-count change, through the real program (tests/lifecycle).
add_test(NAME lifecycle
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/lifecycle/lifecycle.py
                 --moesim $<TARGET_FILE:moesim> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --h5check ${PROJECT_SOURCE_DIR}/tools/h5check.py -- ${MOESIM_TEST_MPIEXEC_FLAGS})
set_tests_properties(lifecycle PROPERTIES TIMEOUT 900 PROCESSORS 2 LABELS lifecycle
                     ENVIRONMENT "${MOESIM_TEST_ENV}")
