// Expert FFN forward/backward over expert-major slices (expert_ffn.hpp).
#include "moesim/experts/expert_ffn.hpp"

#include <cmath>
#include <stdexcept>
#include <type_traits>

#include "moesim/experts/gemm.hpp"
#include "moesim/util/eigen_maps.hpp"

namespace moesim::experts {
namespace {

using eigen::CMapM;
using eigen::CMapRow;
using eigen::MapM;
using eigen::MapRow;
using eigen::RowMat;

// GELU, tanh approximation (Hendrycks & Gimpel), and its exact derivative.
constexpr double kGeluC = 0.7978845608028654;  // sqrt(2/pi)
template <typename T>
inline T gelu(T x) {
  const T u = T(kGeluC) * (x + T(0.044715) * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(u));
}
template <typename T>
inline T gelu_grad(T x) {
  const T u = T(kGeluC) * (x + T(0.044715) * x * x * x);
  const T th = std::tanh(u);
  const T du = T(kGeluC) * (T(1) + T(3 * 0.044715) * x * x);
  return T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * du;
}

// Row kernels of the bf16 expert path: plain loops over __restrict pointers with the
// branch-free to_bf16, so that GCC vectorises them (ReLU; GELU's tanh stays scalar). Every
// element sees the same operations in the same order as a scalar loop: bitwise the same.
// h += b (fp32, kept for the backward), a = bf16(act(h)).
void bias_act_bf16(float* __restrict h, const float* __restrict b, bf16* __restrict a,
                   std::int64_t n, Activation act) {
  if (act == Activation::relu) {
    for (std::int64_t c = 0; c < n; ++c) {
      const float v = h[c] + b[c];
      h[c] = v;
      a[c] = to_bf16(v > 0.0f ? v : 0.0f);
    }
  } else {
    for (std::int64_t c = 0; c < n; ++c) {
      const float v = h[c] + b[c];
      h[c] = v;
      a[c] = to_bf16(gelu(v));
    }
  }
}
// out = bf16(y + b).
void bias_bf16(const float* __restrict y, const float* __restrict b, bf16* __restrict out,
               std::int64_t n) {
  for (std::int64_t c = 0; c < n; ++c) out[c] = to_bf16(y[c] + b[c]);
}
// acc += x (one bf16 row, widened).
void accumulate_bf16(float* __restrict acc, const bf16* __restrict x, std::int64_t n) {
  for (std::int64_t c = 0; c < n; ++c) acc[c] += to_float(x[c]);
}
// v = dL/da * act'(h); gb += v; out = bf16(v).
void act_grad_bf16(const float* __restrict g, const float* __restrict h, float* __restrict gb,
                   bf16* __restrict out, std::int64_t n, Activation act) {
  if (act == Activation::relu) {
    for (std::int64_t c = 0; c < n; ++c) {
      const float v = h[c] > 0.0f ? g[c] : 0.0f;
      gb[c] += v;
      out[c] = to_bf16(v);
    }
  } else {
    for (std::int64_t c = 0; c < n; ++c) {
      const float v = g[c] * gelu_grad(h[c]);
      gb[c] += v;
      out[c] = to_bf16(v);
    }
  }
}

}  // namespace

template <typename T>
ExpertBank<T>::ExpertBank(ParamStore<T>& store, const std::string& prefix, std::int64_t first,
                          std::int64_t count, std::int64_t d_model, std::int64_t d_ff,
                          Activation act, double init_scale, ParamKind kind, bool bf16)
    : first_(first), count_(count), d_(d_model), f_(d_ff), act_(act), bf16_(bf16) {
  if (bf16_ && !std::is_same_v<T, float>)
    throw std::logic_error("ExpertBank: bf16 GEMMs need float master weights");
  if (bf16_) w16_.resize(static_cast<std::size_t>(2 * count * d_model * d_ff));
  // He init for the ReLU/GELU input layer; 1/sqrt(fan_in) for the output layer.
  const double std1 = init_scale * std::sqrt(2.0 / static_cast<double>(d_model));
  const double std2 = init_scale * std::sqrt(1.0 / static_cast<double>(d_ff));
  for (std::int64_t j = 0; j < count; ++j) {
    const std::string p = prefix + ".expert" + std::to_string(first + j);
    ids_.push_back(Ids{store.add(p + ".w1", kind, d_model * d_ff, std1),
                       store.add(p + ".b1", kind, d_ff, 0.0),
                       store.add(p + ".w2", kind, d_ff * d_model, std2),
                       store.add(p + ".b2", kind, d_model, 0.0)});
  }
}

template <typename T>
void ExpertBank<T>::bind(ParamStore<T>& s) {
  ptr_.clear();
  for (const Ids& i : ids_)
    ptr_.push_back(Ptrs{s.value(i.w1), s.value(i.b1), s.value(i.w2), s.value(i.b2), s.grad(i.w1),
                        s.grad(i.b1), s.grad(i.w2), s.grad(i.b2)});
  refresh_low_precision();
}

template <typename T>
void ExpertBank<T>::refresh_low_precision() {
  if constexpr (std::is_same_v<T, float>) {
    if (!bf16_) return;
    for (std::int64_t j = 0; j < count_; ++j) {
      const Ptrs& p = ptr_[static_cast<std::size_t>(j)];
      to_bf16(p.w1, w16_.data() + j * 2 * d_ * f_, d_ * f_);
      to_bf16(p.w2, w16_.data() + j * 2 * d_ * f_ + d_ * f_, f_ * d_);
    }
  }
}

template <typename T>
void ExpertBank<T>::forward_bf16(const bf16* x, std::span<const std::int64_t> offset, float* h,
                                 bf16* a, float* y, bf16* y16, std::int64_t j0,
                                 std::int64_t j1) const {
  if constexpr (std::is_same_v<T, float>) {
    for (std::int64_t j = j0; j < end(j1); ++j) {
      const std::int64_t r0 = offset[static_cast<std::size_t>(j)];
      const std::int64_t n = offset[static_cast<std::size_t>(j) + 1] - r0;
      if (n == 0) continue;
      const Ptrs& p = ptr_[static_cast<std::size_t>(j)];
      const bf16* w1 = w16_.data() + j * 2 * d_ * f_;
      const bf16* w2 = w1 + d_ * f_;
      float* H = h + r0 * f_;
      bf16* A = a + r0 * f_;
      gemm(Op::none, Op::none, n, f_, d_, 1.0f, x + r0 * d_, d_, w1, f_, 0.0f, H, f_);
      poll();
      for (std::int64_t r = 0; r < n; ++r)  // fp32 bias + activation, rounded once to bf16
        bias_act_bf16(H + r * f_, p.b1, A + r * f_, f_, act_);
      float* Y = y + r0 * d_;
      gemm(Op::none, Op::none, n, d_, f_, 1.0f, A, f_, w2, d_, 0.0f, Y, d_);
      poll();
      for (std::int64_t r = 0; r < n; ++r) bias_bf16(Y + r * d_, p.b2, y16 + (r0 + r) * d_, d_);
    }
  } else {
    (void)x, (void)offset, (void)h, (void)a, (void)y, (void)y16, (void)j0, (void)j1;
    throw std::logic_error("ExpertBank: bf16 forward needs float master weights");
  }
}

template <typename T>
void ExpertBank<T>::backward_bf16(bf16* x_then_dx, const float* h, bf16* a_then_dh,
                                  float* scratch_f, const bf16* dy,
                                  std::span<const std::int64_t> offset, float* scratch_d,
                                  std::int64_t j0, std::int64_t j1) {
  if constexpr (std::is_same_v<T, float>) {
    for (std::int64_t j = j0; j < end(j1); ++j) {
      const std::int64_t r0 = offset[static_cast<std::size_t>(j)];
      const std::int64_t n = offset[static_cast<std::size_t>(j) + 1] - r0;
      if (n == 0) continue;
      const Ptrs& p = ptr_[static_cast<std::size_t>(j)];
      const bf16* w1 = w16_.data() + j * 2 * d_ * f_;
      const bf16* w2 = w1 + d_ * f_;
      bf16* X = x_then_dx + r0 * d_;
      bf16* A = a_then_dh + r0 * f_;
      const float* H = h + r0 * f_;
      const bf16* dY = dy + r0 * d_;
      gemm(Op::transpose, Op::none, f_, d_, n, 1.0f, A, f_, dY, d_, 1.0f, p.gw2, d_);
      poll();
      for (std::int64_t r = 0; r < n; ++r) accumulate_bf16(p.gb2, dY + r * d_, d_);
      // dL/da in fp32, then dL/dh = dL/da * act'(h) (fp32, db1 from it), rounded to bf16
      // into A's buffer (A is not needed after dW2).
      gemm(Op::none, Op::transpose, n, f_, d_, 1.0f, dY, d_, w2, d_, 0.0f, scratch_f, f_);
      poll();
      for (std::int64_t r = 0; r < n; ++r)
        act_grad_bf16(scratch_f + r * f_, H + r * f_, p.gb1, A + r * f_, f_, act_);
      gemm(Op::transpose, Op::none, d_, f_, n, 1.0f, X, d_, A, f_, 1.0f, p.gw1, f_);
      poll();
      gemm(Op::none, Op::transpose, n, d_, f_, 1.0f, A, f_, w1, f_, 0.0f, scratch_d, d_);
      poll();
      to_bf16(scratch_d, X, n * d_);  // X now holds dL/dx (bf16, for the return all-to-all)
    }
  } else {
    (void)x_then_dx, (void)h, (void)a_then_dh, (void)scratch_f, (void)dy, (void)offset,
        (void)scratch_d, (void)j0, (void)j1;
    throw std::logic_error("ExpertBank: bf16 backward needs float master weights");
  }
}

template <typename T>
void ExpertBank<T>::forward(const T* x, std::span<const std::int64_t> offset, T* h, T* a, T* y,
                            std::int64_t j0, std::int64_t j1) const {
  for (std::int64_t j = j0; j < end(j1); ++j) {
    const std::int64_t r0 = offset[static_cast<std::size_t>(j)];
    const std::int64_t n = offset[static_cast<std::size_t>(j) + 1] - r0;
    if (n == 0) continue;
    const Ptrs& p = ptr_[static_cast<std::size_t>(j)];
    MapM<T> A(a + r0 * f_, n, f_);
    MapM<T> Y(y + r0 * d_, n, d_);
    const CMapRow<T> b1(p.b1, f_);
    if (act_ == Activation::relu) {
      // ReLU needs no pre-activation for its backward (the mask is a > 0): the GEMM writes
      // straight into `a` and bias + ReLU is one pass over it.
      gemm(Op::none, Op::none, n, f_, d_, T(1), x + r0 * d_, d_, p.w1, f_, T(0), A.data(), f_);
      poll();
      A = (A.rowwise() + b1).cwiseMax(T(0));
    } else {
      MapM<T> H(h + r0 * f_, n, f_);
      gemm(Op::none, Op::none, n, f_, d_, T(1), x + r0 * d_, d_, p.w1, f_, T(0), H.data(), f_);
      poll();
      H.rowwise() += b1;
      A = H.unaryExpr([](T v) { return gelu(v); });
    }
    gemm(Op::none, Op::none, n, d_, f_, T(1), A.data(), f_, p.w2, d_, T(0), Y.data(), d_);
    poll();
    Y.rowwise() += CMapRow<T>(p.b2, d_);
  }
}

template <typename T>
void ExpertBank<T>::backward(T* x_then_dx, T* h, T* a, const T* dy,
                             std::span<const std::int64_t> offset, std::int64_t j0,
                             std::int64_t j1) {
  for (std::int64_t j = j0; j < end(j1); ++j) {
    const std::int64_t r0 = offset[static_cast<std::size_t>(j)];
    const std::int64_t n = offset[static_cast<std::size_t>(j) + 1] - r0;
    if (n == 0) continue;
    const Ptrs& p = ptr_[static_cast<std::size_t>(j)];
    T* X = x_then_dx + r0 * d_;
    T* A = a + r0 * f_;
    T* H = h + r0 * f_;
    const T* dY = dy + r0 * d_;
    gemm(Op::transpose, Op::none, f_, d_, n, T(1), A, f_, dY, d_, T(1), p.gw2, d_);
    poll();
    MapRow<T>(p.gb2, d_) += CMapM<T>(dY, n, d_).colwise().sum();
    // dL/da, then dL/dh in place, with db1 accumulated in the same pass. ReLU keeps `a`
    // for its mask and uses `h` as the buffer; GELU keeps `h` and reuses `a`.
    const bool relu = act_ == Activation::relu;
    T* dH = relu ? H : A;
    gemm(Op::none, Op::transpose, n, f_, d_, T(1), dY, d_, p.w2, d_, T(0), dH, f_);
    poll();
    T* gb1 = p.gb1;
    for (std::int64_t r = 0; r < n; ++r) {
      T* g = dH + r * f_;
      const T* mask_or_h = (relu ? A : H) + r * f_;
      if (relu) {
        for (std::int64_t c = 0; c < f_; ++c) {
          g[c] = mask_or_h[c] > T(0) ? g[c] : T(0);
          gb1[c] += g[c];
        }
      } else {
        for (std::int64_t c = 0; c < f_; ++c) {
          g[c] *= gelu_grad(mask_or_h[c]);
          gb1[c] += g[c];
        }
      }
    }
    gemm(Op::transpose, Op::none, d_, f_, n, T(1), X, d_, dH, f_, T(1), p.gw1, f_);
    poll();
    // X now holds dL/dx
    gemm(Op::none, Op::transpose, n, d_, f_, T(1), dH, f_, p.w1, f_, T(0), X, d_);
    poll();
  }
}

template class ExpertBank<float>;
template class ExpertBank<double>;

}  // namespace moesim::experts
