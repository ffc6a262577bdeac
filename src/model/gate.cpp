// The gate of one MoE layer (gate.hpp).
#include "moesim/model/gate.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "moesim/experts/gemm.hpp"
#include "moesim/routing/losses.hpp"
#include "moesim/routing/random.hpp"

namespace moesim::model {
namespace {

// Grow-only sizing: after the first steps no buffer is reallocated.
template <typename V>
void ensure(V& v, std::int64_t n) {
  if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

// softplus(r) = log(1 + e^r) and its derivative, the logistic sigmoid, without overflow.
double softplus(double r) { return std::max(r, 0.0) + std::log1p(std::exp(-std::abs(r))); }
double sigmoid(double r) {
  const double e = std::exp(-std::abs(r));
  return r >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

}  // namespace

template <typename T>
Gate<T>::Gate(const Config& cfg, int index, ParamStore<T>& store, bool learned,
              std::int64_t max_tokens)
    : d_(cfg.model.d_model),
      E_(cfg.routing.num_experts),
      index_(index),
      seed_(cfg.training.seed),
      learned_(learned),
      noisy_(cfg.routing.rule == RoutingRuleKind::noisy_topk),
      jitter_eps_(cfg.routing.rule == RoutingRuleKind::switch_top1 ? cfg.routing.jitter_eps : 0.0),
      bias_rate_(cfg.routing.bias_update_rate),
      bias_(static_cast<std::size_t>(E_), 0.0) {
  if (learned_)
    gate_id_ = store.add("layer" + std::to_string(index) + ".gate", ParamKind::replicated, d_ * E_,
                         cfg.model.init_scale / std::sqrt(static_cast<double>(d_)));
  // Shazeer et al. 2017 initialise W_noise to zeros (noise scale softplus(0) = ln 2).
  if (noisy_)
    noise_id_ =
        store.add("layer" + std::to_string(index) + ".noise", ParamKind::replicated, d_ * E_, 0.0);
  logits_t_.reserve(static_cast<std::size_t>(max_tokens * E_));
}

template <typename T>
void Gate<T>::bind(ParamStore<T>& store) {
  if (gate_id_ >= 0) {
    wg_ = store.value(gate_id_);
    gwg_ = store.grad(gate_id_);
  }
  if (noise_id_ >= 0) {
    wn_ = store.value(noise_id_);
    gwn_ = store.grad(noise_id_);
  }
}

template <typename T>
void Gate<T>::update_bias(std::span<const double> global_load) {
  routing::update_expert_bias(bias_, global_load, bias_rate_);
}

template <typename T>
void Gate<T>::forward(const T* x, std::int64_t n, bool training, const PassInfo& pass,
                      std::span<double> logits) {
  x_ = x;
  n_ = n;
  jitter_ = training && jitter_eps_ > 0;
  noise_ = training && noisy_;
  if (learned_) {
    const T* gate_in = x;
    if (jitter_) {  // the router sees x * u, u ~ U[1-eps, 1+eps] per (token, feature)
      ensure(jit_x_, n * d_);
      ensure(jit_u_, n * d_);
      for (std::int64_t i = 0; i < n; ++i) {
        const CounterRng rng = routing::draw_stream(seed_, pass.step, index_, pass.first_token + i,
                                                    routing::DrawPurpose::jitter);
        for (std::int64_t j = 0; j < d_; ++j) {
          const T u = static_cast<T>(
              1.0 - jitter_eps_ + 2.0 * jitter_eps_ * rng.uniform(static_cast<std::uint64_t>(j)));
          jit_u_[static_cast<std::size_t>(i * d_ + j)] = u;
          jit_x_[static_cast<std::size_t>(i * d_ + j)] = x[i * d_ + j] * u;
        }
      }
      gate_in = jit_x_.data();
    }
    ensure(logits_t_, n * E_);
    experts::gemm(experts::Op::none, experts::Op::none, n, E_, d_, T(1), gate_in, d_, wg_, E_, T(0),
                  logits_t_.data(), E_);
    std::copy_n(logits_t_.begin(), n * E_, logits.begin());
  }
  if (noise_) {  // noisy_topk: noise scale softplus(x W_noise), training only
    ensure(noise_raw_t_, n * E_);
    experts::gemm(experts::Op::none, experts::Op::none, n, E_, d_, T(1), x, d_, wn_, E_, T(0),
                  noise_raw_t_.data(), E_);
    noise_std_.resize(static_cast<std::size_t>(n * E_));
    for (std::int64_t i = 0; i < n * E_; ++i)
      noise_std_[static_cast<std::size_t>(i)] =
          softplus(static_cast<double>(noise_raw_t_[static_cast<std::size_t>(i)]));
  }
}

template <typename T>
void Gate<T>::backward(std::span<const double> dlogits, std::span<const double> dnoise, T* dx) {
  if (!learned_) return;
  const std::int64_t n = n_;
  std::copy_n(dlogits.begin(), n * E_, logits_t_.begin());
  const T* dL = logits_t_.data();
  using experts::gemm;
  using experts::Op;
  if (jitter_) {  // logits = (x * u) Wg: dWg = (x * u)^T dL, dx += (dL Wg^T) * u
    gemm(Op::transpose, Op::none, d_, E_, n, T(1), jit_x_.data(), d_, dL, E_, T(1), gwg_, E_);
    gemm(Op::none, Op::transpose, n, d_, E_, T(1), dL, E_, wg_, E_, T(0), jit_x_.data(), d_);
    for (std::int64_t i = 0; i < n * d_; ++i)
      dx[i] += jit_x_[static_cast<std::size_t>(i)] * jit_u_[static_cast<std::size_t>(i)];
  } else {
    gemm(Op::transpose, Op::none, d_, E_, n, T(1), x_, d_, dL, E_, T(1), gwg_, E_);
    gemm(Op::none, Op::transpose, n, d_, E_, T(1), dL, E_, wg_, E_, T(1), dx, d_);
  }
  if (noise_) {  // sigma = softplus(x Wn): d(x Wn) = dsigma * sigmoid(x Wn)
    for (std::int64_t i = 0; i < n * E_; ++i) {
      T& raw = noise_raw_t_[static_cast<std::size_t>(i)];
      raw = static_cast<T>(dnoise[static_cast<std::size_t>(i)] * sigmoid(static_cast<double>(raw)));
    }
    const T* dR = noise_raw_t_.data();
    gemm(Op::transpose, Op::none, d_, E_, n, T(1), x_, d_, dR, E_, T(1), gwn_, E_);
    gemm(Op::none, Op::transpose, n, d_, E_, T(1), dR, E_, wn_, E_, T(1), dx, d_);
  }
}

template class Gate<float>;
template class Gate<double>;

}  // namespace moesim::model
