// Workloads of `moesim simulate`: where the per-(routing group, expert) loads come from.
// A load source fills, for one (step, layer, global group), the routed counts per expert
// (candidates before capacity); capacity is then applied exactly as the router does
// (kept = min(routed, C) per (group, expert): every drop policy fills an expert's C slots
// from its candidates, they differ only in which candidates).
//
// Synthetic generators: every token of a group picks k distinct experts, the first choice
// from the popularity vector p, later choices from p without the experts already chosen
// (sampling without replacement, as a top-k router never picks an expert twice):
//   uniform          p_e = 1/E
//   zipf:S           p_e ~ 1 / (rank_e + 1)^S, rank = a seeded permutation of the experts
//   lognormal:SIGMA  p_e ~ exp(SIGMA z_e), z_e ~ N(0, 1) seeded per (layer, expert)
//   hot:F            p_hot = F, every other p_e = (1 - F) / (E - 1), hot expert seeded
//   ...+rotate       the popularity moves by one expert every step (rotate = zipf:1+rotate)
// Every draw is keyed by (simulate.seed, layer, step, global group, token, choice), so the
// loads do not depend on the virtual rank count.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"

namespace moesim::simulate {

enum class WorkloadKind { uniform, zipf, lognormal, hot, run, trace };

struct Workload {
  WorkloadKind kind = WorkloadKind::uniform;
  double param = 0;     // S, SIGMA or F
  bool rotate = false;  // popularity moves by one expert per step
  std::string file;     // run:FILE.h5 or trace:FILE.h5
  std::string text;     // as given
};

// Parses simulate.workload; throws ConfigError("simulate.workload", text, allowed).
Workload parse_workload(const std::string& text);

// The popularity vector p [E] (sums to 1) of a synthetic workload at (layer, step).
std::vector<double> expert_probabilities(const Workload& w, std::int64_t E, std::uint64_t seed,
                                         std::int64_t layer, std::int64_t step);

// Loads recorded by `moesim run` (/loads/*): [T, L, G, E] routed and kept counts.
struct RecordedLoads {
  std::int64_t steps = 0, layers = 0, groups = 0, experts = 0, group_size = 0;
  std::vector<std::int64_t> step;    // [T] training step of each sample
  std::vector<std::int64_t> routed;  // [T*L*G*E]
  std::vector<std::int64_t> kept;    // [T*L*G*E]
};

// One (step, layer, global group)'s routed counts: routed[e] for the experts listed in
// `touched` (each once); every other entry of routed is 0 and stays 0.
class LoadSource {
 public:
  virtual ~LoadSource() = default;
  virtual void group_routed(std::int64_t step, std::int64_t layer, std::int64_t group,
                            std::vector<std::int32_t>& routed,
                            std::vector<std::int32_t>& touched) = 0;
  // Called once per (step, layer) before its groups (precomputes popularity tables).
  virtual void begin_layer(std::int64_t step, std::int64_t layer) = 0;
};

// `inner` with its steps shifted by `offset` (step s reads the inner source's step s + offset):
// validation predicts a run from its recorded load samples after the first.
std::unique_ptr<LoadSource> make_shifted_source(LoadSource& inner, std::int64_t offset);

// A synthetic source for E experts, groups of S tokens, k choices per token.
std::unique_ptr<LoadSource> make_synthetic_source(const Workload& w, std::int64_t E, std::int64_t S,
                                                  std::int64_t k, std::uint64_t seed);

// A recorded source: group g uses recorded group g mod G; with E = m * E_rec experts (weak
// scaling), recorded expert e stands for the m experts e + E_rec * j and its count is split
// evenly over them (remainders to consecutive copies from a group-dependent offset). Steps
// cycle through the recorded samples.
std::unique_ptr<LoadSource> make_recorded_source(const RecordedLoads& loads, std::int64_t E);

// Rules that fix their own counts (dense: S per expert; expert_choice: C per expert).
std::unique_ptr<LoadSource> make_fixed_source(std::int64_t E, std::int64_t per_expert);

}  // namespace moesim::simulate
