// Token generation for the cluster task (cluster_task.hpp).
#include "moesim/data/cluster_task.hpp"

namespace moesim::data {

template <typename T>
void ClusterTask::generate(Stream stream, std::int64_t first_id, std::int64_t n, T* x,
                           std::int32_t* label, std::int32_t* cluster) const {
  const std::int64_t D = cfg_.input_dim;
  const std::int64_t K = cfg_.num_clusters;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto id = static_cast<std::uint64_t>(first_id + i);
    const CounterRng rng(seed_, stream, id);
    // Draw 0: cluster, 1: label, 2: the feature-noise cluster, 3..: Gaussian noise.
    const auto k = static_cast<std::int64_t>(rng.bits(0) % static_cast<std::uint64_t>(K));
    const int y = (rng.bits(1) & 1U) ? 1 : -1;
    std::int64_t k2 = k;
    if (K > 1) {
      k2 = static_cast<std::int64_t>(rng.bits(2) % static_cast<std::uint64_t>(K - 1));
      if (k2 >= k) ++k2;
    }
    T* xi = x + i * D;
    for (std::int64_t j = 0; j < D; ++j)
      xi[j] = static_cast<T>(cfg_.noise_std * rng.normal(static_cast<std::uint64_t>(j) + 2));
    xi[2 * k] += static_cast<T>(cfg_.signal_strength * y);
    xi[2 * k + 1] += static_cast<T>(cfg_.center_strength);
    if (K > 1) xi[2 * k2] -= static_cast<T>(cfg_.feature_noise * y);
    label[i] = (y + 1) / 2;
    if (cluster) cluster[i] = static_cast<std::int32_t>(k);
  }
}

template void ClusterTask::generate<float>(Stream, std::int64_t, std::int64_t, float*,
                                           std::int32_t*, std::int32_t*) const;
template void ClusterTask::generate<double>(Stream, std::int64_t, std::int64_t, double*,
                                            std::int32_t*, std::int32_t*) const;

}  // namespace moesim::data
