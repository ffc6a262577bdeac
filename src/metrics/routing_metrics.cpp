// Routing research metrics (routing_metrics.hpp).
#include "moesim/metrics/routing_metrics.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace moesim::metrics {

double load_imbalance(std::span<const std::int64_t> load) {
  if (load.empty()) return 0;
  std::int64_t total = 0, peak = 0;
  for (std::int64_t v : load) {
    total += v;
    peak = std::max(peak, v);
  }
  if (total == 0) return 0;
  return static_cast<double>(peak) * static_cast<double>(load.size()) / static_cast<double>(total);
}

double specialization(std::span<const std::int64_t> counts, std::int64_t K, std::int64_t E) {
  double sum = 0;
  std::int64_t clusters = 0;
  for (std::int64_t k = 0; k < K; ++k) {
    std::int64_t n = 0, best = 0;
    for (std::int64_t e = 0; e < E; ++e) {
      const std::int64_t c = counts[static_cast<std::size_t>(k * E + e)];
      n += c;
      best = std::max(best, c);
    }
    if (n == 0) continue;
    sum += static_cast<double>(best) / static_cast<double>(n);
    ++clusters;
  }
  return clusters > 0 ? sum / static_cast<double>(clusters) : 0.0;
}

double mutual_information(std::span<const std::int64_t> counts, std::int64_t K, std::int64_t E) {
  std::vector<double> pk(static_cast<std::size_t>(K), 0.0), pe(static_cast<std::size_t>(E), 0.0);
  double n = 0;
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t e = 0; e < E; ++e) {
      const auto c = static_cast<double>(counts[static_cast<std::size_t>(k * E + e)]);
      pk[static_cast<std::size_t>(k)] += c;
      pe[static_cast<std::size_t>(e)] += c;
      n += c;
    }
  if (n == 0) return 0;
  double mi = 0;
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t e = 0; e < E; ++e) {
      const auto c = static_cast<double>(counts[static_cast<std::size_t>(k * E + e)]);
      if (c == 0) continue;
      // p(k,e) log(p(k,e) / (p(k) p(e))) with p = count / n.
      mi += (c / n) *
            std::log(c * n / (pk[static_cast<std::size_t>(k)] * pe[static_cast<std::size_t>(e)]));
    }
  return std::max(mi, 0.0);  // round-off can give -1e-17 for independent tables
}

}  // namespace moesim::metrics
