// `moesim bench`: times one distributed MoE layer (forward, forward + backward) beside the
// GEMM library running the same expert GEMMs (same per-expert shapes and precision, on
// separate buffers) on each rank, interleaved in the same run, and prints the ratios with
// the CPU, the oneDNN kernel and a measured FMA peak. Protocol: warm-up, barrier, timed
// loop, barrier, reduce with MAX over ranks, medians.
#pragma once

#include <string>

#include "moesim/comm/comm.hpp"
#include "moesim/config/config.hpp"

namespace moesim::bench {

struct LayerBenchResult {
  double fwd_ms = 0, fwd_gemm_ms = 0;  // per iteration, max over ranks, median
  double fwdbwd_ms = 0, fwdbwd_gemm_ms = 0;
  double useful_gflop_fwd = 0;  // all ranks, per iteration (2 GEMMs x 2 flop x rows x d x f)
  // gate, dispatch, expert, combine (forward), backward, sync: per fwd+bwd iteration, max
  // over ranks, median.
  double phase_ms[6] = {};
  double expert_fwd_gemm_ms = 0;  // the library's forward expert GEMMs in the same loop (median)
  bool deterministic = false;     // identical output in every timed iteration
  // Exchange bytes of one fwd+bwd iteration, all ranks, split by level (node-aware comm).
  double bytes_inter_node = 0, bytes_intra_node = 0;
  double bytes_token_dispatch_inter_node = 0;  // of which the forward token dispatch
  int nodes = 1;
  double fma_peak_gflops = 0;   // measured single-core fp32 FMA loop on rank 0
  double bf16_peak_gflops = 0;  // measured AVX512-BF16 dot-product loop (0: not available)
  std::string cpu;              // CPU, ISA flags, oneDNN version/ISA/kernel, threads
  // routing.overlap_degree = d > 1: the same layer with d = 1 timed in the same loop
  // (alternating, same inputs and weights); per fwd+bwd iteration, max over ranks, medians:
  // step time, time inside the exchange (d = 1: all of it; d: the part not hidden) and in the
  // experts. hidden = 1 - exchange(d) / exchange(1); step_gain = (step(1) - step(d)) /
  // exchange(1) (the share of the exchange removed from the step, overheads included).
  int overlap_degree = 1;
  double step1_ms = 0, stepd_ms = 0, exchange1_ms = 0, exchanged_ms = 0, expert1_ms = 0;
  double hidden = 0, step_gain = 0;
  bool overlap_bitwise = true;  // d and d = 1 gave bitwise the same output and gradients
};

LayerBenchResult bench_layer(const Config& cfg, const comm::Comm& comm);

// The peak loops alone (GFLOP/s of this core): fp32 FMA, and bf16 dot products (0 if the
// CPU or the build lacks AVX512-BF16).
double fma_peak_gflops();
double bf16_dot_peak_gflops();

}  // namespace moesim::bench
