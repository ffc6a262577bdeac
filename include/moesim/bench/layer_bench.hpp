// `moesim bench`: times one distributed MoE layer (forward, forward + backward) beside
// pure GEMMs of the same useful expert FLOPs on each rank, in the same run, and prints
// the ratio on one greppable line. Protocol: warm-up, barrier, timed loop, barrier,
// reduce with MAX over ranks.
#pragma once

#include "moesim/comm/comm.hpp"
#include "moesim/config/config.hpp"

namespace moesim::bench {

struct LayerBenchResult {
  double fwd_ms = 0, fwd_gemm_ms = 0;  // per iteration, max over ranks
  double fwdbwd_ms = 0, fwdbwd_gemm_ms = 0;
  double useful_gflop_fwd = 0;  // all ranks, per iteration
  double phase_ms[6] = {};      // gate, dispatch, expert, combine (fwd), backward, sync
  bool deterministic = false;   // identical output in every timed iteration
  // Exchange bytes of one fwd+bwd iteration, all ranks, split by level (node-aware comm).
  double bytes_inter_node = 0, bytes_intra_node = 0;
  double bytes_token_dispatch_inter_node = 0;  // of which the forward token dispatch
  int nodes = 1;
};

LayerBenchResult bench_layer(const Config& cfg, const comm::Comm& comm);

}  // namespace moesim::bench
