// HDF5 files of `moesim route` (outputs.md): the input trace and the route output.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moesim::io {

// `moesim route` input: /logits [T,E] (float32 or float64, read as double), optional
// /token_id [T] int64 (empty if absent). Throws std::runtime_error naming file and dataset.
struct Trace {
  std::int64_t tokens = 0;
  std::int64_t experts = 0;
  std::vector<double> logits;          // [T*E] row-major
  std::vector<std::int64_t> token_id;  // [T] or empty
};
Trace read_trace(const std::string& path);

// `moesim route` output (outputs.md).
struct RouteOutput {
  std::vector<std::int64_t> token;  // kept assignments, sorted by (token, expert)
  std::vector<std::int32_t> expert;
  std::vector<std::int32_t> slot;
  std::vector<double> weight;
  std::vector<std::int64_t> dropped_token;
  std::vector<std::int32_t> dropped_expert;
  std::vector<std::int64_t> load_routed;  // [E]
  std::vector<std::int64_t> load_kept;    // [E]
  std::int64_t capacity = -1;             // per (group, expert); -1 when dropless
  double aux_loss = 0, z_loss = 0, dropped_fraction = 0;
  std::string config_ini;
};
void write_route_output(const std::string& path, const RouteOutput& out);

}  // namespace moesim::io
