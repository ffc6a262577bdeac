// The cluster-structured classification task of Chen et al. 2022, "Towards Understanding
// the Mixture-of-Experts Layer in Deep Learning" (NeurIPS), in token form:
//   x = alpha * y * v_k + beta * c_k - gamma * y * v_k' + sigma * xi
// with cluster k uniform over K clusters, label y in {-1, +1} uniform, k' != k another
// cluster whose signal appears with the opposite sign ("feature noise"), v_k and c_k the
// cluster's signal and centre directions (orthonormal: basis vectors 2k and 2k+1), and
// xi ~ N(0, I). With gamma close to alpha no single linear direction separates the labels
// of all clusters, while an expert that knows the cluster (from c_k) reads y off v_k —
// the structure a routed MoE can specialise on. Class index = (y + 1) / 2.
//
// Every token is a pure function of (seed, stream, global token id): the data never
// depends on the number of ranks or on which rank generates it.
#pragma once

#include <cstdint>

#include "moesim/config/config.hpp"
#include "moesim/util/rng.hpp"

namespace moesim::data {

inline constexpr int kNumClasses = 2;

class ClusterTask {
 public:
  ClusterTask(const DataConfig& cfg, std::uint64_t seed) : cfg_(cfg), seed_(seed) {}
  [[nodiscard]] std::int64_t input_dim() const { return cfg_.input_dim; }
  // Writes tokens [first_id, first_id + n) of `stream`: features x [n x input_dim],
  // class labels [n] and cluster ids [n] (cluster may be null).
  template <typename T>
  void generate(Stream stream, std::int64_t first_id, std::int64_t n, T* x, std::int32_t* label,
                std::int32_t* cluster) const;

 private:
  DataConfig cfg_;
  std::uint64_t seed_;
};

}  // namespace moesim::data
