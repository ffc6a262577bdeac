// Expert FFN forward/backward over expert-major slices (expert_ffn.hpp).
#include "moesim/experts/expert_ffn.hpp"

#include <cmath>

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

}  // namespace

template <typename T>
ExpertBank<T>::ExpertBank(ParamStore<T>& store, const std::string& prefix, std::int64_t first,
                          std::int64_t count, std::int64_t d_model, std::int64_t d_ff,
                          Activation act, double init_scale, ParamKind kind)
    : first_(first), count_(count), d_(d_model), f_(d_ff), act_(act) {
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
}

template <typename T>
void ExpertBank<T>::forward(const T* x, std::span<const std::int64_t> offset, T* h, T* a,
                            T* y) const {
  for (std::int64_t j = 0; j < count_; ++j) {
    const std::int64_t r0 = offset[static_cast<std::size_t>(j)];
    const std::int64_t n = offset[static_cast<std::size_t>(j) + 1] - r0;
    if (n == 0) continue;
    const Ptrs& p = ptr_[static_cast<std::size_t>(j)];
    CMapM<T> X(x + r0 * d_, n, d_);
    MapM<T> A(a + r0 * f_, n, f_);
    MapM<T> Y(y + r0 * d_, n, d_);
    const CMapRow<T> b1(p.b1, f_);
    if (act_ == Activation::relu) {
      // ReLU needs no pre-activation for its backward (the mask is a > 0): the GEMM writes
      // straight into `a` and bias + ReLU is one pass over it.
      A.noalias() = X * CMapM<T>(p.w1, d_, f_);
      A = (A.rowwise() + b1).cwiseMax(T(0));
    } else {
      MapM<T> H(h + r0 * f_, n, f_);
      H.noalias() = X * CMapM<T>(p.w1, d_, f_);
      H.rowwise() += b1;
      A = H.unaryExpr([](T v) { return gelu(v); });
    }
    Y.noalias() = A * CMapM<T>(p.w2, f_, d_);
    Y.rowwise() += CMapRow<T>(p.b2, d_);
  }
}

template <typename T>
void ExpertBank<T>::backward(T* x_then_dx, T* h, T* a, const T* dy,
                             std::span<const std::int64_t> offset) {
  for (std::int64_t j = 0; j < count_; ++j) {
    const std::int64_t r0 = offset[static_cast<std::size_t>(j)];
    const std::int64_t n = offset[static_cast<std::size_t>(j) + 1] - r0;
    if (n == 0) continue;
    const Ptrs& p = ptr_[static_cast<std::size_t>(j)];
    MapM<T> X(x_then_dx + r0 * d_, n, d_);
    MapM<T> A(a + r0 * f_, n, f_);
    MapM<T> H(h + r0 * f_, n, f_);
    CMapM<T> dY(dy + r0 * d_, n, d_);
    MapM<T>(p.gw2, f_, d_).noalias() += A.transpose() * dY;
    MapRow<T>(p.gb2, d_) += dY.colwise().sum();
    // dL/da, then dL/dh in place, with db1 accumulated in the same pass. ReLU keeps `a`
    // for its mask and uses `h` as the buffer; GELU keeps `h` and reuses `a`.
    const bool relu = act_ == Activation::relu;
    MapM<T> dH(relu ? H.data() : A.data(), n, f_);
    dH.noalias() = dY * CMapM<T>(p.w2, f_, d_).transpose();
    T* gb1 = p.gb1;
    for (std::int64_t r = 0; r < n; ++r) {
      T* g = dH.data() + r * f_;
      const T* mask_or_h = (relu ? A.data() : H.data()) + r * f_;
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
    MapM<T>(p.gw1, d_, f_).noalias() += X.transpose() * dH;
    X.noalias() = dH * CMapM<T>(p.w1, d_, f_).transpose();  // X now holds dL/dx
  }
}

template class ExpertBank<float>;
template class ExpertBank<double>;

}  // namespace moesim::experts
