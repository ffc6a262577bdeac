// The experts a rank hosts for one MoE layer: each a 2-layer FFN
//   y = act(x W1 + b1) W2 + b2,   W1 [d_model x d_ff], W2 [d_ff x d_model],
// computed with Eigen maps over contiguous row-major expert-major slices: one GEMM per
// expert and matrix, no padding to capacity, no copies.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"
#include "moesim/util/params.hpp"

namespace moesim::experts {

template <typename T>
class ExpertBank {
 public:
  // Registers W1, b1, W2, b2 of experts [first, first + count) under "<prefix>.expert<e>.*"
  // as `kind` parameters (routed experts: ParamKind::expert; shared experts: replicated).
  ExpertBank(ParamStore<T>& store, const std::string& prefix, std::int64_t first,
             std::int64_t count, std::int64_t d_model, std::int64_t d_ff, Activation act,
             double init_scale, ParamKind kind = ParamKind::expert);
  // Fetches parameter pointers (after the store allocated).
  void bind(ParamStore<T>& store);

  [[nodiscard]] std::int64_t count() const { return count_; }
  [[nodiscard]] std::int64_t first() const { return first_; }

  // x [rows x d_model] expert-major, slice j = rows [offset[j], offset[j+1]).
  // Writes activation a [rows x d_ff] and output y; h [rows x d_ff] receives the
  // pre-activation for GELU and is untouched for ReLU (whose backward needs only a > 0).
  void forward(const T* x, std::span<const std::int64_t> offset, T* h, T* a, T* y) const;

  // Accumulates parameter gradients from dy. Destroys the saved activations: h or a
  // becomes dL/dh and x becomes dL/dx (each buffer is read before it is reused), so
  // backward needs no extra memory and runs once per forward.
  void backward(T* x_then_dx, T* h, T* a, const T* dy, std::span<const std::int64_t> offset);

 private:
  struct Ids {
    int w1, b1, w2, b2;
  };
  struct Ptrs {
    T *w1, *b1, *w2, *b2, *gw1, *gb1, *gw2, *gb2;
  };
  std::int64_t first_, count_, d_, f_;
  Activation act_;
  std::vector<Ids> ids_;
  std::vector<Ptrs> ptr_;
};

}  // namespace moesim::experts
