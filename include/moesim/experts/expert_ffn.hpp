// The experts a rank hosts for one MoE layer: each a 2-layer FFN
//   y = act(x W1 + b1) W2 + b2,   W1 [d_model x d_ff], W2 [d_ff x d_model],
// computed with Eigen maps over contiguous row-major expert-major slices: one GEMM per
// expert and matrix, no padding to capacity, no copies.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"
#include "moesim/experts/gemm.hpp"
#include "moesim/util/aligned.hpp"
#include "moesim/util/params.hpp"

namespace moesim::experts {

template <typename T>
class ExpertBank {
 public:
  // Registers W1, b1, W2, b2 of experts [first, first + count) under "<prefix>.expert<e>.*"
  // as `kind` parameters (routed experts: ParamKind::expert; shared experts: replicated).
  ExpertBank(ParamStore<T>& store, const std::string& prefix, std::int64_t first,
             std::int64_t count, std::int64_t d_model, std::int64_t d_ff, Activation act,
             double init_scale, ParamKind kind = ParamKind::expert, bool bf16 = false);
  // Fetches parameter pointers (after the store allocated).
  void bind(ParamStore<T>& store);

  [[nodiscard]] std::int64_t count() const { return count_; }
  [[nodiscard]] std::int64_t first() const { return first_; }
  // Store ids of expert j's (local index) tensors W1, b1, W2, b2.
  [[nodiscard]] std::array<int, 4> tensor_ids(std::int64_t j) const {
    const Ids& i = ids_[static_cast<std::size_t>(j)];
    return {i.w1, i.b1, i.w2, i.b2};
  }

  // x [rows x d_model] expert-major, slice j = rows [offset[j], offset[j+1]).
  // Writes activation a [rows x d_ff] and output y; h [rows x d_ff] receives the
  // pre-activation for GELU and is untouched for ReLU (whose backward needs only a > 0).
  // j0, j1: only local experts [j0, j1) (j1 < 0: to the last), each computed exactly as in a
  // call over all of them (the chunks of routing.overlap_degree).
  void forward(const T* x, std::span<const std::int64_t> offset, T* h, T* a, T* y,
               std::int64_t j0 = 0, std::int64_t j1 = -1) const;

  // Accumulates parameter gradients from dy. Destroys the saved activations: h or a
  // becomes dL/dh and x becomes dL/dx (each buffer is read before it is reused), so
  // backward needs no extra memory and runs once per forward.
  void backward(T* x_then_dx, T* h, T* a, const T* dy, std::span<const std::int64_t> offset,
                std::int64_t j0 = 0, std::int64_t j1 = -1);

  // Mixed precision (bf16 = true, T = float): bf16 copies of W1 and W2, re-rounded from the
  // fp32 master weights by refresh_low_precision() (bind() calls it; call it after every
  // update). forward_bf16: x bf16 [rows x d] -> h fp32 pre-activation (bias added),
  // a = bf16(act(h)), y fp32 scratch [rows x d], y16 = bf16(a W2 + b2). backward_bf16:
  // fp32 gradients accumulated from bf16 x bf16 GEMMs; a becomes bf16(dL/dh), x becomes
  // bf16(dL/dx); scratch_f [rows x f], scratch_d [rows x d] are fp32 work space.
  void refresh_low_precision();
  void forward_bf16(const bf16* x, std::span<const std::int64_t> offset, float* h, bf16* a,
                    float* y, bf16* y16, std::int64_t j0 = 0, std::int64_t j1 = -1) const;
  void backward_bf16(bf16* x_then_dx, const float* h, bf16* a_then_dh, float* scratch_f,
                     const bf16* dy, std::span<const std::int64_t> offset, float* scratch_d,
                     std::int64_t j0 = 0, std::int64_t j1 = -1);
  // Called between consecutive GEMMs (nullptr: nothing): the overlap pipeline drives the
  // messages in flight from here (Open MPI moves data only inside MPI calls).
  void set_progress(void (*fn)(void*), void* ctx) {
    progress_ = fn;
    progress_ctx_ = ctx;
  }

 private:
  struct Ids {
    int w1, b1, w2, b2;
  };
  struct Ptrs {
    T *w1, *b1, *w2, *b2, *gw1, *gb1, *gw2, *gb2;
  };
  std::int64_t first_, count_, d_, f_;
  Activation act_;
  bool bf16_;
  AlignedVector<bf16> w16_;  // per expert: W1 [d x f] then W2 [f x d], bf16
  std::vector<Ids> ids_;
  std::vector<Ptrs> ptr_;
  void (*progress_)(void*) = nullptr;
  void* progress_ctx_ = nullptr;
  void poll() const {
    if (progress_ != nullptr) progress_(progress_ctx_);
  }
  [[nodiscard]] std::int64_t end(std::int64_t j1) const { return j1 < 0 ? count_ : j1; }
};

}  // namespace moesim::experts
