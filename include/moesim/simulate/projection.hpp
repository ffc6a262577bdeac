// One training step of a config at a virtual rank count: the traffic from per-(group, expert)
// loads (rank-count independent with a fixed group size), placed on ranks with the run's
// Placement rule (dispatch/dispatcher.hpp), and timed with the step model (step_model.hpp).
// Counts, not tokens: 16,384 virtual ranks take seconds in one process. No MPI.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"
#include "moesim/simulate/step_model.hpp"
#include "moesim/simulate/workload.hpp"

namespace moesim::simulate {

enum class Algorithm { flat, padded, hierarchical };

// The virtual run: sizes at P ranks after weak/strong scaling.
struct Scenario {
  std::int64_t ranks = 1;           // P
  std::int64_t ranks_per_node = 1;  // R
  std::int64_t tokens = 0;          // B, global tokens per step
  std::int64_t experts = 0;         // E
  std::int64_t group_size = 0;      // S (tokens per routing group, whole groups per rank)
  std::int64_t capacity = -1;       // C per (group, expert), -1 = unlimited
  Algorithm algorithm = Algorithm::flat;
  [[nodiscard]] std::int64_t nodes() const { return (ranks + ranks_per_node - 1) / ranks_per_node; }
};

// Builds the scenario of `cfg` at P ranks (simulate.scaling, base_ranks, ranks_per_node).
// Throws ConfigError("simulate.ranks", P, why) when P cannot run this config (experts not
// divisible, tokens or groups not splitting evenly).
Scenario make_scenario(const Config& cfg, std::int64_t P, std::int64_t ranks_per_node);
// The same with explicit sizes (validation of a measured run: its own B, E, P).
Scenario make_scenario_sized(const Config& cfg, std::int64_t P, std::int64_t ranks_per_node,
                             std::int64_t tokens, std::int64_t experts);

// One row of /projection (simulate.md) plus what the docs and the CSV add.
struct Projection {
  std::int64_t ranks = 0, nodes = 0;
  double time_step = 0, time_gate = 0, time_dispatch = 0, time_expert = 0, time_combine = 0,
         time_backward = 0, time_sync = 0, time_other = 0;  // seconds, slowest rank per phase
  // The part of time_combine that is the least busy rank waiting for the busiest one's experts:
  // in the phase (each phase is the maximum over ranks) but not on the step's path, so
  // time_step = gate + dispatch + expert + combine + backward + sync + other - time_combine_wait.
  double time_combine_wait = 0;
  double bytes_intra_node = 0, bytes_inter_node = 0;  // one step, all ranks
  double load_imbalance = 0;    // max/mean expert rows per rank (mean over layers and steps)
  double dropped_fraction = 0;  // dropped / routed assignments
  std::int64_t experts = 0, tokens = 0;
  // MoESim's own bookkeeping at this rank count (docs/scale.md): result-file bytes per step and
  // bytes of one P x P traffic matrix (a /traffic/tokens sample or a running-sum slot).
  double result_bytes_per_step = 0, traffic_matrix_bytes = 0;
};

// Bytes `moesim run` writes to /steps per step (docs/scale.md): 20 scalars, expert_load and
// expert_kept [L, E], load_imbalance [L] (+ base_epsilon [L] for rule = base), tokens_sent [P],
// rank_rows [L, P]; 8 bytes each.
inline double result_bytes_per_step(std::int64_t P, std::int64_t L, std::int64_t E, bool base) {
  return 8.0 * static_cast<double>(20 + 2 * L * E + L * (base ? 2 : 1) + P + L * P);
}

// Predicts cfg's step at scenario `sc` on machine M with loads from `src` (steps
// 0..steps-1, mean reported). `traffic` (optional, P*P) receives the rows each rank sends
// each rank in the first step, summed over layers (compare: /steps/traffic_tokens).
Projection project(const Config& cfg, const Scenario& sc, const Machine& M, LoadSource& src,
                   std::int64_t steps, std::vector<std::int64_t>* traffic = nullptr);

// A load source for cfg's rule at scenario sc (synthetic workload, or fixed counts for dense /
// expert_choice). recorded must outlive the source when w is run:.
std::unique_ptr<LoadSource> make_source(const Config& cfg, const Scenario& sc, const Workload& w,
                                        const RecordedLoads* recorded);

// Parses simulate.ranks ("16,256,...").
std::vector<std::int64_t> parse_ranks(const std::string& text);

}  // namespace moesim::simulate
