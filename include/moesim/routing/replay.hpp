// Replaying a router-logits trace (`moesim route`, outputs.md): the trace's T tokens are split
// into groups of S = routing.group_size tokens (0: one group of all T), each group is routed
// as one training group at step 0, layer 0, and the assignments are listed sorted by
// (token, expert). Pure: no files; io reads the trace and writes the result.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "moesim/config/config.hpp"

namespace moesim::routing {

struct ReplayResult {
  std::int64_t tokens = 0, experts = 0;  // T, E
  std::int64_t group_size = 0;           // S
  std::int64_t groups = 0;               // T / S
  std::int64_t capacity = -1;            // per (group, expert); -1 when dropless
  // kept assignments, sorted by (token, expert)
  std::vector<std::int64_t> token;
  std::vector<std::int32_t> expert;
  std::vector<std::int32_t> slot;
  std::vector<double> weight;
  // dropped assignments, same order
  std::vector<std::int64_t> dropped_token;
  std::vector<std::int32_t> dropped_expert;
  std::vector<std::int64_t> load_routed;  // [E] before capacity
  std::vector<std::int64_t> load_kept;    // [E] after capacity
  double aux_loss = 0, z_loss = 0;        // means over groups (before coefficients)
  double dropped_fraction = 0;            // dropped / all assignments
};

// Checks a trace shape [tokens, experts] against `cfg` before anything is allocated: positive,
// E fits the int32 expert ids, routing.group_size divides T, and T*E doubles are addressable.
// Throws ConfigError naming trace.input / routing.group_size.
void check_trace_shape(const Config& cfg, std::int64_t tokens, std::int64_t experts);

// Bytes a replay of a [T, E] trace holds at most: the logits and token ids read (T*E + T
// values), one group's probabilities and candidates, and the output rows (kept or dropped, at
// most T*min(k, E) assignments; vectors grown by push_back up to 2x). Saturates at INT64_MAX.
std::int64_t replay_memory_bytes(const Config& cfg, std::int64_t tokens, std::int64_t experts);

// Routes `logits` [T x E] (row-major) with cfg.routing (num_experts must be E) and seed
// cfg.training.seed; token_id [T] (may be empty) keys hash routing and the random rules.
ReplayResult replay(const Config& cfg, std::span<const double> logits, std::int64_t tokens,
                    std::int64_t experts, std::span<const std::int64_t> token_id);

}  // namespace moesim::routing
