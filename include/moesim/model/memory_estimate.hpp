// Per-rank memory estimate of `moesim run`, from the config and the rank count alone, checked
// against the machine before anything is allocated (issue 7 item 9). Formula: docs/memory.md.
// Every size is computed in saturating 128-bit arithmetic: a size that does not fit in int64
// is reported (overflow), never wrapped.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"

namespace moesim::model {

struct MemoryEstimate {
  // Bytes per rank, by what holds them.
  std::int64_t parameters = 0;   // values + gradients of both arenas (exact, 64-byte padded)
  std::int64_t optimizer = 0;    // sgd: momentum; adam: m and v (exact)
  std::int64_t activations = 0;  // model activations + router arrays saved for backward (bound)
  std::int64_t exchange = 0;     // dispatch/expert buffers at worst-case capacity (bound)
  std::int64_t data = 0;         // batches (exact) + bookkeeping (1 MiB + per step/expert rows)
  std::int64_t allowance = 0;    // 25 % of activations + exchange (transients, growth)
  std::int64_t total = 0;        // sum of the above
  // The counts behind them (elements / rows), for messages and tests.
  std::int64_t replicated_elements = 0;  // ParamStore replicated arena, padded
  std::int64_t expert_elements = 0;      // ParamStore expert arena, padded
  std::int64_t local_experts = 0;        // experts hosted per rank
  std::int64_t recv_rows = 0;            // worst-case expert input rows per layer (train/eval max)
  std::int64_t padded_rows = 0;          // alltoall_padded rows per (src, dst) block; 0 otherwise
  // A size that does not fit in 64 bits: what overflowed and the keys that drive it.
  bool overflow = false;
  std::string overflow_what;
  // The keys that drive the largest component (for "too big" messages).
  std::string driving_keys;
};

// The estimate for `moesim run` on `ranks` ranks (config must pass validate()).
MemoryEstimate estimate_memory(const Config& cfg, int ranks);

// Memory this process may use on its node: min(MemAvailable of /proc/meminfo, cgroup v2
// memory.max - memory.current, cgroup v1 limit - usage). -1 when none can be read.
struct MemoryAvailable {
  std::int64_t bytes = -1;
  std::string source;  // e.g. "MemAvailable (/proc/meminfo)"
};
MemoryAvailable memory_available();

// The estimate against the memory available / ranks_per_node (all `ranks` are assumed to share
// one node unless told otherwise). A problem per overflow or shortfall, naming the keys.
// MOESIM_MEMORY_LIMIT (bytes, optional) replaces the machine's value, for tests and clusters.
std::vector<ConfigProblem> check_memory(const Config& cfg, int ranks, int ranks_per_node);

// "1.50 GiB" style.
std::string format_bytes(std::int64_t bytes);

}  // namespace moesim::model
