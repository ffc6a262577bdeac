// Redundant-expert placement (eplb.hpp).
#include "moesim/dispatch/eplb.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

namespace moesim::dispatch {

std::vector<std::int64_t> eplb_placement(std::span<const double> load, std::int64_t redundant,
                                         int ranks) {
  const auto E = static_cast<std::int64_t>(load.size());
  const std::int64_t slots = E + redundant;
  if (E < 1 || redundant < 0 || ranks < 1 || slots % ranks != 0)
    throw std::invalid_argument("eplb_placement: " + std::to_string(E) + " experts + " +
                                std::to_string(redundant) + " redundant slots on " +
                                std::to_string(ranks) + " ranks (E + r must be divisible by P)");
  for (double l : load)
    if (!(l >= 0)) throw std::invalid_argument("eplb_placement: loads must be >= 0");
  // 1. replicate: the next replica to the largest load per replica (ties: lowest id).
  std::vector<std::int64_t> count(static_cast<std::size_t>(E), 1);
  for (std::int64_t j = 0; j < redundant; ++j) {
    std::size_t best = 0;
    for (std::size_t e = 1; e < count.size(); ++e)
      // load_e / count_e > load_best / count_best, without division.
      if (load[e] * static_cast<double>(count[best]) > load[best] * static_cast<double>(count[e]))
        best = e;
    ++count[best];
  }
  // 2. pack the replicas, heaviest first, onto the ranks.
  struct Item {
    double weight;
    std::int64_t expert, copy;
  };
  std::vector<Item> items;
  items.reserve(static_cast<std::size_t>(slots));
  for (std::int64_t e = 0; e < E; ++e)
    for (std::int64_t c = 0; c < count[static_cast<std::size_t>(e)]; ++c)
      items.push_back({load[static_cast<std::size_t>(e)] /
                           static_cast<double>(count[static_cast<std::size_t>(e)]),
                       e, c});
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    if (a.weight != b.weight) return a.weight > b.weight;
    if (a.expert != b.expert) return a.expert < b.expert;
    return a.copy < b.copy;
  });
  const std::int64_t per = slots / ranks;
  std::vector<std::vector<std::int64_t>> held(static_cast<std::size_t>(ranks));
  std::vector<double> weight(static_cast<std::size_t>(ranks), 0.0);
  for (const Item& it : items) {
    int best = -1;
    bool best_dup = true;
    for (int p = 0; p < ranks; ++p) {
      const auto& h = held[static_cast<std::size_t>(p)];
      if (static_cast<std::int64_t>(h.size()) >= per) continue;
      const bool dup = std::find(h.begin(), h.end(), it.expert) != h.end();
      if (best < 0 || (best_dup && !dup) ||
          (dup == best_dup &&
           weight[static_cast<std::size_t>(p)] < weight[static_cast<std::size_t>(best)])) {
        best = p;
        best_dup = dup;
      }
    }
    held[static_cast<std::size_t>(best)].push_back(it.expert);
    weight[static_cast<std::size_t>(best)] += it.weight;
  }
  // 3. number the slots: rank-major, by expert id within a rank.
  std::vector<std::int64_t> slot_expert;
  slot_expert.reserve(static_cast<std::size_t>(slots));
  for (auto& h : held) {
    std::sort(h.begin(), h.end());
    slot_expert.insert(slot_expert.end(), h.begin(), h.end());
  }
  return slot_expert;
}

std::vector<std::int64_t> eplb_initial_placement(std::int64_t experts, std::int64_t redundant,
                                                 int ranks) {
  const std::vector<double> equal(static_cast<std::size_t>(std::max<std::int64_t>(experts, 0)),
                                  1.0);
  return eplb_placement(equal, redundant, ranks);
}

double eplb_rank_imbalance(std::span<const double> load, std::span<const std::int64_t> slot_expert,
                           int ranks) {
  std::vector<double> replicas(load.size(), 0.0);
  for (std::int64_t e : slot_expert) replicas[static_cast<std::size_t>(e)] += 1;
  const std::size_t per = slot_expert.size() / static_cast<std::size_t>(ranks);
  std::vector<double> rows(static_cast<std::size_t>(ranks), 0.0);
  for (std::size_t s = 0; s < slot_expert.size(); ++s) {
    const auto e = static_cast<std::size_t>(slot_expert[s]);
    rows[s / per] += load[e] / replicas[e];
  }
  const double total = std::accumulate(rows.begin(), rows.end(), 0.0);
  if (total <= 0) return 1.0;
  return *std::max_element(rows.begin(), rows.end()) / (total / static_cast<double>(ranks));
}

}  // namespace moesim::dispatch
