// Research metrics of routing: load imbalance and how well the router's choices follow the
// task's clusters (Chen et al. 2022: the router learns the cluster structure).
#pragma once

#include <cstdint>
#include <span>

namespace moesim::metrics {

// max / mean over experts of a load vector; 0 when there is no load at all.
double load_imbalance(std::span<const std::int64_t> load);

// counts: [K x E] (cluster, expert). Mean over clusters that have tokens of the share of
// the cluster's tokens on its most frequent expert: 1 = every cluster has "its" expert,
// 1/E = spread uniformly. 0 when there are no tokens.
double specialization(std::span<const std::int64_t> counts, std::int64_t K, std::int64_t E);

// Mutual information (nats) between cluster and expert of the empirical joint
// distribution counts / N: 0 = independent, log(min(K, E)) at most.
double mutual_information(std::span<const std::int64_t> counts, std::int64_t K, std::int64_t E);

}  // namespace moesim::metrics
